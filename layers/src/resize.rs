//! `F.interpolate` in size mode, exact and differentiable: bilinear (`align_corners` false or true)
//! and legacy `nearest`, as mmseg 0.12 (`mmseg/ops/wrappers.py: resize`, used by `UPerHead`, `PPM`,
//! `BaseDecodeHead.losses` and `EncoderDecoder.slide_inference`) and mmdet 2.11's FPN top-down
//! path call them.
//!
//! Sources transcribed: PyTorch `aten/src/ATen/native/UpSample.h` (`area_pixel_compute_scale`,
//! `area_pixel_compute_source_index`, `guard_index_and_lambda`, `nearest_idx`) and
//! `UpSampleKernel.cpp` (`compute_source_index_and_lambda`).
//!
//! Bilinear resizing is separable, so it is `Y = R_h · X · R_wᵀ` with two small host-built
//! matrices (at most two non-zeros per row), the pattern of `backbone/src/pos_embed.rs`. Both
//! products are plain GEMMs, so the backward (`R_hᵀ · dY · R_w`) comes from candle's autograd and
//! the same code runs on the CPU and CUDA. candle's own `upsample_bilinear2d` has no backward.
//! Nearest is an `index_select` per axis; its backward (`index_add`) runs, on CUDA, one thread per
//! (outer, inner) position, i.e. `B·C·W` threads for the row pass, so it stays parallel.

use candle_core::{DType, Device, Result, Tensor};

use crate::cache::cached;

/// PyTorch's `area_pixel_compute_scale` for size mode (no `scale_factor`), in f32 as the CPU
/// kernel computes it for f32 input.
fn linear_scale(n_in: usize, n_out: usize, align_corners: bool) -> f32 {
    if align_corners {
        if n_out > 1 {
            (n_in as f32 - 1.0) / (n_out as f32 - 1.0)
        } else {
            0.0
        }
    } else {
        n_in as f32 / n_out as f32
    }
}

/// Row-stochastic `[n_out, n_in]` matrix of 1-D linear interpolation, exactly PyTorch's
/// `compute_source_index_and_lambda`: src = scale·(dst + 0.5) − 0.5 clamped at 0
/// (`align_corners=False`) or scale·dst (`True`); lower index floor(src) clamped to n_in − 1;
/// upper index the next one unless at the border; λ clamped to [0, 1].
pub fn bilinear_matrix(n_in: usize, n_out: usize, align_corners: bool) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    if n_in == n_out {
        for i in 0..n_in {
            m[i * n_in + i] = 1.0;
        }
        return m;
    }
    let scale = linear_scale(n_in, n_out, align_corners);
    for dst in 0..n_out {
        let src = if align_corners {
            scale * dst as f32
        } else {
            (scale * (dst as f32 + 0.5) - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(n_in - 1);
        let lambda1 = (src - i0 as f32).clamp(0.0, 1.0);
        let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
        m[dst * n_in + i0] += 1.0 - lambda1;
        m[dst * n_in + i1] += lambda1;
    }
    m
}

/// PyTorch's legacy `nearest_idx` (mode `'nearest'`, size given): identity when the sizes match,
/// `dst >> 1` for an exact doubling, otherwise min(floor(dst · (in/out as f32)), in − 1).
pub fn nearest_indices(n_in: usize, n_out: usize) -> Vec<u32> {
    (0..n_out)
        .map(|dst| {
            if n_in == n_out {
                dst
            } else if n_out == 2 * n_in {
                dst >> 1
            } else {
                let scale = n_in as f32 / n_out as f32;
                ((dst as f32 * scale).floor() as usize).min(n_in - 1)
            }
        })
        .map(|i| i as u32)
        .collect()
}

/// `[n_in, n_out]`: the transpose of [`bilinear_matrix`], the right-hand operand of `X · Rᵀ`.
fn bilinear_matrix_t(
    n_in: usize,
    n_out: usize,
    align_corners: bool,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let kind = if align_corners {
        "bilinear_t_ac"
    } else {
        "bilinear_t"
    };
    cached(kind, &[n_in, n_out], device, dtype, || {
        Tensor::from_vec(
            bilinear_matrix(n_in, n_out, align_corners),
            (n_out, n_in),
            &Device::Cpu,
        )?
        .t()?
        .contiguous()
    })
}

/// Applies the `[n_in, n_out]` matrix `m_t` to the last axis of `x` (`x · m_t`), any rank ≥ 2.
fn apply_last(x: &Tensor, m_t: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let n_in = dims[dims.len() - 1];
    let rows = x.elem_count() / n_in;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = m_t.dim(1)?;
    x.contiguous()?
        .reshape((rows, n_in))?
        .matmul(m_t)?
        .reshape(out_dims)
}

/// Resizes `[.., H, W]` with two 1-D operators given as `[H, H']` and `[W, W']` matrices (`None`
/// for an axis that keeps its size): one GEMM along W, one along H (through a transpose, so both
/// are single large GEMMs rather than many small batched ones).
fn separable(x: &Tensor, rows_t: Option<&Tensor>, cols_t: Option<&Tensor>) -> Result<Tensor> {
    let rank = x.rank();
    let mut y = match cols_t {
        Some(c) => apply_last(x, c)?,
        None => x.clone(),
    };
    if let Some(r) = rows_t {
        y = apply_last(&y.transpose(rank - 2, rank - 1)?, r)?
            .transpose(rank - 2, rank - 1)?
            .contiguous()?;
    }
    Ok(y)
}

/// `F.interpolate(x, size=(h, w), mode='bilinear', align_corners=…)` on `[B, C, H, W]` (any rank
/// ≥ 2 works: the last two axes are resized). Differentiable w.r.t. `x`.
pub fn bilinear(x: &Tensor, size: (usize, usize), align_corners: bool) -> Result<Tensor> {
    let rank = x.rank();
    let (h, w) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
    let (oh, ow) = size;
    let (dev, dt) = (x.device(), x.dtype());
    let rows = if oh != h {
        Some(bilinear_matrix_t(h, oh, align_corners, dev, dt)?)
    } else {
        None
    };
    let cols = if ow != w {
        Some(bilinear_matrix_t(w, ow, align_corners, dev, dt)?)
    } else {
        None
    };
    separable(x, rows.as_ref(), cols.as_ref())
}

/// `F.interpolate(x, size=(h, w), mode='nearest')` (PyTorch's legacy floor rule, any ratio) on
/// `[B, C, H, W]`. Differentiable w.r.t. `x` (`index_select` per axis).
pub fn nearest(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = size;
    let dev = x.device();
    let index = |n_in: usize, n_out: usize| {
        cached("nearest", &[n_in, n_out], dev, DType::U32, || {
            Tensor::from_vec(nearest_indices(n_in, n_out), n_out, &Device::Cpu)
        })
    };
    let mut y = x.clone();
    if oh != h {
        y = y.index_select(&index(h, oh)?, 2)?;
    }
    if ow != w {
        y = y.index_select(&index(w, ow)?, 3)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_rows_sum_to_one() {
        for (i, o) in [(7, 16), (11, 9), (16, 5), (1, 4), (4, 1)] {
            for ac in [false, true] {
                let m = bilinear_matrix(i, o, ac);
                for row in m.chunks(i) {
                    let s: f32 = row.iter().sum();
                    assert!((s - 1.0).abs() < 1e-6, "{i}->{o} ac={ac}: {s}");
                }
            }
        }
    }

    #[test]
    fn nearest_follows_the_legacy_floor_rule() {
        assert_eq!(nearest_indices(3, 6), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(nearest_indices(5, 3), vec![0, 1, 3]);
        assert_eq!(nearest_indices(4, 4), vec![0, 1, 2, 3]);
    }
}
