//! Losses of the dense tasks, each differentiable through candle's autograd and composed only of
//! ops whose backward exists (no fused candle-nn softmax):
//! - mmseg 0.12 `CrossEntropyLoss` (`mmseg/models/losses/cross_entropy_loss.py`): per-pixel
//!   `F.cross_entropy(reduction='none', ignore_index=255)` then `.mean()` over **all** pixels,
//!   ignored ones counting as zeros; and the later `avg_non_ignore=True` rule (mmseg ≥ 0.24:
//!   `sum / (n_valid + f32::EPSILON)`);
//! - `F.cross_entropy` with class targets (mean), timm's `SoftTargetCrossEntropy`;
//! - `F.binary_cross_entropy_with_logits` in the stable form max(x,0) − x·t + log(1+e^{−|x|})
//!   (candle-nn's version takes the log of a sigmoid);
//! - mmdet 2.11 `smooth_l1_loss` (β), `l1_loss`, `giou_loss` (`mmdet/models/losses/`,
//!   `bbox_overlaps(mode='giou', is_aligned=True)` in
//!   `mmdet/core/bbox/iou_calculators/iou2d_calculator.py`), elementwise, with
//!   [`weight_reduce_loss`] (`mmdet/models/losses/utils.py`) for weights and `avg_factor`.
//!
//! Non-smooth points take PyTorch's derivatives: |x| and ReLU-like masks give 0 at 0,
//! `clamp(min=0)` passes the gradient at 0, `max`/`min` of two tensors split it on ties.

use candle_core::{DType, Result, Tensor, D};

/// mmseg's default `ignore_index`.
pub const IGNORE_INDEX: u32 = 255;

/// `softmax(x, dim)` with the max subtracted as a constant (it cancels; detaching it keeps the
/// graph and the gradient clean). Has a backward, unlike candle-nn's fused `softmax_last_dim`.
pub fn softmax<Di: candle_core::shape::Dim>(x: &Tensor, dim: Di) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "softmax")?;
    let e = x.broadcast_sub(&x.max_keepdim(dim)?.detach())?.exp()?;
    e.broadcast_div(&e.sum_keepdim(dim)?)
}

/// `log_softmax(x, dim)`, composed (see [`softmax`]).
pub fn log_softmax<Di: candle_core::shape::Dim>(x: &Tensor, dim: Di) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "log_softmax")?;
    let d = x.broadcast_sub(&x.max_keepdim(dim)?.detach())?;
    d.broadcast_sub(&d.exp()?.sum_keepdim(dim)?.log()?)
}

/// |x| with derivative sign(x) (0 at 0, as PyTorch; candle's `abs` uses +1 there).
pub fn abs(x: &Tensor) -> Result<Tensor> {
    x * x.sign()?.detach()
}

/// `x.clamp(min=lo)` with PyTorch's derivative (gradient passes where x ≥ lo).
pub fn clamp_min(x: &Tensor, lo: f64) -> Result<Tensor> {
    let lo_t = Tensor::full(lo, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.ge(lo)?.where_cond(x, &lo_t)
}

/// How the per-pixel CE of [`seg_cross_entropy`] is averaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IgnoreAverage {
    /// mmseg 0.12: mean over all B·H·W pixels, ignored ones contributing 0.
    #[default]
    AllPixels,
    /// `avg_non_ignore=True`: sum / (number of non-ignored pixels + f32 ε).
    NonIgnored,
}

/// Per-pixel `F.cross_entropy(logits, labels, reduction='none', ignore_index)`:
/// logits `[B, C, H, W]`, integer labels `[B, H, W]` (u8/u32/i64) → `[B, H, W]`, 0 where the
/// label is `ignore_index`. Labels outside `[0, C)` other than the ignore index are an error.
pub fn pixel_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    ignore_index: Option<u32>,
) -> Result<Tensor> {
    let (b, c, h, w) = logits.dims4()?;
    let labels = labels.to_dtype(DType::U32)?;
    if labels.dims() != [b, h, w] {
        candle_core::bail!(
            "pixel_cross_entropy: labels {:?} vs logits {:?}",
            labels.dims(),
            logits.dims()
        )
    }
    let (safe, valid) = valid_labels(&labels, c, ignore_index)?;
    let logp = log_softmax(logits, 1)?;
    let picked = logp
        .gather(&safe.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?;
    (picked * valid.to_dtype(logits.dtype())?)?.neg()
}

/// Labels with ignored entries replaced by 0 (safe to gather) and the 0/1 validity mask (u32).
fn valid_labels(labels: &Tensor, c: usize, ignore_index: Option<u32>) -> Result<(Tensor, Tensor)> {
    let valid = match ignore_index {
        Some(i) => labels.ne(i)?.to_dtype(DType::U32)?,
        None => labels.ones_like()?,
    };
    let safe = (labels * &valid)?;
    let max = safe.flatten_all()?.max(0)?.to_scalar::<u32>()?;
    if max as usize >= c {
        candle_core::bail!("cross_entropy: label {max} out of range for {c} classes")
    }
    Ok((safe, valid))
}

/// mmseg's `CrossEntropyLoss` on `[B, C, H, W]` logits and `[B, H, W]` labels (the logits must
/// already have the label size; mmseg resizes them bilinearly in `BaseDecodeHead.losses`).
pub fn seg_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    ignore_index: Option<u32>,
    average: IgnoreAverage,
) -> Result<Tensor> {
    let per_pixel = pixel_cross_entropy(logits, labels, ignore_index)?;
    match average {
        IgnoreAverage::AllPixels => per_pixel.mean_all(),
        IgnoreAverage::NonIgnored => {
            let labels = labels.to_dtype(DType::U32)?;
            let n_valid = match ignore_index {
                Some(i) => labels
                    .ne(i)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()?,
                None => labels.elem_count() as f32,
            };
            per_pixel
                .sum_all()?
                .affine(1.0 / (n_valid as f64 + f32::EPSILON as f64), 0.0)
        }
    }
}

/// `F.cross_entropy(logits, targets)` (mean) for logits `[N, C]` and class indices `[N]`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (_, c) = logits.dims2()?;
    let (safe, _) = valid_labels(&targets.to_dtype(DType::U32)?, c, None)?;
    let logp = log_softmax(logits, 1)?;
    logp.gather(&safe.unsqueeze(1)?, 1)?.neg()?.mean_all()
}

/// timm `SoftTargetCrossEntropy`: mean over rows of Σ_c −t·log_softmax(x).
pub fn soft_target_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    (targets * log_softmax(logits, D::Minus1)?)?
        .sum(D::Minus1)?
        .neg()?
        .mean_all()
}

/// Elementwise `F.binary_cross_entropy_with_logits(x, t, reduction='none')`, stable form.
pub fn bce_with_logits(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let softplus_neg_abs = (abs(x)?.neg()?.exp()? + 1.0)?.log()?;
    (x.maximum(0.0)? - (x * t)?)? + softplus_neg_abs
}

/// `F.binary_cross_entropy_with_logits(x, t)` (mean).
pub fn bce_with_logits_mean(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    bce_with_logits(x, t)?.mean_all()
}

/// mmdet `smooth_l1_loss`, elementwise: 0.5·d²/β where d = |p − t| < β, else d − 0.5·β.
pub fn smooth_l1(pred: &Tensor, target: &Tensor, beta: f64) -> Result<Tensor> {
    let d = abs(&(pred - target)?)?;
    let quad = (d.sqr()? * (0.5 / beta))?;
    let lin = (&d - 0.5 * beta)?;
    d.lt(beta)?.where_cond(&quad, &lin)
}

/// mmdet `l1_loss`, elementwise |p − t|.
pub fn l1(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    abs(&(pred - target)?)
}

/// mmdet `bbox_overlaps(pred, target, mode='giou', is_aligned=True, eps)` for `[n, 4]` boxes
/// (x1, y1, x2, y2) → `[n]`.
pub fn giou(pred: &Tensor, target: &Tensor, eps: f64) -> Result<Tensor> {
    let col = |t: &Tensor, i: usize| t.narrow(1, i, 1).and_then(|c| c.squeeze(1));
    let (px1, py1, px2, py2) = (col(pred, 0)?, col(pred, 1)?, col(pred, 2)?, col(pred, 3)?);
    let (tx1, ty1, tx2, ty2) = (
        col(target, 0)?,
        col(target, 1)?,
        col(target, 2)?,
        col(target, 3)?,
    );
    let area_p = ((&px2 - &px1)? * (&py2 - &py1)?)?;
    let area_t = ((&tx2 - &tx1)? * (&ty2 - &ty1)?)?;
    let iw = clamp_min(&(px2.minimum(&tx2)? - px1.maximum(&tx1)?)?, 0.0)?;
    let ih = clamp_min(&(py2.minimum(&ty2)? - py1.maximum(&ty1)?)?, 0.0)?;
    let overlap = (iw * ih)?;
    let union = ((area_p + area_t)? - &overlap)?.maximum(eps)?;
    let ious = (overlap / &union)?;
    let ew = clamp_min(&(px2.maximum(&tx2)? - px1.minimum(&tx1)?)?, 0.0)?;
    let eh = clamp_min(&(py2.maximum(&ty2)? - py1.minimum(&ty1)?)?, 0.0)?;
    let enclose = (ew * eh)?.maximum(eps)?;
    ious - ((&enclose - union)? / enclose)?
}

/// mmdet `giou_loss`, per box: 1 − GIoU (the `GIoULoss` module passes eps = 1e-6).
pub fn giou_loss(pred: &Tensor, target: &Tensor, eps: f64) -> Result<Tensor> {
    giou(pred, target, eps)?.neg()? + 1.0
}

/// Reduction of an elementwise loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    None,
    #[default]
    Mean,
    Sum,
}

/// mmdet 2.11 / mmseg 0.12 `weight_reduce_loss`: multiply by `weight` (broadcast), then
/// `mean`/`sum`, or `sum / avg_factor` for `Mean` when an `avg_factor` is given.
pub fn weight_reduce_loss(
    loss: &Tensor,
    weight: Option<&Tensor>,
    reduction: Reduction,
    avg_factor: Option<f64>,
) -> Result<Tensor> {
    let loss = match weight {
        Some(w) => loss.broadcast_mul(w)?,
        None => loss.clone(),
    };
    match (avg_factor, reduction) {
        (None, Reduction::None) => Ok(loss),
        (None, Reduction::Mean) => loss.mean_all(),
        (None, Reduction::Sum) => loss.sum_all(),
        (Some(f), Reduction::Mean) => loss.sum_all()?.affine(1.0 / f, 0.0),
        (Some(_), Reduction::None) => Ok(loss),
        (Some(_), Reduction::Sum) => {
            candle_core::bail!("avg_factor can not be used with reduction=\"sum\"")
        }
    }
}
