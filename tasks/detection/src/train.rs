//! The detection training loop (mmcv `EpochBasedRunner` over mmdet's `train_detector`): per step, a
//! batch from the aspect-ratio group sampler, each sample through the train pipeline, images
//! collated to a common padded size, `forward_train` losses summed (`_parse_losses`), backward,
//! AdamW with iBOT's layer-decay groups (`mmcv_layer_decay`: `rate^(L+1−id)` over
//! `num_layers + 2` ids, no decay for 1-D and `.bias`, pos_embed/cls_token decayed) at the
//! per-iteration lr of mmcv's step policy with linear warm-up; BN statistics are buffers saved
//! next to the weights. Evaluation (COCO bbox + segm) after the last epoch and every `eval_every`.
//!
//! Every random draw derives from (seed, epoch, position) for the data and (seed, step) for the
//! samplers and drop path, and the whole state (weights, BN buffers, AdamW moments, position,
//! history) is checkpointed atomically at epoch ends and every `checkpoint_every` steps, so
//! re-running a stopped run continues it exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backbone::{LoadReport, TrainCtx, VitConfig};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use data::coco_instances::CocoInstances;
use data::detection_pipeline::{DetInput, DetTestPipeline, DetTrainPipeline};
use layers::norm::Buffers;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use train::param_groups::{mmcv_layer_decay, GroupRow};
use train::schedule::{mmcv_step, LinearWarmup};
use train::vars::{insert_vars, sorted_vars, SeededInit};
use train::{AdamW, AdamWConfig, Clip, RunDir};

use crate::config::DetectionConfig;
use crate::detector::{scalar, Batch, Detector};
use crate::eval::{evaluate_file, predict_dataset, write_detections, CocoStats};

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const MODEL: &str = "model.safetensors";
pub const DETECTIONS: &str = "detections.json";
/// Which step `detections.json` was computed at (lets a re-run skip inference).
pub const EVAL_STATE: &str = "eval.json";
const FORMAT: &str = "ibot-rs-detection-1";

/// The two COCO splits; `val.annotation_file` is the ground truth of the evaluation.
pub struct DetectionData {
    pub train: Arc<CocoInstances>,
    pub val: Arc<CocoInstances>,
}

impl DetectionData {
    /// `DIR/annotations/instances_{train,val}.json` with images in `DIR/{train,val}` (the layout
    /// `ibot data synth` writes under `coco/`).
    pub fn from_dir(root: &Path) -> Result<Self> {
        let load = |split: &str, train: bool| -> Result<CocoInstances> {
            Ok(CocoInstances::load(
                &root
                    .join("annotations")
                    .join(format!("instances_{split}.json")),
                &root.join(split),
                train,
            )?)
        };
        Ok(DetectionData {
            train: Arc::new(load("train", true)?),
            val: Arc::new(load("val", false)?),
        })
    }

    pub fn num_classes(&self) -> usize {
        self.train.num_classes()
    }

    fn check(&self) -> Result<()> {
        if self.train.cat_ids != self.val.cat_ids {
            bail!(
                "the train and val annotation files declare different categories ({:?} vs {:?})",
                self.train.cat_ids,
                self.val.cat_ids
            );
        }
        if self.train.is_empty() {
            bail!(
                "{}: no training image has annotations",
                self.train.annotation_file.display()
            );
        }
        Ok(())
    }
}

/// The starting weights: `backbone.*` (position embedding already on the recipe's grid).
pub struct Init {
    pub vit: VitConfig,
    pub weights: HashMap<String, Tensor>,
}

impl Init {
    /// A pretrained checkpoint, strictly loaded (`backbone::dense::load_dense_weights`).
    pub fn from_checkpoint(
        path: &Path,
        key: Option<&str>,
        arch: Option<&str>,
        cfg: &DetectionConfig,
    ) -> Result<(Init, LoadReport)> {
        let (vit, weights, report) =
            backbone::dense::load_dense_weights(path, key, arch, &cfg.dense())?;
        Ok((Init { vit, weights }, report))
    }

    /// A random initialisation of `vit` (tests, baselines without a checkpoint).
    pub fn random(vit: &VitConfig, cfg: &DetectionConfig, seed: u64) -> Result<Init> {
        Ok(Init {
            vit: vit.clone(),
            weights: backbone::dense::init_dense_weights(vit, &cfg.dense(), seed)?,
        })
    }
}

pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    pub progress: indicatif::ProgressBar,
    /// Stop after this many steps in total (the schedule keeps the recipe's length).
    pub max_steps: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Mean of each logged loss over the epoch's steps (and `loss`, their sum).
    pub losses: BTreeMap<String, f64>,
    pub lr: f64,
    pub seconds: f64,
    /// COCO AP when this epoch was evaluated.
    pub bbox_ap: Option<f64>,
    pub segm_ap: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    epoch: usize,
    step_in_epoch: usize,
    step: usize,
    iters_per_epoch: usize,
    optimizer_steps: BTreeMap<String, u64>,
    history: Vec<EpochRecord>,
    /// Sums of the current epoch's step losses so far (resumed mid-epoch).
    epoch_sums: BTreeMap<String, f64>,
}

/// What a finished (or stopped) run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub bbox: CocoStats,
    pub segm: CocoStats,
    /// Records in `detections.json`.
    pub detections: usize,
    pub detections_path: PathBuf,
    pub history: Vec<EpochRecord>,
    pub train_images: usize,
    pub val_images: usize,
    pub classes: usize,
    pub steps_per_epoch: usize,
    pub steps: usize,
    pub epochs: usize,
    pub seconds: f64,
    /// Training seconds per step of this invocation (data + forward + backward + update).
    pub seconds_per_step: f64,
    /// Inference throughput of the final evaluation (pipeline + model + post-processing).
    pub eval_images_per_s: f64,
    pub completed: bool,
}

/// mmdet's `GroupSampler` (one process): per aspect group, a shuffled list padded to a multiple
/// of the batch with random repeats, the groups concatenated, then whole batches shuffled.
pub fn group_sampler_order(groups: &[u8], batch: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ 0x6A09_E667, epoch as u64));
    let mut all = Vec::new();
    for g in 0..=1u8 {
        let mut idx: Vec<usize> = (0..groups.len()).filter(|&i| groups[i] == g).collect();
        if idx.is_empty() {
            continue;
        }
        idx.shuffle(&mut rng);
        let extra = idx.len().div_ceil(batch) * batch - idx.len();
        for _ in 0..extra {
            let k = idx[rng.gen_range(0..idx.len())];
            idx.push(k);
        }
        all.extend(idx);
    }
    let mut batches: Vec<usize> = (0..all.len() / batch).collect();
    batches.shuffle(&mut rng);
    batches
        .into_iter()
        .flat_map(|b| all[b * batch..(b + 1) * batch].to_vec())
        .collect()
}

/// A 64-bit key for (seed, step) draws (splitmix64 of the pair).
fn mix(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fields that may change between attempts of the same run.
fn resume_key(cfg: &DetectionConfig) -> Result<serde_json::Value> {
    let mut c = cfg.clone();
    c.run.log_every = 1;
    c.run.checkpoint_every = 0;
    c.run.eval_batch_size = 1;
    c.description = None;
    c.deviations.clear();
    Ok(serde_json::to_value(c)?)
}

/// The lr of every iteration (mmcv `StepLrUpdaterHook` with linear warm-up).
pub fn lr_schedule(cfg: &DetectionConfig, iters_per_epoch: usize) -> Vec<f64> {
    let t = &cfg.train;
    let warmup = (t.warmup_iters > 0).then_some(LinearWarmup {
        iters: t.warmup_iters,
        ratio: t.warmup_ratio,
    });
    mmcv_step(t.lr, t.gamma, &t.steps, t.epochs, iters_per_epoch, warmup)
}

/// The layer-decay group table of the model's trainable parameters (`--dry-run`).
pub fn parameter_groups(model: &Detector, vars: &VarMap, cfg: &DetectionConfig) -> Vec<GroupRow> {
    let t = &cfg.train;
    train::param_groups::group_table(
        sorted_vars(vars)
            .iter()
            .filter(|(n, _)| model.is_trainable(n))
            .map(|(n, v)| {
                (
                    n.as_str(),
                    mmcv_layer_decay(n, v.rank(), t.layer_decay_num_layers, t.layer_decay_rate),
                )
            })
            .collect::<Vec<_>>(),
        t.weight_decay,
    )
}

/// A model over fresh variables: `init` (the backbone) inserted, every other layer created by
/// its mmdet initialiser from `seed` ([`SeededInit`]).
pub fn build_model(
    cfg: &DetectionConfig,
    init: &Init,
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> Result<(Detector, VarMap, Buffers)> {
    let vars = VarMap::new();
    let mut weights: Vec<(String, Tensor)> = init
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    insert_vars(&vars, weights, device)?;
    let buffers = Buffers::new();
    let vb = SeededInit::var_builder(&vars, seed, device);
    let model = Detector::new(cfg, &init.vit, num_classes, vb, &buffers)?;
    Ok((model, vars, buffers))
}

pub struct Trainer {
    cfg: DetectionConfig,
    vit: VitConfig,
    opts: RunOptions,
    run: RunDir,
    data: DetectionData,
    vars: VarMap,
    buffers: Buffers,
    model: Detector,
    optimizer: AdamW,
    lr: Vec<f64>,
    state: State,
    groups: Vec<u8>,
    train_pipeline: DetTrainPipeline,
    test_pipeline: DetTestPipeline,
}

impl Trainer {
    /// A fresh run in `opts.out`, or the continuation of the run checkpointed there.
    pub fn new(
        cfg: DetectionConfig,
        init: Init,
        data: DetectionData,
        opts: RunOptions,
    ) -> Result<Self> {
        cfg.validate()?;
        data.check()?;
        let device = opts.device.clone();
        train::device::compute_dtype(&cfg.run.precision, &device)?;
        let run = RunDir::create(&opts.out)?;
        let ckpt_path = run.path(CHECKPOINT);
        let saved = if ckpt_path.exists() {
            let saved = train::checkpoint::load(&ckpt_path, FORMAT, &device)?;
            let then: DetectionConfig = serde_json::from_value(saved.json("config")?)
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
        let classes = data.num_classes();
        let (model, vars, buffers) = build_model(&cfg, &init, classes, cfg.run.seed, &device)?;
        let t = &cfg.train;
        let params: Vec<_> = sorted_vars(&vars)
            .into_iter()
            .filter(|(n, _)| model.is_trainable(n))
            .collect();
        let (rate, layers) = (t.layer_decay_rate, t.layer_decay_num_layers);
        let mut optimizer = AdamW::with_rule(
            params,
            |n, r| mmcv_layer_decay(n, r, layers, rate),
            AdamWConfig {
                beta1: t.betas[0],
                beta2: t.betas[1],
                eps: 1e-8,
            },
        );
        let groups = data.train.aspect_groups();
        let ipe = group_sampler_order(&groups, t.batch_size, cfg.run.seed, 0).len() / t.batch_size;
        let lr = lr_schedule(&cfg, ipe);
        let mut state = State {
            epoch: 0,
            step_in_epoch: 0,
            step: 0,
            iters_per_epoch: ipe,
            optimizer_steps: BTreeMap::new(),
            history: Vec::new(),
            epoch_sums: BTreeMap::new(),
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
            for (name, t) in buffers.tensors() {
                let key = format!("buffers.{name}");
                let v = saved.tensor(&key)?;
                if v.dims() != t.dims() {
                    bail!(
                        "{}: {key} has shape {:?}, the model needs {:?}",
                        ckpt_path.display(),
                        v.dims(),
                        t.dims()
                    );
                }
                buffers.set(&name, v.to_dtype(t.dtype())?.to_device(&device)?);
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
        Ok(Trainer {
            train_pipeline: cfg.train_pipeline()?,
            test_pipeline: cfg.test_pipeline()?,
            cfg,
            vit: init.vit,
            opts,
            run,
            data,
            vars,
            buffers,
            model,
            optimizer,
            lr,
            state,
            groups,
        })
    }

    pub fn model(&self) -> &Detector {
        &self.model
    }

    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    /// The layer-decay group table of the trainable parameters (`--dry-run`).
    pub fn parameter_groups(&self) -> Vec<GroupRow> {
        parameter_groups(&self.model, &self.vars, &self.cfg)
    }

    pub fn total_steps(&self) -> usize {
        let full = self.cfg.train.epochs * self.state.iters_per_epoch;
        self.opts.max_steps.map_or(full, |m| m.min(full))
    }

    /// The pipeline outputs of the batch at `position..position + batch` of `epoch`'s order.
    fn batch_inputs(&self, order: &[usize], epoch: usize, first: usize) -> Result<Vec<DetInput>> {
        let b = self.cfg.train.batch_size;
        (first..first + b)
            .into_par_iter()
            .map(|pos| {
                let i = order[pos];
                let s = self.data.train.sample(i).with_context(|| {
                    format!("loading {}", self.data.train.image_path(i).display())
                })?;
                let mut rng =
                    data::augment::sample_rng(self.cfg.run.seed, epoch as u64, pos as u64);
                Ok(self.train_pipeline.apply(&s.joint, &s.ignore, &mut rng)?)
            })
            .collect()
    }

    /// One optimisation step on `batch`: the named losses (and `loss`, their sum).
    fn train_step(&mut self, batch: &Batch) -> Result<BTreeMap<String, f64>> {
        let it = self.state.step;
        let seed = self.cfg.run.seed;
        let mut sample_rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ 0x5A3B_11C7, it as u64));
        let mut dp_rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ 0xD809_9A7B, it as u64));
        let mut ctx = TrainCtx { rng: &mut dp_rng };
        let out = self.model.losses(batch, &mut sample_rng, Some(&mut ctx))?;
        let total = out.total()?;
        let value = scalar(&total)?;
        let mut logged: BTreeMap<String, f64> = BTreeMap::new();
        for (k, v) in &out.losses {
            logged.insert(k.clone(), scalar(v)?);
        }
        logged.extend(out.logs.iter().map(|(k, v)| (k.clone(), *v)));
        logged.insert("loss".into(), value);
        if !value.is_finite() {
            bail!(
                "loss is {value} at step {it} ({logged:?}): stopping; the last good checkpoint is {}",
                self.run.path(CHECKPOINT).display()
            );
        }
        let grads = total.backward()?;
        let clip = self
            .cfg
            .train
            .clip_grad
            .map_or(Clip::None, Clip::GlobalNorm);
        self.optimizer.step(
            &grads,
            self.lr[it],
            self.cfg.train.weight_decay,
            clip,
            &|_| false,
        )?;
        Ok(logged)
    }

    /// `ibot bench detect`: `warmup + steps` training steps on the first batches of epoch 0,
    /// prepared before timing; the seconds of the last `steps` and every step's loss.
    pub fn time_steps(&mut self, warmup: usize, steps: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let bsz = self.cfg.train.batch_size;
        let order = group_sampler_order(&self.groups, bsz, self.cfg.run.seed, 0);
        let mut batches = Vec::new();
        for k in 0..warmup + steps {
            let first = (k * bsz) % order.len().max(1);
            let inputs = self.batch_inputs(&order, 0, first)?;
            batches.push(Batch::collate(&inputs, &self.opts.device)?);
        }
        let (mut times, mut losses) = (Vec::new(), Vec::new());
        for (k, batch) in batches.iter().enumerate() {
            let t0 = Instant::now();
            let logged = self.train_step(batch)?;
            self.state.step += 1;
            if k >= warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
            losses.push(logged["loss"]);
        }
        Ok((times, losses))
    }

    /// Test-pipeline inference on the first `images` val images: (results, seconds).
    pub fn time_inference(&self, images: usize, batch: usize) -> Result<(usize, f64)> {
        let mut val = (*self.data.val).clone();
        val.entries.truncate(images);
        let preds = predict_dataset(
            &self.model,
            &val,
            &self.test_pipeline,
            batch,
            &self.opts.device,
            None,
        )?;
        Ok((preds.results.len(), preds.seconds))
    }

    /// Trains to the end (or `max_steps`), then evaluates; writes `detections.json`.
    pub fn run(&mut self) -> Result<Outcome> {
        let total = self.total_steps();
        let ipe = self.state.iters_per_epoch;
        let bsz = self.cfg.train.batch_size;
        let bar = self.opts.progress.clone();
        bar.set_length(total as u64);
        bar.set_position(self.state.step as u64);
        let started = Instant::now();
        let start_step = self.state.step;
        let mut train_seconds = 0.0;
        self.run.log(&json!({
            "event": "run_start", "step": self.state.step, "epoch": self.state.epoch,
            "device": train::device::device_name(&self.opts.device),
            "train_images": self.data.train.len(), "val_images": self.data.val.len(),
            "classes": self.data.num_classes(), "iters_per_epoch": ipe,
        }))?;
        while self.state.step < total {
            let epoch = self.state.epoch;
            let epoch_started = Instant::now();
            let order = group_sampler_order(&self.groups, bsz, self.cfg.run.seed, epoch);
            while self.state.step_in_epoch < ipe && self.state.step < total {
                let t0 = Instant::now();
                let inputs = self.batch_inputs(&order, epoch, self.state.step_in_epoch * bsz)?;
                let batch = Batch::collate(&inputs, &self.opts.device)?;
                let t_data = t0.elapsed().as_secs_f64();
                let logged = self.train_step(&batch)?;
                let secs = t0.elapsed().as_secs_f64();
                train_seconds += secs;
                let step = self.state.step;
                let lr = self.lr[step];
                self.state.step += 1;
                self.state.step_in_epoch += 1;
                for (k, v) in &logged {
                    *self.state.epoch_sums.entry(k.clone()).or_insert(0.0) += v;
                }
                let every = self.cfg.run.log_every;
                if every > 0 && step % every == 0 {
                    let mut line = json!({
                        "epoch": epoch, "step": step, "lr": lr, "step_seconds": secs,
                        "data_seconds": t_data, "images_per_s": bsz as f64 / secs,
                        "rss_mb": train::meter::resident_mb(),
                    });
                    for (k, v) in &logged {
                        line[k] = json!(v);
                    }
                    self.run.log(&line)?;
                }
                bar.set_message(format!(
                    "ep {epoch} loss {:.4} lr {lr:.2e} {:.2} s/step",
                    logged["loss"], secs
                ));
                bar.inc(1);
                if self.state.step_in_epoch == ipe {
                    self.finish_epoch(epoch, epoch_started.elapsed().as_secs_f64())?;
                    self.save()?;
                    break;
                }
                let ce = self.cfg.run.checkpoint_every;
                if (ce > 0 && self.state.step % ce == 0) || self.state.step >= total {
                    self.save()?;
                }
            }
        }
        bar.finish_and_clear();
        let completed = self.state.step >= self.cfg.train.epochs * ipe;
        self.export()?;
        let (bbox, segm, detections, eval_ips) = self.evaluate_final()?;
        let steps_now = self.state.step - start_step;
        Ok(Outcome {
            bbox,
            segm,
            detections,
            detections_path: self.run.path(DETECTIONS),
            history: self.state.history.clone(),
            train_images: self.data.train.len(),
            val_images: self.data.val.len(),
            classes: self.data.num_classes(),
            steps_per_epoch: ipe,
            steps: self.state.step,
            epochs: self.state.epoch,
            seconds: started.elapsed().as_secs_f64(),
            seconds_per_step: if steps_now > 0 {
                train_seconds / steps_now as f64
            } else {
                0.0
            },
            eval_images_per_s: eval_ips,
            completed,
        })
    }

    fn finish_epoch(&mut self, epoch: usize, seconds: f64) -> Result<()> {
        let ipe = self.state.iters_per_epoch;
        let last = epoch + 1 == self.cfg.train.epochs;
        let every = self.cfg.run.eval_every;
        let evaluate = !last && every > 0 && (epoch + 1) % every == 0;
        let (bbox_ap, segm_ap) = if evaluate {
            let (b, s, _, _) = self.evaluate_at_step()?;
            (Some(b.ap), Some(s.ap))
        } else {
            (None, None)
        };
        let losses: BTreeMap<String, f64> = self
            .state
            .epoch_sums
            .iter()
            .map(|(k, v)| (k.clone(), v / ipe as f64))
            .collect();
        let record = EpochRecord {
            epoch,
            losses: losses.clone(),
            lr: self.lr[self.state.step - 1],
            seconds,
            bbox_ap,
            segm_ap,
        };
        self.run.log(&json!({
            "event": "epoch_end", "epoch": epoch, "losses": losses, "seconds": seconds,
            "bbox_AP": bbox_ap, "segm_AP": segm_ap,
        }))?;
        self.state.history.push(record);
        self.state.epoch += 1;
        self.state.step_in_epoch = 0;
        self.state.epoch_sums.clear();
        Ok(())
    }

    /// Inference on val at the current step → `detections.json` and the stats.
    fn evaluate_at_step(&self) -> Result<(CocoStats, CocoStats, usize, f64)> {
        let bar = self.opts.progress.clone();
        bar.reset();
        bar.set_length(self.data.val.len() as u64);
        bar.set_message(format!("evaluating at step {}", self.state.step));
        let preds = predict_dataset(
            &self.model,
            &self.data.val,
            &self.test_pipeline,
            self.cfg.run.eval_batch_size,
            &self.opts.device,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        let path = self.run.path(DETECTIONS);
        write_detections(&path, &preds.results)?;
        self.run.write_json(
            EVAL_STATE,
            &json!({"step": self.state.step, "images": preds.images, "seconds": preds.seconds}),
        )?;
        let (bbox, segm) = evaluate_file(&self.data.val.annotation_file, &path)?;
        let ips = preds.images as f64 / preds.seconds.max(1e-9);
        Ok((bbox, segm, preds.results.len(), ips))
    }

    /// The final evaluation, reusing `detections.json` when it was computed at this step.
    fn evaluate_final(&self) -> Result<(CocoStats, CocoStats, usize, f64)> {
        let path = self.run.path(DETECTIONS);
        let state_path = self.run.path(EVAL_STATE);
        if path.exists() && state_path.exists() {
            let st: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&state_path)?)?;
            if st["step"].as_u64() == Some(self.state.step as u64) {
                let n = crate::eval::read_detections(&path)?.len();
                let (bbox, segm) = evaluate_file(&self.data.val.annotation_file, &path)?;
                let ips = st["images"].as_f64().unwrap_or(0.0)
                    / st["seconds"].as_f64().unwrap_or(f64::INFINITY);
                return Ok((bbox, segm, n, ips));
            }
        }
        self.evaluate_at_step()
    }

    fn save(&self) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = sorted_vars(&self.vars)
            .into_iter()
            .map(|(n, v)| (format!("model.{n}"), v.as_detached_tensor()))
            .collect();
        tensors.extend(
            self.buffers
                .tensors()
                .into_iter()
                .map(|(n, t)| (format!("buffers.{n}"), t)),
        );
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

    /// `model.safetensors`: the trained weights and BN buffers under mmdet's state-dict names.
    fn export(&self) -> Result<()> {
        let mut meta = backbone::checkpoint::config_metadata(&self.vit);
        meta.insert("recipe".into(), self.cfg.name.clone());
        meta.insert("classes".into(), self.data.num_classes().to_string());
        let mut tensors: Vec<(String, Tensor)> = sorted_vars(&self.vars)
            .into_iter()
            .map(|(n, v)| (n, v.as_detached_tensor()))
            .collect();
        tensors.extend(self.buffers.tensors());
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        train::io::save_safetensors(&self.run.path(MODEL), &tensors, meta)
    }
}

/// Scalar losses of one forward pass of `model` on `batch` (no update), with the same draws a
/// training step at `step` would use: for tests and the benchmark.
pub fn losses_at(
    model: &Detector,
    batch: &Batch,
    seed: u64,
    step: usize,
) -> Result<crate::detector::Losses> {
    let mut sample_rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ 0x5A3B_11C7, step as u64));
    let mut dp_rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ 0xD809_9A7B, step as u64));
    let mut ctx = TrainCtx { rng: &mut dp_rng };
    model.losses(batch, &mut sample_rng, Some(&mut ctx))
}
