//! Semi-supervised evaluation on frozen features (iBOT §8.4, frozen variants): train on a small labelled
//! subset of TRAIN (1% / 10%, class-balanced, or a SimCLR split file), evaluate on the full val set.
//!
//! This crate owns the label splits and the logistic-regression protocol ([`logreg`]): L2-normalised
//! features, multinomial logistic regression without intercept, λ chosen on a class-balanced hold-out of
//! the split's training part, refit on the whole split. k-NN and linear probing on the same split are run by
//! the application with their own crates.

pub mod logreg;
mod splits;

use data::labelled::check_labelled_set;
use ndarray::{ArrayView2, Axis};
use serde::Serialize;

pub use data::labelled::LabelledSetError;
pub use data::splits::holdout_split;
pub use logreg::{fit, l2_normalized, objective_and_gradient, Fit, Solver};
pub use splits::{name_lines, names_split, percent_split, read_split_file};

#[derive(Debug, thiserror::Error)]
pub enum SemisupError {
    /// Empty, misaligned, mis-sized or non-finite features.
    #[error(transparent)]
    Features(#[from] LabelledSetError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Solver(String),
    #[error("{path}: {message}")]
    SplitFile { path: String, message: String },
}

/// iBOT's λ list (`--lr_lambd 0.01 0.1 1`) in cyanure's definition, which is also ours.
pub const IBOT_LAMBDAS: [f64; 3] = [0.01, 0.1, 1.0];

/// The default sweep: 10^-6 … 10^0, one value per decade (it contains iBOT's three values).
pub fn default_lambdas() -> Vec<f64> {
    (0..=6).map(|k| 1.0 / 10f64.powi(6 - k)).collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogRegConfig {
    pub lambdas: Vec<f64>,
    /// Fraction of each class of the split held out to choose λ; 0 chooses on val (labelled so).
    pub holdout: f64,
    pub seed: u64,
    pub solver: Solver,
}

impl Default for LogRegConfig {
    fn default() -> Self {
        LogRegConfig {
            lambdas: default_lambdas(),
            holdout: 0.1,
            seed: 0,
            solver: Solver::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LambdaScore {
    pub lambda: f64,
    /// Hold-out top-1 of the model fitted without the hold-out (`None` without a hold-out).
    pub holdout_top1: Option<f64>,
    /// Val top-1 of that same model (for reference; iBOT picks λ on this).
    pub val_top1: f64,
    pub iterations: u64,
    /// Why L-BFGS stopped.
    pub termination: String,
}

/// The `logreg` object of result.json.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogRegReport {
    pub top1: f64,
    /// `None` with fewer than 5 classes.
    pub top5: Option<f64>,
    pub lambda: f64,
    pub selected_on: &'static str,
    /// Equivalent scikit-learn `C = 1 / (n λ)` for the final fit on `train_rows` rows.
    pub sklearn_c: f64,
    pub objective: f64,
    pub iterations: u64,
    pub train_rows: usize,
    pub holdout_rows: usize,
    pub sweep: Vec<LambdaScore>,
}

/// Top-1/top-5 counts from scores `[N, C]`; ranking ties go to the lower class id.
pub fn accuracy(scores: ArrayView2<f64>, labels: &[usize]) -> (usize, usize) {
    let mut top1 = 0;
    let mut top5 = 0;
    for (row, &y) in scores.axis_iter(Axis(0)).zip(labels) {
        let Some(&t) = row.get(y) else { continue };
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(c, &v)| v > t || (v == t && c < y))
            .count();
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
    }
    (top1, top5)
}

/// The logistic-regression protocol on one split: λ chosen on the hold-out, refit on the whole split,
/// scored on val. `progress` is called once per fit (λ count + 1 fits).
pub fn logistic_regression(
    train_x: ArrayView2<f32>,
    train_labels: &[usize],
    val_x: ArrayView2<f32>,
    val_labels: &[usize],
    cfg: &LogRegConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<LogRegReport, SemisupError> {
    let dim = train_x.ncols();
    for (set, x, labels, train_dim) in [
        ("train", train_x.view(), train_labels.len(), None),
        ("val", val_x.view(), val_labels.len(), Some(dim)),
    ] {
        check_labelled_set(set, x.dim(), x.iter().copied(), labels, train_dim)?;
    }
    if cfg.lambdas.is_empty() {
        return Err(SemisupError::Config("no λ to try".into()));
    }
    if !(0.0..1.0).contains(&cfg.holdout) {
        return Err(SemisupError::Config(format!(
            "hold-out fraction {} must be in [0, 1)",
            cfg.holdout
        )));
    }
    let classes = train_labels.iter().max().map_or(0, |&m| m + 1);
    let train = l2_normalized(train_x);
    let val = l2_normalized(val_x);
    let (fit_idx, held_idx) = if cfg.holdout > 0.0 {
        holdout_split(train_labels, cfg.holdout, cfg.seed)
    } else {
        ((0..train_labels.len()).collect(), Vec::new())
    };
    if cfg.holdout > 0.0 && held_idx.is_empty() && cfg.lambdas.len() > 1 {
        return Err(SemisupError::Config(format!(
            "a {:.0}% hold-out of {} training rows is empty (no class has 2 or more rows); use a hold-out of 0 to choose λ on val",
            cfg.holdout * 100.0,
            train_labels.len()
        )));
    }
    let fit_x = train.select(Axis(0), &fit_idx);
    let fit_y: Vec<usize> = fit_idx.iter().map(|&i| train_labels[i]).collect();
    let held_x = train.select(Axis(0), &held_idx);
    let held_y: Vec<usize> = held_idx.iter().map(|&i| train_labels[i]).collect();
    let n_val = val_labels.len() as f64;

    let mut sweep = Vec::with_capacity(cfg.lambdas.len());
    for &lambda in &cfg.lambdas {
        progress(&format!("λ = {lambda:e}"));
        let m = fit(fit_x.view(), &fit_y, classes, lambda, &cfg.solver)?;
        let holdout_top1 = (!held_y.is_empty()).then(|| {
            accuracy(m.decision(held_x.view()).view(), &held_y).0 as f64 / held_y.len() as f64
        });
        let val_top1 = accuracy(m.decision(val.view()).view(), val_labels).0 as f64 / n_val;
        sweep.push(LambdaScore {
            lambda,
            holdout_top1,
            val_top1,
            iterations: m.iterations,
            termination: m.termination,
        });
    }
    let has_holdout = !held_y.is_empty();
    // Best hold-out (or val) top-1; ties go to the larger λ (the simpler model).
    let key = |s: &LambdaScore| {
        if has_holdout {
            s.holdout_top1.unwrap_or(0.0)
        } else {
            s.val_top1
        }
    };
    let best = sweep
        .iter()
        .max_by(|a, b| {
            key(a)
                .total_cmp(&key(b))
                .then(a.lambda.total_cmp(&b.lambda))
        })
        .expect("non-empty sweep");
    let lambda = best.lambda;
    progress(&format!("refit λ = {lambda:e}"));
    let m = fit(train.view(), train_labels, classes, lambda, &cfg.solver)?;
    let (top1, top5) = accuracy(m.decision(val.view()).view(), val_labels);
    Ok(LogRegReport {
        top1: top1 as f64 / n_val,
        top5: (classes >= 5).then_some(top5 as f64 / n_val),
        lambda,
        selected_on: if has_holdout { "holdout" } else { "val" },
        sklearn_c: 1.0 / (train_labels.len() as f64 * lambda),
        objective: m.objective,
        iterations: m.iterations,
        train_rows: train_labels.len(),
        holdout_rows: held_y.len(),
        sweep,
    })
}
