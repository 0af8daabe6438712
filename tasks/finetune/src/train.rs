//! The fine-tuning loop (BEiT `engine_for_finetuning.train_one_epoch` / DeiT `train_one_epoch`):
//! per step, Mixup/CutMix on the batch, the model with drop path, soft-target (or label-smoothing)
//! cross-entropy, AdamW with the recipe's parameter groups at the scheduled lr and weight decay,
//! the model EMA; after each epoch, top-1 / top-5 on val. Every random draw derives from
//! (seed, epoch, step or sample position), and the state is checkpointed atomically at epoch ends
//! (and every `checkpoint_every` steps), so re-running a killed run continues it exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backbone::{TrainCtx, VitConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use data::finetune_transform::{FinetuneEvalTransform, FinetuneTrainTransform};
use data::loader::{ImageDataset, Loader, LoaderConfig};
use data::transforms::Interpolation;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use train::ema::Ema;
use train::param_groups::{
    beit_layer_decay, timm_no_decay, GroupRow, ParamGroup, VIT_NO_WEIGHT_DECAY,
};
use train::vars::{insert_vars, sorted_vars};
use train::{AdamW, AdamWConfig, Clip, RunDir};

use crate::config::{FinetuneConfig, Mode, Schedule};
use crate::eval::Accuracy;
use crate::model::{init_head, Classifier, HeadKind};
use crate::sampler;

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const MODEL: &str = "model.safetensors";
pub const MODEL_EMA: &str = "model_ema.safetensors";
pub const PREDICTIONS: &str = "predictions.txt";
const FORMAT: &str = "ibot-rs-finetune-1";

/// The labelled images (the train split already restricted to its label subset).
pub struct FinetuneData {
    pub train: Arc<dyn ImageDataset>,
    pub val: Arc<dyn ImageDataset>,
    pub classes: usize,
}

/// The pretrained weights: the backbone's (bare keys) and, for semisup mode, `head.mlp.0.*`.
pub struct Init {
    pub vit: VitConfig,
    pub weights: HashMap<String, Tensor>,
}

pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    pub progress: indicatif::ProgressBar,
    /// Stop after this many steps in total (the schedules keep the recipe's length).
    pub max_steps: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub lr: f64,
    /// `None` for epochs without evaluation (`eval_every` > 1).
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    epoch: usize,
    step_in_epoch: usize,
    step: usize,
    iters_per_epoch: usize,
    optimizer_steps: BTreeMap<String, u64>,
    history: Vec<EpochRecord>,
    /// Sum of the current epoch's step losses so far (resumed mid-epoch).
    epoch_loss_sum: f64,
}

/// What a finished (or stopped) run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Top-1 / top-5 of the last evaluated epoch (fractions).
    pub top1: f64,
    pub top5: f64,
    /// The official number: the best top-1 over the evaluated epochs, and its epoch.
    pub max_top1: f64,
    pub best_epoch: usize,
    pub epochs: usize,
    pub history: Vec<EpochRecord>,
    /// The final model's predicted class for every val image, in val order.
    pub predictions: Vec<usize>,
    /// Top-1 of the EMA model after the last epoch (semisup recipes keep one; the official loop
    /// evaluates only the raw model).
    pub ema_top1: Option<f64>,
    pub train_images: usize,
    pub steps_per_epoch: usize,
    pub steps: usize,
    pub seconds: f64,
    pub train_images_per_s: f64,
    pub completed: bool,
}

fn interpolation(name: &str) -> Result<Interpolation> {
    name.parse().map_err(|e: String| anyhow::anyhow!(e))
}

/// The model's configuration for the recipe: the checkpoint's architecture at the fine-tuning
/// resolution with the recipe's drop path.
fn model_vit(cfg: &FinetuneConfig, init: &VitConfig) -> Result<VitConfig> {
    let size = cfg.input_size()? as usize;
    if size % init.patch_size != 0 {
        bail!(
            "model.input_size {size} is not a multiple of the patch size {}",
            init.patch_size
        );
    }
    let mut vit = init.clone();
    vit.img_size = size;
    vit.drop_path_rate = cfg.model.drop_path;
    vit.masked_im_modeling = false;
    Ok(vit)
}

/// Every trainable tensor of the fine-tuned model, f32 on the CPU: the pretrained backbone (its
/// position embedding resized to the fine-tuning grid as BEiT does at load), the pretrained
/// `head.mlp.0` in semisup mode, and the new head.
fn initial_weights(
    cfg: &FinetuneConfig,
    init: &Init,
    classes: usize,
) -> Result<HashMap<String, Tensor>> {
    let vit = model_vit(cfg, &init.vit)?;
    let mut out = HashMap::new();
    for (name, shape) in vit.expected_shapes() {
        let t = init
            .weights
            .get(&name)
            .with_context(|| format!("the pretrained weights lack {name}"))?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let t = if name == "pos_embed" {
            let g0 = init.vit.grid();
            let g = vit.grid();
            backbone::pos_embed::resize_pos_embed(&t, (g0, g0), (g, g))?
        } else {
            t
        };
        if t.dims() != shape.as_slice() {
            bail!(
                "pretrained {name} has shape {:?}, the model needs {shape:?}",
                t.dims()
            );
        }
        out.insert(name, t);
    }
    if cfg.mode == Mode::Semisup {
        for key in ["head.mlp.0.weight", "head.mlp.0.bias"] {
            let t = init.weights.get(key).with_context(|| {
                format!("semi-supervised fine-tuning starts from the projection head's first layer, but the checkpoint has no {key} (a backbone-only file has no head: use the full training checkpoint or an export with head.*)")
            })?;
            out.insert(
                key.to_string(),
                t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            );
        }
    }
    let kind = HeadKind::of(cfg.mode, out.get("head.mlp.0.weight"))?;
    out.extend(init_head(
        kind,
        vit.embed_dim,
        classes,
        cfg.model.init_scale,
        cfg.run.seed,
    )?);
    Ok(out)
}

/// The parameter group of every trainable tensor, by the recipe's rule.
pub fn group_of(cfg: &FinetuneConfig, depth: usize) -> impl Fn(&str, usize) -> ParamGroup + '_ {
    move |name: &str, rank: usize| match cfg.mode {
        Mode::Full => {
            let decay = if cfg.uses_layer_decay() {
                cfg.optim.layer_decay
            } else {
                1.0
            };
            beit_layer_decay(name, rank, depth, decay, VIT_NO_WEIGHT_DECAY)
        }
        Mode::Semisup => timm_no_decay(name, rank, VIT_NO_WEIGHT_DECAY),
    }
}

/// `--dry-run`: the group table of every parameter, in name order.
pub fn parameter_groups(
    cfg: &FinetuneConfig,
    init: &Init,
    classes: usize,
) -> Result<Vec<GroupRow>> {
    let weights = initial_weights(cfg, init, classes)?;
    let mut names: Vec<(&String, usize)> = weights.iter().map(|(k, t)| (k, t.rank())).collect();
    names.sort();
    let rule = group_of(cfg, init.vit.depth);
    Ok(train::param_groups::group_table(
        names.iter().map(|(n, r)| (n.as_str(), rule(n, *r))),
        cfg.optim.weight_decay,
    ))
}

struct Schedules {
    lr: Vec<f64>,
    wd: Vec<f64>,
}

fn schedules(cfg: &FinetuneConfig, ipe: usize) -> Schedules {
    let o = &cfg.optim;
    let base = cfg.base_lr();
    let lr = match o.schedule {
        Schedule::CosineIter => {
            train::schedule::cosine_scheduler(base, o.min_lr, o.epochs, ipe, o.warmup_epochs, 0.0)
        }
        Schedule::TimmEpoch => train::schedule::timm_cosine_epochs(
            base,
            o.min_lr,
            o.epochs,
            o.warmup_epochs,
            o.warmup_lr,
        )
        .into_iter()
        .flat_map(|v| std::iter::repeat_n(v, ipe))
        .collect(),
    };
    let wd_end = o.weight_decay_end.unwrap_or(o.weight_decay);
    let wd = train::schedule::cosine_scheduler(o.weight_decay, wd_end, o.epochs, ipe, 0, 0.0);
    Schedules { lr, wd }
}

fn train_transform(cfg: &FinetuneConfig) -> Result<FinetuneTrainTransform> {
    let a = &cfg.augment;
    let mut t =
        FinetuneTrainTransform::new(cfg.input_size()?, interpolation(&a.train_interpolation)?);
    t.hflip = a.hflip;
    if a.auto_augment == "none" {
        t.rand_augment = None;
    }
    match &mut t.erasing {
        Some(e) if a.reprob > 0.0 => e.probability = a.reprob,
        _ => t.erasing = None,
    }
    if a.reprob <= 0.0 {
        t.erasing = None;
    }
    Ok(t)
}

fn eval_transform(cfg: &FinetuneConfig) -> Result<FinetuneEvalTransform> {
    let mut t = match cfg.mode {
        Mode::Full => FinetuneEvalTransform::beit(cfg.input_size()?),
        Mode::Semisup => FinetuneEvalTransform::semisup(cfg.input_size()?),
    };
    t.interpolation = interpolation(&cfg.augment.eval_interpolation)?;
    Ok(t)
}

fn mixup(cfg: &FinetuneConfig, classes: usize) -> Option<data::mixup::Mixup> {
    let a = &cfg.augment;
    (a.mixup > 0.0 || a.cutmix > 0.0).then(|| data::mixup::Mixup {
        mixup_alpha: a.mixup,
        cutmix_alpha: a.cutmix,
        prob: a.mixup_prob,
        switch_prob: a.mixup_switch_prob,
        correct_lam: true,
        label_smoothing: a.smoothing,
        num_classes: classes,
    })
}

/// The visiting order of `epoch`.
fn epoch_order(cfg: &FinetuneConfig, n: usize, epoch: usize) -> Vec<usize> {
    let r = &cfg.regularisation;
    if r.repeated_aug {
        sampler::repeated_augmentation(n, cfg.run.seed, epoch, r.ra_small_set_guard)
    } else {
        sampler::shuffled(n, cfg.run.seed, epoch)
    }
}

/// A 64-bit key for (seed, step) draws (splitmix64 of the pair).
fn mix(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fields that may change between attempts of the same run.
fn resume_key(cfg: &FinetuneConfig) -> Result<serde_json::Value> {
    let mut c = cfg.clone();
    c.run.log_every = 1;
    c.run.loader_threads = 0;
    c.run.eval_batch_size = 0;
    c.run.checkpoint_every = 0;
    c.description = None;
    Ok(serde_json::to_value(c)?)
}

/// What the loss compares the logits with.
pub enum Targets<'a> {
    /// Mixup/CutMix soft targets [B, C]: timm `SoftTargetCrossEntropy`.
    Soft(&'a Tensor),
    /// Class indices with label smoothing ε (0 = plain cross-entropy).
    Labels(&'a [usize], f64),
}

/// One optimisation step: forward (drop path through `ctx`), loss, backward, AdamW at base lr
/// `lr` and weight decay `wd`. Returns the loss; a non-finite loss leaves the weights untouched.
#[allow(clippy::too_many_arguments)]
pub fn optimize_step(
    model: &Classifier,
    optimizer: &mut AdamW,
    x: &Tensor,
    targets: Targets,
    ctx: Option<&mut TrainCtx>,
    lr: f64,
    wd: f64,
    clip: Clip,
) -> Result<f64> {
    let logits = model.forward(x, ctx)?;
    let loss = match targets {
        Targets::Soft(t) => train::loss::soft_target_cross_entropy(&logits, t)?,
        Targets::Labels(labels, smoothing) => {
            let l: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
            train::loss::label_smoothing_cross_entropy(&logits, &l, smoothing)?
        }
    };
    let value = loss.to_scalar::<f32>()? as f64;
    if !value.is_finite() {
        return Ok(value);
    }
    let grads = loss.backward()?;
    optimizer.step(&grads, lr, wd, clip, &|_| false)?;
    Ok(value)
}

pub struct Finetuner {
    cfg: FinetuneConfig,
    vit: VitConfig,
    opts: RunOptions,
    run: RunDir,
    data: FinetuneData,
    vars: VarMap,
    model: Classifier,
    optimizer: AdamW,
    ema: Option<(VarMap, Ema)>,
    kind: HeadKind,
    schedules: Schedules,
    state: State,
    train_loader: Loader,
    eval_loader: Loader,
    mixup: Option<data::mixup::Mixup>,
    compute: DType,
}

impl Finetuner {
    /// A fresh run in `opts.out`, or the continuation of the run checkpointed there (same recipe).
    pub fn new(
        cfg: FinetuneConfig,
        init: Init,
        data: FinetuneData,
        opts: RunOptions,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = opts.device.clone();
        let compute = train::device::compute_dtype(&cfg.run.precision, &device)?;
        let vit = model_vit(&cfg, &init.vit)?;
        let run = RunDir::create(&opts.out)?;
        let ckpt_path = run.path(CHECKPOINT);
        let saved = if ckpt_path.exists() {
            let saved = train::checkpoint::load(&ckpt_path, FORMAT, &device)?;
            let then: serde_json::Value = saved.json("config")?;
            let then: FinetuneConfig = serde_json::from_value(then)
                .with_context(|| format!("{}: recipe", ckpt_path.display()))?;
            train::checkpoint::check_compatible(
                &resume_key(&then)?,
                &resume_key(&cfg)?,
                &ckpt_path,
            )?;
            Some(saved)
        } else {
            None
        };

        let vars = VarMap::new();
        let mut weights: Vec<(String, Tensor)> = initial_weights(&cfg, &init, data.classes)?
            .into_iter()
            .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        insert_vars(&vars, weights.clone(), &device)?;
        let kind = HeadKind::of(
            cfg.mode,
            weights
                .iter()
                .find(|(k, _)| k == "head.mlp.0.weight")
                .map(|(_, t)| t),
        )?;
        let model = Classifier::new(
            &vit,
            kind,
            data.classes,
            VarBuilder::from_varmap(&vars, DType::F32, &device),
            compute,
        )?;
        let params = sorted_vars(&vars);
        let rule = group_of(&cfg, vit.depth);
        let mut optimizer = AdamW::with_rule(params.clone(), rule, AdamWConfig::default());
        let ema = match cfg.regularisation.model_ema {
            Some(_) => {
                let ema_vars = VarMap::new();
                insert_vars(&ema_vars, weights, &device)?;
                let ema = Ema::pair_by_name(&sorted_vars(&ema_vars), &params)?;
                Some((ema_vars, ema))
            }
            None => None,
        };

        let mut loader_cfg = LoaderConfig {
            batch_size: cfg.optim.batch_size,
            shuffle: false,
            seed: cfg.run.seed,
            drop_last: true,
            prefetch: 2,
            skip_corrupt: false,
            threads: cfg.run.loader_threads,
        };
        let train_loader = Loader::new(
            data.train.clone(),
            data::augment::Transform::FinetuneTrain(train_transform(&cfg)?),
            loader_cfg.clone(),
        )?;
        loader_cfg.batch_size = cfg.run.eval_batch_size.max(1);
        loader_cfg.drop_last = false;
        let eval_loader = Loader::new(
            data.val.clone(),
            data::augment::Transform::FinetuneEval(eval_transform(&cfg)?),
            loader_cfg,
        )?;
        let per_epoch = epoch_order(&cfg, data.train.len(), 0).len();
        let ipe = per_epoch / cfg.optim.batch_size;
        if ipe == 0 {
            bail!(
                "an epoch has {per_epoch} training images, fewer than one batch of {} (the official loader drops the last incomplete batch): lower optim.batch_size",
                cfg.optim.batch_size
            );
        }
        let schedules = schedules(&cfg, ipe);
        let mut state = State {
            epoch: 0,
            step_in_epoch: 0,
            step: 0,
            iters_per_epoch: ipe,
            optimizer_steps: BTreeMap::new(),
            history: Vec::new(),
            epoch_loss_sum: 0.0,
        };
        if let Some(saved) = saved {
            let s: State = saved.json("state")?;
            if s.iters_per_epoch != ipe {
                bail!(
                    "{}: the checkpoint has {} iterations per epoch, this data gives {ipe}: not the same data",
                    ckpt_path.display(),
                    s.iters_per_epoch
                );
            }
            for (name, var) in sorted_vars(&vars) {
                saved.restore(&format!("model.{name}"), &var)?;
            }
            if let Some((ema_vars, _)) = &ema {
                for (name, var) in sorted_vars(ema_vars) {
                    saved.restore(&format!("ema.{name}"), &var)?;
                }
            }
            optimizer.load_state(&s.optimizer_steps, &|k| {
                saved.tensors.get(&format!("optimizer.{k}")).cloned()
            })?;
            state = s;
            run.truncate_log(state.step, state.epoch)?;
        } else {
            run.reset_log()?;
            run.write_json("config.json", &cfg)?;
        }
        let mixup = mixup(&cfg, data.classes);
        Ok(Finetuner {
            cfg,
            vit,
            opts,
            run,
            data,
            vars,
            model,
            optimizer,
            ema,
            kind,
            schedules,
            state,
            train_loader,
            eval_loader,
            mixup,
            compute,
        })
    }

    pub fn total_steps(&self) -> usize {
        let full = self.cfg.optim.epochs * self.state.iters_per_epoch;
        self.opts.max_steps.map_or(full, |m| m.min(full))
    }

    /// Trains to the end (or `max_steps`), evaluating and checkpointing on the way.
    pub fn run(&mut self) -> Result<Outcome> {
        let total = self.total_steps();
        let ipe = self.state.iters_per_epoch;
        let bar = self.opts.progress.clone();
        bar.set_length(total as u64);
        bar.set_position(self.state.step as u64);
        let started = Instant::now();
        let start_step = self.state.step;
        self.run.log(&json!({
            "event": "run_start", "step": self.state.step, "epoch": self.state.epoch,
            "precision": train::device::dtype_name(self.compute),
            "device": train::device::device_name(&self.opts.device),
            "train_images": self.data.train.len(), "val_images": self.data.val.len(),
            "classes": self.data.classes, "iters_per_epoch": ipe,
        }))?;
        while self.state.step < total {
            let epoch = self.state.epoch;
            let epoch_started = Instant::now();
            let order = epoch_order(&self.cfg, self.data.train.len(), epoch);
            let batches =
                self.train_loader
                    .epoch_in_order(epoch as u64, order, self.state.step_in_epoch);
            for batch in batches {
                let batch = batch.with_context(|| format!("preparing a batch of epoch {epoch}"))?;
                let t0 = Instant::now();
                let (loss, lr, wd) = self.train_step(batch)?;
                let secs = t0.elapsed().as_secs_f64();
                let step = self.state.step;
                self.state.step += 1;
                self.state.step_in_epoch += 1;
                self.state.epoch_loss_sum += loss;
                let log_every = self.cfg.run.log_every;
                if log_every > 0 && step % log_every == 0 {
                    self.run.log(&json!({
                        "epoch": epoch, "step": step, "loss": loss, "lr": lr, "wd": wd,
                        "images_per_s": self.cfg.optim.batch_size as f64 / secs,
                        "step_seconds": secs, "rss_mb": train::meter::resident_mb(),
                    }))?;
                }
                bar.set_message(format!(
                    "ep {epoch} loss {loss:.4} lr {lr:.2e} {:.1} img/s",
                    self.cfg.optim.batch_size as f64 / secs
                ));
                bar.inc(1);
                let epoch_done = self.state.step_in_epoch == ipe;
                if epoch_done {
                    self.finish_epoch(epoch, epoch_started.elapsed().as_secs_f64())?;
                    self.save()?;
                    break;
                }
                let every = self.cfg.run.checkpoint_every;
                if (every > 0 && self.state.step % every == 0) || self.state.step >= total {
                    self.save()?;
                }
                if self.state.step >= total {
                    break;
                }
            }
            if self.state.step_in_epoch != 0 && self.state.step < total {
                bail!(
                    "epoch {epoch} ended after {} of {ipe} batches",
                    self.state.step_in_epoch
                );
            }
            if self.state.step >= total {
                break;
            }
        }
        bar.finish_and_clear();
        let completed = self.state.step >= self.cfg.optim.epochs * ipe;
        let acc = self.evaluate_model(&self.model)?;
        let ema_top1 = match &self.ema {
            Some((ema_vars, _)) => {
                let m = Classifier::new(
                    &self.vit,
                    self.kind,
                    self.data.classes,
                    VarBuilder::from_varmap(ema_vars, DType::F32, &self.opts.device),
                    self.compute,
                )?;
                Some(self.evaluate_model(&m)?.top1())
            }
            None => None,
        };
        self.export()?;
        std::fs::write(
            self.run.path(PREDICTIONS),
            acc.predictions
                .iter()
                .map(|p| format!("{p}\n"))
                .collect::<String>(),
        )
        .with_context(|| format!("writing {}", self.run.path(PREDICTIONS).display()))?;
        let evaluated: Vec<&EpochRecord> = self
            .state
            .history
            .iter()
            .filter(|r| r.top1.is_some())
            .collect();
        let (max_top1, best_epoch) = evaluated.iter().fold(
            (acc.top1(), self.state.epoch.saturating_sub(1)),
            |(m, e), r| {
                let t = r.top1.unwrap_or(0.0);
                if t > m {
                    (t, r.epoch)
                } else {
                    (m, e)
                }
            },
        );
        let seconds = started.elapsed().as_secs_f64();
        let steps_now = self.state.step - start_step;
        Ok(Outcome {
            top1: acc.top1(),
            top5: acc.top5(),
            max_top1,
            best_epoch,
            epochs: self.state.epoch,
            history: self.state.history.clone(),
            predictions: acc.predictions,
            ema_top1,
            train_images: self.data.train.len(),
            steps_per_epoch: ipe,
            steps: self.state.step,
            seconds,
            train_images_per_s: (steps_now * self.cfg.optim.batch_size) as f64 / seconds.max(1e-9),
            completed,
        })
    }

    fn train_step(&mut self, batch: data::loader::Batch) -> Result<(f64, f64, f64)> {
        let it = self.state.step;
        let epoch = self.state.epoch;
        let dev = &self.opts.device;
        let [n, c, h, w] = batch.shape;
        let mut images = batch.images;
        let labels = batch.labels;
        let loss_targets = match &self.mixup {
            Some(m) => {
                let mut rng = data::augment::sample_rng(
                    self.cfg.run.seed ^ 0x3117_AB0C,
                    epoch as u64,
                    it as u64,
                );
                let (targets, _) = m.apply(&mut images, batch.shape, &labels, &mut rng)?;
                Some(Tensor::from_vec(targets, (n, self.data.classes), dev)?)
            }
            None => None,
        };
        let x = Tensor::from_vec(images, (n, c, h, w), dev)?;
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(mix(self.cfg.run.seed ^ 0xD809_9A7B, it as u64));
        let mut ctx = TrainCtx { rng: &mut rng };
        let targets = match &loss_targets {
            Some(t) => Targets::Soft(t),
            None => Targets::Labels(&labels, self.cfg.augment.smoothing),
        };
        let lr = self.schedules.lr[it];
        let wd = self.schedules.wd[it];
        let clip = self
            .cfg
            .optim
            .clip_grad
            .map_or(Clip::None, Clip::GlobalNorm);
        let value = optimize_step(
            &self.model,
            &mut self.optimizer,
            &x,
            targets,
            Some(&mut ctx),
            lr,
            wd,
            clip,
        )?;
        if !value.is_finite() {
            bail!(
                "loss is {value} at epoch {epoch}, step {it}: stopping; the last good checkpoint is {}",
                self.run.path(CHECKPOINT).display()
            );
        }
        if let (Some((_, ema)), Some(decay)) = (&self.ema, self.cfg.regularisation.model_ema) {
            ema.update(decay)?;
        }
        Ok((value, lr, wd))
    }

    fn finish_epoch(&mut self, epoch: usize, seconds: f64) -> Result<()> {
        let ipe = self.state.iters_per_epoch;
        let last = epoch + 1 == self.cfg.optim.epochs;
        let evaluate = last || (epoch + 1) % self.cfg.run.eval_every == 0;
        let (top1, top5) = if evaluate {
            let acc = self.evaluate_model(&self.model)?;
            (Some(acc.top1()), Some(acc.top5()))
        } else {
            (None, None)
        };
        let record = EpochRecord {
            epoch,
            train_loss: self.state.epoch_loss_sum / ipe as f64,
            lr: self.schedules.lr[self.state.step - 1],
            top1,
            top5,
            seconds,
        };
        self.run.log(
            &json!({"event": "epoch_end", "epoch": epoch, "train_loss": record.train_loss,
            "top1": top1, "top5": top5, "seconds": seconds}),
        )?;
        self.state.history.push(record);
        self.state.epoch += 1;
        self.state.step_in_epoch = 0;
        self.state.epoch_loss_sum = 0.0;
        Ok(())
    }

    fn evaluate_model(&self, model: &Classifier) -> Result<Accuracy> {
        let mut acc = Accuracy::default();
        for batch in self.eval_loader.epoch(0) {
            let batch = batch.context("preparing a validation batch")?;
            let [n, c, h, w] = batch.shape;
            let x = Tensor::from_vec(batch.images, (n, c, h, w), &self.opts.device)?;
            let logits = model.forward(&x, None)?.to_dtype(DType::F32)?;
            let flat: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            acc.add(&flat, self.data.classes, &batch.labels);
        }
        Ok(acc)
    }

    fn save(&self) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = sorted_vars(&self.vars)
            .into_iter()
            .map(|(n, v)| (format!("model.{n}"), v.as_detached_tensor()))
            .collect();
        if let Some((ema_vars, _)) = &self.ema {
            tensors.extend(
                sorted_vars(ema_vars)
                    .into_iter()
                    .map(|(n, v)| (format!("ema.{n}"), v.as_detached_tensor())),
            );
        }
        let (moments, steps) = self.optimizer.state()?;
        tensors.extend(
            moments
                .into_iter()
                .map(|(k, v)| (format!("optimizer.{k}"), v)),
        );
        let mut state = self.state.clone();
        state.optimizer_steps = steps;
        train::checkpoint::save(
            &self.run.path(CHECKPOINT),
            FORMAT,
            &state,
            &self.cfg,
            &tensors,
            backbone::checkpoint::config_metadata(&self.vit),
        )
    }

    /// `model.safetensors` (and `model_ema.safetensors`): the fine-tuned weights under the
    /// official names (bare backbone keys, `head.*`), architecture in the metadata.
    fn export(&self) -> Result<()> {
        let mut meta = backbone::checkpoint::config_metadata(&self.vit);
        meta.insert(
            "finetune_mode".into(),
            format!("{:?}", self.cfg.mode).to_lowercase(),
        );
        meta.insert("classes".into(), self.data.classes.to_string());
        meta.insert("recipe".into(), self.cfg.name.clone());
        let export = |map: &VarMap, path: PathBuf| -> Result<()> {
            let tensors: Vec<(String, Tensor)> = sorted_vars(map)
                .into_iter()
                .map(|(n, v)| (n, v.as_detached_tensor()))
                .collect();
            train::io::save_safetensors(&path, &tensors, meta.clone())
        };
        export(&self.vars, self.run.path(MODEL))?;
        if let Some((ema_vars, _)) = &self.ema {
            export(ema_vars, self.run.path(MODEL_EMA))?;
        }
        Ok(())
    }
}
