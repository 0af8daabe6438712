//! Fine-tuning recipes (`configs/finetune/*.toml`). Defaults are the official values of the two
//! scripts iBOT uses (ibot-reference §8.4, §8.6, §8.9; dense-and-finetune.md §1.5):
//!
//! - `mode = "full"`: BEiT's `run_class_finetuning.py` as iBOT's run.sh calls it — CLS after the
//!   final norm → Linear head (trunc-normal 0.02 × init_scale 0.001), layer decay, per-iteration
//!   cosine with a linear warm-up from 0, lr NOT batch-scaled, no model EMA;
//! - `mode = "semisup"`: DeiT-style `semi_supervised/eval_cls.py` (and `eval_cls.py` for transfer)
//!   — the projection head's first layer (`head.mlp.0` + GELU) then a new Linear, no layer decay,
//!   timm's per-epoch cosine (warm-up from 1e-6, min 1e-5), lr × total batch / 512, repeated
//!   augmentation, model EMA 0.99996.
//!
//! Both share RandAugment `rand-m9-mstd0.5-inc1`, random erasing 0.25 (pixel), Mixup 0.8 /
//! CutMix 1.0 with label smoothing 0.1, drop path 0.1, AdamW wd 0.05.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Full,
    Semisup,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "full" => Ok(Mode::Full),
            "semisup" => Ok(Mode::Semisup),
            _ => Err(format!(
                "unknown fine-tuning mode {s:?}: expected full or semisup"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// BEiT/DINO `utils.cosine_scheduler`: per iteration, warm-up from 0.
    CosineIter,
    /// timm `CosineLRScheduler` stepped after each epoch (DeiT loop): per epoch, warm-up from
    /// `warmup_lr`.
    TimmEpoch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScaling {
    /// BEiT: the lr is used as given.
    None,
    /// DeiT: lr × total batch / 512.
    Batch512,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Stochastic depth rate of the last block (linearly increasing over the blocks).
    pub drop_path: f64,
    /// The new Linear head is trunc-normal(0.02) × init_scale, bias 0 (BEiT 0.001, DeiT 1.0).
    pub init_scale: f64,
    /// semisup mode: how many projection-head layers to keep (iBOT `--finetune_head_layer`;
    /// only 1 is supported: `head.mlp.0` + GELU, 2048-wide).
    pub head_layer: usize,
    /// Input resolution (the backbone's position embedding is resized to it at load, bicubic in
    /// size mode, as BEiT does). `None`: the data config's crop size (set by the caller).
    pub input_size: Option<u32>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            drop_path: 0.1,
            init_scale: 0.001,
            head_layer: 1,
            input_size: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub epochs: usize,
    /// Total batch (one process here; the official runs spread it over GPUs).
    pub batch_size: usize,
    pub lr: f64,
    pub lr_scaling: LrScaling,
    pub schedule: Schedule,
    pub warmup_epochs: usize,
    /// Warm-up start (timm_epoch only; BEiT's per-iteration warm-up starts at 0).
    pub warmup_lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    /// Cosine weight-decay schedule end (BEiT `--weight_decay_end`); `None` = constant.
    pub weight_decay_end: Option<f64>,
    /// BEiT layer decay (values < 1 enable it; semisup mode ignores it, as the DeiT script does).
    pub layer_decay: f64,
    /// Global gradient-norm clipping (timm `--clip_grad`); `None` = off (both scripts' default).
    pub clip_grad: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            epochs: 100,
            batch_size: 1024,
            lr: 4e-3,
            lr_scaling: LrScaling::None,
            schedule: Schedule::CosineIter,
            warmup_epochs: 20,
            warmup_lr: 1e-6,
            min_lr: 1e-6,
            weight_decay: 0.05,
            weight_decay_end: None,
            layer_decay: 0.65,
            clip_grad: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// `rand-m9-mstd0.5-inc1` or `none`.
    pub auto_augment: String,
    /// Random erasing probability (pixel mode).
    pub reprob: f64,
    pub hflip: f64,
    /// Train interpolation of RandomResizedCrop and the affine RandAugment ops.
    pub train_interpolation: String,
    /// Eval resize interpolation: `bilinear` (BEiT) or `bicubic` (DeiT scripts).
    pub eval_interpolation: String,
    pub mixup: f64,
    pub cutmix: f64,
    pub mixup_prob: f64,
    pub mixup_switch_prob: f64,
    pub smoothing: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            auto_augment: "rand-m9-mstd0.5-inc1".into(),
            reprob: 0.25,
            hflip: 0.5,
            train_interpolation: "bicubic".into(),
            eval_interpolation: "bilinear".into(),
            mixup: 0.8,
            cutmix: 1.0,
            mixup_prob: 1.0,
            mixup_switch_prob: 0.5,
            smoothing: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegularisationConfig {
    /// timm `ModelEma` decay; `None` = no EMA (BEiT default).
    pub model_ema: Option<f64>,
    /// DeiT `RASampler` (3 repeats per image). Officially an epoch then has
    /// ⌊N / 256⌋ · 256 samples, which is EMPTY for N < 256; `ra_small_set_guard` keeps N samples
    /// instead in that case (a labelled deviation, off = the official behaviour).
    pub repeated_aug: bool,
    pub ra_small_set_guard: bool,
}

impl Default for RegularisationConfig {
    fn default() -> Self {
        RegularisationConfig {
            model_ema: None,
            repeated_aug: false,
            ra_small_set_guard: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    /// Evaluate on val every N epochs (and after the last one).
    pub eval_every: usize,
    /// Also checkpoint every N steps (0: at epoch ends only).
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// GEMM precision: auto (bf16 on CUDA), f32, bf16.
    pub precision: String,
    pub loader_threads: usize,
    pub eval_batch_size: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 0,
            eval_every: 1,
            checkpoint_every: 0,
            log_every: 1,
            precision: "auto".into(),
            loader_threads: 0,
            eval_batch_size: 128,
        }
    }
}

/// A whole recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Deviations from the official recipe, for the report.
    #[serde(default)]
    pub deviations: Vec<String>,
    pub mode: Mode,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub augment: AugmentConfig,
    #[serde(default)]
    pub regularisation: RegularisationConfig,
    #[serde(default)]
    pub run: RunConfig,
}

impl FinetuneConfig {
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let cfg: FinetuneConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{what}: invalid recipe: {e}"))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{what}: invalid recipe: {e}"))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        if o.epochs == 0 || o.batch_size == 0 {
            bail!("optim.epochs and optim.batch_size must be positive");
        }
        if !(o.lr > 0.0) {
            bail!("optim.lr must be positive, got {}", o.lr);
        }
        if !(0.0 < o.layer_decay && o.layer_decay <= 1.0) {
            bail!("optim.layer_decay must be in (0, 1], got {}", o.layer_decay);
        }
        let a = &self.augment;
        let mixing = a.mixup > 0.0 || a.cutmix > 0.0;
        if mixing && o.batch_size % 2 != 0 {
            bail!(
                "Mixup/CutMix needs an even batch size (timm asserts it), got {}",
                o.batch_size
            );
        }
        if !["rand-m9-mstd0.5-inc1", "none"].contains(&a.auto_augment.as_str()) {
            bail!(
                "augment.auto_augment must be \"rand-m9-mstd0.5-inc1\" or \"none\", got {:?}",
                a.auto_augment
            );
        }
        for (field, v) in [
            ("augment.train_interpolation", &a.train_interpolation),
            ("augment.eval_interpolation", &a.eval_interpolation),
        ] {
            v.parse::<data::transforms::Interpolation>()
                .map_err(|e| anyhow::anyhow!("{field}: {e}"))?;
        }
        if self.mode == Mode::Semisup && self.model.head_layer != 1 {
            bail!(
                "model.head_layer = {}: only 1 (head.mlp.0 + GELU, iBOT's semi-supervised protocol) is supported",
                self.model.head_layer
            );
        }
        if self.model.input_size == Some(0) {
            bail!("model.input_size must be positive");
        }
        if self.run.eval_every == 0 {
            bail!("run.eval_every must be at least 1");
        }
        Ok(())
    }

    /// The input resolution (after the caller filled in a missing one).
    pub fn input_size(&self) -> Result<u32> {
        self.model
            .input_size
            .ok_or_else(|| anyhow::anyhow!("model.input_size is not set"))
    }

    /// The lr the schedule peaks at.
    pub fn base_lr(&self) -> f64 {
        match self.optim.lr_scaling {
            LrScaling::None => self.optim.lr,
            LrScaling::Batch512 => self.optim.lr * self.optim.batch_size as f64 / 512.0,
        }
    }

    /// Whether layer decay applies (BEiT applies it when < 1; the DeiT script has none).
    pub fn uses_layer_decay(&self) -> bool {
        self.mode == Mode::Full && self.optim.layer_decay < 1.0
    }
}
