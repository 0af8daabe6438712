//! Positive/negative sampling of assigned candidates.
//!
//! Transcribes `mmdet/core/bbox/samplers/base_sampler.py` (`BaseSampler.sample`), `random_sampler.py`
//! (`RandomSampler`) and `sampling_result.py` (`SamplingResult`) of mmdet 2.11.
//! mmdet draws with `torch.randperm`; its stream cannot be reproduced, so [`Draw::Random`] takes an
//! explicit seeded RNG (uniform subsets, like `randperm(n)[:k]`) and [`Draw::FirstK`] takes the first
//! k candidates in index order (the deterministic mode the goldens use). Either way the chosen
//! indices come back sorted ascending, because mmdet calls `.unique()` on them.

use rand::RngCore;

use crate::assigner::AssignResult;
use crate::structures::Box4;

/// How `random_choice(gallery, k)` picks when the gallery has more than k entries.
pub enum Draw<'a> {
    /// a uniformly random k-subset, drawn from this RNG
    Random(&'a mut dyn RngCore),
    /// `gallery[:k]`: deterministic, for goldens and debugging
    FirstK,
}

/// `RandomSampler(num, pos_fraction, neg_pos_ub, add_gt_as_proposals)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomSampler {
    pub num: usize,
    pub pos_fraction: f32,
    /// upper bound of negatives per positive; < 0 disables (official: −1)
    pub neg_pos_ub: f32,
    pub add_gt_as_proposals: bool,
}

/// mmdet's `SamplingResult`. `bboxes` are the candidates the indices refer to (gts first when they
/// were added as proposals).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingResult {
    pub pos_inds: Vec<usize>,
    pub neg_inds: Vec<usize>,
    pub bboxes: Vec<Box4>,
    pub pos_bboxes: Vec<Box4>,
    pub neg_bboxes: Vec<Box4>,
    /// per positive: was it a gt injected as a proposal
    pub pos_is_gt: Vec<bool>,
    pub num_gts: usize,
    /// per positive: 0-based index of its gt
    pub pos_assigned_gt_inds: Vec<usize>,
    pub pos_gt_bboxes: Vec<Box4>,
    /// per positive: the gt label (when the assignment carried labels)
    pub pos_gt_labels: Option<Vec<i64>>,
}

impl SamplingResult {
    /// Positives then negatives: the RoIs of the box head (`SamplingResult.bboxes`).
    pub fn sampled_bboxes(&self) -> Vec<Box4> {
        let mut v = self.pos_bboxes.clone();
        v.extend_from_slice(&self.neg_bboxes);
        v
    }
}

impl RandomSampler {
    /// The RPN sampler: 256 anchors, half positive, no gt proposals.
    pub fn rpn() -> Self {
        Self {
            num: 256,
            pos_fraction: 0.5,
            neg_pos_ub: -1.0,
            add_gt_as_proposals: false,
        }
    }

    /// A cascade stage's sampler: 512 RoIs, a quarter positive, gts added as proposals.
    pub fn rcnn() -> Self {
        Self {
            num: 512,
            pos_fraction: 0.25,
            neg_pos_ub: -1.0,
            add_gt_as_proposals: true,
        }
    }

    /// `sample(assign_result, bboxes, gt_bboxes, gt_labels)`. Mutates `assign` as mmdet does
    /// (`add_gt_`) when gts are added. `gt_labels` is required then.
    pub fn sample(
        &self,
        assign: &mut AssignResult,
        bboxes: &[Box4],
        gt_bboxes: &[Box4],
        gt_labels: Option<&[i64]>,
        draw: &mut Draw,
    ) -> SamplingResult {
        let mut cands: Vec<Box4> = bboxes.to_vec();
        let mut gt_flags = vec![false; cands.len()];
        if self.add_gt_as_proposals && !gt_bboxes.is_empty() {
            let gl = gt_labels.expect("gt_labels must be given when add_gt_as_proposals is True");
            let mut c = gt_bboxes.to_vec();
            c.extend_from_slice(&cands);
            cands = c;
            assign.add_gt_(gl);
            let mut f = vec![true; gt_bboxes.len()];
            f.extend_from_slice(&gt_flags);
            gt_flags = f;
        }
        // int(num * pos_fraction): Python multiplies in double
        let num_expected_pos = (self.num as f64 * self.pos_fraction as f64) as usize;
        let pos_gallery: Vec<usize> = (0..assign.gt_inds.len())
            .filter(|&j| assign.gt_inds[j] > 0)
            .collect();
        let pos_inds = choose(&pos_gallery, num_expected_pos, draw);
        let mut num_expected_neg = self.num - pos_inds.len();
        if self.neg_pos_ub >= 0.0 {
            let p = pos_inds.len().max(1);
            let ub = (self.neg_pos_ub as f64 * p as f64) as usize;
            num_expected_neg = num_expected_neg.min(ub);
        }
        let neg_gallery: Vec<usize> = (0..assign.gt_inds.len())
            .filter(|&j| assign.gt_inds[j] == 0)
            .collect();
        let neg_inds = choose(&neg_gallery, num_expected_neg, draw);

        let pos_assigned_gt_inds: Vec<usize> = pos_inds
            .iter()
            .map(|&j| (assign.gt_inds[j] - 1) as usize)
            .collect();
        SamplingResult {
            pos_bboxes: pos_inds.iter().map(|&j| cands[j]).collect(),
            neg_bboxes: neg_inds.iter().map(|&j| cands[j]).collect(),
            pos_is_gt: pos_inds.iter().map(|&j| gt_flags[j]).collect(),
            num_gts: gt_bboxes.len(),
            pos_gt_bboxes: pos_assigned_gt_inds.iter().map(|&g| gt_bboxes[g]).collect(),
            pos_gt_labels: assign
                .labels
                .as_ref()
                .map(|l| pos_inds.iter().map(|&j| l[j]).collect()),
            pos_assigned_gt_inds,
            pos_inds,
            neg_inds,
            bboxes: cands,
        }
    }
}

// `_sample_pos` / `_sample_neg` followed by `.unique()`: all of the gallery when it fits, else k
// of it; sorted ascending either way.
fn choose(gallery: &[usize], k: usize, draw: &mut Draw) -> Vec<usize> {
    let mut v: Vec<usize> = if gallery.len() <= k {
        gallery.to_vec()
    } else {
        match draw {
            Draw::FirstK => gallery[..k].to_vec(),
            Draw::Random(rng) => rand::seq::index::sample(&mut **rng, gallery.len(), k)
                .into_iter()
                .map(|i| gallery[i])
                .collect(),
        }
    };
    v.sort_unstable();
    v.dedup();
    v
}
