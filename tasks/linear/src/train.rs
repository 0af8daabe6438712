//! The sweep loop: epochs of minibatch steps for all heads, cosine learning rate per epoch, evaluation
//! on the hold-out and validation sets.

use ndarray::{Array2, ArrayView2};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::heads::{Correct, Heads};
use crate::LinearError;

/// Schedule and batching of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Rows per step; the learning rates are scaled by `batch_size / 256` (linear scaling rule).
    pub batch_size: usize,
    /// Evaluate after every `eval_every` epochs (and always after the last).
    pub eval_every: usize,
}

/// `torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs, eta_min=0)` stepped once per epoch:
/// the learning rate used during 0-based epoch `epoch`.
pub fn cosine_lr(base: f64, epoch: usize, epochs: usize) -> f64 {
    base * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos()) / 2.0
}

/// Receives one training batch: `[b, D]` features and their labels.
pub type Visit<'v> = dyn FnMut(ArrayView2<f32>, &[usize]) -> Result<(), LinearError> + 'v;

/// Where an epoch's training batches come from.
pub trait TrainBatches {
    /// Rows per epoch.
    fn rows(&self) -> usize;
    /// Calls `visit` with each batch (`[b, D]` features, labels) of 0-based `epoch`, in order.
    fn epoch(
        &mut self,
        epoch: usize,
        batch_size: usize,
        visit: &mut Visit,
    ) -> Result<(), LinearError>;
}

/// Cached features, reshuffled every epoch with a seeded RNG (the DistributedSampler's role).
pub struct CachedBatches<'a> {
    x: ArrayView2<'a, f32>,
    labels: &'a [usize],
    seed: u64,
}

impl<'a> CachedBatches<'a> {
    pub fn new(x: ArrayView2<'a, f32>, labels: &'a [usize], seed: u64) -> Self {
        CachedBatches { x, labels, seed }
    }

    /// The visiting order of 0-based `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        epoch_order(self.labels.len(), self.seed, epoch)
    }
}

/// A permutation of `0..n`, a pure function of (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

impl TrainBatches for CachedBatches<'_> {
    fn rows(&self) -> usize {
        self.labels.len()
    }

    fn epoch(
        &mut self,
        epoch: usize,
        batch_size: usize,
        visit: &mut Visit,
    ) -> Result<(), LinearError> {
        let order = self.order(epoch);
        fixed_order_epoch(self.x, self.labels, &order, batch_size, visit)
    }
}

/// Batches in a given row order (the last batch may be short, as `drop_last=False`).
pub fn fixed_order_epoch(
    x: ArrayView2<f32>,
    labels: &[usize],
    order: &[usize],
    batch_size: usize,
    visit: &mut Visit,
) -> Result<(), LinearError> {
    let dim = x.ncols();
    let mut buf = Array2::<f32>::zeros((batch_size.min(order.len()), dim));
    let mut batch_labels = Vec::with_capacity(batch_size);
    for chunk in order.chunks(batch_size) {
        batch_labels.clear();
        for (r, &i) in chunk.iter().enumerate() {
            buf.row_mut(r).assign(&x.row(i));
            batch_labels.push(labels[i]);
        }
        visit(
            buf.slice(ndarray::s![..chunk.len(), ..]),
            batch_labels.as_slice(),
        )?;
    }
    Ok(())
}

/// A labelled evaluation set.
#[derive(Clone, Copy)]
pub struct EvalSet<'a> {
    pub x: ArrayView2<'a, f32>,
    pub labels: &'a [usize],
}

/// Scores of every head after one evaluated epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochScores {
    /// Completed epochs (1-based).
    pub epoch: usize,
    /// Mean training loss per head over the epoch's batches.
    pub train_loss: Vec<f32>,
    pub holdout: Option<Vec<Correct>>,
    pub val: Vec<Correct>,
}

/// What the loop reports as it goes.
pub enum Progress<'a> {
    Step,
    Evaluated(&'a EpochScores),
}

/// Trains every head for `cfg.epochs` epochs; head `h` uses `heads.configs()[h].lr · batch/256`
/// annealed per epoch. Returns the scores of every evaluated epoch.
pub fn train_sweep(
    heads: &mut Heads,
    cfg: &TrainConfig,
    train: &mut dyn TrainBatches,
    holdout: Option<EvalSet>,
    val: EvalSet,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<EpochScores>, LinearError> {
    if cfg.epochs == 0 {
        return Err(LinearError::Config("epochs must be at least 1".into()));
    }
    if cfg.batch_size == 0 {
        return Err(LinearError::Config("batch size must be at least 1".into()));
    }
    let eval_every = cfg.eval_every.max(1);
    let scale = cfg.batch_size as f64 / 256.0;
    let base: Vec<f64> = heads.configs().iter().map(|h| h.lr * scale).collect();
    let mut history = Vec::new();
    for epoch in 0..cfg.epochs {
        let lrs: Vec<f64> = base
            .iter()
            .map(|&b| cosine_lr(b, epoch, cfg.epochs))
            .collect();
        let mut loss_sum = vec![0f64; heads.len()];
        let mut batches = 0usize;
        train.epoch(epoch, cfg.batch_size, &mut |x, labels| {
            let losses = heads.step(x, labels, &lrs);
            for (s, l) in loss_sum.iter_mut().zip(losses) {
                *s += l as f64;
            }
            batches += 1;
            progress(Progress::Step);
            Ok(())
        })?;
        let done = epoch + 1;
        if done % eval_every == 0 || done == cfg.epochs {
            let scores = EpochScores {
                epoch: done,
                train_loss: loss_sum
                    .iter()
                    .map(|s| (s / batches.max(1) as f64) as f32)
                    .collect(),
                holdout: holdout.map(|h| heads.score(h.x, h.labels)),
                val: heads.score(val.x, val.labels),
            };
            progress(Progress::Evaluated(&scores));
            history.push(scores);
        }
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_matches_closed_form_endpoints() {
        assert_eq!(cosine_lr(0.4, 0, 10), 0.4);
        assert!((cosine_lr(0.4, 5, 10) - 0.2).abs() < 1e-15);
        assert!(cosine_lr(0.4, 9, 10) > 0.0);
    }

    #[test]
    fn orders_are_permutations_that_change_per_epoch() {
        let a = epoch_order(50, 3, 0);
        let b = epoch_order(50, 3, 1);
        assert_ne!(a, b);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
}
