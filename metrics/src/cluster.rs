//! Clustering scores as scikit-learn computes them, plus Hungarian-matched accuracy.
//!
//! * NMI — `normalized_mutual_info_score` (arithmetic normalisation, the default since 0.22),
//!   including its special cases: both labelings one cluster (or empty) → 1.0; MI = 0 → 0.0.
//! * ARI — `adjusted_rand_score` from the pair confusion matrix in exact integer arithmetic;
//!   no disagreeing pairs → 1.0.
//! * FMI — `fowlkes_mallows_score`; no pair together in both labelings (tk = 0) → 0.0.
//! * ACC — the DEC/IDEC convention: maximum-weight one-to-one matching of clusters to classes on
//!   the count matrix (scipy's `linear_sum_assignment`, here the `lsap` port of it), matched
//!   samples / N. Extra clusters match nothing and count as errors. Labels may be any integers:
//!   the padded D×D matrix of the convention has the same optimum as the compact contingency.
//!
//! Label values are arbitrary; only which samples share a value matters. Summations follow
//! numpy's pairwise order and the nonzero contingency cells are visited row-major (scipy's
//! `find` order), so results agree with scikit-learn to the last bit or within an ulp of `log`.

use crate::numeric::pairwise_sum;
use crate::{Error, Result};

/// Largest `classes × clusters` count matrix the Hungarian matching will build.
const MAX_ASSIGNMENT_CELLS: usize = 50_000_000;
/// Largest dense counting table used while building the contingency (else: sort pair keys).
const MAX_DENSE_COUNT_CELLS: usize = 1 << 22;

/// The four scores the clustering protocol reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterScores {
    pub acc: f64,
    pub nmi: f64,
    pub ari: f64,
    pub fmi: f64,
}

impl ClusterScores {
    /// All four scores; errors on unequal lengths or no samples (ACC is undefined then).
    pub fn compute(truth: &[i64], pred: &[i64]) -> Result<Self> {
        let c = Contingency::new(truth, pred)?;
        if c.n == 0 {
            return Err(Error::invalid("no labels to score"));
        }
        Ok(Self {
            acc: hungarian_match(&c)?.accuracy,
            nmi: nmi(&c),
            ari: ari(&c),
            fmi: fmi(&c),
        })
    }
}

/// Sparse contingency table of two labelings: rows are the sorted distinct true labels, columns
/// the sorted distinct predicted labels.
#[derive(Debug, Clone)]
pub struct Contingency {
    classes: Vec<i64>,
    clusters: Vec<i64>,
    /// Nonzero cells `(row, col, count)` in row-major order.
    cells: Vec<(u32, u32, u64)>,
    row_sums: Vec<u64>,
    col_sums: Vec<u64>,
    n: u64,
}

/// Sorted distinct values of `labels` and each label's index among them.
fn dense_ids(labels: &[i64]) -> (Vec<i64>, Vec<u32>) {
    let (Some(&min), Some(&max)) = (labels.iter().min(), labels.iter().max()) else {
        return (Vec::new(), Vec::new());
    };
    let span = (max as i128 - min as i128) as u128;
    if span <= (4 * labels.len() as u128 + 1024).min(1 << 26) {
        // Compact range: a lookup table, O(n + span).
        let mut slot = vec![u32::MAX; span as usize + 1];
        for &l in labels {
            slot[(l - min) as usize] = 0;
        }
        let mut uniques = Vec::new();
        for (offset, s) in slot.iter_mut().enumerate() {
            if *s == 0 {
                *s = uniques.len() as u32;
                uniques.push(min + offset as i64);
            }
        }
        let ids = labels.iter().map(|&l| slot[(l - min) as usize]).collect();
        (uniques, ids)
    } else {
        let mut uniques = labels.to_vec();
        uniques.sort_unstable();
        uniques.dedup();
        let ids = labels
            .iter()
            .map(|l| {
                uniques
                    .binary_search(l)
                    .expect("label is among the uniques") as u32
            })
            .collect();
        (uniques, ids)
    }
}

impl Contingency {
    pub fn new(truth: &[i64], pred: &[i64]) -> Result<Self> {
        if truth.len() != pred.len() {
            return Err(Error::invalid(format!(
                "{} true labels but {} predicted labels",
                truth.len(),
                pred.len()
            )));
        }
        let (classes, rows) = dense_ids(truth);
        let (clusters, cols) = dense_ids(pred);
        let (kt, kp) = (classes.len(), clusters.len());
        let mut cells = Vec::new();
        if kt * kp <= MAX_DENSE_COUNT_CELLS {
            let mut table = vec![0u64; kt * kp];
            for (&r, &c) in rows.iter().zip(&cols) {
                table[r as usize * kp + c as usize] += 1;
            }
            for (i, &count) in table.iter().enumerate() {
                if count > 0 {
                    cells.push(((i / kp) as u32, (i % kp) as u32, count));
                }
            }
        } else {
            let mut keys: Vec<u64> = rows
                .iter()
                .zip(&cols)
                .map(|(&r, &c)| (r as u64) << 32 | c as u64)
                .collect();
            keys.sort_unstable();
            for chunk in keys.chunk_by(|a, b| a == b) {
                let key = chunk[0];
                cells.push(((key >> 32) as u32, key as u32, chunk.len() as u64));
            }
        }
        let mut row_sums = vec![0u64; kt];
        let mut col_sums = vec![0u64; kp];
        for &(r, c, count) in &cells {
            row_sums[r as usize] += count;
            col_sums[c as usize] += count;
        }
        Ok(Self {
            classes,
            clusters,
            cells,
            row_sums,
            col_sums,
            n: truth.len() as u64,
        })
    }

    /// Distinct true labels, sorted (the rows).
    pub fn classes(&self) -> &[i64] {
        &self.classes
    }

    /// Distinct predicted labels, sorted (the columns).
    pub fn clusters(&self) -> &[i64] {
        &self.clusters
    }

    /// Nonzero cells `(row, col, count)` in row-major order.
    pub fn cells(&self) -> &[(u32, u32, u64)] {
        &self.cells
    }

    pub fn n_samples(&self) -> u64 {
        self.n
    }
}

/// scikit-learn's `_entropy` from the label counts (in sorted-label order).
fn entropy(counts: &[u64]) -> f64 {
    if counts.is_empty() {
        return 1.0;
    }
    if counts.len() == 1 {
        return 0.0;
    }
    let pi: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let pi_sum = pairwise_sum(&pi);
    let log_sum = pi_sum.ln();
    let terms: Vec<f64> = pi
        .iter()
        .map(|&p| (p / pi_sum) * (p.ln() - log_sum))
        .collect();
    -pairwise_sum(&terms)
}

/// scikit-learn's `mutual_info_score` (natural log) from the contingency.
pub fn mutual_info(c: &Contingency) -> f64 {
    if c.row_sums.len() == 1 || c.col_sums.len() == 1 {
        return 0.0;
    }
    let total = c.n as f64;
    let log_total = total.ln();
    // pi.sum() and pj.sum() are both the sample count.
    let log_pi_sum = total.ln();
    let log_pj_sum = total.ln();
    let terms: Vec<f64> = c
        .cells
        .iter()
        .map(|&(r, col, count)| {
            let v = count as f64;
            let nm = v / total;
            let outer = (c.row_sums[r as usize] as i64 * c.col_sums[col as usize] as i64) as f64;
            let log_outer = -outer.ln() + log_pi_sum + log_pj_sum;
            let mi = nm * (v.ln() - log_total) + nm * log_outer;
            if mi.abs() < f64::EPSILON {
                0.0
            } else {
                mi
            }
        })
        .collect();
    pairwise_sum(&terms).max(0.0)
}

/// Normalized mutual information with arithmetic normalisation (scikit-learn's default).
pub fn nmi(c: &Contingency) -> f64 {
    let (kt, kp) = (c.classes.len(), c.clusters.len());
    if (kt == 1 && kp == 1) || (kt == 0 && kp == 0) {
        return 1.0;
    }
    let mi = mutual_info(c);
    if mi == 0.0 {
        return 0.0;
    }
    let normalizer = (entropy(&c.row_sums) + entropy(&c.col_sums)) / 2.0;
    mi / normalizer
}

/// Adjusted Rand index, computed exactly in integers as scikit-learn does with Python ints.
pub fn ari(c: &Contingency) -> f64 {
    let n = c.n as i128;
    let sum_squares: i128 = c
        .cells
        .iter()
        .map(|&(_, _, v)| (v as i128) * (v as i128))
        .sum();
    let by_cols: i128 = c
        .cells
        .iter()
        .map(|&(_, col, v)| v as i128 * c.col_sums[col as usize] as i128)
        .sum();
    let by_rows: i128 = c
        .cells
        .iter()
        .map(|&(r, _, v)| v as i128 * c.row_sums[r as usize] as i128)
        .sum();
    let tp = sum_squares - n;
    let fp = by_cols - sum_squares;
    let fn_ = by_rows - sum_squares;
    let tn = n * n - fp - fn_ - sum_squares;
    if fn_ == 0 && fp == 0 {
        return 1.0;
    }
    let numerator = tp * tn - fn_ * fp;
    let denominator = (tp + fn_) * (fn_ + tn) + (tp + fp) * (fp + tn);
    // Python: 2.0 * int -> float(int) rounded once, then / float(int).
    2.0 * (numerator as f64) / (denominator as f64)
}

/// Fowlkes–Mallows index.
pub fn fmi(c: &Contingency) -> f64 {
    let n = c.n as i128;
    let tk: i128 = c
        .cells
        .iter()
        .map(|&(_, _, v)| (v as i128) * (v as i128))
        .sum::<i128>()
        - n;
    let pk: i128 = c
        .col_sums
        .iter()
        .map(|&v| (v as i128) * (v as i128))
        .sum::<i128>()
        - n;
    let qk: i128 = c
        .row_sums
        .iter()
        .map(|&v| (v as i128) * (v as i128))
        .sum::<i128>()
        - n;
    if tk == 0 {
        return 0.0;
    }
    ((tk as f64) / (pk as f64)).sqrt() * ((tk as f64) / (qk as f64)).sqrt()
}

/// Result of matching clusters to classes.
#[derive(Debug, Clone, PartialEq)]
pub struct HungarianMatch {
    /// Matched samples / all samples.
    pub accuracy: f64,
    /// `(cluster label, class label)` for every matched pair, sorted by cluster label.
    pub pairs: Vec<(i64, i64)>,
}

/// Maximum-weight one-to-one matching of clusters to classes (Hungarian / Jonker–Volgenant).
pub fn hungarian_match(c: &Contingency) -> Result<HungarianMatch> {
    let (kt, kp) = (c.classes.len(), c.clusters.len());
    if kt == 0 {
        return Ok(HungarianMatch {
            accuracy: f64::NAN,
            pairs: Vec::new(),
        });
    }
    if kt * kp > MAX_ASSIGNMENT_CELLS {
        return Err(Error::invalid(format!(
            "{kt} classes x {kp} clusters is too large for Hungarian matching \
             (limit {MAX_ASSIGNMENT_CELLS} cells)"
        )));
    }
    // Rows are clusters (the convention's W[pred, true]); the optimum does not depend on it.
    let mut weights = vec![0.0f64; kp * kt];
    for &(r, col, v) in &c.cells {
        weights[col as usize * kt + r as usize] = v as f64;
    }
    let (rows, cols) = lsap::solve(kp, kt, &weights, true)
        .map_err(|e| Error::invalid(format!("Hungarian matching failed: {e:?}")))?;
    let mut matched = 0u64;
    let mut pairs = Vec::with_capacity(rows.len());
    for (&cl, &k) in rows.iter().zip(&cols) {
        matched += weights[cl * kt + k] as u64;
        pairs.push((c.clusters[cl], c.classes[k]));
    }
    pairs.sort_unstable();
    Ok(HungarianMatch {
        accuracy: matched as f64 / c.n as f64,
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_and_dense_paths_agree() {
        let truth: Vec<i64> = (0..5000).map(|i| (i * 7919 % 3000) as i64).collect();
        let pred: Vec<i64> = (0..5000)
            .map(|i| (i * 104729 % 2999) as i64 * 1_000_000_007)
            .collect();
        let c = Contingency::new(&truth, &pred).unwrap();
        assert!(c.classes().len() * c.clusters().len() > MAX_DENSE_COUNT_CELLS);
        let small = Contingency::new(&truth[..100], &pred[..100]).unwrap();
        assert_eq!(small.cells().len(), 100);
        assert_eq!(c.cells().iter().map(|c| c.2).sum::<u64>(), 5000);
        assert!(c
            .cells()
            .windows(2)
            .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
    }

    #[test]
    fn unequal_lengths_and_empty_are_errors() {
        assert!(ClusterScores::compute(&[0, 1], &[0]).is_err());
        assert!(ClusterScores::compute(&[], &[]).is_err());
    }
}
