//! Pooling as mmseg 0.12 and mmdet 2.11 use it, exact and differentiable on every device:
//! - `nn.AdaptiveAvgPool2d(s)` in mmseg's `PPM` (`mmseg/models/decode_heads/psp_head.py`),
//!   PyTorch windows `start = ⌊i·in/out⌋`, `end = ⌈(i+1)·in/out⌉`
//!   (`aten/src/ATen/native/AdaptiveAveragePooling.cpp`), as `P_h · X · P_wᵀ`;
//! - `nn.MaxPool2d(k, stride=k)` in the iBOT pyramid (`fpn4`, and `fpn3`/`fpn4` for patch 8,
//!   `evaluation/semantic_segmentation/mmcv_custom/register_backbone.py`), floor mode;
//! - mmdet's FPN P6 `F.max_pool2d(x, 1, stride=2)` (`mmdet/models/necks/fpn.py`), which is
//!   `x[..., ::2, ::2]`.
//!
//! candle's `max_pool2d` is not used: its backward bails unless kernel == stride, scales the
//! gradient of a window's maximum by (number of maxima)/k² instead of routing it whole, and
//! misplaces it when H or W is not a multiple of k (it upsamples the pooled map back to H×W).
//! Here the window's first maximum (PyTorch's CPU/CUDA tie rule) is selected with a detached
//! one-hot mask and the output is `Σ x·onehot`, so the gradient goes to exactly that element.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::cache::cached;

/// PyTorch's adaptive-pooling window of output `i`: `[⌊i·n_in/n_out⌋, ⌈(i+1)·n_in/n_out⌉)`.
pub fn adaptive_window(i: usize, n_in: usize, n_out: usize) -> (usize, usize) {
    let start = (i * n_in) / n_out;
    let end = ((i + 1) * n_in).div_ceil(n_out);
    (start, end)
}

/// `[n_out, n_in]` averaging matrix of 1-D adaptive average pooling.
pub fn adaptive_avg_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    for i in 0..n_out {
        let (s, e) = adaptive_window(i, n_in, n_out);
        let w = 1.0 / (e - s) as f32;
        for j in s..e {
            m[i * n_in + j] = w;
        }
    }
    m
}

fn adaptive_matrix_t(n_in: usize, n_out: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    cached("adaptive_avg_t", &[n_in, n_out], device, dtype, || {
        Tensor::from_vec(
            adaptive_avg_matrix(n_in, n_out),
            (n_out, n_in),
            &Device::Cpu,
        )?
        .t()?
        .contiguous()
    })
}

/// `F.adaptive_avg_pool2d(x, (oh, ow))` on `[B, C, H, W]`; output sizes larger than the input are
/// allowed, as in PyTorch (windows then overlap/repeat).
pub fn adaptive_avg_pool2d(x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = size;
    let (dev, dt) = (x.device(), x.dtype());
    // Along W: [B·C·H, W] · [W, ow].
    let y = x
        .contiguous()?
        .reshape((b * c * h, w))?
        .matmul(&adaptive_matrix_t(w, ow, dev, dt)?)?
        .reshape((b, c, h, ow))?;
    // Along H: [B·C·ow, H] · [H, oh], through a transpose.
    y.transpose(2, 3)?
        .contiguous()?
        .reshape((b * c * ow, h))?
        .matmul(&adaptive_matrix_t(h, oh, dev, dt)?)?
        .reshape((b, c, ow, oh))?
        .transpose(2, 3)?
        .contiguous()
}

/// `F.max_pool2d(x, k, stride=k)` (no padding, floor mode) on `[B, C, H, W]`. Ties go to the
/// first maximum of the window in row-major order, as PyTorch's kernels do.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / k, w / k);
    if oh == 0 || ow == 0 {
        candle_core::bail!("max_pool2d: {h}x{w} input is smaller than the {k}x{k} kernel")
    }
    let kk = k * k;
    // [B, C, oh·k, ow·k] → [B, C, oh, ow, k·k], window taps in PyTorch's scan order (row, col).
    let windows = x
        .narrow(2, 0, oh * k)?
        .narrow(3, 0, ow * k)?
        .reshape((b, c, oh, k, ow, k))?
        .permute((0, 1, 2, 4, 3, 5))?
        .contiguous()?
        .reshape((b, c, oh, ow, kk))?;
    let onehot = first_max_onehot(&windows.detach())?;
    (windows * onehot)?.sum(D::Minus1)
}

/// One-hot mask (same shape and dtype as `x`) of the first maximum along the last axis. Built
/// from `max`/`eq` only, so the tie rule is the same on every backend.
fn first_max_onehot(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    let is_max = x
        .broadcast_eq(&x.max_keepdim(D::Minus1)?)?
        .to_dtype(x.dtype())?;
    // Score n − j for the maxima at j: the largest score is the first maximum.
    let rank: Vec<f32> = (0..n).map(|j| (n - j) as f32).collect();
    let rank = Tensor::from_vec(rank, n, x.device())?.to_dtype(x.dtype())?;
    let score = is_max.broadcast_mul(&rank)?;
    score
        .broadcast_eq(&score.max_keepdim(D::Minus1)?)?
        .to_dtype(x.dtype())
}

/// `x[:, :, ::s, ::s]`, i.e. `F.max_pool2d(x, 1, stride=s)` (mmdet's P6 with s = 2); output
/// `⌊(H−1)/s⌋ + 1` × `⌊(W−1)/s⌋ + 1`. Pads to a multiple of `s`, reshapes and narrows, so the
/// backward is a zero-pad and a narrow: no scatter on any device.
pub fn subsample(x: &Tensor, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if s == 1 {
        return Ok(x.clone());
    }
    let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
    x.pad_with_zeros(2, 0, oh * s - h)?
        .pad_with_zeros(3, 0, ow * s - w)?
        .reshape((b, c, oh, s, ow, s))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((b, c, oh, ow))
}

/// mmdet's P6: `F.max_pool2d(x, 1, stride=2)`.
pub fn max_pool2d_k1s2(x: &Tensor) -> Result<Tensor> {
    subsample(x, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_windows_match_pytorch() {
        // 16 → 6: starts ⌊16i/6⌋, ends ⌈16(i+1)/6⌉.
        let w: Vec<_> = (0..6).map(|i| adaptive_window(i, 16, 6)).collect();
        assert_eq!(w, vec![(0, 3), (2, 6), (5, 8), (8, 11), (10, 14), (13, 16)]);
        assert_eq!(adaptive_window(0, 13, 1), (0, 13));
    }

    #[test]
    fn max_pool_picks_the_first_of_tied_maxima() -> Result<()> {
        let x = Tensor::new(&[[[[1f32, 1.], [0., 1.]]]], &Device::Cpu)?;
        let oh = first_max_onehot(
            &x.reshape((1, 1, 1, 1, 4))?, // one 2×2 window
        )?;
        assert_eq!(oh.flatten_all()?.to_vec1::<f32>()?, vec![1., 0., 0., 0.]);
        Ok(())
    }
}
