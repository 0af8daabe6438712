//! The ViT as iBOT's detection and segmentation code wraps it (`mmcv_custom/register_backbone.py`):
//! the outputs of blocks `out_indices` (patch tokens only, optionally through the final norm) as
//! maps, then the 4-level pyramid adapter; position embeddings resized once at load to the
//! configured input grid (bicubic, size mode — the wrapper's `load_checkpoint`) and interpolated
//! from that grid per input (scale factor + 0.1); a frozen mode (iBOT's `frozen_stages = depth`:
//! no gradient, no drop path, final norm frozen too). Keys live under `backbone.`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use layers::norm::Buffers;
use serde::{Deserialize, Serialize};

use crate::pyramid::VitPyramid;
use crate::{Checkpoint, LoadOptions, LoadReport, TrainCtx, VisionTransformer, VitConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseConfig {
    /// Blocks whose outputs feed the head (0-based): (3, 5, 7, 11) for depth 12.
    pub out_indices: Vec<usize>,
    /// Each output through the backbone's final LayerNorm (`out_with_norm`; seg README: true,
    /// det: false).
    pub out_with_norm: bool,
    /// The deconv/max-pool pyramid (`with_fpn`); the linear segmentation head runs without it.
    pub with_fpn: bool,
    /// Input size (rows, cols) the position embedding is resized to at load (`img_size`).
    pub img_size: [usize; 2],
    /// Stochastic depth of the last block.
    pub drop_path: f64,
    /// Freeze the whole backbone (`frozen_stages = depth`): no gradient, no drop path.
    pub frozen: bool,
}

/// The backbone tensors of a checkpoint as the dense model names them (`backbone.*`), the
/// position embedding resized to the configured grid, strictly loaded.
pub fn load_dense_weights(
    path: &Path,
    key: Option<&str>,
    arch: Option<&str>,
    dense: &DenseConfig,
) -> Result<(VitConfig, HashMap<String, Tensor>, LoadReport)> {
    let ckpt = Checkpoint::open(path)?;
    let sel = ckpt.select(key)?;
    let vit = ckpt.infer_config(&sel, arch, None)?;
    let init = crate::init::init_weights(&vit, 0)?;
    let (weights, report) = ckpt.load_backbone(&sel, &vit, LoadOptions::default(), init)?;
    let grid = pos_grid(&vit, dense)?;
    let mut out = HashMap::new();
    for (name, t) in weights {
        if name == "masked_embed" {
            continue;
        }
        let t = if name == "pos_embed" {
            let g0 = vit.grid();
            crate::pos_embed::resize_pos_embed(&t, (g0, g0), grid)
                .with_context(|| format!("{}: resizing pos_embed to {grid:?}", path.display()))?
        } else {
            t
        };
        out.insert(format!("backbone.{name}"), t);
    }
    Ok((vit, out, report))
}

/// Random-init backbone tensors (`backbone.*`) for `vit`, the position embedding on the dense grid.
pub fn init_dense_weights(
    vit: &VitConfig,
    dense: &DenseConfig,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let grid = pos_grid(vit, dense)?;
    let mut out = HashMap::new();
    for (name, t) in crate::init::init_weights(vit, seed)? {
        if name == "masked_embed" {
            continue;
        }
        let t = if name == "pos_embed" {
            let g0 = vit.grid();
            crate::pos_embed::resize_pos_embed(&t, (g0, g0), grid)?
        } else {
            t
        };
        out.insert(format!("backbone.{name}"), t);
    }
    Ok(out)
}

fn pos_grid(vit: &VitConfig, dense: &DenseConfig) -> Result<(usize, usize)> {
    let p = vit.patch_size;
    let [h, w] = dense.img_size;
    if h == 0 || w == 0 {
        anyhow::bail!("img_size must be positive, got {:?}", dense.img_size);
    }
    Ok((h / p, w / p))
}

pub struct DenseBackbone {
    vit: VisionTransformer,
    pyramid: Option<VitPyramid>,
    cfg: DenseConfig,
}

impl DenseBackbone {
    /// `vb` at the model root; the backbone reads `backbone.*` (the ViT with its position
    /// embedding on the dense grid, the pyramid's `backbone.fpn*`). BN statistics go to `buffers`.
    pub fn new(
        vit: &VitConfig,
        cfg: &DenseConfig,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        let mut vit_cfg = vit.clone();
        vit_cfg.drop_path_rate = cfg.drop_path;
        vit_cfg.masked_im_modeling = false;
        let grid = pos_grid(vit, cfg)?;
        let bb = vb.pp("backbone");
        let model = VisionTransformer::with_pos_grid(&vit_cfg, grid, bb.clone())?;
        let pyramid = if cfg.with_fpn {
            Some(VitPyramid::new(vit.patch_size, vit.embed_dim, bb, buffers)?)
        } else {
            None
        };
        if cfg.out_indices.is_empty() {
            anyhow::bail!("out_indices is empty");
        }
        Ok(DenseBackbone {
            vit: model,
            pyramid,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &DenseConfig {
        &self.cfg
    }

    pub fn vit(&self) -> &VisionTransformer {
        &self.vit
    }

    /// Whether a `backbone.*` parameter is trained: nothing when frozen; the final norm only
    /// when the outputs use it (otherwise the official model has no such parameter).
    pub fn is_trainable(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix("backbone.") else {
            return true;
        };
        if rest.starts_with("fpn") {
            return true;
        }
        if self.cfg.frozen {
            return false;
        }
        !(rest.starts_with("norm.") && !self.cfg.out_with_norm) && rest != "masked_embed"
    }

    /// The feature maps for the head: 4 pyramid levels (or the raw block maps without the
    /// pyramid). `train` enables drop path (through `ctx`) and BN batch statistics; a frozen
    /// backbone runs without drop path and its outputs carry no gradient.
    pub fn forward_t(
        &self,
        x: &Tensor,
        train: bool,
        ctx: Option<&mut TrainCtx>,
    ) -> Result<Vec<Tensor>> {
        let ctx = if self.cfg.frozen || !train { None } else { ctx };
        let mut maps =
            self.vit
                .features_at(x, &self.cfg.out_indices, self.cfg.out_with_norm, ctx)?;
        if self.cfg.frozen {
            maps = maps.into_iter().map(|m| m.detach()).collect();
        }
        match &self.pyramid {
            Some(p) => Ok(p.forward_t(&maps, train)?),
            None => Ok(maps),
        }
    }
}
