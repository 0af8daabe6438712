//! Many linear classifiers trained in lock-step on the same minibatches.
//!
//! Heads are split into a few contiguous groups (one per worker thread). A group stores the weights of
//! its `g` heads side by side as one `[D, g·C]` matrix, so a single GEMM `X[B,D]·W[D,g·C]` gives every
//! head's logits and a single GEMM `Xᵀ·G` every head's weight gradient; the optimiser then updates each
//! head's own `[D, C]` block. Groups share nothing but the read-only batch, so they run in parallel
//! without synchronisation.
//!
//! Numerics follow PyTorch in f32 (`nn.Linear`, `CrossEntropyLoss(reduction="mean")`, the SGD/LARS
//! steps of [`Optimizer`]); the weights are stored transposed relative to `nn.Linear.weight`.

use ndarray::{Array1, Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::grid::{HeadConfig, Optimizer};

pub const MOMENTUM: f32 = 0.9;
/// LARS trust coefficient η of iBOT's `utils.LARS`.
pub const LARS_ETA: f32 = 0.001;

/// Correct predictions of one head on one evaluation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Correct {
    pub top1: usize,
    pub top5: usize,
    pub total: usize,
}

impl Correct {
    pub fn top1(&self) -> f64 {
        self.top1 as f64 / self.total.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        self.top5 as f64 / self.total.max(1) as f64
    }
}

struct Group {
    first: usize,
    count: usize,
    /// `[D, count·C]`, head `j` in columns `j·C .. (j+1)·C`.
    w: Vec<f32>,
    b: Vec<f32>,
    w_momentum: Vec<f32>,
    b_momentum: Vec<f32>,
    w_grad: Vec<f32>,
    b_grad: Vec<f32>,
    /// `[rows, count·C]` logits, then gradients of the loss w.r.t. the logits.
    scratch: Vec<f32>,
}

/// The weights, optimiser state and configuration of all heads.
pub struct Heads {
    dim: usize,
    classes: usize,
    configs: Vec<HeadConfig>,
    groups: Vec<Group>,
    gemm_threads: usize,
}

impl Heads {
    /// Heads initialised like iBOT's `LinearClassifier`: weight N(0, 0.01), bias 0; each head draws
    /// its own weights from one seeded stream, in head order.
    pub fn new(dim: usize, classes: usize, configs: Vec<HeadConfig>, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.01).expect("valid normal");
        let weights: Vec<Array2<f32>> = configs
            .iter()
            .map(|_| Array2::from_shape_fn((classes, dim), |_| normal.sample(&mut rng)))
            .collect();
        let biases = vec![Array1::zeros(classes); configs.len()];
        Self::from_weights(configs, &weights, &biases)
    }

    /// Heads with given initial parameters, in `nn.Linear` layout (`weight [C, D]`, `bias [C]`).
    pub fn from_weights(
        configs: Vec<HeadConfig>,
        weights: &[Array2<f32>],
        biases: &[Array1<f32>],
    ) -> Self {
        assert!(!configs.is_empty(), "at least one head");
        assert_eq!(weights.len(), configs.len());
        assert_eq!(biases.len(), configs.len());
        let (classes, dim) = weights[0].dim();
        let threads = rayon::current_num_threads().max(1);
        let num_groups = threads.min(configs.len());
        let mut groups = Vec::with_capacity(num_groups);
        let mut first = 0;
        for g in 0..num_groups {
            let count = configs.len() / num_groups + usize::from(g < configs.len() % num_groups);
            let width = count * classes;
            let mut w = vec![0f32; dim * width];
            let mut b = vec![0f32; width];
            for j in 0..count {
                let (wt, bias) = (&weights[first + j], &biases[first + j]);
                assert_eq!(wt.dim(), (classes, dim), "all heads share one shape");
                for c in 0..classes {
                    b[j * classes + c] = bias[c];
                    for d in 0..dim {
                        w[d * width + j * classes + c] = wt[[c, d]];
                    }
                }
            }
            groups.push(Group {
                first,
                count,
                w_momentum: vec![0.0; w.len()],
                b_momentum: vec![0.0; b.len()],
                w_grad: vec![0.0; w.len()],
                b_grad: vec![0.0; b.len()],
                w,
                b,
                scratch: Vec::new(),
            });
            first += count;
        }
        Heads {
            dim,
            classes,
            configs,
            groups,
            gemm_threads: (threads / num_groups).max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.configs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn configs(&self) -> &[HeadConfig] {
        &self.configs
    }

    fn locate(&self, head: usize) -> (&Group, usize) {
        let g = self
            .groups
            .iter()
            .find(|g| head >= g.first && head < g.first + g.count)
            .expect("head index in range");
        (g, head - g.first)
    }

    /// Head `head`'s weight in `nn.Linear` layout `[C, D]`.
    pub fn weight(&self, head: usize) -> Array2<f32> {
        let (g, j) = self.locate(head);
        let width = g.count * self.classes;
        Array2::from_shape_fn((self.classes, self.dim), |(c, d)| {
            g.w[d * width + j * self.classes + c]
        })
    }

    pub fn bias(&self, head: usize) -> Array1<f32> {
        let (g, j) = self.locate(head);
        Array1::from_iter(
            g.b[j * self.classes..(j + 1) * self.classes]
                .iter()
                .copied(),
        )
    }

    /// One optimisation step of every head on the batch `x` (`[B, D]`, standard layout), with head `h`
    /// using learning rate `lrs[h]`. Returns each head's mean cross-entropy on the batch (before the step).
    pub fn step(&mut self, x: ArrayView2<f32>, labels: &[usize], lrs: &[f64]) -> Vec<f32> {
        let rows = x.nrows();
        assert_eq!(x.ncols(), self.dim, "batch dimension");
        assert_eq!(labels.len(), rows, "one label per row");
        assert_eq!(lrs.len(), self.configs.len(), "one lr per head");
        assert!(labels.iter().all(|&l| l < self.classes), "labels < classes");
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let (dim, classes, threads) = (self.dim, self.classes, self.gemm_threads);
        let configs = &self.configs;
        let mut losses = vec![0f32; configs.len()];
        let mut loss_chunks: Vec<&mut [f32]> = Vec::new();
        let mut rest = losses.as_mut_slice();
        for g in &self.groups {
            let (a, b) = rest.split_at_mut(g.count);
            loss_chunks.push(a);
            rest = b;
        }
        self.groups
            .par_iter_mut()
            .zip(loss_chunks)
            .for_each(|(g, loss)| {
                let width = g.count * classes;
                forward(g, x, rows, dim, width, threads);
                softmax_cross_entropy_grad(&mut g.scratch, labels, g.count, classes, loss);
                backward(g, x, rows, dim, width, threads);
                for j in 0..g.count {
                    let h = g.first + j;
                    update_head(g, j, classes, dim, &configs[h], lrs[h] as f32);
                }
            });
        losses
    }

    /// Top-1/top-5 counts of every head on `x` (`[N, D]`), evaluated in row blocks.
    /// Ranking ties go to the lower class id (as a stable descending sort).
    pub fn score(&mut self, x: ArrayView2<f32>, labels: &[usize]) -> Vec<Correct> {
        assert_eq!(x.ncols(), self.dim, "feature dimension");
        assert_eq!(labels.len(), x.nrows(), "one label per row");
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let (dim, classes, threads) = (self.dim, self.classes, self.gemm_threads);
        let n = labels.len();
        let per_group: Vec<Vec<Correct>> = self
            .groups
            .par_iter_mut()
            .map(|g| {
                let width = g.count * classes;
                let block = (1 << 22) / width.max(1);
                let block = block.clamp(1, 4096);
                let mut correct = vec![
                    Correct {
                        total: n,
                        ..Correct::default()
                    };
                    g.count
                ];
                let mut start = 0;
                while start < n {
                    let end = (start + block).min(n);
                    let rows = end - start;
                    forward(g, &x[start * dim..end * dim], rows, dim, width, threads);
                    for r in 0..rows {
                        let label = labels[start + r];
                        let row = &g.scratch[r * width..(r + 1) * width];
                        for (j, c) in correct.iter_mut().enumerate() {
                            let logits = &row[j * classes..(j + 1) * classes];
                            let rank = rank_of(logits, label);
                            c.top1 += usize::from(rank == 0);
                            c.top5 += usize::from(rank < 5);
                        }
                    }
                    start = end;
                }
                correct
            })
            .collect();
        per_group.into_iter().flatten().collect()
    }
}

/// Position of `label` when classes are sorted by logit descending, ties by class id ascending.
/// A label outside the head's classes is never ranked.
fn rank_of(logits: &[f32], label: usize) -> usize {
    let Some(&target) = logits.get(label) else {
        return usize::MAX;
    };
    logits
        .iter()
        .enumerate()
        .filter(|&(c, &v)| v > target || (v == target && c < label))
        .count()
}

/// `scratch[rows, width] = x[rows, D] · w[D, width] + b`.
fn forward(g: &mut Group, x: &[f32], rows: usize, dim: usize, width: usize, threads: usize) {
    g.scratch.resize(rows * width, 0.0);
    for r in 0..rows {
        g.scratch[r * width..(r + 1) * width].copy_from_slice(&g.b);
    }
    // SAFETY: `x` holds rows·dim, `w` dim·width and `scratch` rows·width contiguous row-major values,
    // matching the strides passed; `scratch` is exclusively borrowed and does not alias the inputs.
    unsafe {
        gemm::gemm(
            rows,
            width,
            dim,
            g.scratch.as_mut_ptr(),
            1,
            width as isize,
            true,
            x.as_ptr(),
            1,
            dim as isize,
            g.w.as_ptr(),
            1,
            width as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}

/// `w_grad[D, width] = xᵀ · scratch`, `b_grad = Σ_rows scratch`.
fn backward(g: &mut Group, x: &[f32], rows: usize, dim: usize, width: usize, threads: usize) {
    // SAFETY: as in `forward`; `x` is read transposed through swapped strides.
    unsafe {
        gemm::gemm(
            dim,
            width,
            rows,
            g.w_grad.as_mut_ptr(),
            1,
            width as isize,
            false,
            x.as_ptr(),
            dim as isize,
            1,
            g.scratch.as_ptr(),
            1,
            width as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
    g.b_grad.iter_mut().for_each(|v| *v = 0.0);
    for r in 0..rows {
        for (acc, v) in g
            .b_grad
            .iter_mut()
            .zip(&g.scratch[r * width..(r + 1) * width])
        {
            *acc += v;
        }
    }
}

fn parallelism(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Replaces logits by d(mean CE)/d(logits) = (softmax − onehot) / B per head, and writes each head's
/// mean loss.
fn softmax_cross_entropy_grad(
    scratch: &mut [f32],
    labels: &[usize],
    heads: usize,
    classes: usize,
    loss: &mut [f32],
) {
    let rows = labels.len();
    let inv = 1.0 / rows as f32;
    let mut sums = vec![0f64; heads];
    for (r, &label) in labels.iter().enumerate() {
        let row = &mut scratch[r * heads * classes..(r + 1) * heads * classes];
        for (j, logits) in row.chunks_exact_mut(classes).enumerate() {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let target = logits[label] - max;
            let mut sum = 0f32;
            for v in logits.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            sums[j] += (sum.ln() - target) as f64;
            for v in logits.iter_mut() {
                *v = *v / sum * inv;
            }
            logits[label] -= inv;
        }
    }
    for (l, s) in loss.iter_mut().zip(sums) {
        *l = (s / rows as f64) as f32;
    }
}

fn update_head(g: &mut Group, j: usize, classes: usize, dim: usize, cfg: &HeadConfig, lr: f32) {
    let width = g.count * classes;
    let cols = j * classes..(j + 1) * classes;
    let wd = cfg.weight_decay as f32;
    match cfg.optimizer {
        Optimizer::Sgd => {
            // torch.optim.SGD applies weight decay to every parameter of the group, bias included.
            for d in 0..dim {
                let o = d * width;
                for c in cols.clone() {
                    sgd(
                        &mut g.w[o + c],
                        g.w_grad[o + c],
                        &mut g.w_momentum[o + c],
                        wd,
                        lr,
                    );
                }
            }
            for c in cols {
                sgd(&mut g.b[c], g.b_grad[c], &mut g.b_momentum[c], wd, lr);
            }
        }
        Optimizer::Lars => {
            let (mut param_sq, mut update_sq) = (0f64, 0f64);
            for d in 0..dim {
                let o = d * width;
                for c in cols.clone() {
                    let p = g.w[o + c];
                    let u = g.w_grad[o + c] + wd * p;
                    g.w_grad[o + c] = u;
                    param_sq += (p as f64) * (p as f64);
                    update_sq += (u as f64) * (u as f64);
                }
            }
            let (pn, un) = (param_sq.sqrt() as f32, update_sq.sqrt() as f32);
            let q = if pn > 0.0 && un > 0.0 {
                LARS_ETA * pn / un
            } else {
                1.0
            };
            for d in 0..dim {
                let o = d * width;
                for c in cols.clone() {
                    let m = &mut g.w_momentum[o + c];
                    *m = *m * MOMENTUM + g.w_grad[o + c] * q;
                    g.w[o + c] += -lr * *m;
                }
            }
            // Biases (ndim 1): no weight decay, no trust ratio.
            for c in cols {
                let m = &mut g.b_momentum[c];
                *m = *m * MOMENTUM + g.b_grad[c];
                g.b[c] += -lr * *m;
            }
        }
    }
}

#[inline]
fn sgd(p: &mut f32, grad: f32, buf: &mut f32, wd: f32, lr: f32) {
    let g = if wd != 0.0 { grad + wd * *p } else { grad };
    *buf = *buf * MOMENTUM + g;
    *p += -lr * *buf;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::HeadConfig;

    #[test]
    fn ranks_break_ties_by_class_id() {
        assert_eq!(rank_of(&[0.1, 0.5, 0.5, 0.2], 2), 1);
        assert_eq!(rank_of(&[0.1, 0.5, 0.5, 0.2], 1), 0);
        assert_eq!(rank_of(&[0.1, 0.5, 0.5, 0.2], 0), 3);
        assert_eq!(rank_of(&[0.1, 0.5], 7), usize::MAX);
    }

    #[test]
    fn weights_round_trip_through_groups() {
        let configs = vec![
            HeadConfig {
                optimizer: Optimizer::Sgd,
                lr: 0.1,
                weight_decay: 0.0
            };
            5
        ];
        let heads = Heads::new(3, 4, configs, 7);
        let w: Vec<_> = (0..5).map(|h| heads.weight(h)).collect();
        let b: Vec<_> = (0..5).map(|h| heads.bias(h)).collect();
        let again = Heads::from_weights(heads.configs().to_vec(), &w, &b);
        for (h, weight) in w.iter().enumerate() {
            assert_eq!(&again.weight(h), weight);
        }
        assert_ne!(w[0], w[1], "heads draw distinct weights");
        let std = (w[0].iter().map(|v| v * v).sum::<f32>() / 12.0).sqrt();
        assert!(std > 0.002 && std < 0.03, "std {std}");
    }
}
