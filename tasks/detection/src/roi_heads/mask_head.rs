//! mmdet 2.11's `FCNMaskHead` (`mmdet/models/roi_heads/mask_heads/fcn_mask_head.py`): `convs.{i}`
//! (mmcv `ConvModule`: 3×3 conv with bias, no norm, ReLU; kaiming-normal fan_out init), `upsample`
//! (`ConvTranspose2d(k=2, s=2)` + ReLU, as a GEMM, kaiming-normal fan_out init, bias 0) and
//! `conv_logits` (1×1 → K class channels, kaiming-normal fan_out, bias 0).
//!
//! Loss (`CrossEntropyLoss(use_mask=True)` → `mask_cross_entropy`): each positive RoI's logits at its
//! gt label's channel against the 28×28 target (`mask_target`), binary cross-entropy with logits
//! averaged over every pixel of every positive; 0 without positives.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::conv::{Conv2d, Conv2dConfig};
use layers::conv_module::{relu, ConvModule, ConvModuleConfig};
use layers::deconv::ConvTranspose2x2;
use layers::losses::bce_with_logits;
use layers::norm::Buffers;

pub struct MaskHead {
    convs: Vec<ConvModule>,
    upsample: ConvTranspose2x2,
    conv_logits: Conv2d,
    num_classes: usize,
}

impl MaskHead {
    /// `vb` at `roi_head.mask_head` (or `roi_head.mask_head.{stage}`).
    pub fn new(
        num_convs: usize,
        in_channels: usize,
        channels: usize,
        num_classes: usize,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        let mut convs = Vec::new();
        let mut last = in_channels;
        for i in 0..num_convs {
            convs.push(ConvModule::new(
                last,
                channels,
                ConvModuleConfig::relu(3),
                vb.pp(format!("convs.{i}")),
                buffers,
            )?);
            last = channels;
        }
        // kaiming_normal_(mode='fan_out'): for a transposed conv weight [c_in, c_out, 2, 2]
        // PyTorch's fan_out is size(0)·k² = c_in·4
        let up_std = (2.0 / (last * 4) as f64).sqrt();
        let up = vb.pp("upsample");
        let upsample = ConvTranspose2x2::from_tensors(
            up.get_with_hints(
                (last, channels, 2, 2),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: up_std,
                },
            )?,
            Some(up.get_with_hints(channels, "bias", Init::Const(0.0))?),
        );
        let logits_std = (2.0 / num_classes as f64).sqrt();
        let conv_logits = Conv2d::new_with_init(
            channels,
            num_classes,
            Conv2dConfig::same(1),
            vb.pp("conv_logits"),
            Init::Randn {
                mean: 0.0,
                stdev: logits_std,
            },
            Init::Const(0.0),
        )?;
        Ok(MaskHead {
            convs,
            upsample,
            conv_logits,
            num_classes,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// `[P, C, s, s]` → mask logits `[P, K, 2s, 2s]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for c in &self.convs {
            x = c.forward_t(&x, true)?;
        }
        let x = relu(&self.upsample.forward(&x)?)?;
        self.conv_logits.forward(&x)
    }
}

/// Rows `labels[i]` of channel-major `[P, K, S, S]` logits: `[P, S, S]`.
pub fn select_class(mask_pred: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let (p, k, s1, s2) = mask_pred.dims4()?;
    if labels.len() != p {
        candle_core::bail!("{} labels for {p} masks", labels.len());
    }
    let idx: Vec<u32> = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| (i * k + l as usize) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, p, mask_pred.device())?;
    mask_pred.reshape((p * k, s1, s2))?.index_select(&idx, 0)
}

/// `FCNMaskHead.loss`: `targets` is `[P, S, S]` (0/1) on the host, `labels` the positives' gt labels.
pub fn mask_loss(mask_pred: &Tensor, targets: &[f32], labels: &[i64]) -> Result<Tensor> {
    let (p, _, s1, s2) = mask_pred.dims4()?;
    if p == 0 {
        return mask_pred.sum_all()?.affine(0.0, 0.0);
    }
    let x = select_class(mask_pred, labels)?;
    let t =
        Tensor::from_vec(targets.to_vec(), (p, s1, s2), mask_pred.device())?.to_dtype(x.dtype())?;
    bce_with_logits(&x, &t)?.mean_all()
}
