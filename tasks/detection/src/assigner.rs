//! Max-IoU assignment of candidate boxes (anchors, proposals) to ground-truth boxes.
//!
//! Transcribes `mmdet/core/bbox/assigners/max_iou_assigner.py` (`MaxIoUAssigner.assign`,
//! `assign_wrt_overlaps`) and `assign_result.py` (`AssignResult.add_gt_`) of mmdet 2.11.
//! `gt_inds` follows mmdet: −1 = ignored (neither positive nor negative), 0 = negative, i + 1 = gt i.
//! Thresholds are compared in f32 (torch compares an f32 tensor with a Python float in f32);
//! the arg-max of ties is the first index (torch's `max(dim)` on the CPU).

use crate::structures::{bbox_overlaps, Box4, OverlapMode, Overlaps};

/// `neg_iou_thr`: a float (`[0, thr)` is negative) or a `(lo, hi)` tuple (`[lo, hi)` is negative).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NegThr {
    Below(f32),
    Range(f32, f32),
}

/// `MaxIoUAssigner(pos_iou_thr, neg_iou_thr, min_pos_iou, gt_max_assign_all, ignore_iof_thr,
/// ignore_wrt_candidates, match_low_quality)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxIoUAssigner {
    pub pos_iou_thr: f32,
    pub neg_iou_thr: NegThr,
    pub min_pos_iou: f32,
    pub gt_max_assign_all: bool,
    /// ignore candidates whose IoF with a crowd box exceeds this; ≤ 0 disables (official: −1)
    pub ignore_iof_thr: f32,
    pub ignore_wrt_candidates: bool,
    pub match_low_quality: bool,
}

/// mmdet's `AssignResult`.
#[derive(Clone, Debug, PartialEq)]
pub struct AssignResult {
    pub num_gts: usize,
    /// −1 ignore, 0 negative, i + 1 assigned to gt i
    pub gt_inds: Vec<i64>,
    /// per candidate, its best IoU over the gts (0 when there are no gts)
    pub max_overlaps: Vec<f32>,
    /// the assigned gt's label, −1 elsewhere (only when labels were given)
    pub labels: Option<Vec<i64>>,
}

impl AssignResult {
    /// `add_gt_`: the gts become the first candidates, each assigned to itself with overlap 1.
    pub fn add_gt_(&mut self, gt_labels: &[i64]) {
        let n = gt_labels.len();
        let mut gi: Vec<i64> = (1..=n as i64).collect();
        gi.extend_from_slice(&self.gt_inds);
        self.gt_inds = gi;
        let mut mo = vec![1.0f32; n];
        mo.extend_from_slice(&self.max_overlaps);
        self.max_overlaps = mo;
        if let Some(l) = &self.labels {
            let mut nl = gt_labels.to_vec();
            nl.extend_from_slice(l);
            self.labels = Some(nl);
        }
    }
}

impl MaxIoUAssigner {
    /// The RPN assigner: pos 0.7, neg 0.3, min_pos 0.3, low-quality matches on.
    pub fn rpn() -> Self {
        Self {
            pos_iou_thr: 0.7,
            neg_iou_thr: NegThr::Below(0.3),
            min_pos_iou: 0.3,
            gt_max_assign_all: true,
            ignore_iof_thr: -1.0,
            ignore_wrt_candidates: true,
            match_low_quality: true,
        }
    }

    /// An R-CNN (cascade stage) assigner: pos = neg = min_pos = `iou`, no low-quality matches.
    pub fn rcnn(iou: f32) -> Self {
        Self {
            pos_iou_thr: iou,
            neg_iou_thr: NegThr::Below(iou),
            min_pos_iou: iou,
            gt_max_assign_all: true,
            ignore_iof_thr: -1.0,
            ignore_wrt_candidates: true,
            match_low_quality: false,
        }
    }

    /// `assign(bboxes, gt_bboxes, gt_bboxes_ignore, gt_labels)`.
    pub fn assign(
        &self,
        bboxes: &[Box4],
        gt_bboxes: &[Box4],
        gt_bboxes_ignore: &[Box4],
        gt_labels: Option<&[i64]>,
    ) -> AssignResult {
        let mut overlaps = bbox_overlaps(gt_bboxes, bboxes, OverlapMode::Iou);
        if self.ignore_iof_thr > 0.0 && !gt_bboxes_ignore.is_empty() && !bboxes.is_empty() {
            let ignored: Vec<bool> = if self.ignore_wrt_candidates {
                let io = bbox_overlaps(bboxes, gt_bboxes_ignore, OverlapMode::Iof);
                (0..io.rows)
                    .map(|i| max_of(io.row(i)) > self.ignore_iof_thr)
                    .collect()
            } else {
                let io = bbox_overlaps(gt_bboxes_ignore, bboxes, OverlapMode::Iof);
                (0..io.cols)
                    .map(|j| {
                        let m = (0..io.rows)
                            .map(|i| io.get(i, j))
                            .fold(f32::NEG_INFINITY, f32::max);
                        m > self.ignore_iof_thr
                    })
                    .collect()
            };
            for i in 0..overlaps.rows {
                for (j, &ig) in ignored.iter().enumerate() {
                    if ig {
                        overlaps.data[i * overlaps.cols + j] = -1.0;
                    }
                }
            }
        }
        self.assign_wrt_overlaps(&overlaps, gt_labels)
    }

    /// `assign_wrt_overlaps(overlaps [num_gts, num_bboxes], gt_labels)`.
    pub fn assign_wrt_overlaps(
        &self,
        overlaps: &Overlaps,
        gt_labels: Option<&[i64]>,
    ) -> AssignResult {
        let (num_gts, num_bboxes) = (overlaps.rows, overlaps.cols);
        let mut gt_inds = vec![-1i64; num_bboxes];
        if num_gts == 0 || num_bboxes == 0 {
            if num_gts == 0 {
                gt_inds.iter_mut().for_each(|g| *g = 0);
            }
            return AssignResult {
                num_gts,
                gt_inds,
                max_overlaps: vec![0.0; num_bboxes],
                labels: gt_labels.map(|_| vec![-1; num_bboxes]),
            };
        }
        // per candidate: best gt (first on ties) and its IoU
        let mut max_ov = vec![0.0f32; num_bboxes];
        let mut argmax = vec![0usize; num_bboxes];
        for j in 0..num_bboxes {
            let (mut best, mut bi) = (overlaps.get(0, j), 0);
            for i in 1..num_gts {
                let v = overlaps.get(i, j);
                if v > best {
                    best = v;
                    bi = i;
                }
            }
            max_ov[j] = best;
            argmax[j] = bi;
        }
        // per gt: best candidate (first on ties) and its IoU
        let gt_max: Vec<(f32, usize)> = (0..num_gts)
            .map(|i| {
                let row = overlaps.row(i);
                let (mut best, mut bj) = (row[0], 0);
                for (j, &v) in row.iter().enumerate().skip(1) {
                    if v > best {
                        best = v;
                        bj = j;
                    }
                }
                (best, bj)
            })
            .collect();
        // 2. negatives
        for j in 0..num_bboxes {
            let m = max_ov[j];
            let neg = match self.neg_iou_thr {
                NegThr::Below(t) => m >= 0.0 && m < t,
                NegThr::Range(lo, hi) => m >= lo && m < hi,
            };
            if neg {
                gt_inds[j] = 0;
            }
        }
        // 3. positives above the threshold
        for j in 0..num_bboxes {
            if max_ov[j] >= self.pos_iou_thr {
                gt_inds[j] = argmax[j] as i64 + 1;
            }
        }
        // 4. low-quality matches: each gt takes its best candidate(s), later gts overwrite earlier ones
        if self.match_low_quality {
            for (i, &(gm, gj)) in gt_max.iter().enumerate() {
                if gm >= self.min_pos_iou {
                    if self.gt_max_assign_all {
                        for (j, &v) in overlaps.row(i).iter().enumerate() {
                            if v == gm {
                                gt_inds[j] = i as i64 + 1;
                            }
                        }
                    } else {
                        gt_inds[gj] = i as i64 + 1;
                    }
                }
            }
        }
        let labels = gt_labels.map(|gl| {
            gt_inds
                .iter()
                .map(|&g| if g > 0 { gl[(g - 1) as usize] } else { -1 })
                .collect()
        });
        AssignResult {
            num_gts,
            gt_inds,
            max_overlaps: max_ov,
            labels,
        }
    }
}

// torch `max(dim)` over a row (NaN would propagate in torch; boxes here are finite).
fn max_of(v: &[f32]) -> f32 {
    v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}
