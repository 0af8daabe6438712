//! Classification losses of the fine-tuning recipes, composed from candle ops that record a
//! backward (candle-nn's fused softmax does not): timm `SoftTargetCrossEntropy` (mixup/cutmix
//! targets), `LabelSmoothingCrossEntropy` and plain cross-entropy, each a batch mean.

use candle_core::{DType, Result, Tensor, D};

/// `log_softmax` over the last dimension in f32, with a backward.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// timm `SoftTargetCrossEntropy`: `mean_b Σ_c −t·log_softmax(x)`; `targets` [B, C].
pub fn soft_target_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = log_softmax(logits)?;
    (lp * targets.to_dtype(DType::F32)?)?
        .sum(D::Minus1)?
        .neg()?
        .mean_all()
}

/// Class indices [B] as one-hot rows [B, C] (f32).
pub fn one_hot(labels: &[u32], classes: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = 1.0;
    }
    Tensor::from_vec(v, (labels.len(), classes), device)
}

/// timm `LabelSmoothingCrossEntropy(smoothing)`: `(1 − ε)·nll + ε·mean_c(−log p)`, batch mean;
/// ε = 0 is the plain cross-entropy.
pub fn label_smoothing_cross_entropy(
    logits: &Tensor,
    labels: &[u32],
    smoothing: f64,
) -> Result<Tensor> {
    let lp = log_softmax(logits)?;
    let classes = lp.dim(D::Minus1)?;
    let onehot = one_hot(labels, classes, lp.device())?;
    let nll = (&lp * &onehot)?.sum(D::Minus1)?.neg()?;
    if smoothing == 0.0 {
        return nll.mean_all();
    }
    let smooth = lp.mean(D::Minus1)?.neg()?;
    ((nll * (1.0 - smoothing))? + (smooth * smoothing)?)?.mean_all()
}
