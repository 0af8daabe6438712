//! Segmentation recipes (`configs/segmentation/*.toml`) and data configs. Defaults are iBOT's
//! ADE20K values (ibot-reference §8.8, dense-and-finetune.md §1.4; mmseg 0.12 configs
//! `upernet/vit_*_512_ade20k_160k.py`, `linear/vit_base_512_ade20k_160k.py`, `_base_/datasets/
//! ade20k.py`, `schedule_160k.py` with the poly/warm-up override).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Frozen backbone, last-4 block maps through the final LN, concatenated, 1×1 conv.
    Linear,
    /// The deconv pyramid + UPerHead + auxiliary FCNHead, everything trained.
    Upernet,
}

impl std::str::FromStr for HeadKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "linear" => Ok(HeadKind::Linear),
            "upernet" => Ok(HeadKind::Upernet),
            _ => Err(format!("unknown head {s:?}: expected linear or upernet")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Blocks feeding the head; `None`: (3, 5, 7, 11) for depth 12, the last four otherwise.
    pub out_indices: Option<Vec<usize>>,
    /// The final LayerNorm on every output (README: `model.backbone.out_with_norm=true`).
    pub out_with_norm: bool,
    pub drop_path: f64,
    /// UPerHead width; `None`: the embedding width (iBOT's configs set channels = D).
    pub channels: Option<usize>,
    pub pool_scales: Vec<usize>,
    /// Dropout2d before the classifier (UPerHead and the auxiliary head; the linear head has 0).
    pub dropout: f64,
    pub aux_channels: usize,
    pub aux_weight: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            out_indices: None,
            out_with_norm: true,
            drop_path: 0.1,
            channels: None,
            pool_scales: vec![1, 2, 3, 6],
            dropout: 0.1,
            aux_channels: 256,
            aux_weight: 0.4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub iters: usize,
    /// Total images per iteration (the official 16 = GPUs × samples_per_gpu).
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// mmcv_custom LayerDecayOptimizerConstructor rate (UperNet); `None`: mmcv's default
    /// constructor, every parameter decayed (the linear head).
    pub layer_decay: Option<f64>,
    pub warmup_iters: usize,
    pub warmup_ratio: f64,
    pub power: f64,
    pub min_lr: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            iters: 160_000,
            batch_size: 16,
            lr: 8e-5,
            weight_decay: 0.05,
            layer_decay: None,
            warmup_iters: 1500,
            warmup_ratio: 1e-6,
            power: 1.0,
            min_lr: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// `Resize(img_scale=(long, short), ratio_range)` of the train pipeline.
    pub img_scale: [u32; 2],
    pub ratio_range: [f64; 2],
    /// `RandomCrop(crop_size=(h, w), cat_max_ratio)`, then `Pad` to it (label 255).
    pub crop_size: [u32; 2],
    pub cat_max_ratio: f64,
    pub flip: f64,
    pub photometric: bool,
    /// Test: keep-ratio resize to `(long, short)`, then sliding windows.
    pub test_scale: [u32; 2],
    pub slide_crop: [u32; 2],
    pub slide_stride: [u32; 2],
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            img_scale: [2048, 512],
            ratio_range: [0.5, 2.0],
            crop_size: [512, 512],
            cat_max_ratio: 0.75,
            flip: 0.5,
            photometric: true,
            test_scale: [2048, 512],
            slide_crop: [512, 512],
            slide_stride: [341, 341],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    /// Also checkpoint every N iterations (0: at the end only).
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// Evaluate on val every N iterations (0: at the end only).
    pub eval_every: usize,
    pub precision: String,
    pub loader_threads: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 0,
            checkpoint_every: 0,
            log_every: 1,
            eval_every: 0,
            precision: "auto".into(),
            loader_threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Deviations from the official recipe, for the report.
    #[serde(default)]
    pub deviations: Vec<String>,
    pub head: HeadKind,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub run: RunConfig,
}

impl SegConfig {
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let cfg: SegConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{what}: invalid recipe: {e}"))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{what}: invalid recipe: {e}"))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        if o.iters == 0 || o.batch_size == 0 {
            bail!("optim.iters and optim.batch_size must be positive");
        }
        if !(o.lr > 0.0) {
            bail!("optim.lr must be positive");
        }
        let p = &self.pipeline;
        if p.slide_stride.iter().any(|&s| s == 0) || p.slide_crop.iter().any(|&s| s == 0) {
            bail!("pipeline.slide_crop and slide_stride must be positive");
        }
        if p.ratio_range[0] <= 0.0 || p.ratio_range[0] > p.ratio_range[1] {
            bail!("pipeline.ratio_range must be [lo, hi] with 0 < lo <= hi");
        }
        Ok(())
    }

    /// The blocks feeding the head for a `depth`-block ViT.
    pub fn out_indices(&self, depth: usize) -> Vec<usize> {
        match &self.model.out_indices {
            Some(v) => v.clone(),
            None if depth == 12 => vec![3, 5, 7, 11],
            None => (depth.saturating_sub(4)..depth).collect(),
        }
    }
}

/// `configs/data/<ade-like>.toml`: an ADE20K-layout data set (`images/{training,validation}`,
/// `annotations/{…}` label PNGs of the same stems).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegDataConfig {
    pub name: String,
    /// `ade20k` (the only layout so far).
    pub format: String,
    /// The directory holding `images/` and `annotations/` (ADEChallengeData2016).
    pub root: PathBuf,
    #[serde(default = "training")]
    pub train_split: String,
    #[serde(default = "validation")]
    pub val_split: String,
    /// Classes after `reduce_zero_label` (ADE20K: 150).
    pub num_classes: usize,
    /// ADE20K: 0 = "other" is ignored and every other label shifts down by one.
    #[serde(default = "yes")]
    pub reduce_zero_label: bool,
    #[serde(default)]
    pub class_names: Vec<String>,
}

fn training() -> String {
    "training".into()
}
fn validation() -> String {
    "validation".into()
}
fn yes() -> bool {
    true
}

impl SegDataConfig {
    /// Reads a data config; `root` resolves against the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read data config", path.display()))?;
        let mut cfg: SegDataConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{}: invalid segmentation data config: {e}", path.display())
        })?;
        if cfg.root.is_relative() {
            cfg.root = path.parent().unwrap_or(Path::new("")).join(&cfg.root);
        }
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.format != "ade20k" {
            bail!("format must be \"ade20k\", got {:?}", self.format);
        }
        if self.num_classes == 0 || self.num_classes > 255 {
            bail!(
                "num_classes must be in 1..=255 (8-bit label maps), got {}",
                self.num_classes
            );
        }
        for split in [&self.train_split, &self.val_split] {
            for sub in ["images", "annotations"] {
                let d = self.root.join(sub).join(split);
                if !d.is_dir() {
                    bail!(
                        "{} is not a directory (expected the ADE20K layout under root)",
                        d.display()
                    );
                }
            }
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.num_classes {
            bail!(
                "class_names has {} names for {} classes",
                self.class_names.len(),
                self.num_classes
            );
        }
        Ok(())
    }

    pub fn class_name(&self, c: usize) -> String {
        self.class_names
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    }
}
