//! Lloyd iterations as scikit-learn's `_kmeans_single_lloyd` / `lloyd_iter_chunked_dense`, on data
//! already centred on its mean. Distances are f32 GEMMs per 256-row block (‖c‖² − 2x·c; ‖x‖² does not
//! change the argmin); centre sums are accumulated in f64 per row segment and reduced in segment order.

use ndarray::{s, Array2, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::gemm_block::{dot_rows, row_sq_norms, segments, split_rows, sq_dist, CHUNK};

/// Why a Lloyd run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Labels identical to the previous iteration's.
    Strict,
    /// Σ‖centre shift‖² within the tolerance.
    Tolerance,
    /// `max_iter` reached.
    MaxIter,
}

pub(crate) struct LloydRun {
    pub labels: Vec<u32>,
    pub centers: Array2<f32>,
    pub inertia: f64,
    pub iterations: usize,
    pub stop: Stop,
}

struct SegmentWork {
    sums: Vec<f64>,
    counts: Vec<f64>,
    dist: Vec<f32>,
}

/// Buffers reused across iterations and restarts.
pub(crate) struct Lloyd<'a> {
    x: ArrayView2<'a, f32>,
    k: usize,
    segs: Vec<std::ops::Range<usize>>,
    work: Vec<SegmentWork>,
    sums: Vec<f64>,
    counts: Vec<f64>,
}

impl<'a> Lloyd<'a> {
    /// `x` must be in standard layout.
    pub fn new(x: ArrayView2<'a, f32>, k: usize) -> Self {
        let (n, d) = x.dim();
        let segs = segments(n, k * d * 8 + k * 8 + CHUNK * k * 4);
        let work = segs
            .iter()
            .map(|_| SegmentWork {
                sums: vec![0.0; k * d],
                counts: vec![0.0; k],
                dist: vec![0.0; CHUNK * k],
            })
            .collect();
        Lloyd {
            x,
            k,
            segs,
            work,
            sums: vec![0.0; k * d],
            counts: vec![0.0; k],
        }
    }

    /// One Lloyd run from `init`; `tol` is absolute (already scaled by the mean feature variance).
    pub fn run(&mut self, init: &Array2<f32>, max_iter: usize, tol: f64) -> LloydRun {
        let n = self.x.nrows();
        let mut centers = init.clone();
        let mut centers_new = init.clone();
        let mut labels = vec![u32::MAX; n];
        let mut labels_old = vec![u32::MAX; n];
        let mut stop = Stop::MaxIter;
        let mut iterations = 0;
        for i in 0..max_iter {
            iterations = i + 1;
            self.assign(&centers, &mut labels, true);
            let shift = self.update(&centers, &labels, &mut centers_new);
            std::mem::swap(&mut centers, &mut centers_new);
            if labels == labels_old {
                stop = Stop::Strict;
                break;
            }
            if shift <= tol {
                stop = Stop::Tolerance;
                break;
            }
            labels_old.copy_from_slice(&labels);
        }
        if stop != Stop::Strict {
            // Labels of the final centres (the last update moved them).
            self.assign(&centers, &mut labels, false);
        }
        let inertia = self.inertia(&centers, &labels);
        LloydRun {
            labels,
            centers,
            inertia,
            iterations,
            stop,
        }
    }

    /// E-step: nearest centre per row (first on ties); with `accumulate`, per-segment centre sums too.
    fn assign(&mut self, centers: &Array2<f32>, labels: &mut [u32], accumulate: bool) {
        let (x, k) = (self.x, self.k);
        let d = x.ncols();
        let cnorms = row_sq_norms(centers.view());
        let parts = split_rows(labels, &self.segs, 1);
        self.segs
            .par_iter()
            .zip(self.work.par_iter_mut())
            .zip(parts)
            .for_each(|((range, w), labels)| {
                if accumulate {
                    w.sums.fill(0.0);
                    w.counts.fill(0.0);
                }
                for start in range.clone().step_by(CHUNK) {
                    let end = (start + CHUNK).min(range.end);
                    let block = x.slice(s![start..end, ..]);
                    dot_rows(block, centers.view(), &mut w.dist);
                    for (r, dots) in w.dist.chunks_exact(k).take(end - start).enumerate() {
                        let mut best = 0;
                        let mut best_d = cnorms[0] - 2.0 * dots[0];
                        for (j, &dot) in dots.iter().enumerate().skip(1) {
                            let dj = cnorms[j] - 2.0 * dot;
                            if dj < best_d {
                                best_d = dj;
                                best = j;
                            }
                        }
                        labels[start - range.start + r] = best as u32;
                        if accumulate {
                            w.counts[best] += 1.0;
                            let row = block.row(r);
                            let row = row.as_slice().expect("standard layout");
                            for (a, &v) in w.sums[best * d..(best + 1) * d].iter_mut().zip(row) {
                                *a += v as f64;
                            }
                        }
                    }
                }
            });
    }

    /// M-step from the accumulated sums: relocate empty clusters, average, return Σ‖shift‖².
    fn update(&mut self, old: &Array2<f32>, labels: &[u32], new: &mut Array2<f32>) -> f64 {
        let d = self.x.ncols();
        let work = &self.work;
        self.sums
            .par_chunks_mut(d)
            .zip(self.counts.par_iter_mut())
            .enumerate()
            .for_each(|(j, (sum, count))| {
                sum.copy_from_slice(&work[0].sums[j * d..(j + 1) * d]);
                *count = work[0].counts[j];
                for w in &work[1..] {
                    for (a, b) in sum.iter_mut().zip(&w.sums[j * d..(j + 1) * d]) {
                        *a += b;
                    }
                    *count += w.counts[j];
                }
            });
        if self.counts.contains(&0.0) {
            self.relocate_empty(old, labels);
        }
        // Clusters still empty sit on the biggest cluster's centre (sklearn's `_average_centers`,
        // which copies that centre after it is averaged only when it comes first; we always do).
        let biggest =
            self.counts
                .iter()
                .enumerate()
                .fold(0, |b, (j, &c)| if c > self.counts[b] { j } else { b });
        for j in 0..self.k {
            if self.counts[j] > 0.0 {
                let inv = 1.0 / self.counts[j];
                for (c, &s) in new
                    .row_mut(j)
                    .iter_mut()
                    .zip(&self.sums[j * d..(j + 1) * d])
                {
                    *c = (s * inv) as f32;
                }
            }
        }
        let big_inv = 1.0 / self.counts[biggest];
        for j in 0..self.k {
            if self.counts[j] == 0.0 {
                for (c, &s) in new
                    .row_mut(j)
                    .iter_mut()
                    .zip(&self.sums[biggest * d..(biggest + 1) * d])
                {
                    *c = (s * big_inv) as f32;
                }
            }
        }
        old.rows()
            .into_iter()
            .zip(new.rows())
            .map(|(a, b)| sq_dist(a.as_slice().unwrap(), b.as_slice().unwrap()))
            .sum()
    }

    /// sklearn's `_relocate_empty_clusters_dense`: each empty cluster takes one of the points
    /// farthest from their (old) centre, farthest first (ties: lower row); the point's own cluster
    /// loses it. Labels are left as they are, as in sklearn. Nothing moves if every point sits on
    /// its centre.
    fn relocate_empty(&mut self, old: &Array2<f32>, labels: &[u32]) {
        let x = self.x;
        let d = x.ncols();
        let empty: Vec<usize> = (0..self.k).filter(|&j| self.counts[j] == 0.0).collect();
        let dist: Vec<f64> = (0..x.nrows())
            .into_par_iter()
            .map(|i| {
                sq_dist(
                    x.row(i).as_slice().unwrap(),
                    old.row(labels[i] as usize).as_slice().unwrap(),
                )
            })
            .collect();
        if dist.iter().all(|&v| v == 0.0) {
            return;
        }
        let mut order: Vec<usize> = (0..dist.len()).collect();
        let by_distance = |a: &usize, b: &usize| dist[*b].total_cmp(&dist[*a]).then(a.cmp(b));
        let m = empty.len().min(order.len());
        if m < order.len() {
            order.select_nth_unstable_by(m, by_distance);
        }
        order.truncate(m);
        order.sort_unstable_by(by_distance);
        for (&j, &far) in empty.iter().zip(&order) {
            let from = labels[far] as usize;
            let row = x.row(far);
            let row = row.as_slice().unwrap();
            for (p, &v) in row.iter().enumerate() {
                self.sums[from * d + p] -= v as f64;
                self.sums[j * d + p] = v as f64;
            }
            self.counts[j] = 1.0;
            self.counts[from] -= 1.0;
        }
    }

    /// Σ‖x − c_label‖² in f64, summed segment by segment.
    pub fn inertia(&self, centers: &Array2<f32>, labels: &[u32]) -> f64 {
        let x = self.x;
        self.segs
            .par_iter()
            .map(|r| {
                r.clone()
                    .map(|i| {
                        sq_dist(
                            x.row(i).as_slice().unwrap(),
                            centers.row(labels[i] as usize).as_slice().unwrap(),
                        )
                    })
                    .sum::<f64>()
            })
            .collect::<Vec<f64>>()
            .into_iter()
            .sum()
    }
}
