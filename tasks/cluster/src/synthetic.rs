//! Seeded clustered data for tests and `ibot bench kmeans` (the same counter-based splitmix scheme as
//! the k-NN generator, kept here because task crates do not depend on each other).

use ndarray::Array2;
use rayon::prelude::*;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn hash(seed: u64, stream: u64, index: u64) -> u64 {
    let key = seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ stream.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
    let mut z = key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) on a grid of 2^-23.
fn uniform(seed: u64, stream: u64, index: u64) -> f32 {
    ((hash(seed, stream, index) >> 40) as i32 - (1 << 23)) as f32 / (1 << 23) as f32
}

/// `n` rows in `classes` groups: row i = centre[class_i] + noise · u (centres and u uniform in
/// [-1, 1)), then L2-normalised when `normalise` (the clustering protocol's input). Returns the data
/// and the classes.
pub fn blobs(
    seed: u64,
    n: usize,
    dim: usize,
    classes: usize,
    noise: f32,
    normalise: bool,
) -> (Array2<f32>, Vec<usize>) {
    let labels: Vec<usize> = (0..n as u64)
        .map(|i| (hash(seed, 1, i) % classes.max(1) as u64) as usize)
        .collect();
    let mut x = Array2::<f32>::zeros((n, dim));
    x.axis_iter_mut(ndarray::Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut row)| {
            for (d, v) in row.iter_mut().enumerate() {
                let centre = uniform(seed, 2, (labels[i] * dim + d) as u64);
                *v = centre + noise * uniform(seed, 3, (i * dim + d) as u64);
            }
            if normalise {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    row.mapv_inplace(|v| v / norm);
                }
            }
        });
    (x, labels)
}
