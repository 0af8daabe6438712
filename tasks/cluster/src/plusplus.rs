//! Greedy k-means++ seeding as scikit-learn's `_kmeans_plusplus`: the first centre uniformly at
//! random; each next one the best of `2 + ⌊ln k⌋` candidates drawn with probability proportional to
//! the squared distance to the closest centre so far, "best" meaning the smallest resulting potential.

use ndarray::{Array2, ArrayView2, Axis};
use rand::Rng;
use rayon::prelude::*;

use crate::gemm_block::{dot_rows, row_sq_norms, segments, split_rows, CHUNK};
use crate::Result;

/// k-means++ centres of `x` and the rows they were taken from. Validates its inputs.
pub fn kmeans_plusplus<R: Rng>(
    x: ArrayView2<f32>,
    k: usize,
    rng: &mut R,
) -> Result<(Array2<f32>, Vec<usize>)> {
    crate::kmeans::validate(x, k)?;
    let x = x.as_standard_layout();
    let norms = row_sq_norms(x.view());
    Ok(seed_centers(x.view(), &norms, k, rng))
}

/// Number of candidates per centre (Arthur & Vassilvitskii's suggestion, as scikit-learn).
pub(crate) fn local_trials(k: usize) -> usize {
    2 + (k as f64).ln() as usize
}

/// `x` in standard layout with its squared row norms; `1 ≤ k ≤ n` already checked.
pub(crate) fn seed_centers<R: Rng>(
    x: ArrayView2<f32>,
    norms: &[f32],
    k: usize,
    rng: &mut R,
) -> (Array2<f32>, Vec<usize>) {
    let (n, d) = x.dim();
    let trials = local_trials(k);
    let segs = segments(n, CHUNK * trials * 4);
    let mut indices = Vec::with_capacity(k);
    let mut centers = Array2::<f32>::zeros((k, d));

    let first = rng.gen_range(0..n);
    indices.push(first);
    centers.row_mut(0).assign(&x.row(first));
    let mut closest = vec![0f32; n];
    let mut dist = vec![0f32; n * trials];
    let mut cumsum = vec![0f64; n];
    {
        let cand = x.select(Axis(0), &[first]);
        distances(
            x,
            norms,
            cand.view(),
            &segs,
            &mut dist[..n],
            &closest,
            false,
        );
        closest.copy_from_slice(&dist[..n]);
    }
    for c in 1..k {
        let mut total = 0f64;
        for (s, &v) in cumsum.iter_mut().zip(&closest) {
            total += v as f64;
            *s = total;
        }
        // Draws against the cumulative sum's own total (sklearn scales by a separately summed
        // potential and clips), so rounding never selects a row past the end.
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                let v = rng.gen::<f64>() * total;
                cumsum.partition_point(|&s| s < v).min(n - 1)
            })
            .collect();
        let cand = x.select(Axis(0), &candidates);
        let pots = distances(x, norms, cand.view(), &segs, &mut dist, &closest, true);
        let best = pots
            .iter()
            .enumerate()
            .fold(0, |b, (j, &p)| if p < pots[b] { j } else { b });
        closest
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = v.min(dist[i * trials + best]));
        indices.push(candidates[best]);
        centers.row_mut(c).assign(&x.row(candidates[best]));
    }
    (centers, indices)
}

/// Squared distances of every row to each candidate (`dist[i·t + j]`, clipped at 0 like sklearn's
/// `euclidean_distances`), and per candidate the potential Σ min(closest, distance) in f64 when
/// `with_potential` (summed segment by segment, so reproducible).
fn distances(
    x: ArrayView2<f32>,
    norms: &[f32],
    cand: ArrayView2<f32>,
    segs: &[std::ops::Range<usize>],
    dist: &mut [f32],
    closest: &[f32],
    with_potential: bool,
) -> Vec<f64> {
    let t = cand.nrows();
    let cnorms = row_sq_norms(cand);
    let parts = split_rows(dist, segs, t);
    let partial: Vec<Vec<f64>> = segs
        .par_iter()
        .zip(parts)
        .map(|(range, out)| {
            let mut pot = vec![0f64; t];
            for start in range.clone().step_by(CHUNK) {
                let end = (start + CHUNK).min(range.end);
                let block = &mut out[(start - range.start) * t..(end - range.start) * t];
                dot_rows(x.slice(ndarray::s![start..end, ..]), cand, block);
                for (r, row) in block.chunks_exact_mut(t).enumerate() {
                    let i = start + r;
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (norms[i] - 2.0 * *v + cnorms[j]).max(0.0);
                        if with_potential {
                            pot[j] += v.min(closest[i]) as f64;
                        }
                    }
                }
            }
            pot
        })
        .collect();
    let mut pots = vec![0f64; t];
    for p in partial {
        for (a, b) in pots.iter_mut().zip(p) {
            *a += b;
        }
    }
    pots
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn trials_follow_sklearn() {
        assert_eq!(local_trials(1), 2);
        assert_eq!(local_trials(10), 4);
        assert_eq!(local_trials(1000), 8);
    }

    #[test]
    fn picks_distinct_points_when_clusters_are_far_apart() {
        // Four tight groups far apart: k-means++ must pick one point from each.
        let mut x = Array2::<f32>::zeros((400, 3));
        for i in 0..400 {
            let g = i % 4;
            x[[i, 0]] = 100.0 * g as f32 + (i as f32 * 0.001);
            x[[i, 1]] = -50.0 * g as f32;
        }
        for seed in 0..20 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (_, idx) = kmeans_plusplus(x.view(), 4, &mut rng).unwrap();
            let mut groups: Vec<usize> = idx.iter().map(|i| i % 4).collect();
            groups.sort();
            assert_eq!(groups, vec![0, 1, 2, 3], "seed {seed}: {idx:?}");
        }
    }
}
