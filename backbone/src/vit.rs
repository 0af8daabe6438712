//! The DINO/iBOT Vision Transformer (ibot-reference §1): pre-norm blocks, qkv bias, LayerNorm
//! eps 1e-6, exact GELU, CLS token, learned absolute position embedding (interpolated for other
//! grids), final norm, optional mask token. `VarBuilder` paths mirror the checkpoint keys.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rand::Rng;

use crate::config::{VitConfig, LAYER_NORM_EPS};
use crate::ops::{self, layer_norm, softmax_last_dim, Activation};
use crate::pos_embed::PosEmbedInterpolator;

/// Training-time randomness: drop-path draws its per-sample keep decisions here.
pub struct TrainCtx<'a> {
    pub rng: &'a mut dyn rand::RngCore,
}

/// A seeded generator for [`TrainCtx`], for callers without a `rand` 0.8 dependency of their own
/// (`ibot bench finetune`).
pub fn seeded_rng(seed: u64) -> impl rand::RngCore + Send {
    <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed)
}

/// `x · wᵀ` for x [M, K] and w [N, K] in the `compute` dtype ([`crate::ops::autocast_matmul_t`]).
pub(crate) fn autocast_matmul_t(x: &Tensor, w: &Tensor, compute: Option<DType>) -> Result<Tensor> {
    ops::autocast_matmul_t(x, w, compute)
}

/// Batched `a · b` in the `compute` dtype, the result in a's dtype (see [`autocast_matmul_t`]).
fn autocast_matmul(a: &Tensor, b: &Tensor, compute: Option<DType>) -> Result<Tensor> {
    match compute {
        Some(dt) if dt != a.dtype() => a
            .to_dtype(dt)?
            .matmul(&b.to_dtype(dt)?)?
            .to_dtype(a.dtype()),
        _ => a.matmul(b),
    }
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    compute: Option<DType>,
}

impl Linear {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
            compute: None,
        })
    }
}

impl Linear {
    /// `s · act(x · wᵀ + b)` as one GEMM over all leading dimensions, `s` the per-sample
    /// drop-path factors of a residual branch (x's first dimension is the sample).
    fn forward_with(&self, x: &Tensor, act: Activation, drop: Option<&[f32]>) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let scale = drop.map(|f| (f, rows / f.len().max(1)));
        let y = ops::linear(
            &x.reshape((rows, in_dim))?,
            &self.weight,
            &self.bias,
            act,
            scale,
            self.compute,
        )?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

impl Linear {
    /// `residual + s · (x · wᵀ + b)`: one fused pass at inference (no drop path, nothing
    /// tracked, see [`ops::linear_residual`]), otherwise the Linear then a residual add.
    fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        drop: Option<&[f32]>,
    ) -> Result<Tensor> {
        if drop.is_none() {
            let dims = x.dims();
            let rows: usize = dims[..dims.len() - 1].iter().product();
            let x2 = x.reshape((rows, dims[dims.len() - 1]))?;
            if let Some(y) =
                ops::linear_residual(&x2, &self.weight, &self.bias, residual, self.compute)?
            {
                return Ok(y);
            }
        }
        ops::residual_add(residual, &self.forward_with(x, Activation::Identity, drop)?)
    }
}

impl Module for Linear {
    /// One GEMM over all leading dimensions.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Activation::Identity, None)
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, LAYER_NORM_EPS)
    }
}

/// Conv2d with kernel = stride = patch, written as a patch reshape and one GEMM.
#[derive(Debug, Clone)]
struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    patch: usize,
    compute: Option<DType>,
}

impl PatchEmbed {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        Ok(Self {
            weight: vb.get((cfg.embed_dim, cfg.in_chans, p, p), "weight")?,
            bias: vb.get(cfg.embed_dim, "bias")?,
            patch: p,
            compute: None,
        })
    }

    /// [B, C, H, W] → [B, rows·cols, D] in row-major grid order.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, usize, usize)> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch;
        if h % p != 0 || w % p != 0 {
            candle_core::bail!("input {h}×{w} is not a multiple of the patch size {p}");
        }
        let (rows, cols) = (h / p, w / p);
        let patches = x
            .reshape((b, c, rows, p, cols, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * rows * cols, c * p * p))?;
        let d = self.weight.dim(0)?;
        let w2 = self.weight.reshape((d, c * p * p))?;
        let tokens = ops::linear(
            &patches,
            &w2,
            &self.bias,
            Activation::Identity,
            None,
            self.compute,
        )?;
        Ok((tokens.reshape((b, rows * cols, d))?, rows, cols))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
    compute: Option<DType>,
}

impl Attention {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        Ok(Self {
            qkv: Linear::new(d, 3 * d, vb.pp("qkv"))?,
            proj: Linear::new(d, d, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            scale: (cfg.head_dim() as f64).powf(-0.5),
            compute: None,
        })
    }

    /// `residual` plus the attention branch on `x`, the branch scaled per sample by the
    /// drop-path factors `drop`. On the CPU in f32 the core is one fused op
    /// ([`ops::fused_attention`]).
    fn forward(&self, x: &Tensor, residual: &Tensor, drop: Option<&[f32]>) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let out = match ops::fused_attention(&qkv, self.num_heads, self.scale, self.compute)? {
            Some(out) => out,
            None => self.core(&qkv)?.0,
        };
        self.proj.forward_residual(&out, residual, drop)
    }

    /// Returns the block output and the post-softmax attention [B, heads, T, T].
    fn forward_with_attn(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (out, attn) = self.core(&self.qkv.forward(x)?)?;
        Ok((self.proj.forward(&out)?, attn))
    }

    /// Composed attention on the qkv projection: (heads concatenated [B, T, D], attention).
    fn core(&self, qkv: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, d3) = qkv.dims3()?;
        let d = d3 / 3;
        let hd = d / self.num_heads;
        // The 3D output is laid out [3][heads][head_dim].
        let qkv = qkv
            .reshape((b, t, 3, self.num_heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = (autocast_matmul(&q, &k.t()?, self.compute)? * self.scale)?;
        let attn = softmax_last_dim(&attn)?;
        let out = autocast_matmul(&attn, &v, self.compute)?
            .transpose(1, 2)?
            .reshape((b, t, d))?;
        Ok((out, attn))
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(cfg.embed_dim, cfg.mlp_hidden, vb.pp("fc1"))?,
            fc2: Linear::new(cfg.mlp_hidden, cfg.embed_dim, vb.pp("fc2"))?,
        })
    }
}

impl Mlp {
    /// `residual` plus fc2(GELU(fc1(x))) scaled per sample by the drop-path factors `drop`.
    fn forward(&self, x: &Tensor, residual: &Tensor, drop: Option<&[f32]>) -> Result<Tensor> {
        let h = self.fc1.forward_with(x, Activation::Gelu, None)?;
        self.fc2.forward_residual(&h, residual, drop)
    }
}

/// Stochastic depth: per-sample factors for a residual branch of `b` samples — 0 for a dropped
/// sample, 1/keep for a survivor — or `None` outside training or at rate 0.
fn drop_path_factors(rate: f64, b: usize, ctx: Option<&mut TrainCtx>) -> Option<Vec<f32>> {
    let ctx = ctx?;
    if rate <= 0.0 {
        return None;
    }
    let keep = 1.0 - rate;
    Some(
        (0..b)
            .map(|_| (keep + ctx.rng.gen::<f64>()).floor() as f32 / keep as f32)
            .collect(),
    )
}

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    drop_path: f64,
}

impl Block {
    fn new(cfg: &VitConfig, drop_path: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(cfg.embed_dim, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: LayerNorm::new(cfg.embed_dim, vb.pp("norm2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            drop_path,
        })
    }

    fn forward(&self, x: &Tensor, mut ctx: Option<&mut TrainCtx>) -> Result<Tensor> {
        let b = x.dim(0)?;
        let drop = drop_path_factors(self.drop_path, b, ctx.as_deref_mut());
        let x = self
            .attn
            .forward(&self.norm1.forward(x)?, x, drop.as_deref())?;
        let drop = drop_path_factors(self.drop_path, b, ctx);
        self.mlp
            .forward(&self.norm2.forward(&x)?, &x, drop.as_deref())
    }
}

pub struct VisionTransformer {
    cfg: VitConfig,
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    pos_embed: Tensor,
    masked_embed: Option<Tensor>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    /// (rows, cols) of the position embedding's patch grid.
    pos_grid: (usize, usize),
    interpolator: PosEmbedInterpolator,
}

impl VisionTransformer {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_pos_grid(cfg, (cfg.grid(), cfg.grid()), vb)
    }

    /// A ViT whose `pos_embed` covers a `(rows, cols)` patch grid, possibly non-square: iBOT's
    /// detection/segmentation backbones resize the checkpoint's embedding to the configured input
    /// size once at load ([`crate::pos_embed::resize_pos_embed`]) and interpolate from that grid.
    pub fn with_pos_grid(
        cfg: &VitConfig,
        pos_grid: (usize, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let d = cfg.embed_dim;
        let n = pos_grid.0 * pos_grid.1;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let rate = if cfg.depth > 1 {
                    cfg.drop_path_rate * i as f64 / (cfg.depth - 1) as f64
                } else {
                    cfg.drop_path_rate
                };
                Block::new(cfg, rate, vb.pp(format!("blocks.{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed.proj"))?,
            cls_token: vb.get((1, 1, d), "cls_token")?,
            pos_embed: vb.get((1, 1 + n, d), "pos_embed")?,
            masked_embed: if cfg.masked_im_modeling {
                Some(vb.get((1, d), "masked_embed")?)
            } else {
                None
            },
            blocks,
            norm: LayerNorm::new(d, vb.pp("norm"))?,
            pos_grid,
            interpolator: PosEmbedInterpolator::default(),
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Mixed precision: the GEMMs of patch embedding, attention and MLP run in `dtype` (e.g.
    /// bf16) while the weights, LayerNorm, softmax, GELU and the residual stream keep the
    /// weights' dtype. With the weights' own dtype this changes nothing.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        let c = Some(dtype);
        self.patch_embed.compute = c;
        for block in &mut self.blocks {
            block.attn.compute = c;
            block.attn.qkv.compute = c;
            block.attn.proj.compute = c;
            block.mlp.fc1.compute = c;
            block.mlp.fc2.compute = c;
        }
        self
    }

    /// Patch embedding, mask-token replacement, CLS, position embedding: [B, 1+N, D].
    /// `mask` is [B, N] (1 = masked) and needs a model built with `masked_im_modeling`.
    pub fn prepare_tokens(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (tokens, rows, cols) = self.patch_embed.forward(x)?;
        let (b, n, d) = tokens.dims3()?;
        let tokens = match (mask, &self.masked_embed) {
            (None, _) => tokens,
            (Some(mask), Some(token)) => {
                let mask = mask
                    .to_dtype(DType::U8)?
                    .reshape((b, n, 1))?
                    .broadcast_as((b, n, d))?;
                let token = token
                    .to_dtype(tokens.dtype())?
                    .reshape((1, 1, d))?
                    .broadcast_as((b, n, d))?;
                mask.where_cond(&token, &tokens)?
            }
            (Some(_), None) => {
                candle_core::bail!("a mask was given but the model has no masked_embed")
            }
        };
        let cls = self
            .cls_token
            .to_dtype(tokens.dtype())?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?;
        let pos = self
            .interpolator
            .interpolate(&self.pos_embed, self.pos_grid, rows, cols)?;
        x.broadcast_add(&pos.to_dtype(x.dtype())?)
    }

    /// The whole normalised token sequence [B, 1+N, D]; `ctx` enables drop-path (training).
    pub fn forward_tokens(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        mut ctx: Option<&mut TrainCtx>,
    ) -> Result<Tensor> {
        let mut x = self.prepare_tokens(x, mask)?;
        for block in &self.blocks {
            x = block.forward(&x, ctx.as_deref_mut())?;
        }
        self.norm.forward(&x)
    }

    /// Final-norm CLS embedding [B, D] (evaluation mode).
    pub fn forward_cls(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_tokens(x, None, None)?.get_on_dim(1, 0)
    }

    /// Outputs of the last `n` blocks, each through the final norm, oldest first.
    pub fn get_intermediate_layers(&self, x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
        let mut x = self.prepare_tokens(x, None)?;
        let first = self.blocks.len().saturating_sub(n);
        let mut out = Vec::with_capacity(n);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, None)?;
            if i >= first {
                out.push(self.norm.forward(&x)?);
            }
        }
        Ok(out)
    }

    /// Patch-token maps [B, D, rows, cols] after each block in `out_indices` (0-based, ascending),
    /// through the final norm when `with_norm`, CLS dropped: what iBOT's det/seg backbone returns
    /// before its pyramid. `ctx` enables drop path (training).
    pub fn features_at(
        &self,
        x: &Tensor,
        out_indices: &[usize],
        with_norm: bool,
        mut ctx: Option<&mut TrainCtx>,
    ) -> Result<Vec<Tensor>> {
        let (b, _, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        let (rows, cols) = (h / p, w / p);
        let last = *out_indices.iter().max().unwrap_or(&0);
        if last >= self.blocks.len() {
            candle_core::bail!(
                "out_indices {out_indices:?}: the model has {} blocks",
                self.blocks.len()
            );
        }
        let mut x = self.prepare_tokens(x, None)?;
        let mut out = Vec::with_capacity(out_indices.len());
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            x = block.forward(&x, ctx.as_deref_mut())?;
            if out_indices.contains(&i) {
                let n = x.dim(1)? - 1;
                let patches = x.narrow(1, 1, n)?;
                let patches = if with_norm {
                    self.norm.forward(&patches)?
                } else {
                    patches
                };
                let d = patches.dim(2)?;
                out.push(patches.transpose(1, 2)?.reshape((b, d, rows, cols))?);
            }
        }
        Ok(out)
    }

    /// Post-softmax self-attention of the last block, [B, heads, 1+N, 1+N].
    pub fn get_last_selfattention(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.prepare_tokens(x, None)?;
        let (last, rest) = self.blocks.split_last().expect("depth ≥ 1");
        for block in rest {
            x = block.forward(&x, None)?;
        }
        let (_, attn) = last.attn.forward_with_attn(&last.norm1.forward(&x)?)?;
        Ok(attn)
    }
}

/// How an image becomes one feature row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// CLS of each of the last n blocks, concatenated oldest first.
    Cls,
    /// Mean patch token of each of the last n blocks, concatenated.
    Avg,
    /// The CLS concatenation, then the mean patch token of the last block (iBOT/DINOv2 layout).
    ClsAvg,
}

impl std::str::FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cls" => Ok(Pool::Cls),
            "avg" => Ok(Pool::Avg),
            "cls+avg" | "clsavg" => Ok(Pool::ClsAvg),
            _ => Err(format!(
                "unknown pooling {s:?}: expected cls, avg or cls+avg"
            )),
        }
    }
}

impl VisionTransformer {
    /// Feature rows [B, F] from the last `layers` blocks.
    pub fn features(&self, x: &Tensor, layers: usize, pool: Pool) -> Result<Tensor> {
        let outs = self.get_intermediate_layers(x, layers.max(1))?;
        let cls = |t: &Tensor| t.get_on_dim(1, 0);
        let avg = |t: &Tensor| {
            let n = t.dim(1)? - 1;
            t.narrow(1, 1, n)?.mean(1)
        };
        let parts = match pool {
            Pool::Cls => outs.iter().map(cls).collect::<Result<Vec<_>>>()?,
            Pool::Avg => outs.iter().map(avg).collect::<Result<Vec<_>>>()?,
            Pool::ClsAvg => {
                let mut p = outs.iter().map(cls).collect::<Result<Vec<_>>>()?;
                p.push(avg(outs.last().unwrap())?);
                p
            }
        };
        Tensor::cat(&parts, D::Minus1)
    }
}
