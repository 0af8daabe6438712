//! Position-embedding interpolation exactly as DINO/iBOT call PyTorch (ibot-reference §1.3):
//! bicubic, align_corners = false, A = −0.75, border-clamped taps, and a *scale factor*
//! (out + 0.1)/n0 whose reciprocal maps output coordinates back to the source grid.
//!
//! The resize is separable, so it is two small dense matrices applied on either side of the
//! [n0, n0] grid of every channel: exact, differentiable, and cached per output grid.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Device, Result, Tensor};

const CUBIC_A: f32 = -0.75;

/// PyTorch's `cubic_convolution1`/`cubic_convolution2` weights for fractional offset `t`.
fn cubic_weights(t: f32) -> [f32; 4] {
    let c1 = |x: f32| ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0;
    let c2 = |x: f32| ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A;
    [c2(t + 1.0), c1(t), c1(1.0 - t), c2(2.0 - t)]
}

/// Row-stochastic [out, n_in] matrix resampling a length-`n_in` axis to `out` samples with
/// PyTorch's scale-factor convention (ratio = 1/scale, src = (dst + 0.5)·ratio − 0.5, no clamp
/// of `src` for cubic, taps clamped to [0, n_in − 1]).
///
/// PyTorch computes the source coordinate and the weights in f32 for f32 input; we do the same so
/// the interpolated embeddings agree to the last bit or two.
pub fn bicubic_matrix(n_in: usize, out: usize, scale: f64) -> Vec<f32> {
    bicubic_matrix_ratio(n_in, out, (1.0 / scale) as f32)
}

/// [`bicubic_matrix`] in PyTorch's *size* mode (`F.interpolate(size=…)`): ratio = in/out in f32.
/// BEiT's fine-tuning and the dense (det/seg) wrappers resize `pos_embed` this way, once, at load.
pub fn bicubic_matrix_size(n_in: usize, out: usize) -> Vec<f32> {
    bicubic_matrix_ratio(n_in, out, n_in as f32 / out as f32)
}

fn bicubic_matrix_ratio(n_in: usize, out: usize, ratio: f32) -> Vec<f32> {
    let mut m = vec![0f32; out * n_in];
    for dst in 0..out {
        let src = ratio * (dst as f32 + 0.5) - 0.5;
        let base = src.floor();
        let t = src - base;
        let weights = cubic_weights(t);
        for (k, w) in weights.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[dst * n_in + idx] += *w;
        }
    }
    m
}

/// `pos_embed` [1, 1+h0·w0, D] on grid `from` (rows, cols) resized to grid `to` in size mode
/// (bicubic, `align_corners=False`), the CLS entry kept: what BEiT's `run_class_finetuning.py`
/// and iBOT's det/seg backbones do once when the checkpoint's grid differs from the model's.
pub fn resize_pos_embed(
    pos_embed: &Tensor,
    from: (usize, usize),
    to: (usize, usize),
) -> Result<Tensor> {
    let (_, n_plus_1, dim) = pos_embed.dims3()?;
    if n_plus_1 != 1 + from.0 * from.1 {
        candle_core::bail!(
            "pos_embed has {} entries, a {}×{} grid needs {}",
            n_plus_1,
            from.0,
            from.1,
            1 + from.0 * from.1
        );
    }
    if from == to {
        return Ok(pos_embed.clone());
    }
    let dev = pos_embed.device();
    let r = Tensor::from_vec(bicubic_matrix_size(from.0, to.0), (to.0, from.0), dev)?
        .to_dtype(pos_embed.dtype())?;
    let c = Tensor::from_vec(bicubic_matrix_size(from.1, to.1), (to.1, from.1), dev)?
        .to_dtype(pos_embed.dtype())?;
    let cls = pos_embed.narrow(1, 0, 1)?;
    let grid = pos_embed
        .narrow(1, 1, from.0 * from.1)?
        .reshape((from.0, from.1, dim))?
        .permute((2, 0, 1))?
        .contiguous()?;
    let resized = r
        .unsqueeze(0)?
        .broadcast_matmul(&grid)?
        .broadcast_matmul(&c.t()?.unsqueeze(0)?)?;
    let patches = resized.permute((1, 2, 0))?.reshape((1, to.0 * to.1, dim))?;
    Tensor::cat(&[&cls, &patches], 1)
}

/// Caches the two interpolation matrices per (source grid, target grid).
#[derive(Default)]
pub struct PosEmbedInterpolator {
    cache: Mutex<HashMap<(usize, usize, usize, usize, String), (Tensor, Tensor)>>,
}

impl PosEmbedInterpolator {
    /// `pos_embed` [1, 1+h0·w0, D] on grid `(h0, w0)` → [1, 1+rows·cols, D]; unchanged when the
    /// grid is the trained one (DINO skips interpolation exactly in that case, iBOT's non-square
    /// det backbone likewise).
    pub fn interpolate(
        &self,
        pos_embed: &Tensor,
        grid: (usize, usize),
        rows: usize,
        cols: usize,
    ) -> Result<Tensor> {
        let (_, n_plus_1, dim) = pos_embed.dims3()?;
        let n = n_plus_1 - 1;
        let (h0, w0) = grid;
        if h0 * w0 != n {
            candle_core::bail!(
                "pos_embed has {n} patch positions, the grid {h0}×{w0} needs {}",
                h0 * w0
            );
        }
        if (rows, cols) == grid {
            return Ok(pos_embed.clone());
        }
        let (r, c) = self.matrices(grid, rows, cols, pos_embed.device())?;
        let r = r.to_dtype(pos_embed.dtype())?;
        let c = c.to_dtype(pos_embed.dtype())?;
        let cls = pos_embed.narrow(1, 0, 1)?;
        // [1, h0·w0, D] → [D, h0, w0]; resize rows then columns; back to [1, rows·cols, D].
        let grid = pos_embed
            .narrow(1, 1, n)?
            .reshape((h0, w0, dim))?
            .permute((2, 0, 1))?
            .contiguous()?;
        let resized = r
            .unsqueeze(0)?
            .broadcast_matmul(&grid)?
            .broadcast_matmul(&c.t()?.unsqueeze(0)?)?;
        let patches = resized.permute((1, 2, 0))?.reshape((1, rows * cols, dim))?;
        Tensor::cat(&[&cls, &patches], 1)
    }

    fn matrices(
        &self,
        (h0, w0): (usize, usize),
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let key = (h0, w0, rows, cols, format!("{device:?}"));
        let mut cache = self.cache.lock().expect("pos-embed cache poisoned");
        if let Some(m) = cache.get(&key) {
            return Ok(m.clone());
        }
        // The +0.1 guarantees floor(n0 · scale) = out (DINO issue #8).
        let scale_rows = (rows as f64 + 0.1) / h0 as f64;
        let scale_cols = (cols as f64 + 0.1) / w0 as f64;
        let r = Tensor::from_vec(bicubic_matrix(h0, rows, scale_rows), (rows, h0), device)?;
        let c = Tensor::from_vec(bicubic_matrix(w0, cols, scale_cols), (cols, w0), device)?;
        cache.insert(key, (r.clone(), c.clone()));
        Ok((r, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_scale_is_identity() {
        for t in [0.0, 0.25, 0.5, 0.9] {
            let s: f32 = cubic_weights(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        let m = bicubic_matrix(5, 5, 1.0);
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(m[i * 5 + j], if i == j { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn rows_sum_to_one_with_border_clamping() {
        let m = bicubic_matrix(14, 6, 6.1 / 14.0);
        for row in m.chunks(14) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        // Output 0 samples src = 14/6.1 · 0.5 − 0.5 ≈ 0.6475: its −1 tap is clamped onto index 0.
        assert!(m[0] > 0.0 && m[4] == 0.0);
    }
}
