//! The decode heads of iBOT's ADE20K protocol, transcribed from mmseg 0.12.0
//! (`decode_heads/uper_head.py`, `fcn_head.py`, `decode_head.py`), keys as in its state dicts:
//!
//! - [`UperHead`] (`decode_head.*`): PPM on the last level (adaptive average pool 1/2/3/6 → 1×1
//!   ConvModule → bilinear back), `bottleneck` 3×3; 1×1 `lateral_convs` on the other levels;
//!   top-down bilinear sums; 3×3 `fpn_convs`; all levels resized to level 0 and concatenated;
//!   `fpn_bottleneck` 3×3; Dropout2d; 1×1 `conv_seg`.
//! - [`FcnHead`] (`auxiliary_head.*`, and the linear probe's `decode_head.*`): `num_convs` 3×3
//!   ConvModules (0 = identity), optional `resize_concat` of several levels, Dropout2d, `conv_seg`.
//!
//! Every resize is bilinear with `align_corners=False`; ConvModules are conv (no bias) → BN → ReLU;
//! `conv_seg` starts from N(0, 0.01) with a zero bias (`BaseDecodeHead.init_weights`).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::conv::{Conv2d, Conv2dConfig};
use layers::conv_module::{ConvModule, ConvModuleConfig};
use layers::norm::Buffers;
use layers::pool::adaptive_avg_pool2d;
use layers::resize::bilinear;
use layers::Dropout2d;

fn resize_to(x: &Tensor, like: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = like.dims4()?;
    let (_, _, xh, xw) = x.dims4()?;
    if (xh, xw) == (h, w) {
        return Ok(x.clone());
    }
    bilinear(x, (h, w), false)
}

/// `BaseDecodeHead.cls_seg`: Dropout2d (training only) then the 1×1 classifier.
struct ClsSeg {
    dropout: Option<Dropout2d>,
    conv_seg: Conv2d,
}

impl ClsSeg {
    fn new(channels: usize, classes: usize, dropout: f64, vb: VarBuilder) -> Result<Self> {
        Ok(ClsSeg {
            dropout: (dropout > 0.0).then(|| Dropout2d::new(dropout)),
            conv_seg: Conv2d::new_with_init(
                channels,
                classes,
                Conv2dConfig::default(),
                vb.pp("conv_seg"),
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
                Init::Const(0.0),
            )?,
        })
    }

    fn forward(&self, x: &Tensor, rng: Option<&mut dyn rand::RngCore>) -> Result<Tensor> {
        let x = match (&self.dropout, rng) {
            (Some(d), Some(rng)) => d.forward(x, Some(rng))?,
            _ => x.clone(),
        };
        self.conv_seg.forward(&x)
    }
}

pub struct UperHead {
    psp_modules: Vec<(usize, ConvModule)>,
    bottleneck: ConvModule,
    lateral_convs: Vec<ConvModule>,
    fpn_convs: Vec<ConvModule>,
    fpn_bottleneck: ConvModule,
    cls: ClsSeg,
}

impl UperHead {
    pub fn new(
        in_channels: &[usize],
        channels: usize,
        pool_scales: &[usize],
        classes: usize,
        dropout: f64,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        let n = in_channels.len();
        if n < 2 {
            candle_core::bail!("UPerHead needs at least 2 levels, got {n}");
        }
        let last = in_channels[n - 1];
        let cm = |c_in: usize, k: usize, vb: VarBuilder| {
            ConvModule::new(c_in, channels, ConvModuleConfig::bn_relu(k), vb, buffers)
        };
        let psp_modules = pool_scales
            .iter()
            .enumerate()
            .map(|(i, &s)| Ok((s, cm(last, 1, vb.pp(format!("psp_modules.{i}.1")))?)))
            .collect::<Result<Vec<_>>>()?;
        let bottleneck = cm(last + pool_scales.len() * channels, 3, vb.pp("bottleneck"))?;
        let lateral_convs = in_channels[..n - 1]
            .iter()
            .enumerate()
            .map(|(i, &c)| cm(c, 1, vb.pp(format!("lateral_convs.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let fpn_convs = (0..n - 1)
            .map(|i| cm(channels, 3, vb.pp(format!("fpn_convs.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let fpn_bottleneck = cm(n * channels, 3, vb.pp("fpn_bottleneck"))?;
        Ok(UperHead {
            psp_modules,
            bottleneck,
            lateral_convs,
            fpn_convs,
            fpn_bottleneck,
            cls: ClsSeg::new(channels, classes, dropout, vb)?,
        })
    }

    fn psp_forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut outs = vec![x.clone()];
        for (scale, conv) in &self.psp_modules {
            let pooled = conv.forward_t(&adaptive_avg_pool2d(x, (*scale, *scale))?, train)?;
            outs.push(bilinear(&pooled, (h, w), false)?);
        }
        self.bottleneck.forward_t(&Tensor::cat(&outs, 1)?, train)
    }

    /// Logits at the resolution of level 0.
    pub fn forward(
        &self,
        inputs: &[Tensor],
        train: bool,
        rng: Option<&mut dyn rand::RngCore>,
    ) -> Result<Tensor> {
        let n = inputs.len();
        let mut laterals: Vec<Tensor> = self
            .lateral_convs
            .iter()
            .zip(inputs)
            .map(|(c, x)| c.forward_t(x, train))
            .collect::<Result<_>>()?;
        laterals.push(self.psp_forward(&inputs[n - 1], train)?);
        for i in (1..n).rev() {
            // mmseg adds in place; out of place gives the same values and gradients.
            let up = resize_to(&laterals[i], &laterals[i - 1])?;
            laterals[i - 1] = (&laterals[i - 1] + up)?;
        }
        let mut fpn_outs: Vec<Tensor> = self
            .fpn_convs
            .iter()
            .zip(&laterals)
            .map(|(c, x)| c.forward_t(x, train))
            .collect::<Result<_>>()?;
        fpn_outs.push(laterals[n - 1].clone());
        let base = fpn_outs[0].clone();
        for out in fpn_outs.iter_mut().skip(1) {
            *out = resize_to(out, &base)?;
        }
        let x = self
            .fpn_bottleneck
            .forward_t(&Tensor::cat(&fpn_outs, 1)?, train)?;
        self.cls.forward(&x, if train { rng } else { None })
    }
}

pub struct FcnHead {
    in_index: Vec<usize>,
    resize_concat: bool,
    convs: Vec<ConvModule>,
    cls: ClsSeg,
}

impl FcnHead {
    /// `in_index` selects the input levels; with several, `resize_concat` resizes them to the
    /// first one's size and concatenates them (the linear probe).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        in_index: Vec<usize>,
        channels: usize,
        num_convs: usize,
        classes: usize,
        dropout: f64,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        let resize_concat = in_index.len() > 1;
        let mut convs = Vec::new();
        for i in 0..num_convs {
            let c_in = if i == 0 { in_channels } else { channels };
            convs.push(ConvModule::new(
                c_in,
                channels,
                ConvModuleConfig::bn_relu(3),
                vb.pp(format!("convs.{i}")),
                buffers,
            )?);
        }
        if num_convs == 0 && channels != in_channels {
            candle_core::bail!("FCNHead with num_convs 0 needs channels == in_channels ({channels} vs {in_channels})");
        }
        Ok(FcnHead {
            in_index,
            resize_concat,
            convs,
            cls: ClsSeg::new(channels, classes, dropout, vb)?,
        })
    }

    pub fn forward(
        &self,
        inputs: &[Tensor],
        train: bool,
        rng: Option<&mut dyn rand::RngCore>,
    ) -> Result<Tensor> {
        let x = if self.resize_concat {
            let first = &inputs[self.in_index[0]];
            let parts: Vec<Tensor> = self
                .in_index
                .iter()
                .map(|&i| resize_to(&inputs[i], first))
                .collect::<Result<_>>()?;
            Tensor::cat(&parts, 1)?
        } else {
            inputs[self.in_index[0]].clone()
        };
        let mut x = x;
        for c in &self.convs {
            x = c.forward_t(&x, train)?;
        }
        self.cls.forward(&x, if train { rng } else { None })
    }
}
