//! Linear probing on frozen features, iBOT's protocol (`evaluation/eval_linear_multi.py`).
//!
//! * One `nn.Linear(D, C)` per head (weight N(0, 0.01), bias 0), cross-entropy, no feature normalisation
//!   (the official script has no BatchNorm).
//! * The sweep: lr ∈ {1..9} × {1e-4, …, 1} scaled by batch/256, × weight decay {0, 1e-6} × {SGD momentum
//!   0.9, LARS} — 180 heads, or the 45 SGD/wd-0 heads ([`Sweep::LrOnly`]). All heads see the same
//!   minibatches and train in lock-step ([`Heads`]).
//! * `CosineAnnealingLR(T_max = epochs, eta_min = 0)` stepped per epoch; 100 epochs, batch 1024 by default.
//! * Selection: the reported head and epoch are chosen on a class-balanced hold-out slice of TRAIN that is
//!   never trained on; iBOT's "best over heads and epochs on val" is reported next to it as
//!   `best_on_val` (see [`report`]).
//!
//! The training loop is independent of where features come from ([`TrainBatches`]): cached features are
//! reshuffled per epoch ([`CachedBatches`]); the augmented mode of the application forwards freshly
//! cropped images through the frozen backbone each epoch.

mod grid;
mod heads;
pub mod report;
mod train;

use data::labelled::check_labelled_set;
use ndarray::{ArrayView2, Axis};

pub use data::labelled::LabelledSetError;
pub use data::splits::holdout_split;
pub use grid::{grid, official_grid, official_lrs, HeadConfig, Optimizer, Sweep};
pub use heads::{Correct, Heads, LARS_ETA, MOMENTUM};
pub use report::Report;
pub use train::{
    cosine_lr, epoch_order, fixed_order_epoch, train_sweep, CachedBatches, EpochScores, EvalSet,
    Progress, TrainBatches, TrainConfig, Visit,
};

#[derive(Debug, thiserror::Error)]
pub enum LinearError {
    /// Empty, misaligned, mis-sized or non-finite features.
    #[error(transparent)]
    Features(#[from] LabelledSetError),
    #[error("{0}")]
    Config(String),
    /// A failure of the batch source (image decoding, backbone forward …).
    #[error("{0}")]
    Source(String),
}

/// Everything a cached-feature probe needs besides the data.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub heads: Vec<HeadConfig>,
    pub epochs: usize,
    /// Requested batch size; clamped to the number of training rows.
    pub batch_size: usize,
    pub eval_every: usize,
    /// Fraction of each class of TRAIN held out for selection; 0 selects on val (labelled so).
    pub holdout: f64,
    /// Seeds the hold-out draw, the head initialisation and the per-epoch shuffles.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            heads: official_grid(Sweep::Full),
            epochs: 100,
            batch_size: 1024,
            eval_every: 1,
            holdout: 0.1,
            seed: 0,
        }
    }
}

/// Sizes the probe ended up using (after the hold-out and batch clamping).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeShape {
    pub train_rows: usize,
    pub holdout_rows: usize,
    pub val_rows: usize,
    pub dim: usize,
    pub classes: usize,
    pub heads: usize,
    pub batch_size: usize,
}

/// The hold-out split and the classifier shape for a probe: (train rows, hold-out rows, classes).
pub fn plan(
    cfg: &ProbeConfig,
    train_labels: &[usize],
    val_labels: &[usize],
) -> Result<(Vec<usize>, Vec<usize>, usize), LinearError> {
    if cfg.heads.is_empty() {
        return Err(LinearError::Config("the sweep has no heads".into()));
    }
    if !(0.0..1.0).contains(&cfg.holdout) {
        return Err(LinearError::Config(format!(
            "hold-out fraction {} must be in [0, 1)",
            cfg.holdout
        )));
    }
    let (train_idx, holdout_idx) = if cfg.holdout > 0.0 {
        holdout_split(train_labels, cfg.holdout, cfg.seed)
    } else {
        ((0..train_labels.len()).collect(), Vec::new())
    };
    if cfg.holdout > 0.0 && holdout_idx.is_empty() {
        return Err(LinearError::Config(format!(
            "a {:.0}% hold-out of {} training rows is empty (no class has 2 or more rows to spare); use --holdout 0 to select on val",
            cfg.holdout * 100.0,
            train_labels.len()
        )));
    }
    let classes = train_labels
        .iter()
        .chain(val_labels)
        .max()
        .map_or(0, |&m| m + 1);
    Ok((train_idx, holdout_idx, classes))
}

/// The whole protocol on cached features.
pub fn probe(
    train_x: ArrayView2<f32>,
    train_labels: &[usize],
    val_x: ArrayView2<f32>,
    val_labels: &[usize],
    cfg: &ProbeConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Report, ProbeShape), LinearError> {
    let dim = train_x.ncols();
    for (set, x, labels, train_dim) in [
        ("train", train_x.view(), train_labels.len(), None),
        ("val", val_x.view(), val_labels.len(), Some(dim)),
    ] {
        check_labelled_set(set, x.dim(), x.iter().copied(), labels, train_dim)?;
    }
    let (train_idx, holdout_idx, classes) = plan(cfg, train_labels, val_labels)?;
    let pick = |idx: &[usize]| {
        (
            train_x.select(Axis(0), idx),
            idx.iter().map(|&i| train_labels[i]).collect::<Vec<_>>(),
        )
    };
    let (tx, tl) = pick(&train_idx);
    let (hx, hl) = pick(&holdout_idx);
    let batch_size = cfg.batch_size.clamp(1, tx.nrows());
    let mut heads = Heads::new(train_x.ncols(), classes, cfg.heads.clone(), cfg.seed);
    let mut source = CachedBatches::new(tx.view(), &tl, cfg.seed);
    let train_cfg = TrainConfig {
        epochs: cfg.epochs,
        batch_size,
        eval_every: cfg.eval_every,
    };
    let holdout = (!hl.is_empty()).then(|| EvalSet {
        x: hx.view(),
        labels: &hl,
    });
    let val = EvalSet {
        // Reborrowed: `EvalSet` ties the view and the labels to one lifetime.
        x: val_x.view(),
        labels: val_labels,
    };
    let history = train_sweep(&mut heads, &train_cfg, &mut source, holdout, val, progress)?;
    let shape = ProbeShape {
        train_rows: tl.len(),
        holdout_rows: hl.len(),
        val_rows: val_labels.len(),
        dim: train_x.ncols(),
        classes,
        heads: cfg.heads.len(),
        batch_size,
    };
    Ok((
        Report::new(&cfg.heads, batch_size, classes, &history),
        shape,
    ))
}
