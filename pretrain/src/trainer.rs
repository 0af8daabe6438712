//! The iBOT training loop (ibot-reference §7.1): teacher on the unmasked globals, student on the
//! masked globals and the unmasked locals, the iBOT loss, per-parameter clipping, the frozen last
//! layer, AdamW and the EMA teacher — with atomic checkpoints, exact resume, JSON-lines logs and
//! collapse monitors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backbone::head::{init_head_weights, HeadConfig, IbotHead};
use backbone::{TrainCtx, VisionTransformer, VitConfig};
use candle_core::{DType, Device, IndexOp, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;

use crate::checkpoint::{self, TrainState};
use crate::collective::{all_gather, mean_scalars, Collective, SingleProcess};
use crate::config::PretrainConfig;
use crate::loss::IbotLoss;
use crate::mask::MaskGenerator;
use crate::monitor::KnnMonitor;
use crate::multicrop::{mix, open_dataset, MultiCropBatch, MultiCropLoader};
use train::device::{compute_dtype, device_name, dtype_name};
use train::ema::Ema;
use train::meter::{resident_mb, PhaseTimer};
use train::param_groups::dino_two_groups;
use train::schedule::cosine_scheduler;
use train::vars::{insert_vars, sorted_vars};
use train::{AdamW, AdamWConfig, Clip, RunDir};

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const TEACHER: &str = "teacher.safetensors";
pub const INIT: &str = "init.safetensors";
pub const LOG: &str = "log.jsonl";
pub const SUMMARY: &str = "summary.json";

/// Backbone + projection head; `VarBuilder` paths `backbone.*` / `head.*` as in the official wrapper.
pub struct Network {
    pub backbone: VisionTransformer,
    pub head: IbotHead,
}

impl Network {
    /// `compute` is the GEMM dtype (mixed precision); the weights stay f32.
    fn build(vit: &VitConfig, head: &HeadConfig, vb: VarBuilder, compute: DType) -> Result<Self> {
        Ok(Network {
            backbone: VisionTransformer::new(vit, vb.pp("backbone"))?.with_compute_dtype(compute),
            head: IbotHead::new(head, vb.pp("head"))?.with_compute_dtype(compute),
        })
    }
}

pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
    /// Overrides `run.max_steps`.
    pub max_steps: Option<usize>,
    pub progress: bool,
}

/// Per-iteration schedules (the teacher temperatures, per epoch, live in the loss).
struct Schedules {
    lr: Vec<f64>,
    wd: Vec<f64>,
    momentum: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// GEMM precision actually used (`f32` or `bf16`).
    pub precision: String,
    /// Data-parallel ranks (1 = one process, one device).
    pub world_size: usize,
    pub steps: usize,
    pub epoch: usize,
    pub last_loss: Option<f64>,
    pub seconds: f64,
    pub images_per_s: f64,
    pub step_seconds: Vec<f64>,
    pub checkpoint: PathBuf,
    pub teacher: PathBuf,
}

pub struct Trainer {
    cfg: PretrainConfig,
    opts: RunOptions,
    device: Device,
    student_vars: VarMap,
    teacher_vars: VarMap,
    student: Network,
    teacher: Network,
    optimizer: AdamW,
    loss: IbotLoss,
    loader: MultiCropLoader,
    schedules: Schedules,
    ema: Ema,
    state: TrainState,
    grid: usize,
    comm: Box<dyn Collective>,
    compute: DType,
    run_dir: RunDir,
    /// The `[eval]` k-NN monitor (rank 0 only).
    monitor: Option<KnnMonitor>,
}

impl Trainer {
    pub fn new(cfg: PretrainConfig, opts: RunOptions) -> Result<Self> {
        Self::with_collective(cfg, opts, Box::new(SingleProcess))
    }

    /// One rank of a data-parallel run (see [`crate::parallel`]): `opts.device` is this rank's
    /// device, `opts.out` the run directory shared by all ranks (only rank 0 writes to it), and
    /// the recipe's `optim.batch_size` is per rank, as the official `batch_size_per_gpu`.
    pub fn with_collective(
        cfg: PretrainConfig,
        opts: RunOptions,
        comm: Box<dyn Collective>,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = opts.device.clone();
        let compute = compute_dtype(&cfg.run.precision, &device)?;
        let (rank, world) = (comm.rank(), comm.world_size());
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("creating {}", opts.out.display()))?;
        let ckpt_path = opts.out.join(CHECKPOINT);
        let saved = if opts.resume {
            if !ckpt_path.exists() {
                bail!(
                    "--resume: {} does not exist (nothing to resume)",
                    ckpt_path.display()
                );
            }
            let saved = checkpoint::load(&ckpt_path, &device)?;
            check_compatible(&saved.config, &cfg, &ckpt_path)?;
            Some(saved)
        } else {
            if ckpt_path.exists() {
                bail!(
                    "{} already exists: pass --resume to continue that run, or choose another --out",
                    ckpt_path.display()
                );
            }
            None
        };

        let seed = cfg.run.seed;
        let s_vit = cfg.student_vit()?;
        let t_vit = cfg.teacher_vit()?;
        let s_head = cfg.student_head()?;
        let t_head = cfg.teacher_head()?;

        // Student: official init; teacher: the student's state dict loaded non-strictly (§7.4).
        let mut student_init: Vec<(String, Tensor)> = backbone::init::init_weights(&s_vit, seed)?
            .into_iter()
            .map(|(k, v)| (format!("backbone.{k}"), v))
            .collect();
        student_init.extend(
            init_head_weights(&s_head, seed.wrapping_add(1))?
                .into_iter()
                .map(|(k, v)| (format!("head.{k}"), v)),
        );
        let by_name: HashMap<String, Tensor> = student_init.iter().cloned().collect();
        let mut teacher_init = Vec::new();
        for (name, shape) in t_vit.expected_shapes() {
            let key = format!("backbone.{name}");
            let t = by_name[&key].clone();
            debug_assert_eq!(t.dims(), shape.as_slice());
            teacher_init.push((key, t));
        }
        for (name, t) in init_head_weights(&t_head, seed.wrapping_add(1))? {
            let key = format!("head.{name}");
            // A shared teacher layer receives the student's last_layer2 when the student has one
            // (PyTorch loads last_layer then last_layer2 into the same module; §11 item 15).
            let alt = key.replace("head.last_layer.", "head.last_layer2.");
            let value = by_name
                .get(&alt)
                .filter(|_| t_head.shared && alt != key)
                .or_else(|| by_name.get(&key))
                .cloned()
                .unwrap_or(t);
            teacher_init.push((key, value));
        }

        let student_vars = VarMap::new();
        insert_vars(&student_vars, student_init, &device)?;
        let teacher_vars = VarMap::new();
        insert_vars(&teacher_vars, teacher_init, &device)?;
        let student = Network::build(
            &s_vit,
            &s_head,
            VarBuilder::from_varmap(&student_vars, DType::F32, &device),
            compute,
        )?;
        // The teacher reads detached views of its Vars: same storage (EMA updates are visible),
        // no graph recording, so its forward takes the fused inference kernels.
        let detached: HashMap<String, Tensor> = sorted_vars(&teacher_vars)
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect();
        let teacher = Network::build(
            &t_vit,
            &t_head,
            VarBuilder::from_tensors(detached, DType::F32, &device),
            compute,
        )?;

        let frozen_g = s_head.norm_last_layer;
        let trainable: Vec<(String, Var)> = sorted_vars(&student_vars)
            .into_iter()
            .filter(|(name, _)| !(frozen_g && name.ends_with(".weight_g")))
            .collect();
        let mut optimizer = AdamW::with_rule(trainable, dino_two_groups, AdamWConfig::default());

        let student_all = sorted_vars(&student_vars);
        let student_names: std::collections::HashSet<&str> =
            student_all.iter().map(|(n, _)| n.as_str()).collect();
        let ema = Ema::pair_by_name_filtered(&sorted_vars(&teacher_vars), &student_all, |n| {
            student_names.contains(n)
        })?;

        let mut loss = IbotLoss::new(&cfg.loss_config(), &device)?;

        let dataset = open_dataset(&cfg.data)?;
        let grid = cfg.crops.global_size as usize / s_vit.patch_size;
        let masks = MaskGenerator::new(&cfg.mask, (grid, grid))?;
        let loader = MultiCropLoader::new(
            dataset,
            &cfg.crops,
            masks,
            cfg.optim.batch_size,
            seed,
            cfg.run.loader_threads,
        )?
        .with_shard(rank, world)?;
        let ipe = loader.batches_per_epoch();
        let o = &cfg.optim;
        // The official linear scaling rule uses the global batch: per-GPU batch × world size.
        let total_batch = (o.batch_size * world) as f64;
        let schedules = Schedules {
            lr: cosine_scheduler(
                o.lr * total_batch / 256.0,
                o.min_lr,
                o.epochs,
                ipe,
                o.warmup_epochs,
                0.0,
            ),
            wd: cosine_scheduler(o.weight_decay, o.weight_decay_end, o.epochs, ipe, 0, 0.0),
            momentum: cosine_scheduler(o.momentum_teacher, 1.0, o.epochs, ipe, 0, 0.0),
        };

        let mut state = TrainState {
            epoch: 0,
            step_in_epoch: 0,
            step: 0,
            iters_per_epoch: ipe,
            optimizer_steps: BTreeMap::new(),
            last_loss: None,
            world_size: world,
        };
        if let Some(saved) = saved {
            if saved.state.world_size != world {
                bail!(
                    "{}: the run was trained on {} rank(s), this one has {world}: the data shards and the lr scaling would change; resume with the same number of ranks",
                    ckpt_path.display(),
                    saved.state.world_size
                );
            }
            if saved.state.iters_per_epoch != ipe {
                bail!(
                    "{}: the checkpoint has {} iterations per epoch, this data set gives {ipe}: not the same data",
                    ckpt_path.display(),
                    saved.state.iters_per_epoch
                );
            }
            let get = |k: &str| -> Result<Tensor> {
                saved.tensors.get(k).cloned().ok_or_else(|| {
                    anyhow::anyhow!("{}: tensor {k} is missing", ckpt_path.display())
                })
            };
            for (prefix, map) in [("student", &student_vars), ("teacher", &teacher_vars)] {
                for (name, var) in sorted_vars(map) {
                    let t = get(&format!("{prefix}.{name}"))?;
                    if t.dims() != var.dims() {
                        bail!(
                            "{}: {prefix}.{name} has shape {:?}, the model needs {:?}",
                            ckpt_path.display(),
                            t.dims(),
                            var.dims()
                        );
                    }
                    var.set(&t.to_dtype(DType::F32)?)?;
                }
            }
            optimizer.load_state(&saved.state.optimizer_steps, &|k| {
                saved.tensors.get(&format!("optimizer.{k}")).cloned()
            })?;
            loss.set_centers(get("ibot_loss.center")?, get("ibot_loss.center2")?)?;
            state = saved.state;
        }

        let run_dir = RunDir::create(&opts.out)?;
        let monitor = match (&cfg.eval, comm.is_main()) {
            (Some(section), true) => Some(KnnMonitor::new(section, s_vit.patch_size)?),
            _ => None,
        };
        let trainer = Trainer {
            monitor,
            run_dir,
            cfg,
            opts,
            device,
            student_vars,
            teacher_vars,
            student,
            teacher,
            optimizer,
            loss,
            loader,
            schedules,
            ema,
            state,
            grid,
            comm,
            compute,
        };
        if !trainer.comm.is_main() {
            // Only rank 0 writes to the run directory.
        } else if trainer.opts.resume {
            trainer
                .run_dir
                .truncate_log(trainer.state.step, trainer.state.epoch)?;
        } else {
            trainer.export_teacher(&trainer.opts.out.join(INIT))?;
            std::fs::write(
                trainer.opts.out.join("config.json"),
                serde_json::to_string_pretty(&trainer.cfg)? + "\n",
            )?;
            trainer.run_dir.reset_log()?;
        }
        Ok(trainer)
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn total_steps(&self) -> usize {
        let full = self.cfg.optim.epochs * self.state.iters_per_epoch;
        match self.opts.max_steps.or(self.cfg.run.max_steps) {
            Some(m) => m.min(full),
            None => full,
        }
    }

    /// Trains until the last epoch or `max_steps`; checkpoints on the way and at the end.
    pub fn run(&mut self) -> Result<Summary> {
        let total = self.total_steps();
        let start_step = self.state.step;
        let bar = if self.opts.progress && self.comm.is_main() {
            indicatif::ProgressBar::new(total as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}",
        )?);
        bar.set_position(start_step as u64);
        let started = Instant::now();
        let mut step_seconds = Vec::new();
        let mut images = 0usize;
        let world = self.comm.world_size();
        self.log(json!({
            "event": "run_start", "step": self.state.step, "epoch": self.state.epoch,
            "precision": dtype_name(self.compute), "world_size": world,
            "collective": self.comm.kind(), "device": device_name(&self.device),
            "batch_size_per_rank": self.cfg.optim.batch_size,
        }))?;
        if self.state.step == 0 && self.monitor.as_ref().is_some_and(|m| m.at_start()) {
            bar.set_message("k-NN of the initial teacher");
            self.log_knn(json!({"step": 0, "epochs_done": 0}))?;
        }
        'epochs: while self.state.step < total {
            let epoch = self.state.epoch;
            let rx = self.loader.epoch(epoch, self.state.step_in_epoch, 2);
            let mut teacher_pred: Vec<i64> = Vec::new();
            let mut truth: Vec<i64> = Vec::new();
            let mut epoch_loss = 0.0;
            let mut epoch_steps = 0usize;
            let epoch_start = Instant::now();
            for batch in rx {
                let batch = batch.with_context(|| format!("preparing a batch of epoch {epoch}"))?;
                let t0 = Instant::now();
                let step = self.state.step;
                let (rec, epoch_done) = self.train_batch(&batch)?;
                let secs = t0.elapsed().as_secs_f64();
                step_seconds.push(secs);
                images += batch.batch * world;
                teacher_pred.extend(rec.teacher_view0.iter().map(|&p| p as i64));
                truth.extend(rec.labels.iter().map(|&l| l as i64));
                epoch_loss += rec.loss;
                epoch_steps += 1;
                if self.cfg.run.log_every > 0 && step % self.cfg.run.log_every == 0 {
                    self.log(json!({
                        "epoch": epoch, "step": step, "loss": rec.loss, "cls": rec.cls,
                        "patch": rec.patch, "lr": rec.lr, "wd": rec.wd, "momentum": rec.momentum,
                        "teacher_temp": rec.teacher_temp, "teacher_patch_temp": rec.teacher_patch_temp,
                        "entropy": rec.entropy, "marginal_entropy": rec.batch_entropy,
                        "agreement": rec.agreement, "masked_fraction": rec.masked_fraction,
                        "images_per_s": (batch.batch * world) as f64 / secs, "step_seconds": secs,
                        "elapsed_s": started.elapsed().as_secs_f64(),
                        "rss_mb": resident_mb(),
                        "phase_seconds": rec.phases.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    }))?;
                }
                bar.set_message(format!(
                    "ep {epoch} loss {:.4} cls {:.4} patch {:.4} lr {:.2e} {:.1} img/s",
                    rec.loss,
                    rec.cls,
                    rec.patch,
                    rec.lr,
                    (batch.batch * world) as f64 / secs
                ));
                bar.inc(1);
                let every = self.cfg.run.checkpoint_every;
                if epoch_done
                    || (every > 0 && self.state.step % every == 0)
                    || self.state.step >= total
                {
                    self.save()?;
                }
                if self.state.step >= total {
                    if !epoch_done {
                        break 'epochs;
                    }
                    break;
                }
            }
            if self.state.step_in_epoch != 0 {
                // The loader ran dry before the epoch ended: it reported an error above, or the
                // step budget ended mid-epoch (handled by the break).
                break;
            }
            let scores = metrics::cluster::ClusterScores::compute(&truth, &teacher_pred).ok();
            self.log(json!({
                "event": "epoch_end", "epoch": epoch, "steps": epoch_steps,
                "loss_mean": if epoch_steps > 0 { epoch_loss / epoch_steps as f64 } else { f64::NAN },
                "nmi": scores.map(|s| s.nmi), "ari": scores.map(|s| s.ari), "fmi": scores.map(|s| s.fmi),
                "seconds": epoch_start.elapsed().as_secs_f64(),
            }))?;
            let due = self
                .monitor
                .as_ref()
                .is_some_and(|m| m.due(epoch, self.cfg.optim.epochs));
            if due {
                bar.set_message(format!("ep {epoch}: k-NN of the teacher"));
                self.log_knn(json!({
                    "epoch": epoch, "step": self.state.step, "epochs_done": epoch + 1,
                }))?;
            }
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let summary = Summary {
            precision: dtype_name(self.compute).into(),
            world_size: world,
            steps: self.state.step,
            epoch: self.state.epoch,
            last_loss: self.state.last_loss,
            seconds,
            images_per_s: images as f64 / seconds.max(1e-9),
            step_seconds,
            checkpoint: self.opts.out.join(CHECKPOINT),
            teacher: self.opts.out.join(TEACHER),
        };
        if self.comm.is_main() {
            std::fs::write(
                self.opts.out.join(SUMMARY),
                serde_json::to_string_pretty(&summary)? + "\n",
            )?;
        }
        Ok(summary)
    }

    /// One training step on `batch` at the current position, then the position advanced (the
    /// epoch rolls over after its last batch). Returns the step's record and whether it ended an
    /// epoch. Nothing is logged or saved: [`Trainer::run`] does that.
    pub fn train_batch(&mut self, batch: &MultiCropBatch) -> Result<(StepRecord, bool)> {
        let rec = self.train_step(batch)?;
        self.state.step += 1;
        self.state.step_in_epoch += 1;
        self.state.last_loss = Some(rec.loss);
        let epoch_done = self.state.step_in_epoch == self.state.iters_per_epoch;
        if epoch_done {
            self.state.epoch += 1;
            self.state.step_in_epoch = 0;
        }
        Ok((rec, epoch_done))
    }

    /// The iBOT loss (its centres).
    pub fn loss(&self) -> &IbotLoss {
        &self.loss
    }

    /// The student's weights by name (`backbone.*`, `head.*`), sorted.
    pub fn student_weights(&self) -> Vec<(String, Tensor)> {
        sorted_vars(&self.student_vars)
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect()
    }

    /// The teacher's weights by name, sorted.
    pub fn teacher_weights(&self) -> Vec<(String, Tensor)> {
        sorted_vars(&self.teacher_vars)
            .into_iter()
            .map(|(k, v)| (k, v.as_detached_tensor()))
            .collect()
    }

    /// Overwrites every student and teacher weight (before the first step: the optimizer has
    /// no moments yet) — how a test starts from another implementation's initialisation.
    pub fn set_weights(
        &mut self,
        student: &HashMap<String, Tensor>,
        teacher: &HashMap<String, Tensor>,
    ) -> Result<()> {
        for (what, map, values) in [
            ("student", &self.student_vars, student),
            ("teacher", &self.teacher_vars, teacher),
        ] {
            for (name, var) in sorted_vars(map) {
                let t = values
                    .get(&name)
                    .with_context(|| format!("{what} weight {name} is missing"))?;
                if t.dims() != var.dims() {
                    bail!(
                        "{what} weight {name} has shape {:?}, the model needs {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                var.set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
            }
        }
        Ok(())
    }

    /// The teacher's k-NN on the `[eval]` data, logged as one `knn` event with `position`.
    fn log_knn(&self, position: serde_json::Value) -> Result<()> {
        let Some(monitor) = &self.monitor else {
            return Ok(());
        };
        let mut line = monitor.evaluate(&self.teacher.backbone, &self.device)?;
        if let (Some(line), serde_json::Value::Object(pos)) = (line.as_object_mut(), position) {
            line.extend(pos);
        }
        self.log(line)
    }

    fn train_step(&mut self, batch: &MultiCropBatch) -> Result<StepRecord> {
        let cfg = &self.cfg;
        let it = self.state.step;
        let epoch = self.state.epoch;
        let (g, l, b) = (cfg.crops.global_crops, cfg.crops.local_crops, batch.batch);
        let (gs, ls) = (
            cfg.crops.global_size as usize,
            cfg.crops.local_size as usize,
        );
        let n = self.grid * self.grid;
        let dev = &self.device;
        let globals = Tensor::from_slice(&batch.globals, (g * b, 3, gs, gs), dev)?;
        let masks = Tensor::from_slice(&batch.masks, (g * b, n), dev)?;
        let lr = self.schedules.lr[it];
        let wd = self.schedules.wd[it];
        let momentum = self.schedules.momentum[it];

        let mut timer = PhaseTimer::new();
        let t_tokens = self.teacher.backbone.forward_tokens(&globals, None, None)?;
        let (t_cls, t_patch) = self.teacher.head.forward(&t_tokens)?;

        timer.lap("teacher");
        // Drop-path draws differ per rank (rank 0 keeps the one-process stream).
        let stream = 0xD809_9A7B ^ self.comm.rank() as u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(cfg.run.seed, stream, it as u64));
        let mut ctx = TrainCtx { rng: &mut rng };
        let s_tokens =
            self.student
                .backbone
                .forward_tokens(&globals, Some(&masks), Some(&mut ctx))?;
        let (s_cls, s_patch) = self.student.head.forward(&s_tokens)?;
        let s_local = if l > 0 {
            let locals = Tensor::from_slice(&batch.locals, (l * b, 3, ls, ls), dev)?;
            let tokens = self
                .student
                .backbone
                .forward_tokens(&locals, None, Some(&mut ctx))?;
            // Local patch logits are computed and discarded officially; the CLS path is the same.
            Some(
                self.student
                    .head
                    .forward_cls(&tokens.i((.., 0))?.contiguous()?)?,
            )
        } else {
            None
        };

        timer.lap("student");
        let (teacher_temp, teacher_patch_temp) = self.loss.teacher_temps(epoch)?;
        // Teacher argmax on global view 0 feeds the epoch-end NMI/ARI/FMI monitor.
        let teacher_view0 = t_cls.narrow(0, 0, b)?.argmax(D::Minus1)?.to_vec1::<u32>()?;

        let out = self.loss.forward(
            &s_cls,
            &s_patch,
            s_local.as_ref(),
            &t_cls,
            &t_patch,
            &masks,
            epoch,
            &*self.comm,
        )?;
        let local = out.loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
        // The global-batch loss is the mean of the rank losses (equal batches); every rank sees
        // the same value, so a non-finite loss stops all ranks at the same step.
        let local_masked = batch.masks.iter().sum::<f32>() as f64 / batch.masks.len() as f64;
        let reduced = mean_scalars(&*self.comm, &[local, out.cls, out.patch, local_masked], dev)?;
        let (loss, cls_loss, patch_loss, masked_fraction) =
            (reduced[0], reduced[1], reduced[2], reduced[3]);
        if !loss.is_finite() {
            bail!(
                "loss is {loss} at epoch {epoch}, step {it} (cls {cls_loss}, patch {patch_loss}): stopping; the last good checkpoint is {}",
                self.opts.out.join(CHECKPOINT).display()
            );
        }
        let stats = self
            .loss
            .last_stats()
            .context("the loss recorded no teacher statistics")?;
        timer.lap("loss");
        let mut grads = out.loss.backward()?;
        timer.lap("backward");
        if self.comm.world_size() > 1 {
            average_gradients(&*self.comm, &mut grads, &self.optimizer)?;
            timer.lap("all_reduce");
        }
        let freeze = epoch < cfg.optim.freeze_last_layer;
        self.optimizer.step(
            &grads,
            lr,
            wd,
            Clip::per_param(cfg.optim.clip_grad),
            &|name: &str| freeze && name.contains("last_layer"),
        )?;
        timer.lap("optimizer");
        self.ema.update(momentum)?;
        timer.lap("ema");
        // The epoch-end NMI/ARI/FMI monitor sees every rank's images (official concat_all_gather).
        let (teacher_view0, labels) = if self.comm.world_size() > 1 {
            let mine: Vec<f64> = teacher_view0
                .iter()
                .map(|&p| p as f64)
                .chain(batch.labels.iter().map(|&l| l as f64))
                .collect();
            let all = all_gather(&*self.comm, &Tensor::from_vec(mine, (1, 2 * b), dev)?)?
                .to_vec2::<f64>()?;
            let preds = all
                .iter()
                .flat_map(|r| r[..b].iter().map(|&p| p as u32))
                .collect();
            let labels = all
                .iter()
                .flat_map(|r| r[b..].iter().map(|&l| l as usize))
                .collect();
            (preds, labels)
        } else {
            (teacher_view0, batch.labels.clone())
        };
        Ok(StepRecord {
            loss,
            cls: cls_loss,
            patch: patch_loss,
            lr,
            wd,
            momentum,
            teacher_temp,
            teacher_patch_temp,
            entropy: stats.entropy,
            batch_entropy: stats.marginal_entropy,
            agreement: stats.agreement.unwrap_or(f64::NAN),
            masked_fraction,
            teacher_view0,
            labels,
            phases: timer.phases,
        })
    }

    /// Appends one JSON line to the run log (rank 0 only).
    fn log(&self, value: serde_json::Value) -> Result<()> {
        if !self.comm.is_main() {
            return Ok(());
        }
        self.run_dir.log(&value)
    }

    /// Checkpoint and teacher export (rank 0 only: the ranks hold identical weights).
    fn save(&self) -> Result<()> {
        if !self.comm.is_main() {
            return Ok(());
        }
        let mut tensors = Vec::new();
        for (prefix, map) in [
            ("student", &self.student_vars),
            ("teacher", &self.teacher_vars),
        ] {
            for (name, var) in sorted_vars(map) {
                tensors.push((format!("{prefix}.{name}"), var.as_detached_tensor()));
            }
        }
        let (moments, steps) = self.optimizer.state()?;
        tensors.extend(
            moments
                .into_iter()
                .map(|(k, v)| (format!("optimizer.{k}"), v)),
        );
        tensors.push(("ibot_loss.center".into(), self.loss.center().clone()));
        tensors.push(("ibot_loss.center2".into(), self.loss.center2().clone()));
        let mut state = self.state.clone();
        state.optimizer_steps = steps;
        checkpoint::save(&self.opts.out.join(CHECKPOINT), &self.cfg, &state, tensors)?;
        self.export_teacher(&self.opts.out.join(TEACHER))
    }

    /// The teacher in the official backbone layout (bare keys) plus its `head.*` keys.
    pub fn export_teacher(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = sorted_vars(&self.teacher_vars)
            .into_iter()
            .map(|(name, var)| {
                let key = name.strip_prefix("backbone.").unwrap_or(&name).to_string();
                (key, var.as_detached_tensor())
            })
            .collect();
        let mut meta = backbone::checkpoint::config_metadata(&self.cfg.teacher_vit()?);
        meta.insert(
            "head".into(),
            serde_json::to_string(&self.cfg.teacher_head()?)?,
        );
        meta.insert("step".into(), self.state.step.to_string());
        meta.insert("recipe".into(), self.cfg.name.clone());
        backbone::checkpoint::save_safetensors(path, &tensors, meta)
    }
}

/// A resumed run must be the same run; only how long it goes and how it reports may change.
fn check_compatible(saved: &PretrainConfig, now: &PretrainConfig, path: &Path) -> Result<()> {
    let strip = |c: &PretrainConfig| -> Result<serde_json::Value> {
        let mut c = c.clone();
        c.run.max_steps = None;
        c.run.checkpoint_every = 0;
        c.run.log_every = 1;
        c.run.loader_threads = 0;
        c.eval = None;
        Ok(serde_json::to_value(c)?)
    };
    train::checkpoint::check_compatible(&strip(saved)?, &strip(now)?, path)
}

/// What one step did (the fields of its log.jsonl line).
pub struct StepRecord {
    pub loss: f64,
    pub cls: f64,
    pub patch: f64,
    pub lr: f64,
    pub wd: f64,
    pub momentum: f64,
    pub teacher_temp: f64,
    pub teacher_patch_temp: f64,
    pub entropy: f64,
    pub batch_entropy: f64,
    pub agreement: f64,
    pub masked_fraction: f64,
    /// Teacher argmax on global view 0 and the labels, of the global batch.
    pub teacher_view0: Vec<u32>,
    pub labels: Vec<usize>,
    pub phases: Vec<(&'static str, f64)>,
}

/// DDP: every trainable parameter's gradient replaced by its mean over the ranks, before the
/// per-parameter clipping and the AdamW step. One flat all-reduce for all of them.
fn average_gradients(
    comm: &dyn Collective,
    grads: &mut candle_core::backprop::GradStore,
    optimizer: &AdamW,
) -> Result<()> {
    let world = comm.world_size() as f64;
    let present: Vec<(Var, Tensor)> = optimizer
        .vars()
        .filter_map(|v| grads.get(v.as_tensor()).map(|g| (v.clone(), g.clone())))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let flat: Vec<Tensor> = present
        .iter()
        .map(|(_, g)| g.to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let summed = comm.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
    let mean = (summed / world)?;
    let mut offset = 0;
    for (var, g) in present {
        let n = g.elem_count();
        let avg = mean.narrow(0, offset, n)?.reshape(g.shape())?;
        grads.insert(var.as_tensor(), avg);
        offset += n;
    }
    Ok(())
}
