//! mmdet 2.11's `RPNHead` (`mmdet/models/dense_heads/rpn_head.py`, `anchor_head.py`): one 3×3 conv
//! (`rpn_head.rpn_conv`) + ReLU shared by every level, then 1×1 `rpn_head.rpn_cls` (A sigmoid
//! logits) and `rpn_head.rpn_reg` (4A deltas); init `normal_init(std=0.01)`, bias 0.
//!
//! Training losses (`AnchorHead.loss` / `loss_single` with the RPN's single class): the host targets
//! of [`crate::targets::rpn_targets`] (label 0 = object, weight 1 on sampled anchors), sigmoid
//! cross-entropy on the sampled anchors and the regression loss (L1 or SmoothL1 with β) on the
//! sampled positives, BOTH summed and divided by `num_total_samples` = Σ_img max(pos, 1) +
//! Σ_img max(neg, 1) ([`crate::targets::rpn_num_total_samples`]). mmdet evaluates the losses over
//! all anchors with zero weights elsewhere; only the weighted terms are gathered here, which gives
//! the same sums. Proposals come from host copies of the detached outputs
//! ([`crate::proposals::rpn_proposals`]).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::conv::{Conv2d, Conv2dConfig};
use layers::conv_module::relu;
use layers::losses::{bce_with_logits, l1, smooth_l1};

use crate::config::RegLoss;
use crate::proposals::LevelOutput;
use crate::targets::RpnTargets;

pub struct RpnHead {
    rpn_conv: Conv2d,
    rpn_cls: Conv2d,
    rpn_reg: Conv2d,
    num_anchors: usize,
}

/// One level of the head's output: `cls` `[B, A, H, W]` logits, `reg` `[B, 4A, H, W]` deltas.
pub struct RpnLevel {
    pub cls: Tensor,
    pub reg: Tensor,
}

fn normal_conv(c_in: usize, c_out: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new_with_init(
        c_in,
        c_out,
        Conv2dConfig::same(k),
        vb,
        Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        },
        Init::Const(0.0),
    )
}

impl RpnHead {
    /// `vb` at `rpn_head`.
    pub fn new(
        in_channels: usize,
        feat_channels: usize,
        num_anchors: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(RpnHead {
            rpn_conv: normal_conv(in_channels, feat_channels, 3, vb.pp("rpn_conv"))?,
            rpn_cls: normal_conv(feat_channels, num_anchors, 1, vb.pp("rpn_cls"))?,
            rpn_reg: normal_conv(feat_channels, 4 * num_anchors, 1, vb.pp("rpn_reg"))?,
            num_anchors,
        })
    }

    pub fn num_anchors(&self) -> usize {
        self.num_anchors
    }

    /// `forward_single` on every level.
    pub fn forward(&self, feats: &[Tensor]) -> Result<Vec<RpnLevel>> {
        feats
            .iter()
            .map(|x| {
                let h = relu(&self.rpn_conv.forward(x)?)?;
                Ok(RpnLevel {
                    cls: self.rpn_cls.forward(&h)?,
                    reg: self.rpn_reg.forward(&h)?,
                })
            })
            .collect()
    }
}

/// All levels flattened in anchor order (level, y, x, anchor): logits `[B, N]`, deltas `[B, N, 4]`.
pub fn flatten_levels(levels: &[RpnLevel]) -> Result<(Tensor, Tensor)> {
    let mut cls = Vec::with_capacity(levels.len());
    let mut reg = Vec::with_capacity(levels.len());
    for l in levels {
        let (b, a, h, w) = l.cls.dims4()?;
        // permute(0, 2, 3, 1).reshape(B, -1)
        cls.push(
            l.cls
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((b, h * w * a))?,
        );
        reg.push(
            l.reg
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((b, h * w * a, 4))?,
        );
    }
    Ok((Tensor::cat(&cls, 1)?, Tensor::cat(&reg, 1)?))
}

/// Elementwise regression loss of [`RegLoss`] (L1 or SmoothL1), before weighting.
pub fn reg_loss_elementwise(pred: &Tensor, target: &Tensor, loss: RegLoss) -> Result<Tensor> {
    match loss {
        RegLoss::L1 { .. } => l1(pred, target),
        RegLoss::SmoothL1 { beta, .. } => smooth_l1(pred, target, beta),
        RegLoss::Giou { .. } => candle_core::bail!("GIoU needs decoded boxes"),
    }
}

/// The loss weight of a [`RegLoss`].
pub fn reg_loss_weight(loss: RegLoss) -> f64 {
    match loss {
        RegLoss::L1 { weight } | RegLoss::SmoothL1 { weight, .. } | RegLoss::Giou { weight } => {
            weight
        }
    }
}

/// `loss_rpn_cls` and `loss_rpn_bbox` of the batch. `targets[b]` covers all anchors of image b in
/// the order of [`flatten_levels`]; `num_total_samples` normalises both terms.
pub fn rpn_loss(
    levels: &[RpnLevel],
    targets: &[RpnTargets],
    num_total_samples: usize,
    loss_bbox: RegLoss,
) -> Result<(Tensor, Tensor)> {
    let (cls, reg) = flatten_levels(levels)?;
    let (b, n) = cls.dims2()?;
    if targets.len() != b {
        candle_core::bail!("{} RPN targets for a batch of {b}", targets.len());
    }
    let dev = cls.device();
    let mut sampled = Vec::new();
    let mut cls_target = Vec::new();
    let mut cls_weight = Vec::new();
    let mut pos = Vec::new();
    let mut reg_target = Vec::new();
    let mut reg_weight = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if t.labels.len() != n {
            candle_core::bail!(
                "RPN targets of image {i} cover {} anchors, the head {n}",
                t.labels.len()
            );
        }
        for j in 0..n {
            if t.label_weights[j] > 0.0 {
                sampled.push((i * n + j) as u32);
                // sigmoid CE: label 0 (the only class) → target 1, background → 0
                cls_target.push(if t.labels[j] == 0 { 1.0f32 } else { 0.0 });
                cls_weight.push(t.label_weights[j]);
            }
            if t.bbox_weights[j].iter().any(|&w| w > 0.0) {
                pos.push((i * n + j) as u32);
                reg_target.extend_from_slice(&t.bbox_targets[j]);
                reg_weight.extend_from_slice(&t.bbox_weights[j]);
            }
        }
    }
    let norm = 1.0 / num_total_samples.max(1) as f64;
    let flat_cls = cls.reshape(b * n)?;
    let loss_cls = if sampled.is_empty() {
        (flat_cls.sum_all()? * 0.0)?
    } else {
        let ns = sampled.len();
        let idx = Tensor::from_vec(sampled, ns, dev)?;
        let x = flat_cls.index_select(&idx, 0)?;
        let t = Tensor::from_vec(cls_target, ns, dev)?.to_dtype(x.dtype())?;
        let w = Tensor::from_vec(cls_weight, ns, dev)?.to_dtype(x.dtype())?;
        (bce_with_logits(&x, &t)? * w)?
            .sum_all()?
            .affine(norm, 0.0)?
    };
    let flat_reg = reg.reshape((b * n, 4))?;
    let loss_bbox = if pos.is_empty() {
        (flat_reg.sum_all()? * 0.0)?
    } else {
        let np = pos.len();
        let idx = Tensor::from_vec(pos, np, dev)?;
        let p = flat_reg.index_select(&idx, 0)?;
        let t = Tensor::from_vec(reg_target, (np, 4), dev)?.to_dtype(p.dtype())?;
        let w = Tensor::from_vec(reg_weight, (np, 4), dev)?.to_dtype(p.dtype())?;
        (reg_loss_elementwise(&p, &t, loss_bbox)? * w)?
            .sum_all()?
            .affine(norm * reg_loss_weight(loss_bbox), 0.0)?
    };
    Ok((loss_cls, loss_bbox))
}

/// Host copies of the outputs (detached), per level `(cls [B·A·H·W], reg [B·4A·H·W], h, w)`.
pub struct HostLevels {
    levels: Vec<(Vec<f32>, Vec<f32>, usize, usize, usize)>,
}

impl HostLevels {
    pub fn new(levels: &[RpnLevel]) -> Result<Self> {
        let levels = levels
            .iter()
            .map(|l| {
                let (_, a, h, w) = l.cls.dims4()?;
                let c = l
                    .cls
                    .detach()
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let r = l
                    .reg
                    .detach()
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Ok((c, r, a, h, w))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HostLevels { levels })
    }

    /// The [`LevelOutput`]s of image `b`.
    pub fn image(&self, b: usize) -> Vec<LevelOutput<'_>> {
        self.levels
            .iter()
            .map(|(c, r, a, h, w)| {
                let hw = h * w;
                LevelOutput {
                    cls: &c[b * a * hw..(b + 1) * a * hw],
                    deltas: &r[b * 4 * a * hw..(b + 1) * 4 * a * hw],
                    h: *h,
                    w: *w,
                }
            })
            .collect()
    }
}
