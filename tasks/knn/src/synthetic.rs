//! Seeded, counter-based synthetic features for tests and `ibot bench knn`.
//!
//! Every value is a pure function of (seed, stream, index) through the splitmix64 finaliser, and every
//! float step is one exactly specified f32 operation, so `tests/reference/knn_reference.py` regenerates
//! the very same bits in numpy and the golden cases need no committed feature files.

use ndarray::Array2;
use rayon::prelude::*;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function applied to `seed·2^32 + stream`-keyed counter `index`.
pub fn hash(seed: u64, stream: u64, index: u64) -> u64 {
    let key = seed.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ stream.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
    let mut z = key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) on a grid of 2^-23, exactly representable in f32.
pub fn uniform(seed: u64, stream: u64, index: u64) -> f32 {
    ((hash(seed, stream, index) >> 40) as i32 - (1 << 23)) as f32 / (1 << 23) as f32
}

/// Labels `hash mod classes`, times `spacing` (spacing > 1 makes the ids non-contiguous).
pub fn labels(seed: u64, stream: u64, n: usize, classes: usize, spacing: usize) -> Vec<usize> {
    (0..n as u64)
        .map(|i| (hash(seed, stream, i) % classes as u64) as usize * spacing)
        .collect()
}

/// Row i = (center[class_i] + noise · u) · scale_i, with u uniform per element, center uniform per class
/// and scale_i = 1.5 + u_i (a positive per-row scale, so normalisation matters). `centers_stream`
/// is shared between train and test; `stream` and `stream + 1` draw the noise and the scales.
pub fn clustered(
    seed: u64,
    centers_stream: u64,
    stream: u64,
    class_index: &[usize],
    dim: usize,
    noise: f32,
) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((class_index.len(), dim));
    out.axis_iter_mut(ndarray::Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut row)| {
            let scale = 1.5f32 + uniform(seed, stream + 1, i as u64);
            for (d, v) in row.iter_mut().enumerate() {
                let center = uniform(seed, centers_stream, (class_index[i] * dim + d) as u64);
                let u = uniform(seed, stream, (i * dim + d) as u64);
                *v = (center + noise * u) * scale;
            }
        });
    out
}
