//! LayerNorm and softmax that stay differentiable.
//!
//! candle-nn's fused `layer_norm` / `softmax_last_dim` record no backward op (candle #3011), so a
//! model trained through them silently gets no gradients. They are also the fast path, so we use
//! them only when nothing is being tracked (inference) and compose from tensor ops otherwise.

use candle_core::{DType, Result, Tensor, D};

pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = if x.is_contiguous() { x.clone() } else { x.contiguous()? };
    if !x.track_op() && !weight.track_op() && !bias.track_op() {
        return candle_nn::ops::layer_norm(&x, weight, bias, eps as f32);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let mean = x32.mean_keepdim(D::Minus1)?;
    let centered = x32.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dimension, computed in f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(&x32.contiguous()?)?.to_dtype(dtype);
    }
    let max = x32.max_keepdim(D::Minus1)?.detach();
    let e = x32.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_and_composed_paths_agree_and_composed_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let b = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let xv = Var::from_tensor(&x)?;
        let fused = layer_norm(&x, &w, &b, 1e-6)?;
        let composed = layer_norm(xv.as_tensor(), &w, &b, 1e-6)?;
        let diff = (fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        let sm_f = softmax_last_dim(&x)?;
        let sm_c = softmax_last_dim(xv.as_tensor())?;
        let diff = (sm_f - &sm_c)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        let loss = (composed.sqr()?.sum_all()? + sm_c.sqr()?.sum_all()?)?;
        let grads = loss.backward()?;
        let g = grads.get(xv.as_tensor()).expect("gradient reaches the input");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }
}
