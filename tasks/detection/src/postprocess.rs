//! Test-time box and mask post-processing, and the mask targets of training.
//!
//! Transcribes, from mmdet 2.11:
//! - `core/post_processing/bbox_nms.py::multiclass_nms` (boxes flattened RoI-major, class-minor; scores
//!   `> score_thr`; `batched_nms` with the class as the index; the first `max_num` kept);
//! - `BBoxHead.get_bboxes` (`roi_heads/bbox_heads/bbox_head.py`): softmax of the (stage-averaged)
//!   logits, class-specific decode clipped to `img_shape`, division by `scale_factor` (rescale to the
//!   original image) BEFORE the NMS; `CascadeRoIHead.simple_test` averages the three stages' raw
//!   logits (`sum(...) / 3.0`), not their probabilities;
//! - `FCNMaskHead.get_seg_masks` / `_do_paste_mask` (`roi_heads/mask_heads/fcn_mask_head.py`): the mask
//!   is sampled with `grid_sample(bilinear, zeros, align_corners=False)` at every image pixel centre
//!   (the GPU path, `skip_empty=False`), then `>= mask_thr_binary`;
//! - `core/mask/mask_target.py` + `BitmapMasks.crop_and_resize` (`core/mask/structures.py`): positive
//!   proposals clipped to the mask size, RoIAlign (scale 1, aligned, sampling 0) of the assigned gt
//!   bitmap, then `>= 0.5`.

use layers::roi_align::{roi_align_host_single, RoiAlignConfig};

use crate::box_coder::DeltaXYWHBBoxCoder;
use crate::nms::{batched_nms, NmsConfig};
use crate::structures::{BitMask, Box4};

/// `test_cfg.rcnn` of the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RcnnTestConfig {
    pub score_thr: f32,
    pub nms: NmsConfig,
    pub max_per_img: i64,
    pub mask_thr_binary: f32,
}

impl RcnnTestConfig {
    /// score 0.05, per-class NMS at IoU 0.5, 100 detections, masks at 0.5.
    pub fn official() -> Self {
        Self {
            score_thr: 0.05,
            nms: NmsConfig::iou(0.5),
            max_per_img: 100,
            mask_thr_binary: 0.5,
        }
    }
}

/// `multiclass_nms(multi_bboxes, multi_scores, score_thr, nms_cfg, max_num)`.
/// `multi_bboxes` is row-major `[N, 4·C]` (class-specific) or `[N, 4]` (shared), `multi_scores` is
/// `[N, C + 1]` with the background last. Returns (`dets` [x1, y1, x2, y2, score], labels) in mmcv's
/// order (descending score; ties in flattened (RoI, class) order).
pub fn multiclass_nms(
    multi_bboxes: &[f32],
    multi_scores: &[f32],
    num_classes: usize,
    score_thr: f32,
    nms: &NmsConfig,
    max_num: i64,
) -> (Vec<[f32; 5]>, Vec<i64>) {
    let c1 = num_classes + 1;
    assert_eq!(multi_scores.len() % c1, 0, "scores must be [N, C+1]");
    let n = multi_scores.len() / c1;
    let cols = if n == 0 { 4 } else { multi_bboxes.len() / n };
    assert!(
        n == 0 || (cols * n == multi_bboxes.len() && (cols == 4 || cols == 4 * num_classes)),
        "boxes must be [N, 4C] or [N, 4]"
    );
    let mut boxes = Vec::new();
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        for c in 0..num_classes {
            let s = multi_scores[i * c1 + c];
            if s > score_thr {
                let o = if cols > 4 { i * cols + 4 * c } else { i * cols };
                boxes.push([
                    multi_bboxes[o],
                    multi_bboxes[o + 1],
                    multi_bboxes[o + 2],
                    multi_bboxes[o + 3],
                ]);
                scores.push(s);
                labels.push(c as i64);
            }
        }
    }
    if boxes.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let (mut dets, mut keep) = batched_nms(&boxes, &scores, &labels, nms);
    if max_num > 0 {
        dets.truncate(max_num as usize);
        keep.truncate(max_num as usize);
    }
    let det_labels = keep.iter().map(|&k| labels[k]).collect();
    (dets, det_labels)
}

/// `F.softmax(logits, dim=-1)` per row of `[N, K]` (max-shifted, as torch computes it).
pub fn softmax_rows(logits: &[f32], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(k) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|&x| (x - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|&v| v / s));
    }
    out
}

/// `CascadeRoIHead.simple_test`'s `sum([score[i] for score in ms_scores]) / float(len(ms_scores))`:
/// the stages' raw logits summed left to right, then divided.
pub fn average_stage_logits(stages: &[&[f32]]) -> Vec<f32> {
    assert!(!stages.is_empty(), "at least one stage");
    let n = stages[0].len();
    let k = stages.len() as f32;
    (0..n)
        .map(|i| stages.iter().fold(0.0f32, |acc, s| acc + s[i]) / k)
        .collect()
}

/// Boxes divided by `scale_factor` = (w, h, w, h) (`bboxes /= scale_factor`), class-specific rows too.
pub fn rescale_boxes(boxes: &mut [f32], scale_factor: [f32; 4]) {
    for (i, v) in boxes.iter_mut().enumerate() {
        *v /= scale_factor[i % 4];
    }
}

/// `BBoxHead.get_bboxes(rois, cls_score, bbox_pred, img_shape, scale_factor, rescale, cfg)` for one
/// image: `cls_logits` `[N, C+1]` (already stage-averaged for the cascade; C is inferred from it),
/// `bbox_pred` `[N, 4C]`,
/// decoded by `coder` (the last stage's) and clipped to `img_shape` (h, w); `scale_factor = Some(..)`
/// rescales to the original image (`rescale=True`, the official test).
pub fn bbox_head_get_bboxes(
    rois: &[Box4],
    cls_logits: &[f32],
    bbox_pred: &[f32],
    img_shape: (usize, usize),
    scale_factor: Option<[f32; 4]>,
    coder: &DeltaXYWHBBoxCoder,
    cfg: &RcnnTestConfig,
) -> (Vec<[f32; 5]>, Vec<i64>) {
    if rois.is_empty() {
        return (Vec::new(), Vec::new());
    }
    assert_eq!(
        cls_logits.len() % rois.len(),
        0,
        "cls_logits must be [N, C+1]"
    );
    let num_classes = cls_logits.len() / rois.len() - 1;
    let scores = softmax_rows(cls_logits, num_classes + 1);
    let mut boxes = coder.decode_multiclass(rois, bbox_pred, Some(img_shape));
    if let Some(sf) = scale_factor {
        rescale_boxes(&mut boxes, sf);
    }
    multiclass_nms(
        &boxes,
        &scores,
        num_classes,
        cfg.score_thr,
        &cfg.nms,
        cfg.max_per_img,
    )
}

/// `_do_paste_mask` for one box on the whole image (the GPU path, `skip_empty=False`): the
/// probability at every pixel, row-major `img_h × img_w`. `mask` is `m_h × m_w` (28 × 28).
///
/// Bit-identical to torch's CPU `grid_sample` kernel as shipped (vectorised, built with FMA
/// contraction): the unnormalisation `(g + 1)·(size/2) − 0.5` and the four-corner sum are fused
/// multiply-adds. CUDA's kernel rounds differently (`((g + 1)·size − 1)/2`, other weight products),
/// so GPU masks can differ in pixels whose value is within an ulp of the threshold. Pixels whose four
/// corners all fall outside the mask are exactly 0 (zeros padding), so only the box's neighbourhood is
/// computed.
pub fn paste_mask(
    mask: &[f32],
    m_h: usize,
    m_w: usize,
    b: &Box4,
    img_h: usize,
    img_w: usize,
) -> Vec<f32> {
    assert_eq!(mask.len(), m_h * m_w, "mask must be m_h × m_w");
    // normalised grid coordinate, torch's order: ((p + 0.5) − x0) / (x1 − x0) · 2 − 1, inf → 0
    let norm = |p: usize, lo: f32, hi: f32| -> f32 {
        let v = ((p as f32 + 0.5) - lo) / (hi - lo) * 2.0 - 1.0;
        if v.is_infinite() {
            0.0
        } else {
            v
        }
    };
    // unnormalise (align_corners=False) and split into the lower corner and the two distances
    let axis = |g: f32, size: usize| -> (i64, f32, f32) {
        let v = (g + 1.0).mul_add(size as f32 / 2.0, -0.5);
        let lo = v.floor();
        let w_hi = v - lo;
        // NaN coordinates (0/0 boxes) become an out-of-range corner: value 0, as masked in torch
        let lo_i = if lo.is_nan() { i64::MIN / 2 } else { lo as i64 };
        (lo_i, 1.0 - w_hi, w_hi)
    };
    let live = |lo: i64, size: usize| lo >= -1 && lo < size as i64;
    let xs: Vec<(i64, f32, f32)> = (0..img_w).map(|x| axis(norm(x, b[0], b[2]), m_w)).collect();
    let at = |y: i64, x: i64| -> f32 {
        if y >= 0 && (y as usize) < m_h && x >= 0 && (x as usize) < m_w {
            mask[y as usize * m_w + x as usize]
        } else {
            0.0
        }
    };
    let mut out = vec![0.0f32; img_h * img_w];
    for y in 0..img_h {
        let (yn, s, n) = axis(norm(y, b[1], b[3]), m_h);
        if !live(yn, m_h) {
            continue;
        }
        for (x, &(xw, e, w)) in xs.iter().enumerate() {
            if !live(xw, m_w) {
                continue;
            }
            let (nw, ne, sw, se) = (s * e, s * w, n * e, n * w);
            // (nw_val·nw + ne_val·ne + sw_val·sw + se_val·se), contracted left to right
            let v = at(yn, xw) * nw;
            let v = at(yn, xw + 1).mul_add(ne, v);
            let v = at(yn + 1, xw).mul_add(sw, v);
            out[y * img_w + x] = at(yn + 1, xw + 1).mul_add(se, v);
        }
    }
    out
}

/// `get_seg_masks` with `rescale=True` (the official test): `mask_probs` `[N, M, M]` are the chosen
/// class channel (the three stages' sigmoids averaged), `det_bboxes` are in original-image
/// coordinates. As mmdet does, the boxes go through `× scale_factor` (the mask RoIs) and back
/// `÷ scale_factor` before pasting onto the `ori_shape` image; pixels `>= threshold` are set.
pub fn get_seg_masks(
    mask_probs: &[f32],
    mask_size: usize,
    det_bboxes: &[Box4],
    scale_factor: [f32; 4],
    ori_shape: (usize, usize),
    threshold: f32,
) -> Vec<Vec<bool>> {
    let mm = mask_size * mask_size;
    assert_eq!(mask_probs.len(), det_bboxes.len() * mm, "one mask per box");
    det_bboxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let b: Box4 = std::array::from_fn(|k| (b[k] * scale_factor[k]) / scale_factor[k]);
            paste_mask(
                &mask_probs[i * mm..(i + 1) * mm],
                mask_size,
                mask_size,
                &b,
                ori_shape.0,
                ori_shape.1,
            )
            .into_iter()
            .map(|p| p >= threshold)
            .collect()
        })
        .collect()
}

/// `mask_target_single`: `[N, S, S]` targets (0/1) for the positive proposals. Proposals are clipped
/// to the gt bitmaps' size (the padded image in training), then each assigned gt mask is RoIAligned
/// (scale 1, aligned, sampling 0) and thresholded at 0.5.
pub fn mask_targets(
    pos_proposals: &[Box4],
    pos_assigned_gt_inds: &[usize],
    gt_masks: &[BitMask],
    mask_size: usize,
) -> Vec<f32> {
    assert_eq!(
        pos_proposals.len(),
        pos_assigned_gt_inds.len(),
        "one gt per proposal"
    );
    if pos_proposals.is_empty() {
        return Vec::new();
    }
    let (mh, mw) = (gt_masks[0].h, gt_masks[0].w);
    let cfg = RoiAlignConfig {
        out_h: mask_size,
        out_w: mask_size,
        spatial_scale: 1.0,
        sampling_ratio: 0,
        aligned: true,
    };
    let mut out = Vec::with_capacity(pos_proposals.len() * mask_size * mask_size);
    for (p, &g) in pos_proposals.iter().zip(pos_assigned_gt_inds) {
        let m = &gt_masks[g];
        assert!(
            m.h == mh && m.w == mw,
            "gt masks of one image share their size"
        );
        let roi = [
            p[0].clamp(0.0, mw as f32),
            p[1].clamp(0.0, mh as f32),
            p[2].clamp(0.0, mw as f32),
            p[3].clamp(0.0, mh as f32),
        ];
        let f: Vec<f32> = m.data.iter().map(|&v| v as f32).collect();
        let t = roi_align_host_single(&f, 1, mh, mw, roi, &cfg);
        out.extend(t.into_iter().map(|v| if v >= 0.5 { 1.0 } else { 0.0 }));
    }
    out
}
