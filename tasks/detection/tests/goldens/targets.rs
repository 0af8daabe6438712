//! RPN targets, R-CNN sampling and box targets, and the cascade refine with gt removal vs mmdet 2.11
//! (first-k sampling on both sides).

use detection::anchors::{fpn_featmap_sizes, AnchorGenerator};
use detection::assigner::MaxIoUAssigner;
use detection::box_coder::DeltaXYWHBBoxCoder;
use detection::sampler::{Draw, RandomSampler};
use detection::structures::{bbox2roi, Roi};
use detection::targets::{
    bbox_head_targets, refine_bboxes, rpn_num_total_samples, rpn_targets, stage_roi_labels,
    RpnTrainConfig,
};

use crate::util::{check, flat4, meta_pair, meta_usize, Golden, TOL};

#[test]
fn rpn_targets_match() {
    let g = Golden::load("targets");
    let m = &g.meta["rpn"];
    let fs: Vec<(usize, usize)> = m["featmap_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(meta_pair)
        .collect();
    assert_eq!(fpn_featmap_sizes((64, 96)), fs);
    let gen = AnchorGenerator::mmdet_rpn();
    let anchors: Vec<[f32; 4]> = gen.grid_anchors(&fs).concat();
    let cfg = RpnTrainConfig::official();
    let mut all = Vec::new();
    for (j, im) in m["images"].as_array().unwrap().iter().enumerate() {
        let valid = gen.valid_flags(&fs, meta_pair(&im["pad_shape"])).concat();
        let gts = g.boxes(&format!("rpn{j}.gts"));
        let t = rpn_targets(
            &anchors,
            &valid,
            &gts,
            &[],
            meta_pair(&im["img_shape"]),
            &cfg,
            &mut Draw::FirstK,
        )
        .expect("anchors inside");
        assert_eq!(
            t.labels,
            g.i64s(&format!("rpn{j}.labels")),
            "img {j} labels"
        );
        assert_eq!(
            t.label_weights,
            g.f32s(&format!("rpn{j}.label_weights")),
            "img {j} label weights"
        );
        check(
            &format!("targets rpn{j}.bbox_targets"),
            &flat4(&t.bbox_targets),
            &g.f32s(&format!("rpn{j}.bbox_targets")),
            TOL,
        );
        let bw: Vec<f32> = g
            .u8s(&format!("rpn{j}.bbox_weights"))
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_eq!(flat4(&t.bbox_weights), bw, "img {j} bbox weights");
        assert_eq!(t.num_pos, meta_usize(&im["num_pos"]));
        assert_eq!(t.num_neg, meta_usize(&im["num_neg"]));
        println!(
            "targets rpn{j}: {} positives, {} negatives",
            t.num_pos, t.num_neg
        );
        all.push(t);
    }
    assert_eq!(
        rpn_num_total_samples(&all),
        meta_usize(&m["num_total_samples"])
    );
}

#[test]
fn roi_targets_and_refine_match() {
    let g = Golden::load("targets");
    let m = &g.meta["roi"];
    let num_classes = meta_usize(&m["num_classes"]);
    let img_shapes: Vec<(usize, usize)> = m["img_shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(meta_pair)
        .collect();
    let coder = DeltaXYWHBBoxCoder::cascade_stage(0);
    let mut srs = Vec::new();
    let mut labels_all = Vec::new();
    for (j, im) in m["images"].as_array().unwrap().iter().enumerate() {
        let props = g.boxes(&format!("roi{j}.props"));
        let gts = g.boxes(&format!("roi{j}.gts"));
        let gl = g.i64s(&format!("roi{j}.gt_labels"));
        let mut a = MaxIoUAssigner::rcnn(0.5).assign(&props, &gts, &[], Some(&gl));
        let sampler = RandomSampler {
            num: meta_usize(&im["num"]),
            ..RandomSampler::rcnn()
        };
        let sr = sampler.sample(&mut a, &props, &gts, Some(&gl), &mut Draw::FirstK);
        assert_eq!(
            sr.pos_inds,
            g.usizes(&format!("roi{j}.pos_inds")),
            "img {j} pos_inds"
        );
        assert_eq!(
            sr.neg_inds,
            g.usizes(&format!("roi{j}.neg_inds")),
            "img {j} neg_inds"
        );
        assert_eq!(
            sr.pos_is_gt,
            g.bools(&format!("roi{j}.pos_is_gt")),
            "img {j} pos_is_gt"
        );
        assert_eq!(
            sr.pos_assigned_gt_inds,
            g.usizes(&format!("roi{j}.pos_assigned_gt_inds")),
            "img {j} pos_assigned_gt_inds"
        );
        for (k, dec) in [("dec", true), ("enc", false)] {
            let t = bbox_head_targets(&sr, num_classes, dec, &coder, -1.0);
            assert_eq!(
                t.labels,
                g.i64s(&format!("roi{j}.{k}.labels")),
                "img {j} {k} labels"
            );
            assert_eq!(
                t.label_weights,
                g.f32s(&format!("roi{j}.{k}.label_weights"))
            );
            check(
                &format!("targets roi{j}.{k}.bbox_targets"),
                &flat4(&t.bbox_targets),
                &g.f32s(&format!("roi{j}.{k}.bbox_targets")),
                TOL,
            );
            let bw: Vec<f32> = g
                .u8s(&format!("roi{j}.{k}.bbox_weights"))
                .iter()
                .map(|&v| v as f32)
                .collect();
            assert_eq!(flat4(&t.bbox_weights), bw);
            if dec {
                labels_all.extend(t.labels);
            }
        }
        println!(
            "targets roi{j}: {} positives ({} gts), {} negatives",
            sr.pos_inds.len(),
            sr.pos_is_gt.iter().filter(|&&v| v).count(),
            sr.neg_inds.len()
        );
        srs.push(sr);
    }
    // refine: rois of the sampled boxes, relabelled negatives, class-specific regression, gt removal
    let rois: Vec<Roi> = bbox2roi(&srs.iter().map(|s| s.sampled_bboxes()).collect::<Vec<_>>());
    check(
        "targets refine.rois",
        &rois.iter().flatten().copied().collect::<Vec<_>>(),
        &g.f32s("refine.rois"),
        0.0,
    );
    let roi_labels = stage_roi_labels(&labels_all, &g.f32s("refine.cls_score"), num_classes);
    assert_eq!(roi_labels, g.i64s("refine.roi_labels"));
    let pos_is_gts: Vec<Vec<bool>> = srs.iter().map(|s| s.pos_is_gt.clone()).collect();
    let refined = refine_bboxes(
        &rois,
        &roi_labels,
        &g.f32s("refine.bbox_pred"),
        &pos_is_gts,
        &img_shapes,
        &coder,
    );
    for (j, r) in refined.iter().enumerate() {
        let want = g.f32s(&format!("refine.out{j}"));
        assert_eq!(r.len() * 4, want.len(), "img {j}: gt boxes removed");
        check(&format!("targets refine.out{j}"), &flat4(r), &want, TOL);
    }
}
