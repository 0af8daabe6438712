//! Cascade test post-processing (stage-averaged logits, softmax, class-specific decode, rescale,
//! multiclass NMS), raw `multiclass_nms`, mask paste and mask targets vs mmdet 2.11.

use detection::box_coder::DeltaXYWHBBoxCoder;
use detection::nms::NmsConfig;
use detection::postprocess::{
    average_stage_logits, bbox_head_get_bboxes, get_seg_masks, mask_targets, multiclass_nms,
    paste_mask, RcnnTestConfig,
};
use detection::structures::BitMask;

use crate::util::{check, flat5, meta_pair, meta_usize, Golden, TOL};

#[test]
fn cascade_get_bboxes_matches() {
    let g = Golden::load("postprocess");
    let m = &g.meta["cas"];
    assert_eq!(meta_usize(&m["num_classes"]) + 1, g.shape("cas.logits0")[1]);
    let rois: Vec<[f32; 4]> = g
        .rows5("cas.rois")
        .iter()
        .map(|r| [r[1], r[2], r[3], r[4]])
        .collect();
    let logits: Vec<Vec<f32>> = (0..3).map(|i| g.f32s(&format!("cas.logits{i}"))).collect();
    let avg = average_stage_logits(&[&logits[0], &logits[1], &logits[2]]);
    let sf: Vec<f32> = m["scale_factor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let (dets, labels) = bbox_head_get_bboxes(
        &rois,
        &avg,
        &g.f32s("cas.bbox_pred"),
        meta_pair(&m["img_shape"]),
        Some([sf[0], sf[1], sf[2], sf[3]]),
        &DeltaXYWHBBoxCoder::cascade_stage(2),
        &RcnnTestConfig::official(),
    );
    assert_eq!(labels, g.i64s("cas.labels"));
    check(
        "postprocess cas.dets",
        &flat5(&dets),
        &g.f32s("cas.dets"),
        TOL,
    );
}

#[test]
fn multiclass_nms_matches() {
    let g = Golden::load("postprocess");
    let scores = g.f32s("mc.scores");
    let (dets, labels) = multiclass_nms(
        &g.f32s("mc.boxes"),
        &scores,
        3,
        0.05,
        &NmsConfig::iou(0.5),
        40,
    );
    assert_eq!(labels, g.i64s("mc.labels"));
    check(
        "postprocess mc.dets",
        &flat5(&dets),
        &g.f32s("mc.dets"),
        0.0,
    );
    let (dets, labels) = multiclass_nms(
        &g.f32s("mc2.boxes"),
        &scores,
        3,
        0.25,
        &NmsConfig::iou(0.3),
        -1,
    );
    assert_eq!(labels, g.i64s("mc2.labels"));
    check(
        "postprocess mc2.dets",
        &flat5(&dets),
        &g.f32s("mc2.dets"),
        0.0,
    );
}

#[test]
fn mask_paste_matches_grid_sample() {
    let g = Golden::load("postprocess");
    let m = &g.meta["paste"];
    let (h, w) = (meta_usize(&m["img_h"]), meta_usize(&m["img_w"]));
    let boxes = g.boxes("paste.boxes");
    let masks = g.f32s("paste.masks");
    let want_bin = g.bools("paste.bin");
    let want_prob = g.f32s("paste.prob");
    let n_prob = want_prob.len() / (h * w);
    let mut mismatched = 0;
    for (i, b) in boxes.iter().enumerate() {
        let p = paste_mask(&masks[i * 784..(i + 1) * 784], 28, 28, b, h, w);
        if i < n_prob {
            check(
                &format!("postprocess paste.prob[{i}]"),
                &p,
                &want_prob[i * h * w..(i + 1) * h * w],
                1e-6,
            );
        }
        let bin: Vec<bool> = p.iter().map(|&v| v >= 0.5).collect();
        mismatched += bin
            .iter()
            .zip(&want_bin[i * h * w..(i + 1) * h * w])
            .filter(|(a, b)| a != b)
            .count();
    }
    println!(
        "postprocess paste: {mismatched} mismatched pixels of {}",
        want_bin.len()
    );
    assert_eq!(mismatched, 0);
    // get_seg_masks with scale factor 1 is the same paste
    let seg = get_seg_masks(&masks, 28, &boxes, [1.0; 4], (h, w), 0.5);
    assert_eq!(seg.concat(), want_bin);
}

#[test]
fn mask_targets_match() {
    let g = Golden::load("postprocess");
    let shape = g.shape("mt.gt_masks");
    let (n, mh, mw) = (shape[0], shape[1], shape[2]);
    let data = g.u8s("mt.gt_masks");
    let masks: Vec<BitMask> = (0..n)
        .map(|i| BitMask {
            h: mh,
            w: mw,
            data: data[i * mh * mw..(i + 1) * mh * mw].to_vec(),
        })
        .collect();
    let t = mask_targets(&g.boxes("mt.props"), &g.usizes("mt.gt_inds"), &masks, 28);
    let want: Vec<f32> = g.u8s("mt.targets").iter().map(|&v| v as f32).collect();
    let mismatched = t.iter().zip(&want).filter(|(a, b)| a != b).count();
    println!(
        "postprocess mask targets: {mismatched} mismatched of {}",
        want.len()
    );
    assert_eq!(mismatched, 0);
}
