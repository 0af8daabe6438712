//! DINO's weighted k-NN classifier (`facebookresearch/dino:eval_knn.py`, `knn_classifier`), which iBOT
//! uses unchanged (DINOv2 votes with softmax(sim/T), the same ranking), reproduced count for count.
//!
//! 1. Train and test features are L2-normalised per row (`torch.nn.functional.normalize`: `x / max(‖x‖, 1e-12)`).
//! 2. Similarity is the dot product (cosine); each test row keeps its `max(k)` most similar train rows once,
//!    and every requested `k` reads a prefix of that sorted list (one pass for the whole k list).
//! 3. A neighbour votes for its class with weight `exp(sim / T)` (T = 0.07 in DINO/iBOT/DINOv2).
//! 4. Classes are ranked by summed votes; top-1 is the first class, top-5 the first `min(5, k)` (as DINO).
//!
//! # Tie-breaking (deterministic; `torch.topk`/`torch.sort` leave it unspecified)
//!
//! * Neighbours: similarity descending, then train row index ascending. `torch.topk` on CPU compares values
//!   only, so equal similarities may come out in any order there; with continuous features ties do not occur.
//! * Classes: summed vote descending, then class id ascending, and only classes that received a vote are
//!   predictions. DINO one-hot encodes over a hard-coded 1000 classes and ranks with an unstable
//!   `torch.sort`, so when fewer than `min(5, k)` classes get votes its top-5 is padded with arbitrary
//!   zero-vote classes (mostly ids that do not exist in small datasets); those padding slots are never
//!   counted here. This agrees with DINO's own torch code on every golden case (including test labels
//!   unseen in training, k > number of classes and k < 5) and needs no class count, so labels may be any
//!   non-negative ids.
//!
//! Differences from the DINO script, all in its failure cases: `k` larger than the train set is an error
//! (DINO's `topk` raises too), test sets under 100 rows work (DINO's `N // 100` chunk step is 0 there), and
//! non-finite features are rejected instead of silently poisoning the ranking.
//!
//! Memory: work proceeds in blocks of test rows × train rows (see [`Params`]), so the full
//! test × train similarity matrix is never materialised; each thread holds one block plus the running
//! top-`max(k)` of its test rows.

mod error;
mod normalize;
mod similarity;
pub mod synthetic;
mod topk;
mod vote;

use ndarray::{s, Array2, ArrayView2};
use rayon::prelude::*;

pub use error::KnnError;
pub use normalize::l2_normalize_rows;
use topk::TopK;
use vote::Votes;

/// DINO's defaults: `--nb_knn 10 20 100 200`, `--temperature 0.07`.
pub const DEFAULT_KS: [usize; 4] = [10, 20, 100, 200];
pub const DEFAULT_TEMPERATURE: f32 = 0.07;

/// What to compute and how to block the work.
#[derive(Debug, Clone)]
pub struct Params {
    /// Neighbour counts to evaluate; any order, duplicates ignored.
    pub ks: Vec<usize>,
    /// Vote weight is `exp(sim / temperature)`.
    pub temperature: f32,
    /// Test rows per parallel task.
    pub test_rows_per_block: usize,
    /// Train rows per similarity block (bounds each task's similarity buffer).
    pub train_rows_per_block: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            ks: DEFAULT_KS.to_vec(),
            temperature: DEFAULT_TEMPERATURE,
            test_rows_per_block: 128,
            train_rows_per_block: 8192,
        }
    }
}

/// Correct predictions for one `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KScore {
    pub k: usize,
    pub top1_correct: usize,
    /// Label among the first `min(5, k)` ranked classes.
    pub top5_correct: usize,
    pub total: usize,
}

impl KScore {
    pub fn top1(&self) -> f64 {
        self.top1_correct as f64 / self.total as f64
    }
    pub fn top5(&self) -> f64 {
        self.top5_correct as f64 / self.total as f64
    }
}

/// L2-normalises both feature sets (as DINO does before classifying), then runs [`classify_normalized`].
pub fn classify(
    mut train: Array2<f32>,
    train_labels: &[usize],
    mut test: Array2<f32>,
    test_labels: &[usize],
    params: &Params,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<KScore>, KnnError> {
    check_finite(train.view(), "train")?;
    check_finite(test.view(), "test")?;
    l2_normalize_rows(&mut train);
    l2_normalize_rows(&mut test);
    classify_normalized(
        train.view(),
        train_labels,
        test.view(),
        test_labels,
        params,
        progress,
    )
}

/// The k-NN vote on features that are already L2-normalised. Scores come back in ascending `k`.
/// `progress` is called with the number of test rows finished, once per block.
pub fn classify_normalized(
    train: ArrayView2<f32>,
    train_labels: &[usize],
    test: ArrayView2<f32>,
    test_labels: &[usize],
    params: &Params,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<KScore>, KnnError> {
    let ks = validate(train, train_labels, test, test_labels, params)?;
    let max_k = *ks.last().expect("validated non-empty");
    let votes_template = Votes::new(train_labels);
    let test_block = params.test_rows_per_block.max(1);
    let train_block = params.train_rows_per_block.max(1);

    let per_block: Vec<Vec<(usize, usize)>> = (0..test.nrows())
        .into_par_iter()
        .step_by(test_block)
        .map(|start| {
            let end = (start + test_block).min(test.nrows());
            let queries = test.slice(s![start..end, ..]);
            let neighbours = nearest(queries, train, max_k, train_block);
            let mut votes = votes_template.clone();
            let mut correct = vec![(0usize, 0usize); ks.len()];
            for (row, top) in neighbours.into_iter().enumerate() {
                let label = test_labels[start + row];
                votes.rank_label_at_each_k(&top, label, &ks, params.temperature, |i, rank| {
                    correct[i].0 += usize::from(rank == 0);
                    correct[i].1 += usize::from(rank < ks[i].min(5));
                });
            }
            progress(end - start);
            correct
        })
        .collect();

    Ok(ks
        .iter()
        .enumerate()
        .map(|(i, &k)| KScore {
            k,
            top1_correct: per_block.iter().map(|b| b[i].0).sum(),
            top5_correct: per_block.iter().map(|b| b[i].1).sum(),
            total: test.nrows(),
        })
        .collect())
}

/// The `k` most similar train rows of each query, best first, as (similarity, train index).
fn nearest(
    queries: ArrayView2<f32>,
    train: ArrayView2<f32>,
    k: usize,
    train_block: usize,
) -> Vec<Vec<(f32, u32)>> {
    let mut tops: Vec<TopK> = (0..queries.nrows()).map(|_| TopK::new(k)).collect();
    let mut sim = Array2::<f32>::zeros((queries.nrows(), train_block.min(train.nrows())));
    let mut offset = 0;
    while offset < train.nrows() {
        let end = (offset + train_block).min(train.nrows());
        let block = train.slice(s![offset..end, ..]);
        let mut sim = sim.slice_mut(s![.., ..end - offset]);
        similarity::similarity(queries, block, sim.view_mut());
        for (top, row) in tops.iter_mut().zip(sim.rows()) {
            top.offer_row(row.as_slice().expect("row-major buffer"), offset as u32);
        }
        offset = end;
    }
    tops.into_iter().map(TopK::into_sorted).collect()
}

fn validate(
    train: ArrayView2<f32>,
    train_labels: &[usize],
    test: ArrayView2<f32>,
    test_labels: &[usize],
    params: &Params,
) -> Result<Vec<usize>, KnnError> {
    if train.nrows() == 0 {
        return Err(KnnError::Empty("train"));
    }
    if test.nrows() == 0 {
        return Err(KnnError::Empty("test"));
    }
    if train.nrows() > u32::MAX as usize {
        return Err(KnnError::TooManyTrainRows(train.nrows()));
    }
    if train.nrows() != train_labels.len() {
        return Err(KnnError::LabelCount {
            set: "train",
            rows: train.nrows(),
            labels: train_labels.len(),
        });
    }
    if test.nrows() != test_labels.len() {
        return Err(KnnError::LabelCount {
            set: "test",
            rows: test.nrows(),
            labels: test_labels.len(),
        });
    }
    if train.ncols() != test.ncols() {
        return Err(KnnError::DimMismatch {
            train: train.ncols(),
            test: test.ncols(),
        });
    }
    if !(params.temperature.is_finite() && params.temperature > 0.0) {
        return Err(KnnError::Temperature(params.temperature));
    }
    let mut ks = params.ks.clone();
    ks.sort_unstable();
    ks.dedup();
    match (ks.first(), ks.last()) {
        (None, _) => return Err(KnnError::NoK),
        (Some(0), _) => return Err(KnnError::ZeroK),
        (_, Some(&k)) if k > train.nrows() => {
            return Err(KnnError::KTooLarge {
                k,
                train: train.nrows(),
            })
        }
        _ => {}
    }
    Ok(ks)
}

fn check_finite(features: ArrayView2<f32>, set: &'static str) -> Result<(), KnnError> {
    match features
        .rows()
        .into_iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        Some(row) => Err(KnnError::NonFinite { set, row }),
        None => Ok(()),
    }
}
