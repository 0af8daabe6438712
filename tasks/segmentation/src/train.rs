//! The segmentation training loop (mmseg `IterBasedRunner` with iBOT's settings): batches of the
//! train pipeline from seeded per-sample draws (epochs of a seeded shuffle; the last batch of an
//! epoch may be short, as mmseg's loader does not drop it), AdamW with mmcv layer decay (UperNet)
//! or one group (linear), poly schedule with linear warm-up per iteration, BN statistics kept as
//! buffers; checkpoints (weights, BN buffers, AdamW moments, position) written atomically so a
//! re-run continues exactly; then sliding-window evaluation on val with mmseg's mIoU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backbone::{TrainCtx, VitConfig};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use data::segmentation::SegPairs;
use layers::norm::Buffers;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use train::param_groups::{mmcv_layer_decay, ParamGroup};
use train::vars::{insert_vars, sorted_vars, SeededInit};
use train::{AdamW, AdamWConfig, Clip, RunDir};

use crate::config::{HeadKind, SegConfig, SegDataConfig};
use crate::inference::{predict_labels, slide_inference};
use crate::pipeline::{test_sample, to_annotation_space, train_sample};
use crate::segmentor::Segmentor;

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const MODEL: &str = "model.safetensors";
pub const PRED_DIR: &str = "pred";
const FORMAT: &str = "ibot-rs-segmentation-1";

/// The pretrained backbone (`backbone.*` names, position embedding already on the dense grid).
pub struct Init {
    pub vit: VitConfig,
    pub weights: std::collections::HashMap<String, Tensor>,
}

pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    pub progress: indicatif::ProgressBar,
    /// Stop after this many iterations (the schedule keeps the recipe's length).
    pub max_iters: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub name: String,
    #[serde(rename = "IoU")]
    pub iou: Option<f64>,
    #[serde(rename = "Acc")]
    pub acc: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    #[serde(rename = "mIoU")]
    pub miou: f64,
    #[serde(rename = "mAcc")]
    pub macc: f64,
    #[serde(rename = "aAcc")]
    pub aacc: f64,
    pub per_class: Vec<ClassScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    iter: usize,
    optimizer_steps: BTreeMap<String, u64>,
    /// (iteration, mIoU) of the intermediate evaluations.
    evals: Vec<(usize, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scores: Scores,
    pub iters: usize,
    pub completed: bool,
    pub evals: Vec<(usize, f64)>,
    pub train_images: usize,
    pub val_images: usize,
    pub seconds: f64,
    pub train_images_per_s: f64,
    /// Every val image's prediction, written under `pred/` with the annotation's relative name.
    pub pred_dir: PathBuf,
}

fn open_pairs(data: &SegDataConfig, split: &str) -> Result<SegPairs> {
    SegPairs::ade(&data.root, split, data.num_classes, data.reduce_zero_label)
        .with_context(|| format!("data set '{}', split {split}", data.name))
}

fn resume_key(cfg: &SegConfig) -> Result<serde_json::Value> {
    let mut c = cfg.clone();
    c.run.log_every = 1;
    c.run.loader_threads = 0;
    c.run.checkpoint_every = 0;
    c.run.eval_every = 0;
    c.description = None;
    Ok(serde_json::to_value(c)?)
}

fn mix(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct SegTrainer {
    cfg: SegConfig,
    data: SegDataConfig,
    opts: RunOptions,
    run: RunDir,
    train_pairs: SegPairs,
    val_pairs: SegPairs,
    vars: VarMap,
    buffers: Buffers,
    model: Segmentor,
    optimizer: AdamW,
    lr: Vec<f64>,
    state: State,
    vit: VitConfig,
    pool: rayon::ThreadPool,
}

impl SegTrainer {
    pub fn new(cfg: SegConfig, data: SegDataConfig, init: Init, opts: RunOptions) -> Result<Self> {
        cfg.validate()?;
        data.validate()?;
        let device = opts.device.clone();
        let run = RunDir::create(&opts.out)?;
        let ckpt_path = run.path(CHECKPOINT);
        let saved = if ckpt_path.exists() {
            let saved = train::checkpoint::load(&ckpt_path, FORMAT, &device)?;
            let then: SegConfig = serde_json::from_value(saved.json("config")?)
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
        let train_pairs = open_pairs(&data, &data.train_split)?;
        let val_pairs = open_pairs(&data, &data.val_split)?;

        // A frozen backbone is served as constants (no gradient, no graph); otherwise its
        // weights are the optimiser's variables like every head parameter.
        let vars = VarMap::new();
        let frozen = cfg.head == HeadKind::Linear;
        let mut constants = std::collections::HashMap::new();
        let mut weights: Vec<(String, Tensor)> = init.weights.into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        if frozen {
            for (k, t) in weights {
                constants.insert(k, t.to_device(&device)?);
            }
        } else {
            insert_vars(&vars, weights, &device)?;
        }
        let buffers = Buffers::new();
        let vb = SeededInit::var_builder_with_constants(&vars, cfg.run.seed, constants, &device);
        let model = Segmentor::new(&init.vit, &cfg, data.num_classes, vb, &buffers)?;
        let trainable: Vec<(String, candle_core::Var)> = sorted_vars(&vars)
            .into_iter()
            .filter(|(n, _)| model.backbone().is_trainable(n))
            .collect();
        let depth = init.vit.depth;
        let rule = |name: &str, rank: usize| -> ParamGroup {
            match cfg.optim.layer_decay {
                Some(rate) => mmcv_layer_decay(name, rank, depth, rate),
                None => ParamGroup::PLAIN,
            }
        };
        let mut optimizer = AdamW::with_rule(trainable, rule, AdamWConfig::default());
        let o = &cfg.optim;
        let warmup = (o.warmup_iters > 0).then_some(train::schedule::LinearWarmup {
            iters: o.warmup_iters,
            ratio: o.warmup_ratio,
        });
        let lr = train::schedule::mmcv_poly(o.lr, o.min_lr, o.power, o.iters, warmup);
        let mut state = State {
            iter: 0,
            optimizer_steps: BTreeMap::new(),
            evals: Vec::new(),
        };
        if let Some(saved) = saved {
            let s: State = saved.json("state")?;
            for (name, var) in sorted_vars(&vars) {
                saved.restore(&format!("model.{name}"), &var)?;
            }
            for (name, _) in buffers.tensors() {
                buffers.set(&name, saved.tensor(&format!("buffer.{name}"))?.clone());
            }
            optimizer.load_state(&s.optimizer_steps, &|k| {
                saved.tensors.get(&format!("optimizer.{k}")).cloned()
            })?;
            state = s;
            run.truncate_log(state.iter, usize::MAX)?;
        } else {
            run.reset_log()?;
            run.write_json("config.json", &cfg)?;
        }
        let threads = if cfg.run.loader_threads > 0 {
            cfg.run.loader_threads
        } else {
            rayon::current_num_threads()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("starting the data threads")?;
        Ok(SegTrainer {
            vit: init.vit,
            cfg,
            data,
            opts,
            run,
            train_pairs,
            val_pairs,
            vars,
            buffers,
            model,
            optimizer,
            lr,
            state,
            pool,
        })
    }

    pub fn total_iters(&self) -> usize {
        let full = self.cfg.optim.iters;
        self.opts.max_iters.map_or(full, |m| m.min(full))
    }

    /// The dataset indices of iteration `iter`'s batch (epochs of a seeded shuffle, short last batch).
    fn batch_indices(&self, iter: usize) -> (usize, Vec<(usize, usize)>) {
        let n = self.train_pairs.pairs.len();
        let b = self.cfg.optim.batch_size;
        let per_epoch = n.div_ceil(b);
        let epoch = iter / per_epoch;
        let k = iter % per_epoch;
        let mut order: Vec<usize> = (0..n).collect();
        use rand::seq::SliceRandom;
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(mix(self.cfg.run.seed ^ 0x5E6, epoch as u64));
        order.shuffle(&mut rng);
        let positions = (k * b..((k + 1) * b).min(n))
            .map(|p| (p, order[p]))
            .collect();
        (epoch, positions)
    }

    fn batch(&self, iter: usize) -> Result<(Tensor, Tensor)> {
        let (epoch, positions) = self.batch_indices(iter);
        let cfg = &self.cfg.pipeline;
        let seed = self.cfg.run.seed;
        let samples: Vec<_> = self.pool.install(|| {
            positions
                .par_iter()
                .map(|&(pos, idx)| {
                    let mut rng = data::augment::sample_rng(seed, epoch as u64, pos as u64);
                    train_sample(&self.train_pairs, idx, cfg, &mut rng)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let [h, w] = cfg.crop_size;
        let (h, w) = (h as usize, w as usize);
        let b = samples.len();
        let mut images = Vec::with_capacity(b * 3 * h * w);
        let mut labels = Vec::with_capacity(b * h * w);
        for s in samples {
            images.extend(s.image);
            labels.extend(s.labels);
        }
        let dev = &self.opts.device;
        Ok((
            Tensor::from_vec(images, (b, 3, h, w), dev)?,
            Tensor::from_vec(labels, (b, h, w), dev)?,
        ))
    }

    pub fn run(&mut self) -> Result<Outcome> {
        let total = self.total_iters();
        let bar = self.opts.progress.clone();
        bar.set_length(total as u64);
        bar.set_position(self.state.iter as u64);
        let started = Instant::now();
        let start_iter = self.state.iter;
        self.run.log(&json!({
            "event": "run_start", "step": self.state.iter,
            "device": train::device::device_name(&self.opts.device),
            "train_images": self.train_pairs.pairs.len(), "val_images": self.val_pairs.pairs.len(),
            "classes": self.data.num_classes, "head": self.cfg.head,
        }))?;
        while self.state.iter < total {
            let it = self.state.iter;
            let t0 = Instant::now();
            let (x, y) = self.batch(it)?;
            let t_data = t0.elapsed().as_secs_f64();
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(mix(self.cfg.run.seed ^ 0xD809_9A7B, it as u64));
            let mut drop_rng =
                rand::rngs::StdRng::seed_from_u64(mix(self.cfg.run.seed ^ 0xD2_0F, it as u64));
            let mut ctx = TrainCtx { rng: &mut rng };
            let losses = self
                .model
                .losses(&x, &y, Some(&mut ctx), Some(&mut drop_rng))?;
            let loss = losses.total.to_scalar::<f32>()? as f64;
            if !loss.is_finite() {
                bail!(
                    "loss is {loss} at iteration {it}: stopping; the last good checkpoint is {}",
                    self.run.path(CHECKPOINT).display()
                );
            }
            let grads = losses.total.backward()?;
            let lr = self.lr[it];
            self.optimizer
                .step(&grads, lr, self.cfg.optim.weight_decay, Clip::None, &|_| {
                    false
                })?;
            let secs = t0.elapsed().as_secs_f64();
            self.state.iter += 1;
            let log_every = self.cfg.run.log_every;
            if log_every > 0 && it % log_every == 0 {
                let aux = match &losses.aux {
                    Some(a) => Some(a.to_scalar::<f32>()? as f64),
                    None => None,
                };
                self.run.log(&json!({
                    "step": it, "loss": loss, "decode.loss_seg": losses.decode.to_scalar::<f32>()?,
                    "aux.loss_seg": aux, "lr": lr, "images_per_s": x.dim(0)? as f64 / secs,
                    "step_seconds": secs, "data_seconds": t_data, "rss_mb": train::meter::resident_mb(),
                }))?;
            }
            bar.set_message(format!("it {it} loss {loss:.4} lr {lr:.2e}"));
            bar.inc(1);
            let every = self.cfg.run.checkpoint_every;
            let eval_every = self.cfg.run.eval_every;
            if eval_every > 0 && self.state.iter % eval_every == 0 && self.state.iter < total {
                let scores = self.evaluate(None)?;
                self.state.evals.push((self.state.iter, scores.miou));
                self.run
                    .log(&json!({"event": "eval", "step": self.state.iter, "mIoU": scores.miou}))?;
            }
            if (every > 0 && self.state.iter % every == 0) || self.state.iter >= total {
                self.save()?;
            }
        }
        bar.finish_and_clear();
        let pred_dir = self.run.path(PRED_DIR);
        let scores = self.evaluate(Some(&pred_dir))?;
        self.export()?;
        let seconds = started.elapsed().as_secs_f64();
        let done = self.state.iter - start_iter;
        Ok(Outcome {
            scores,
            iters: self.state.iter,
            completed: self.state.iter >= self.cfg.optim.iters,
            evals: self.state.evals.clone(),
            train_images: self.train_pairs.pairs.len(),
            val_images: self.val_pairs.pairs.len(),
            seconds,
            train_images_per_s: (done * self.cfg.optim.batch_size) as f64 / seconds.max(1e-9),
            pred_dir,
        })
    }

    /// Sliding-window prediction of every val image and mmseg's dataset-level scores; with
    /// `pred_dir`, every prediction is written there as a PNG in the annotation's label space.
    pub fn evaluate(&self, pred_dir: Option<&Path>) -> Result<Scores> {
        evaluate(
            &self.model,
            &self.cfg,
            &self.data,
            &self.val_pairs,
            &self.opts.device,
            pred_dir,
        )
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
                .map(|(n, t)| (format!("buffer.{n}"), t)),
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

    /// `model.safetensors`: the trained parameters and BN buffers under mmseg's names (the
    /// frozen backbone of the linear probe is not repeated).
    fn export(&self) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = sorted_vars(&self.vars)
            .into_iter()
            .map(|(n, v)| (n, v.as_detached_tensor()))
            .collect();
        tensors.extend(self.buffers.tensors());
        let mut meta = backbone::checkpoint::config_metadata(&self.vit);
        meta.insert("head".into(), format!("{:?}", self.cfg.head).to_lowercase());
        meta.insert("classes".into(), self.data.num_classes.to_string());
        train::io::save_safetensors(&self.run.path(MODEL), &tensors, meta)
    }
}

/// Sliding-window evaluation of `model` on `pairs` (see [`SegTrainer::evaluate`]).
pub fn evaluate(
    model: &Segmentor,
    cfg: &SegConfig,
    data: &SegDataConfig,
    pairs: &SegPairs,
    device: &Device,
    pred_dir: Option<&Path>,
) -> Result<Scores> {
    let mut acc = metrics::segmentation::SegmentationAccumulator::new(
        metrics::segmentation::SegmentationConfig {
            num_classes: data.num_classes,
            ignore_index: 255,
            // The ground truth is already reduced by the loader.
            reduce_zero_label: false,
        },
    );
    let p = &cfg.pipeline;
    let crop = (p.slide_crop[0] as usize, p.slide_crop[1] as usize);
    let stride = (p.slide_stride[0] as usize, p.slide_stride[1] as usize);
    let ann_root = data.root.join("annotations").join(&data.val_split);
    for i in 0..pairs.pairs.len() {
        let s = test_sample(pairs, i, p)?;
        let (h, w) = s.size;
        let x = Tensor::from_vec(s.image, (1, 3, h, w), device)?;
        let logits = slide_inference(&x, data.num_classes, crop, stride, &|win| {
            model.encode_decode(win)
        })?;
        let (gh, gw) = (s.labels.height as usize, s.labels.width as usize);
        let pred = predict_labels(&logits, gh, gw)?;
        acc.add_u8(&pred, &s.labels.labels)
            .map_err(|e| anyhow::anyhow!("{}: {e}", pairs.pairs[i].1.display()))?;
        if let Some(dir) = pred_dir {
            let label_path = &pairs.pairs[i].1;
            let rel = label_path
                .strip_prefix(&ann_root)
                .unwrap_or(label_path.as_path());
            let out = dir.join(rel);
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let map = data::image_io::LabelMap {
                width: gw as u32,
                height: gh as u32,
                labels: to_annotation_space(&pred, data.reduce_zero_label),
            };
            data::image_io::save_label_png(&map, &out)?;
        }
    }
    let sc = acc.scores();
    let opt = |v: f64| v.is_finite().then_some(v);
    Ok(Scores {
        miou: sc.m_iou,
        macc: sc.m_acc,
        aacc: sc.a_acc,
        per_class: (0..data.num_classes)
            .map(|c| ClassScore {
                name: data.class_name(c),
                iou: opt(sc.iou[c]),
                acc: opt(sc.acc[c]),
            })
            .collect(),
    })
}
