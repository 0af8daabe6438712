//! Training targets of the RPN and of the R-CNN box heads, and the cascade's stage hand-off.
//!
//! Transcribes, from mmdet 2.11:
//! - `AnchorHead._get_targets_single` / `get_targets` (`mmdet/models/dense_heads/anchor_head.py`) as the
//!   RPN runs them (labels 0 = object, 1 = background, `num_classes = 1`; unmapped back to all anchors)
//!   and the `num_total_samples` normaliser of `AnchorHead.loss` (Σ over images of max(pos, 1) +
//!   max(neg, 1));
//! - `BBoxHead._get_target_single` (`roi_heads/bbox_heads/bbox_head.py`): positives first, negatives
//!   labelled `num_classes`, regression targets = the gt boxes themselves when `reg_decoded_bbox`
//!   (iBOT's GIoU heads), else deltas with the stage's stds;
//! - `CascadeRoIHead.forward_train`'s relabelling (negatives take the arg-max of the fg logits) and
//!   `BBoxHead.refine_bboxes` / `regress_by_class` (class-specific deltas decoded and clipped to
//!   `img_shape`, then the gt boxes injected as proposals dropped via `pos_is_gt`).

use crate::anchors::anchor_inside_flags;
use crate::assigner::MaxIoUAssigner;
use crate::box_coder::DeltaXYWHBBoxCoder;
use crate::sampler::{Draw, RandomSampler, SamplingResult};
use crate::structures::{Box4, Roi};

/// RPN targets of one image over ALL its anchors (levels concatenated), as `get_targets` unmaps them.
#[derive(Clone, Debug, PartialEq)]
pub struct RpnTargets {
    /// 0 = object (sampled positive), 1 = background (everything else)
    pub labels: Vec<i64>,
    /// 1 for sampled anchors, 0 elsewhere
    pub label_weights: Vec<f32>,
    /// encoded deltas (means 0, stds 1) at sampled positives, 0 elsewhere
    pub bbox_targets: Vec<[f32; 4]>,
    pub bbox_weights: Vec<[f32; 4]>,
    /// valid and inside the image (`anchor_inside_flags`)
    pub inside: Vec<bool>,
    pub num_pos: usize,
    pub num_neg: usize,
    /// indices refer to the inside anchors, in anchor order
    pub sampling: SamplingResult,
}

/// The RPN's `train_cfg.rpn` (assigner, sampler, `allowed_border`, `pos_weight`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RpnTrainConfig {
    pub assigner: MaxIoUAssigner,
    pub sampler: RandomSampler,
    pub allowed_border: f32,
    /// ≤ 0 means weight 1
    pub pos_weight: f32,
}

impl RpnTrainConfig {
    pub fn official() -> Self {
        Self {
            assigner: MaxIoUAssigner::rpn(),
            sampler: RandomSampler::rpn(),
            allowed_border: 0.0,
            pos_weight: -1.0,
        }
    }
}

/// `_get_targets_single` for the RPN. `anchors`/`valid` are all levels concatenated; `img_shape` is
/// the (h, w) before padding. `None` when no anchor lies inside the image (mmdet then returns None
/// from `get_targets` and the loss fails).
pub fn rpn_targets(
    anchors: &[Box4],
    valid: &[bool],
    gt_bboxes: &[Box4],
    gt_bboxes_ignore: &[Box4],
    img_shape: (usize, usize),
    cfg: &RpnTrainConfig,
    draw: &mut Draw,
) -> Option<RpnTargets> {
    let inside = anchor_inside_flags(anchors, valid, img_shape, cfg.allowed_border);
    if !inside.iter().any(|&f| f) {
        return None;
    }
    let inside_idx: Vec<usize> = (0..anchors.len()).filter(|&i| inside[i]).collect();
    let cand: Vec<Box4> = inside_idx.iter().map(|&i| anchors[i]).collect();
    // the RPN samples, so the assignment runs without labels
    let mut assign = cfg
        .assigner
        .assign(&cand, gt_bboxes, gt_bboxes_ignore, None);
    let sampling = cfg
        .sampler
        .sample(&mut assign, &cand, gt_bboxes, None, draw);
    let coder = DeltaXYWHBBoxCoder::rpn();
    let total = anchors.len();
    let mut labels = vec![1i64; total];
    let mut label_weights = vec![0.0f32; total];
    let mut bbox_targets = vec![[0.0f32; 4]; total];
    let mut bbox_weights = vec![[0.0f32; 4]; total];
    let pw = if cfg.pos_weight <= 0.0 {
        1.0
    } else {
        cfg.pos_weight
    };
    for (k, &p) in sampling.pos_inds.iter().enumerate() {
        let a = inside_idx[p];
        bbox_targets[a] = coder.encode_one(&sampling.pos_bboxes[k], &sampling.pos_gt_bboxes[k]);
        bbox_weights[a] = [1.0; 4];
        labels[a] = 0;
        label_weights[a] = pw;
    }
    for &n in &sampling.neg_inds {
        label_weights[inside_idx[n]] = 1.0;
    }
    Some(RpnTargets {
        labels,
        label_weights,
        bbox_targets,
        bbox_weights,
        inside,
        num_pos: sampling.pos_inds.len(),
        num_neg: sampling.neg_inds.len(),
        sampling,
    })
}

/// `num_total_samples` of `AnchorHead.loss` when sampling: Σ_img max(pos, 1) + Σ_img max(neg, 1).
/// Both RPN losses (sigmoid CE and SmoothL1) are divided by it.
pub fn rpn_num_total_samples(per_image: &[RpnTargets]) -> usize {
    per_image
        .iter()
        .map(|t| t.num_pos.max(1) + t.num_neg.max(1))
        .sum()
}

/// Box-head targets of one image, positives first then negatives (`BBoxHead._get_target_single`).
#[derive(Clone, Debug, PartialEq)]
pub struct RoiTargets {
    /// gt label for positives, `num_classes` (background) for negatives
    pub labels: Vec<i64>,
    pub label_weights: Vec<f32>,
    /// positives: the gt box (`reg_decoded_bbox`) or its deltas; negatives: 0
    pub bbox_targets: Vec<[f32; 4]>,
    pub bbox_weights: Vec<[f32; 4]>,
}

/// `BBoxHead._get_target_single(pos_bboxes, neg_bboxes, pos_gt_bboxes, pos_gt_labels, cfg)`.
/// `pos_weight ≤ 0` means 1 (official −1).
pub fn bbox_head_targets(
    sr: &SamplingResult,
    num_classes: usize,
    reg_decoded_bbox: bool,
    coder: &DeltaXYWHBBoxCoder,
    pos_weight: f32,
) -> RoiTargets {
    let np = sr.pos_bboxes.len();
    let ns = np + sr.neg_bboxes.len();
    let mut labels = vec![num_classes as i64; ns];
    let mut label_weights = vec![0.0f32; ns];
    let mut bbox_targets = vec![[0.0f32; 4]; ns];
    let mut bbox_weights = vec![[0.0f32; 4]; ns];
    let pw = if pos_weight <= 0.0 { 1.0 } else { pos_weight };
    if np > 0 {
        let gl = sr
            .pos_gt_labels
            .as_ref()
            .expect("box-head targets need labelled assignments");
        for k in 0..np {
            labels[k] = gl[k];
            label_weights[k] = pw;
            bbox_targets[k] = if reg_decoded_bbox {
                sr.pos_gt_bboxes[k]
            } else {
                coder.encode_one(&sr.pos_bboxes[k], &sr.pos_gt_bboxes[k])
            };
            bbox_weights[k] = [1.0; 4];
        }
    }
    for w in label_weights.iter_mut().skip(np) {
        *w = 1.0;
    }
    RoiTargets {
        labels,
        label_weights,
        bbox_targets,
        bbox_weights,
    }
}

/// The cascade's hand-off labels: target labels, with negatives (`== num_classes`) replaced by the
/// arg-max over the foreground logits (`cls_score[:, :-1].argmax(1)`, first index on ties).
/// `cls_score` is row-major `[N, num_classes + 1]`.
pub fn stage_roi_labels(target_labels: &[i64], cls_score: &[f32], num_classes: usize) -> Vec<i64> {
    let c1 = num_classes + 1;
    assert_eq!(
        cls_score.len(),
        target_labels.len() * c1,
        "cls_score must be [N, C+1]"
    );
    target_labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l == num_classes as i64 {
                argmax_first(&cls_score[i * c1..i * c1 + num_classes]) as i64
            } else {
                l
            }
        })
        .collect()
}

fn argmax_first(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// `BBoxHead.regress_by_class(rois, label, bbox_pred, img_meta)` for 4-column RoIs:
/// `bbox_pred` is `[N, 4·C]` (class-specific: the label's 4 deltas are used) or `[N, 4]`
/// (class-agnostic); boxes are decoded with the stage's coder and clipped to `img_shape` (h, w).
pub fn regress_by_class(
    rois: &[Box4],
    labels: &[i64],
    bbox_pred: &[f32],
    img_shape: (usize, usize),
    coder: &DeltaXYWHBBoxCoder,
) -> Vec<Box4> {
    let n = rois.len();
    if n == 0 {
        return Vec::new();
    }
    let cols = bbox_pred.len() / n;
    assert_eq!(
        cols * n,
        bbox_pred.len(),
        "bbox_pred must be [N, 4C] or [N, 4]"
    );
    rois.iter()
        .enumerate()
        .map(|(i, r)| {
            let c = if cols == 4 { 0 } else { labels[i] as usize };
            let d = &bbox_pred[i * cols + 4 * c..i * cols + 4 * c + 4];
            coder.decode_one(r, d, Some(img_shape))
        })
        .collect()
}

/// `BBoxHead.refine_bboxes(rois, labels, bbox_preds, pos_is_gts, img_metas)`: per image, the RoIs
/// of that image (rows whose column 0 is its index, in order) regressed by class, minus the
/// positives that were gt boxes (the first `pos_is_gts[i].len()` rows of the image are its positives).
pub fn refine_bboxes(
    rois: &[Roi],
    labels: &[i64],
    bbox_preds: &[f32],
    pos_is_gts: &[Vec<bool>],
    img_shapes: &[(usize, usize)],
    coder: &DeltaXYWHBBoxCoder,
) -> Vec<Vec<Box4>> {
    let n = rois.len();
    let cols = if n == 0 { 4 } else { bbox_preds.len() / n };
    (0..img_shapes.len())
        .map(|img| {
            let inds: Vec<usize> = (0..n).filter(|&j| rois[j][0] == img as f32).collect();
            let boxes: Vec<Box4> = inds
                .iter()
                .map(|&j| [rois[j][1], rois[j][2], rois[j][3], rois[j][4]])
                .collect();
            let lab: Vec<i64> = inds.iter().map(|&j| labels[j]).collect();
            let pred: Vec<f32> = inds
                .iter()
                .flat_map(|&j| bbox_preds[j * cols..(j + 1) * cols].iter().copied())
                .collect();
            let refined = regress_by_class(&boxes, &lab, &pred, img_shapes[img], coder);
            let gt_flags = &pos_is_gts[img];
            refined
                .into_iter()
                .enumerate()
                .filter(|(k, _)| !(*k < gt_flags.len() && gt_flags[*k]))
                .map(|(_, b)| b)
                .collect()
        })
        .collect()
}
