//! The pretraining recipe (`configs/pretrain/*.toml`): every option of `main_ibot.py` that matters,
//! with the official code defaults where a recipe is silent (ibot-reference §7.3) — recipes spell out
//! the README values, since the code defaults differ from the paper (§11 item 5).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use backbone::head::HeadConfig;
use backbone::VitConfig;
use serde::{Deserialize, Serialize};

use crate::loss::LossConfig;
use crate::mask::MaskConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub name: String,
    pub model: ModelSection,
    pub head: HeadSection,
    pub data: DataSource,
    pub crops: CropsSection,
    pub mask: MaskConfig,
    #[serde(default)]
    pub loss: LossSection,
    pub optim: OptimSection,
    #[serde(default)]
    pub run: RunSection,
    /// k-NN of the teacher on a labelled data set every few epochs, logged in log.jsonl
    /// (monitoring only: it never changes the training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSection>,
}

/// `[eval]`: DINO's weighted k-NN (L2-normalised final-norm CLS of the teacher, as
/// `ibot eval knn` computes it) on a labelled train/val pair, at the end of every `every`-th
/// epoch, at the last one, and (`at_start`) on the initial weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// A data config (`configs/data/*.toml`, relative to the recipe) or the same table inline.
    pub data: EvalData,
    /// Evaluate after every `every` epochs (and always after the last).
    #[serde(default = "one")]
    pub every: usize,
    #[serde(default = "default_eval_k")]
    pub k: Vec<usize>,
    #[serde(default = "default_eval_temperature")]
    pub temperature: f32,
    /// Also evaluate the initial weights (the curve's epoch-0 point).
    #[serde(default = "yes")]
    pub at_start: bool,
    /// Images per teacher forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvalData {
    File(PathBuf),
    Inline(features::DataConfig),
}

impl EvalData {
    /// The labelled data set (the file is read and checked).
    pub fn config(&self) -> Result<features::DataConfig> {
        match self {
            EvalData::File(path) => features::DataConfig::load(path),
            EvalData::Inline(cfg) => {
                cfg.validate()?;
                Ok(cfg.clone())
            }
        }
    }

    fn resolve(&mut self, base: &Path) {
        match self {
            EvalData::File(p) => {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            EvalData::Inline(cfg) => cfg.resolve_paths(base),
        }
    }
}

fn default_eval_k() -> Vec<usize> {
    vec![10, 20]
}
fn default_eval_temperature() -> f32 {
    0.07
}
fn default_eval_batch() -> usize {
    256
}

/// A preset (`vit_small`, `vit_small/8`, …) with optional overrides, so CPU recipes can shrink it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub arch: String,
    pub patch_size: Option<usize>,
    /// Grid the position embedding is trained at (the global crop size).
    pub img_size: Option<usize>,
    pub embed_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    pub mlp_hidden: Option<usize>,
    #[serde(default = "default_drop_path")]
    pub drop_path: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSection {
    #[serde(default = "default_out_dim")]
    pub out_dim: usize,
    /// Defaults to `out_dim`.
    pub patch_out_dim: Option<usize>,
    #[serde(default = "default_hidden")]
    pub hidden_dim: usize,
    #[serde(default = "default_bottleneck")]
    pub bottleneck_dim: usize,
    /// Code default false; README and paper: true.
    #[serde(default)]
    pub shared_head: bool,
    #[serde(default = "yes")]
    pub shared_head_teacher: bool,
    /// Code default true (frozen g); README ViT-S: false.
    #[serde(default = "yes")]
    pub norm_last_layer: bool,
}

/// Unlabelled images to pretrain on (labels, when present, only feed the NMI/ARI/FMI monitor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// ImageFolder layout `root/<class>/<image>`; relative to the recipe file.
    ImageFolder { root: PathBuf },
    /// IDX images (+ labels) such as Fashion-MNIST; grey images are replicated to RGB.
    Idx {
        images: PathBuf,
        labels: Option<PathBuf>,
    },
    /// Procedural scenes generated in memory (data::synth), seconds to make.
    Synthetic {
        images: usize,
        size: u32,
        #[serde(default)]
        seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropsSection {
    pub global_size: u32,
    pub local_size: u32,
    #[serde(default = "two")]
    pub global_crops: usize,
    #[serde(default)]
    pub local_crops: usize,
    #[serde(default = "default_global_scale")]
    pub global_scale: (f64, f64),
    #[serde(default = "default_local_scale")]
    pub local_scale: (f64, f64),
    /// Gaussian blur radius range in pixels (official: [0.1, 2.0], sized for 224-px crops).
    #[serde(default = "default_blur_radius")]
    pub blur_radius: (f64, f64),
    /// Blur probability of global crop 1, global crops 2..G and the local crops (official
    /// [1.0, 0.1, 0.5]).
    #[serde(default = "default_blur_p")]
    pub blur_p: (f64, f64, f64),
    /// ColorJitter strengths: brightness, contrast, saturation, hue (official [0.4, 0.4, 0.2, 0.1]).
    #[serde(default = "default_jitter")]
    pub jitter: (f32, f32, f32, f32),
    /// Probability of applying the jitter (official 0.8).
    #[serde(default = "default_jitter_p")]
    pub jitter_p: f64,
    /// RandomGrayscale probability (official 0.2).
    #[serde(default = "default_grayscale_p")]
    pub grayscale_p: f64,
    /// Solarization probability of global crops 2..G (official 0.2). Solarize(128) inverts a
    /// bright figure on a dark ground (Fashion-MNIST), so grey-image recipes switch it off.
    #[serde(default = "default_solarize_p")]
    pub solarize_p: f64,
}

fn default_blur_radius() -> (f64, f64) {
    data::augment::IBOT_BLUR_RADIUS
}
fn default_blur_p() -> (f64, f64, f64) {
    data::augment::IBOT_BLUR_P
}
fn default_jitter() -> (f32, f32, f32, f32) {
    let j = data::augment::ColorJitter::ibot();
    (j.brightness, j.contrast, j.saturation, j.hue)
}
fn default_jitter_p() -> f64 {
    0.8
}
fn default_grayscale_p() -> f64 {
    0.2
}
fn default_solarize_p() -> f64 {
    0.2
}

impl CropsSection {
    /// The per-crop pipelines these settings describe.
    pub fn augment(&self) -> data::augment::IbotAugment {
        let (brightness, contrast, saturation, hue) = self.jitter;
        data::augment::IbotAugment {
            global_size: self.global_size,
            local_size: self.local_size,
            global_scale: self.global_scale,
            local_scale: self.local_scale,
            global_crops: self.global_crops,
            local_crops: self.local_crops,
            blur_radius: self.blur_radius,
            color: data::augment::IbotColor {
                jitter: data::augment::ColorJitter {
                    brightness,
                    contrast,
                    saturation,
                    hue,
                },
                jitter_p: self.jitter_p,
                grayscale_p: self.grayscale_p,
                solarize_p: self.solarize_p,
                blur_p: self.blur_p,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossSection {
    pub lambda1: f64,
    pub lambda2: f64,
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_patch_temp: f64,
    pub teacher_patch_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
}

impl Default for LossSection {
    fn default() -> Self {
        LossSection {
            lambda1: 1.0,
            lambda2: 1.0,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_patch_temp: 0.04,
            teacher_patch_temp: 0.07,
            warmup_teacher_temp_epochs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub epochs: usize,
    /// Per device; the learning rate scales with the total batch / 256.
    pub batch_size: usize,
    /// Base lr at batch 256.
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_min_lr")]
    pub min_lr: f64,
    #[serde(default = "default_warmup_epochs")]
    pub warmup_epochs: usize,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_wd_end")]
    pub weight_decay_end: f64,
    /// Per-parameter gradient-norm clip (0 disables).
    #[serde(default = "default_clip")]
    pub clip_grad: f64,
    #[serde(default = "one")]
    pub freeze_last_layer: usize,
    #[serde(default = "default_momentum")]
    pub momentum_teacher: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub seed: u64,
    /// Checkpoint every N steps (and always at epoch end); 0 = epoch ends only.
    pub checkpoint_every: usize,
    /// Stop after this many steps in total (smoke tests, benchmarks); schedules keep the full length.
    pub max_steps: Option<usize>,
    /// GEMM precision: `f32`, `bf16` (bf16 GEMMs, f32 master weights and f32 LayerNorm/softmax/loss;
    /// also on the CPU, slowly) or `auto` (bf16 on CUDA, f32 on CPU).
    pub precision: String,
    /// Decode/augment threads (0 = all cores).
    pub loader_threads: usize,
    /// Log a JSON line every N steps.
    pub log_every: usize,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            seed: 0,
            checkpoint_every: 0,
            max_steps: None,
            precision: "auto".into(),
            loader_threads: 0,
            log_every: 1,
        }
    }
}

fn default_drop_path() -> f64 {
    0.1
}
fn default_out_dim() -> usize {
    8192
}
fn default_hidden() -> usize {
    2048
}
fn default_bottleneck() -> usize {
    256
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn default_global_scale() -> (f64, f64) {
    (0.14, 1.0)
}
fn default_local_scale() -> (f64, f64) {
    (0.05, 0.4)
}
fn default_lr() -> f64 {
    5e-4
}
fn default_min_lr() -> f64 {
    1e-6
}
fn default_warmup_epochs() -> usize {
    10
}
fn default_wd() -> f64 {
    0.04
}
fn default_wd_end() -> f64 {
    0.4
}
fn default_clip() -> f64 {
    3.0
}
fn default_momentum() -> f64 {
    0.996
}

impl PretrainConfig {
    /// Reads a recipe; relative data paths resolve against the recipe's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        let mut cfg: PretrainConfig =
            toml::from_str(&text).with_context(|| format!("{}: invalid recipe", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.data.resolve(base);
        if let Some(e) = &mut cfg.eval {
            e.data.resolve(base);
        }
        cfg.validate()
            .with_context(|| format!("{}: invalid recipe", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let vit = self.student_vit()?;
        let p = vit.patch_size as u32;
        let c = &self.crops;
        if c.global_crops < 2 {
            bail!(
                "crops.global_crops must be at least 2 (the CLS loss pairs different global views)"
            );
        }
        if c.global_size % p != 0 || c.local_size % p != 0 {
            bail!(
                "crop sizes {} and {} must be multiples of the patch size {p}",
                c.global_size,
                c.local_size
            );
        }
        for (name, (lo, hi)) in [
            ("global_scale", c.global_scale),
            ("local_scale", c.local_scale),
        ] {
            if !(0.0 < lo && lo <= hi && hi <= 1.0) {
                bail!("crops.{name} must satisfy 0 < min <= max <= 1, got ({lo}, {hi})");
            }
        }
        let (lo, hi) = c.blur_radius;
        if !(0.0 < lo && lo <= hi) {
            bail!("crops.blur_radius must satisfy 0 < min <= max, got ({lo}, {hi})");
        }
        let (b1, b2, b3) = c.blur_p;
        for (name, p) in [
            ("blur_p[0]", b1),
            ("blur_p[1]", b2),
            ("blur_p[2]", b3),
            ("jitter_p", c.jitter_p),
            ("grayscale_p", c.grayscale_p),
            ("solarize_p", c.solarize_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("crops.{name} is a probability, got {p}");
            }
        }
        let (jb, jc, js, jh) = c.jitter;
        if jb < 0.0 || jc < 0.0 || js < 0.0 || !(0.0..=0.5).contains(&jh) {
            bail!(
                "crops.jitter: brightness, contrast and saturation must be >= 0 and hue in [0, 0.5], got ({jb}, {jc}, {js}, {jh})"
            );
        }
        self.mask.validate()?;
        let o = &self.optim;
        if o.epochs == 0 || o.batch_size == 0 {
            bail!("optim.epochs and optim.batch_size must be positive");
        }
        if !(0.0..=1.0).contains(&o.momentum_teacher) {
            bail!("optim.momentum_teacher must be in [0, 1]");
        }
        if !["auto", "f32", "bf16"].contains(&self.run.precision.as_str()) {
            bail!(
                "run.precision must be auto, f32 or bf16, got {:?}",
                self.run.precision
            );
        }
        if self.head.out_dim == 0 || self.head.bottleneck_dim == 0 || self.head.hidden_dim == 0 {
            bail!("head dimensions must be positive");
        }
        if let Some(e) = &self.eval {
            if e.every == 0 || e.batch_size == 0 {
                bail!("eval.every and eval.batch_size must be positive");
            }
            if e.k.is_empty() || e.k.contains(&0) {
                bail!("eval.k must list positive neighbour counts");
            }
            if !(e.temperature > 0.0) {
                bail!("eval.temperature must be positive");
            }
        }
        Ok(())
    }

    /// Points the `[eval]` section (if any) at two labelled ImageFolder directories, keeping its
    /// transform (what `ibot demo` does with the scenes it generates).
    pub fn set_eval_folders(&mut self, train: &Path, val: &Path) -> Result<()> {
        let Some(e) = &mut self.eval else {
            return Ok(());
        };
        let (name, transform) = match &e.data {
            EvalData::Inline(cfg) => (cfg.name.clone(), cfg.transform),
            EvalData::File(_) => {
                let cfg = e.data.config()?;
                (cfg.name, cfg.transform)
            }
        };
        e.data = EvalData::Inline(features::DataConfig::image_folder(
            name, train, val, transform,
        ));
        Ok(())
    }

    /// The student ViT (with `masked_embed` and drop-path).
    pub fn student_vit(&self) -> Result<VitConfig> {
        let m = &self.model;
        let mut cfg = VitConfig::preset(&m.arch)?;
        if let Some(p) = m.patch_size {
            cfg.patch_size = p;
        }
        cfg.img_size = m.img_size.unwrap_or(self.crops.global_size as usize);
        if let Some(d) = m.embed_dim {
            cfg.embed_dim = d;
            cfg.mlp_hidden = 4 * d;
        }
        if let Some(d) = m.depth {
            cfg.depth = d;
        }
        if let Some(h) = m.num_heads {
            cfg.num_heads = h;
        }
        if let Some(h) = m.mlp_hidden {
            cfg.mlp_hidden = h;
        }
        cfg.drop_path_rate = m.drop_path;
        cfg.masked_im_modeling = true;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The teacher ViT: no drop-path, no mask token (ibot-reference §7.4).
    pub fn teacher_vit(&self) -> Result<VitConfig> {
        let mut cfg = self.student_vit()?;
        cfg.drop_path_rate = 0.0;
        cfg.masked_im_modeling = false;
        Ok(cfg)
    }

    fn head_config(&self, shared: bool, norm_last_layer: bool) -> Result<HeadConfig> {
        let vit = self.student_vit()?;
        let h = &self.head;
        Ok(HeadConfig {
            in_dim: vit.embed_dim,
            out_dim: h.out_dim,
            patch_out_dim: self.loss_patch_dim(),
            hidden_dim: h.hidden_dim,
            bottleneck_dim: h.bottleneck_dim,
            shared,
            norm_last_layer,
        })
    }

    pub fn student_head(&self) -> Result<HeadConfig> {
        self.head_config(self.head.shared_head, self.head.norm_last_layer)
    }

    /// The teacher head keeps its default norm_last_layer (true); its weights come from the EMA.
    pub fn teacher_head(&self) -> Result<HeadConfig> {
        self.head_config(self.head.shared_head_teacher, true)
    }

    /// §3.3: the patch dimension is out_dim whenever either head is shared.
    pub fn loss_patch_dim(&self) -> usize {
        if self.head.shared_head || self.head.shared_head_teacher {
            self.head.out_dim
        } else {
            self.head.patch_out_dim.unwrap_or(self.head.out_dim)
        }
    }

    pub fn loss_config(&self) -> LossConfig {
        let l = &self.loss;
        LossConfig {
            out_dim: self.head.out_dim,
            patch_out_dim: self.loss_patch_dim(),
            global_crops: self.crops.global_crops,
            local_crops: self.crops.local_crops,
            student_temp: 0.1,
            center_momentum: 0.9,
            center_momentum2: 0.9,
            lambda1: l.lambda1,
            lambda2: l.lambda2,
            warmup_teacher_temp: l.warmup_teacher_temp,
            teacher_temp: l.teacher_temp,
            warmup_teacher_patch_temp: l.warmup_teacher_patch_temp,
            teacher_patch_temp: l.teacher_patch_temp,
            warmup_teacher_temp_epochs: l.warmup_teacher_temp_epochs,
            epochs: self.optim.epochs,
            pred_start_epoch: self.mask.pred_start_epoch,
        }
    }
}

impl DataSource {
    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match self {
            DataSource::ImageFolder { root } => fix(root),
            DataSource::Idx { images, labels } => {
                fix(images);
                if let Some(l) = labels {
                    fix(l);
                }
            }
            DataSource::Synthetic { .. } => {}
        }
    }
}
