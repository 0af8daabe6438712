//! RPN proposals of one image, from the per-level RPN outputs.
//!
//! Transcribes `RPNHead._get_bboxes` of mmdet 2.11 (`mmdet/models/dense_heads/rpn_head.py`; the batched
//! version of `_get_bboxes_single`, run here for one image) with `AnchorHead.get_bboxes` around it:
//! per level, sigmoid scores in anchor order (y, x, anchor), the top `nms_pre` by score (a stable
//! descending sort, only when the level has more than `nms_pre` anchors; otherwise the anchor order is
//! kept), decoding with the RPN coder clipped to `img_shape`, the `min_bbox_size` filter, then
//! `batched_nms` with the LEVEL index as the class (IoU 0.7 officially), and the first `max_per_img`
//! survivors. The inputs are host copies of the (detached) head outputs.

use crate::box_coder::DeltaXYWHBBoxCoder;
use crate::nms::{argsort_desc_stable, batched_nms, NmsConfig};
use crate::structures::Box4;

/// `rpn_proposal` (train) / `test_cfg.rpn` (test) of the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProposalConfig {
    pub nms_pre: usize,
    pub max_per_img: usize,
    pub iou_threshold: f64,
    pub min_bbox_size: f32,
}

impl ProposalConfig {
    /// Training: 2000 per level, 2000 per image.
    pub fn rpn_train() -> Self {
        Self {
            nms_pre: 2000,
            max_per_img: 2000,
            iou_threshold: 0.7,
            min_bbox_size: 0.0,
        }
    }
    /// Testing: 1000 per level, 1000 per image.
    pub fn rpn_test() -> Self {
        Self {
            nms_pre: 1000,
            max_per_img: 1000,
            iou_threshold: 0.7,
            min_bbox_size: 0.0,
        }
    }
}

/// One level of the RPN head's output for one image, as the device lays it out (NCHW without N):
/// `cls` = logits `[A, H, W]`, `deltas` = `[4A, H, W]` (channel `4a + k` is coordinate k of anchor a).
#[derive(Clone, Copy, Debug)]
pub struct LevelOutput<'a> {
    pub cls: &'a [f32],
    pub deltas: &'a [f32],
    pub h: usize,
    pub w: usize,
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Proposals `[x1, y1, x2, y2, score]` of one image, in the order mmdet returns them.
/// `anchors[l]` is level l of the grid (`AnchorGenerator::grid_anchors`), `img_shape` is (h, w).
pub fn rpn_proposals(
    levels: &[LevelOutput],
    anchors: &[Vec<Box4>],
    img_shape: (usize, usize),
    cfg: &ProposalConfig,
) -> Vec<[f32; 5]> {
    assert_eq!(levels.len(), anchors.len(), "one anchor list per level");
    let coder = DeltaXYWHBBoxCoder::rpn();
    let mut props: Vec<Box4> = Vec::new();
    let mut scores: Vec<f32> = Vec::new();
    let mut ids: Vec<i64> = Vec::new();
    for (l, lv) in levels.iter().enumerate() {
        let hw = lv.h * lv.w;
        assert!(hw > 0 && lv.cls.len() % hw == 0, "cls must be [A, H, W]");
        let a = lv.cls.len() / hw;
        assert_eq!(lv.deltas.len(), 4 * a * hw, "deltas must be [4A, H, W]");
        assert_eq!(
            anchors[l].len(),
            a * hw,
            "anchors of level {l} do not match the map"
        );
        // permute(0, 2, 3, 1).reshape(-1): index (y·W + x)·A + a
        let n = a * hw;
        let mut s = Vec::with_capacity(n);
        for p in 0..hw {
            for k in 0..a {
                s.push(sigmoid(lv.cls[k * hw + p]));
            }
        }
        let delta_of = |i: usize| -> [f32; 4] {
            let (p, k) = (i / a, i % a);
            std::array::from_fn(|c| lv.deltas[(4 * k + c) * hw + p])
        };
        let chosen: Vec<usize> = if cfg.nms_pre > 0 && n > cfg.nms_pre {
            let mut o = argsort_desc_stable(&s);
            o.truncate(cfg.nms_pre);
            o
        } else {
            (0..n).collect()
        };
        for &i in &chosen {
            props.push(coder.decode_one(&anchors[l][i], &delta_of(i), Some(img_shape)));
            scores.push(s[i]);
            ids.push(l as i64);
        }
    }
    if cfg.min_bbox_size > 0.0 {
        let valid: Vec<usize> = (0..props.len())
            .filter(|&i| {
                let p = &props[i];
                p[2] - p[0] >= cfg.min_bbox_size && p[3] - p[1] >= cfg.min_bbox_size
            })
            .collect();
        // mmdet 2.11 filters only `if valid_ind.sum().item() != len(proposals)`: it compares the SUM
        // of the valid indices with the count (a bug, kept for parity; with min_bbox_size = 0, the
        // official value, this branch never runs)
        let index_sum: usize = valid.iter().sum();
        if index_sum != props.len() {
            props = valid.iter().map(|&i| props[i]).collect();
            scores = valid.iter().map(|&i| scores[i]).collect();
            ids = valid.iter().map(|&i| ids[i]).collect();
        }
    }
    let (mut dets, _) = batched_nms(&props, &scores, &ids, &NmsConfig::iou(cfg.iou_threshold));
    dets.truncate(cfg.max_per_img);
    dets
}
