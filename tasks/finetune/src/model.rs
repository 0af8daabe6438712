//! The fine-tuned network: the ViT (bare backbone keys, as BEiT's and DeiT's models name them)
//! and a classification head under `head.*`:
//!
//! - full fine-tuning (BEiT `modeling_finetune.VisionTransformer` with `--use_cls`): the final-norm
//!   CLS token → `head` Linear(D, C);
//! - semi-supervised fine-tuning (`semi_supervised/eval_cls.py` `ClassProjHead(finetune_layer=1)`):
//!   CLS → `head.mlp.0` Linear(D, 2048) → GELU → `head.cls_head` Linear(2048, C), with `head.mlp.0`
//!   taken from the pretrained projection head.

use std::collections::HashMap;

use backbone::ops::{add_bias, gelu_erf};
use backbone::{TrainCtx, VisionTransformer, VitConfig};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::config::Mode;

/// The head on the CLS token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// `head`: Linear(D, C) (full fine-tuning, transfer).
    Linear,
    /// `head.mlp.0` Linear(D, hidden) + GELU, then `head.cls_head` Linear(hidden, C); iBOT's heads
    /// are 2048 wide, smaller recipes narrower.
    Proj { hidden: usize },
}

impl HeadKind {
    /// The head of `mode`, its width read from the pretrained `head.mlp.0.weight`.
    pub fn of(mode: Mode, mlp0_weight: Option<&Tensor>) -> Result<HeadKind> {
        match mode {
            Mode::Full => Ok(HeadKind::Linear),
            Mode::Semisup => match mlp0_weight {
                Some(w) => Ok(HeadKind::Proj { hidden: w.dim(0)? }),
                None => candle_core::bail!("semi-supervised fine-tuning needs head.mlp.0.weight"),
            },
        }
    }
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor, compute: DType) -> Result<Tensor> {
    let y = if compute != x.dtype() {
        x.to_dtype(compute)?
            .matmul(&w.to_dtype(compute)?.t()?)?
            .to_dtype(x.dtype())?
    } else {
        x.matmul(&w.t()?)?
    };
    add_bias(&y, b)
}

enum Head {
    Linear {
        w: Tensor,
        b: Tensor,
    },
    Proj {
        w0: Tensor,
        b0: Tensor,
        w: Tensor,
        b: Tensor,
    },
}

pub struct Classifier {
    backbone: VisionTransformer,
    head: Head,
    compute: DType,
}

impl Classifier {
    pub fn new(
        vit: &VitConfig,
        kind: HeadKind,
        classes: usize,
        vb: VarBuilder,
        compute: DType,
    ) -> Result<Self> {
        let d = vit.embed_dim;
        let hb = vb.pp("head");
        let head = match kind {
            HeadKind::Linear => Head::Linear {
                w: hb.get((classes, d), "weight")?,
                b: hb.get(classes, "bias")?,
            },
            HeadKind::Proj { hidden } => Head::Proj {
                w0: hb.get((hidden, d), "mlp.0.weight")?,
                b0: hb.get(hidden, "mlp.0.bias")?,
                w: hb.get((classes, hidden), "cls_head.weight")?,
                b: hb.get(classes, "cls_head.bias")?,
            },
        };
        Ok(Classifier {
            backbone: VisionTransformer::new(vit, vb)?.with_compute_dtype(compute),
            head,
            compute,
        })
    }

    /// Logits [B, C]; `ctx` enables drop path (training).
    pub fn forward(&self, x: &Tensor, ctx: Option<&mut TrainCtx>) -> Result<Tensor> {
        let cls = self
            .backbone
            .forward_tokens(x, None, ctx)?
            .get_on_dim(1, 0)?;
        match &self.head {
            Head::Linear { w, b } => linear(&cls, w, b, self.compute),
            Head::Proj { w0, b0, w, b } => {
                let h = gelu_erf(&linear(&cls, w0, b0, self.compute)?)?;
                linear(&h, w, b, self.compute)
            }
        }
    }
}

/// The new head's tensors: trunc-normal(0.02) weights (timm `trunc_normal_`, whose ±2 bounds are
/// absolute and never bite at std 0.02) × `init_scale`, zero biases. In semisup mode `head.mlp.0.*`
/// must come from the checkpoint and is not created here.
pub fn init_head(
    kind: HeadKind,
    dim: usize,
    classes: usize,
    init_scale: f64,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x4EAD_1417);
    let normal = Normal::new(0.0f32, 0.02).expect("valid std");
    let fan_in = match kind {
        HeadKind::Linear => dim,
        HeadKind::Proj { hidden } => hidden,
    };
    let w: Vec<f32> = (0..classes * fan_in)
        .map(|_| normal.sample(&mut rng).clamp(-2.0, 2.0) * init_scale as f32)
        .collect();
    let (wk, bk) = match kind {
        HeadKind::Linear => ("head.weight", "head.bias"),
        HeadKind::Proj { .. } => ("head.cls_head.weight", "head.cls_head.bias"),
    };
    Ok(HashMap::from([
        (
            wk.to_string(),
            Tensor::from_vec(w, (classes, fan_in), &Device::Cpu)?,
        ),
        (
            bk.to_string(),
            Tensor::zeros(classes, DType::F32, &Device::Cpu)?,
        ),
    ]))
}
