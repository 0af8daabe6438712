//! ViT hyper-parameters: the official presets and inference from checkpoint shapes.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Architecture of a DINO/iBOT ViT. `img_size` is the grid the position embedding was trained at;
/// any input whose sides are multiples of `patch_size` can be fed (§1.3 interpolation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_hidden: usize,
    pub patch_size: usize,
    pub img_size: usize,
    pub in_chans: usize,
    /// Stochastic depth of the last block; block i uses rate · i/(depth−1).
    pub drop_path_rate: f64,
    /// Student models carry `masked_embed` for masked image modelling.
    pub masked_im_modeling: bool,
}

pub const LAYER_NORM_EPS: f64 = 1e-6;

/// (name, embed_dim, depth, heads) of ibot-reference §1.1.
const PRESETS: [(&str, usize, usize, usize); 4] = [
    ("vit_tiny", 192, 12, 3),
    ("vit_small", 384, 12, 6),
    ("vit_base", 768, 12, 12),
    ("vit_large", 1024, 24, 16),
];

impl VitConfig {
    /// `vit_small`, `vit_small/8`, `deit_small` (alias), patch 16 and 224 px unless given.
    pub fn preset(name: &str) -> Result<Self> {
        let (base, patch) = match name.split_once('/') {
            Some((b, p)) => (
                b,
                p.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("bad patch size in {name:?}"))?,
            ),
            None => (name, 16),
        };
        let base = base.replace("deit", "vit");
        let Some(&(_, dim, depth, heads)) = PRESETS.iter().find(|p| p.0 == base) else {
            bail!(
                "unknown architecture {name:?}; expected one of vit_tiny, vit_small, vit_base, vit_large (optionally /8 or /16)"
            );
        };
        Ok(Self {
            embed_dim: dim,
            depth,
            num_heads: heads,
            mlp_hidden: 4 * dim,
            patch_size: patch,
            img_size: 224,
            in_chans: 3,
            drop_path_rate: 0.0,
            masked_im_modeling: false,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Preset name when the shapes are those of an official preset.
    pub fn preset_name(&self) -> Option<String> {
        PRESETS
            .iter()
            .find(|p| {
                p.1 == self.embed_dim
                    && p.2 == self.depth
                    && p.3 == self.num_heads
                    && self.mlp_hidden == 4 * p.1
            })
            .map(|p| format!("{}/{}", p.0, self.patch_size))
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.embed_dim % self.num_heads != 0 {
            bail!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim,
                self.num_heads
            );
        }
        if self.patch_size == 0 || self.img_size % self.patch_size != 0 {
            bail!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size,
                self.patch_size
            );
        }
        Ok(())
    }

    /// Deduce the architecture from backbone tensor shapes (un-prefixed keys). Heads cannot be seen
    /// in the shapes: they come from `heads`, else from the preset with this width, else 64-d heads.
    pub fn infer(shapes: &HashMap<String, Vec<usize>>, heads: Option<usize>) -> Result<Self> {
        let get = |k: &str| {
            shapes.get(k).ok_or_else(|| {
                anyhow::anyhow!("cannot infer the architecture: key {k:?} is missing")
            })
        };
        let patch = get("patch_embed.proj.weight")?;
        if patch.len() != 4 || patch[2] != patch[3] {
            bail!("cannot infer the architecture: patch_embed.proj.weight has shape {patch:?}, expected [D, C, p, p]");
        }
        let (embed_dim, in_chans, patch_size) = (patch[0], patch[1], patch[2]);
        let pos = get("pos_embed")?;
        if pos.len() != 3 || pos[1] < 2 {
            bail!(
                "cannot infer the architecture: pos_embed has shape {pos:?}, expected [1, 1+N, D]"
            );
        }
        let n = pos[1] - 1;
        let grid = (n as f64).sqrt().round() as usize;
        if grid * grid != n {
            bail!("cannot infer the architecture: pos_embed holds {n} patch positions, not a square grid");
        }
        let depth = (0..)
            .take_while(|i| shapes.contains_key(&format!("blocks.{i}.attn.qkv.weight")))
            .count();
        if depth == 0 {
            bail!("cannot infer the architecture: no blocks.0.attn.qkv.weight");
        }
        let mlp_hidden = get("blocks.0.mlp.fc1.weight")?[0];
        let num_heads = match heads {
            Some(h) => h,
            None => match PRESETS.iter().find(|p| p.1 == embed_dim) {
                Some(p) => p.3,
                None if embed_dim % 64 == 0 => embed_dim / 64,
                None => bail!(
                    "cannot infer the number of heads for embed_dim {embed_dim}: pass it explicitly (--heads)"
                ),
            },
        };
        let cfg = Self {
            embed_dim,
            depth,
            num_heads,
            mlp_hidden,
            patch_size,
            img_size: grid * patch_size,
            in_chans,
            drop_path_rate: 0.0,
            masked_im_modeling: shapes.contains_key("masked_embed"),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every backbone key with its shape, in checkpoint order.
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, h, p, c) = (
            self.embed_dim,
            self.mlp_hidden,
            self.patch_size,
            self.in_chans,
        );
        let n = self.grid() * self.grid();
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("cls_token".into(), vec![1, 1, d]),
            ("pos_embed".into(), vec![1, 1 + n, d]),
            ("patch_embed.proj.weight".into(), vec![d, c, p, p]),
            ("patch_embed.proj.bias".into(), vec![d]),
        ];
        for i in 0..self.depth {
            let b = |s: &str| format!("blocks.{i}.{s}");
            v.extend([
                (b("norm1.weight"), vec![d]),
                (b("norm1.bias"), vec![d]),
                (b("attn.qkv.weight"), vec![3 * d, d]),
                (b("attn.qkv.bias"), vec![3 * d]),
                (b("attn.proj.weight"), vec![d, d]),
                (b("attn.proj.bias"), vec![d]),
                (b("norm2.weight"), vec![d]),
                (b("norm2.bias"), vec![d]),
                (b("mlp.fc1.weight"), vec![h, d]),
                (b("mlp.fc1.bias"), vec![h]),
                (b("mlp.fc2.weight"), vec![d, h]),
                (b("mlp.fc2.bias"), vec![d]),
            ]);
        }
        v.push(("norm.weight".into(), vec![d]));
        v.push(("norm.bias".into(), vec![d]));
        if self.masked_im_modeling {
            v.push(("masked_embed".into(), vec![1, d]));
        }
        v
    }

    pub fn num_params(&self) -> usize {
        self.expected_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}
