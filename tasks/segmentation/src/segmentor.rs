//! mmseg 0.12 `EncoderDecoder` as iBOT configures it: the dense ViT backbone (with the deconv
//! pyramid for UperNet, without it and frozen for the linear probe), the decode head and the
//! auxiliary head; training losses as mmseg computes them (logits resized bilinearly to the label
//! size inside the loss, cross-entropy with ignore index 255 averaged over ALL pixels, decode
//! weight 1, auxiliary weight 0.4) and `encode_decode` for inference (logits resized to the input).

use backbone::dense::{DenseBackbone, DenseConfig};
use backbone::{TrainCtx, VitConfig};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use layers::losses::{seg_cross_entropy, IgnoreAverage};
use layers::norm::Buffers;
use layers::resize::bilinear;

use crate::config::{HeadKind, SegConfig};
use crate::heads::{FcnHead, UperHead};

pub const IGNORE_INDEX: u32 = 255;

enum Decode {
    Linear(FcnHead),
    Uper(UperHead),
}

/// The decode head and, for UperNet, the auxiliary head, with their loss weights.
pub struct SegHeads {
    decode: Decode,
    aux: Option<FcnHead>,
    aux_weight: f64,
}

/// The named loss terms of one batch as mmseg logs them (`decode.loss_seg`, `aux.loss_seg` with
/// its weight applied) and their sum.
pub struct Losses {
    pub total: Tensor,
    pub decode: Tensor,
    pub aux: Option<Tensor>,
}

impl SegHeads {
    /// Heads over `levels` inputs of `dim` channels (`decode_head.*`, `auxiliary_head.*`).
    pub fn new(
        cfg: &SegConfig,
        dim: usize,
        levels: usize,
        classes: usize,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> anyhow::Result<Self> {
        let d = dim;
        let (decode, aux) = match cfg.head {
            HeadKind::Linear => (
                Decode::Linear(FcnHead::new(
                    d * levels,
                    (0..levels).collect(),
                    d * levels,
                    0,
                    classes,
                    0.0,
                    vb.pp("decode_head"),
                    buffers,
                )?),
                None,
            ),
            HeadKind::Upernet => {
                if levels != 4 {
                    anyhow::bail!("UperNet takes 4 levels, out_indices has {levels}");
                }
                let channels = cfg.model.channels.unwrap_or(d);
                let decode = UperHead::new(
                    &[d; 4],
                    channels,
                    &cfg.model.pool_scales,
                    classes,
                    cfg.model.dropout,
                    vb.pp("decode_head"),
                    buffers,
                )?;
                let aux = FcnHead::new(
                    d,
                    vec![2],
                    cfg.model.aux_channels,
                    1,
                    classes,
                    cfg.model.dropout,
                    vb.pp("auxiliary_head"),
                    buffers,
                )?;
                (Decode::Uper(decode), Some(aux))
            }
        };
        Ok(SegHeads {
            decode,
            aux,
            aux_weight: cfg.model.aux_weight,
        })
    }

    /// Decode logits (at level 0's resolution) and, in training, the auxiliary logits.
    pub fn forward(
        &self,
        feats: &[Tensor],
        train: bool,
        mut rng: Option<&mut dyn rand::RngCore>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let main = match &self.decode {
            Decode::Linear(h) => h.forward(
                feats,
                train,
                rng.as_mut().map(|r| &mut **r as &mut dyn rand::RngCore),
            )?,
            Decode::Uper(h) => h.forward(
                feats,
                train,
                rng.as_mut().map(|r| &mut **r as &mut dyn rand::RngCore),
            )?,
        };
        let aux = match (&self.aux, train) {
            (Some(a), true) => Some(a.forward(feats, true, rng)?),
            _ => None,
        };
        Ok((main, aux))
    }

    /// `forward_train` of the heads: each head's logits resized to the label size, cross-entropy
    /// over all pixels (ignore 255), decode weight 1 plus the auxiliary weight.
    pub fn losses(
        &self,
        feats: &[Tensor],
        labels: &Tensor,
        rng: Option<&mut dyn rand::RngCore>,
    ) -> Result<Losses> {
        let (main, aux) = self.forward(feats, true, rng)?;
        self.loss_terms(&main, aux.as_ref(), labels)
    }

    /// The loss terms of given decode / auxiliary logits.
    pub fn loss_terms(
        &self,
        main: &Tensor,
        aux: Option<&Tensor>,
        labels: &Tensor,
    ) -> Result<Losses> {
        let (_, h, w) = labels.dims3()?;
        let ce = |logits: &Tensor| -> Result<Tensor> {
            let logits = bilinear(logits, (h, w), false)?;
            seg_cross_entropy(
                &logits,
                labels,
                Some(IGNORE_INDEX),
                IgnoreAverage::AllPixels,
            )
        };
        let decode = ce(main)?;
        // mmseg applies `loss_weight` inside the loss, so `aux.loss_seg` is already weighted.
        let aux = match aux {
            Some(a) => Some((ce(a)? * self.aux_weight)?),
            None => None,
        };
        let total = match &aux {
            Some(a) => (&decode + a)?,
            None => decode.clone(),
        };
        Ok(Losses { total, decode, aux })
    }
}

pub struct Segmentor {
    backbone: DenseBackbone,
    heads: SegHeads,
    patch: usize,
}

/// The backbone wrapper settings a recipe implies for a ViT of `vit`'s depth.
pub fn dense_config(cfg: &SegConfig, vit: &VitConfig) -> DenseConfig {
    DenseConfig {
        out_indices: cfg.out_indices(vit.depth),
        out_with_norm: cfg.model.out_with_norm,
        with_fpn: cfg.head == HeadKind::Upernet,
        img_size: [
            cfg.pipeline.crop_size[0] as usize,
            cfg.pipeline.crop_size[1] as usize,
        ],
        drop_path: cfg.model.drop_path,
        frozen: cfg.head == HeadKind::Linear,
    }
}

impl Segmentor {
    pub fn new(
        vit: &VitConfig,
        cfg: &SegConfig,
        classes: usize,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> anyhow::Result<Self> {
        let dense = dense_config(cfg, vit);
        let levels = dense.out_indices.len();
        let backbone = DenseBackbone::new(vit, &dense, vb.clone(), buffers)?;
        let heads = SegHeads::new(cfg, vit.embed_dim, levels, classes, vb, buffers)?;
        Ok(Segmentor {
            backbone,
            heads,
            patch: vit.patch_size,
        })
    }

    pub fn backbone(&self) -> &DenseBackbone {
        &self.backbone
    }

    /// The patch embedding is a stride-p convolution: rows and columns past the last full patch
    /// are never seen, so they are cut here instead of rejected.
    fn whole_patches(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (hp, wp) = (h / self.patch * self.patch, w / self.patch * self.patch);
        if hp == 0 || wp == 0 {
            candle_core::bail!(
                "a {h}×{w} input is smaller than one {0}×{0} patch",
                self.patch
            );
        }
        if (hp, wp) == (h, w) {
            Ok(x.clone())
        } else {
            x.narrow(2, 0, hp)?.narrow(3, 0, wp)
        }
    }

    fn features(&self, x: &Tensor, train: bool, ctx: Option<&mut TrainCtx>) -> Result<Vec<Tensor>> {
        self.backbone
            .forward_t(&self.whole_patches(x)?, train, ctx)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    /// `EncoderDecoder.forward_train`: `labels` [B, H, W] (u8 or u32, 255 = ignore) at the image
    /// size; BN in batch mode, drop path and Dropout2d drawn from `ctx` / `rng`.
    pub fn losses(
        &self,
        x: &Tensor,
        labels: &Tensor,
        ctx: Option<&mut TrainCtx>,
        rng: Option<&mut dyn rand::RngCore>,
    ) -> Result<Losses> {
        let feats = self.features(x, true, ctx)?;
        self.heads.losses(&feats, labels, rng)
    }

    /// `EncoderDecoder.encode_decode` (test mode): logits [B, C, H, W] at the input's size.
    pub fn encode_decode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let feats = self.features(x, false, None)?;
        let (main, _) = self.heads.forward(&feats, false, None)?;
        bilinear(&main, (h, w), false)
    }
}
