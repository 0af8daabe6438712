//! Greedy non-maximum suppression and its batched (per-class) form.
//!
//! `nms` follows torchvision's CPU kernel (`torchvision/csrc/ops/cpu/nms_kernel.cpp`), which mmcv 1.3's
//! `nms` mirrors with `offset=0`: boxes sorted by score, descending, **stable** (ties keep index order,
//! verified against torchvision in the goldens); areas without +1; a box is suppressed when its IoU with
//! a kept box is **> thr** (IoU in f32, compared with the threshold in double as torchvision does).
//! mmcv 1.3.9 itself differs only at the threshold: its CPU kernel suppresses at IoU ≥ thr, its CUDA
//! kernel at `inter > thr·union` in f32.
//!
//! `batched_nms` transcribes `mmcv/ops/nms.py::batched_nms` (mmcv 1.3.9): boxes are shifted by
//! `idx·(max_coordinate + 1)` (f32) so that classes never overlap, then one NMS runs on the shifted
//! boxes; at `split_thr` (10,000) boxes or more it runs NMS per class instead and sorts the union by
//! score. The returned `dets` hold the original (unshifted) boxes and their scores.

use crate::structures::Box4;

/// Indices of the boxes kept by NMS, in descending score order (ties: lower index first).
pub fn nms(boxes: &[Box4], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "one score per box");
    let n = boxes.len();
    if n == 0 {
        return Vec::new();
    }
    let areas: Vec<f32> = boxes
        .iter()
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .collect();
    let order = argsort_desc_stable(scores);
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        let iarea = areas[i];
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let xx1 = bi[0].max(bj[0]);
            let yy1 = bi[1].max(bj[1]);
            let xx2 = bi[2].min(bj[2]);
            let yy2 = bi[3].min(bj[3]);
            let w = (xx2 - xx1).max(0.0);
            let h = (yy2 - yy1).max(0.0);
            let inter = w * h;
            // (iarea + area_j) − inter, as in the kernel; 0/0 gives NaN, which never suppresses
            let ovr = inter / (iarea + areas[j] - inter);
            if ovr as f64 > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// Score-descending order, stable (torch's CPU sort with `descending=True`).
pub fn argsort_desc_stable(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // total_cmp puts NaN above +inf, as torch's descending sort puts NaN first
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The `nms_cfg` of mmcv's `batched_nms` (`type='nms'` only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NmsConfig {
    pub iou_threshold: f64,
    /// ignore the class ids (plain NMS over everything)
    pub class_agnostic: bool,
    /// at this many boxes or more, run NMS class by class (mmcv's default 10,000)
    pub split_thr: usize,
    /// keep at most this many (≤ 0: all)
    pub max_num: i64,
}

impl NmsConfig {
    pub fn iou(iou_threshold: f64) -> Self {
        Self {
            iou_threshold,
            class_agnostic: false,
            split_thr: 10_000,
            max_num: -1,
        }
    }
}

/// `batched_nms(boxes, scores, idxs, nms_cfg)` → (`dets` = [x1, y1, x2, y2, score], `keep` indices).
pub fn batched_nms(
    boxes: &[Box4],
    scores: &[f32],
    idxs: &[i64],
    cfg: &NmsConfig,
) -> (Vec<[f32; 5]>, Vec<usize>) {
    assert!(
        boxes.len() == scores.len() && boxes.len() == idxs.len(),
        "boxes, scores and idxs must have one entry per box"
    );
    let shifted: Vec<Box4>;
    let for_nms: &[Box4] = if cfg.class_agnostic {
        boxes
    } else {
        // torch: boxes.max() over every coordinate, idxs.to(f32) * (max + 1), boxes + offset, all f32
        let max_coord = boxes
            .iter()
            .flat_map(|b| b.iter().copied())
            .fold(f32::NEG_INFINITY, f32::max);
        let step = max_coord + 1.0;
        shifted = boxes
            .iter()
            .zip(idxs)
            .map(|(b, &c)| {
                let off = c as f32 * step;
                [b[0] + off, b[1] + off, b[2] + off, b[3] + off]
            })
            .collect();
        &shifted
    };
    let mut keep: Vec<usize> = if for_nms.len() < cfg.split_thr {
        nms(for_nms, scores, cfg.iou_threshold)
    } else {
        let mut ids: Vec<i64> = idxs.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut kept = vec![false; boxes.len()];
        for id in ids {
            let mask: Vec<usize> = (0..idxs.len()).filter(|&j| idxs[j] == id).collect();
            let sub_boxes: Vec<Box4> = mask.iter().map(|&j| for_nms[j]).collect();
            let sub_scores: Vec<f32> = mask.iter().map(|&j| scores[j]).collect();
            for k in nms(&sub_boxes, &sub_scores, cfg.iou_threshold) {
                kept[mask[k]] = true;
            }
        }
        let kept_idx: Vec<usize> = (0..boxes.len()).filter(|&j| kept[j]).collect();
        let kept_scores: Vec<f32> = kept_idx.iter().map(|&j| scores[j]).collect();
        argsort_desc_stable(&kept_scores)
            .into_iter()
            .map(|o| kept_idx[o])
            .collect()
    };
    if cfg.max_num > 0 {
        keep.truncate(cfg.max_num as usize);
    }
    let dets = keep
        .iter()
        .map(|&j| {
            let b = boxes[j];
            [b[0], b[1], b[2], b[3], scores[j]]
        })
        .collect();
    (dets, keep)
}
