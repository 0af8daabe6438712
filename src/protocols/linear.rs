//! Linear probing (ibot-reference §8.2, iBOT's `eval_linear_multi.py`): the sweep of linear heads
//! on frozen features, on cached features or in the official augmented mode (every epoch's
//! RandomResizedCrop + flip images through the frozen backbone).

use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use linear::{LinearError, ProbeConfig, Sweep};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Protocol, UnitContext};
use crate::cmd_eval::EvalContext;
use crate::report::plots::{self, Series};
use crate::report::tables::{format_number, spec, ColumnKind, Spec, PERCENT};
use crate::report::{lookup, Report};

/// Linear-probe options of `ibot suite` (`[linear]` table) and of the checkpoint mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearOptions {
    pub sweep: Sweep,
    pub epochs: usize,
    pub batch_size: usize,
    pub holdout: f64,
    pub eval_every: usize,
    pub seed: u64,
    /// `None`: iBOT's run.sh choice from the embed dim.
    pub features: Option<features::FeatureSpec>,
    /// Official augmented training mode (RandomResizedCrop + flip through the backbone each epoch).
    pub augment: bool,
}

impl Default for LinearOptions {
    fn default() -> Self {
        LinearOptions {
            sweep: Sweep::Full,
            epochs: 100,
            batch_size: 1024,
            holdout: 0.1,
            eval_every: 1,
            seed: 0,
            features: None,
            augment: false,
        }
    }
}

impl LinearOptions {
    pub fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            heads: linear::official_grid(self.sweep),
            epochs: self.epochs,
            batch_size: self.batch_size,
            eval_every: self.eval_every,
            holdout: self.holdout,
            seed: self.seed,
        }
    }
}

/// The cached-feature probe with a progress bar over all training steps.
pub fn run_probe(
    train: ArrayView2<f32>,
    train_labels: &[usize],
    val: ArrayView2<f32>,
    val_labels: &[usize],
    opts: &LinearOptions,
    progress: &features::Progress,
) -> anyhow::Result<(linear::Report, linear::ProbeShape)> {
    let cfg = opts.probe_config();
    let (train_idx, _, _) = linear::plan(&cfg, train_labels, val_labels)?;
    let batch = cfg.batch_size.clamp(1, train_idx.len().max(1));
    let steps = opts.epochs * train_idx.len().div_ceil(batch);
    let bar = progress.bar(steps as u64, format!("linear ({} heads)", cfg.heads.len()));
    let out = linear::probe(
        train,
        train_labels,
        val,
        val_labels,
        &cfg,
        &mut |p| match p {
            linear::Progress::Step => bar.inc(1),
            linear::Progress::Evaluated(s) => {
                let best = s.val.iter().map(|c| c.top1()).fold(0.0, f64::max);
                bar.set_message(format!(
                    "linear ({} heads) epoch {}: best val top-1 {:.2} %",
                    cfg.heads.len(),
                    s.epoch,
                    100.0 * best
                ));
            }
        },
    )?;
    drop(bar);
    Ok(out)
}

pub fn config_json(opts: &LinearOptions, shape: &linear::ProbeShape, features: &str) -> Value {
    json!({
        "protocol": "linear",
        "sweep": opts.sweep,
        "heads": shape.heads,
        "epochs": opts.epochs,
        "batch_size": shape.batch_size,
        "lr_scaling": "lr · batch_size / 256",
        "schedule": "CosineAnnealingLR(T_max = epochs, eta_min = 0), stepped per epoch",
        "optimizers": "sgd: torch.optim.SGD(momentum 0.9, weight decay on weight and bias); lars: iBOT utils.LARS (η 0.001, momentum 0.9, no wd/trust ratio on the bias)",
        "loss": "cross-entropy (mean over the batch)",
        "init": "weight N(0, 0.01), bias 0",
        "holdout": opts.holdout,
        "selection": "best hold-out top-1 over (head, epoch); ties: earlier epoch, then grid order",
        "eval_every": opts.eval_every,
        "seed": opts.seed,
        "features": features,
        "augment": opts.augment,
        "train_rows": shape.train_rows,
        "holdout_rows": shape.holdout_rows,
        "val_rows": shape.val_rows,
        "dim": shape.dim,
        "classes": shape.classes,
    })
}

/// iBOT's run.sh layout: ViT-S (and smaller) CLS of the last 4 blocks (all blocks of a shallower
/// model); larger models last CLS ⊕ mean patch.
pub(super) fn default_spec(model: &features::ModelSource) -> anyhow::Result<features::FeatureSpec> {
    if model.pixels()?.is_some() {
        // Every layout is the same pixel vector.
        return Ok(features::FeatureSpec::Cls);
    }
    let ckpt = backbone::Checkpoint::open(&model.checkpoint)?;
    let sel = ckpt.select(model.key.as_deref())?;
    let cfg = ckpt.infer_config(&sel, model.arch.as_deref(), None)?;
    Ok(if cfg.embed_dim <= 384 {
        features::FeatureSpec::ClsLastN {
            n: 4.min(cfg.depth),
        }
    } else {
        features::FeatureSpec::ClsAvg {
            n: 1,
            interleaved: false,
        }
    })
}

/// The linear probe of one checkpoint on one data set: the whole result.json body.
pub fn evaluate(ctx: &EvalContext, opts: &LinearOptions) -> anyhow::Result<Value> {
    let spec = match &opts.features {
        Some(s) => s.clone(),
        None => default_spec(ctx.model)?,
    };
    let (train, val) = ctx.train_val(&spec)?;
    let what = || {
        format!(
            "linear probe of {} on '{}'",
            ctx.model.checkpoint.display(),
            ctx.data.name
        )
    };
    let (report, shape, mode) = if opts.augment {
        let (r, s) = augmented_probe(ctx, opts, &spec, &train, &val).with_context(what)?;
        (r, s, "augmented")
    } else {
        let (r, s) = run_probe(
            train.x.view(),
            &train.labels,
            val.x.view(),
            &val.labels,
            opts,
            ctx.progress,
        )
        .with_context(what)?;
        (r, s, "cached")
    };
    let mut config = config_json(
        opts,
        &shape,
        &format!("{spec} of the frozen model ({mode}; no normalisation)"),
    );
    config["data"] = json!(ctx.data.name);
    Ok(json!({
        "linear": report,
        "config": config,
        "manifest": {
            "train": train.manifest,
            "val": val.manifest,
            "checkpoint": ctx.model.checkpoint.display().to_string(),
            "ibot_version": env!("CARGO_PKG_VERSION"),
        },
    }))
}

/// Each epoch: the loader crops and flips the training images (seeded per sample), the frozen
/// backbone turns them into features, and the heads take one step per batch.
pub struct AugmentedBatches {
    dataset: Arc<dyn data::loader::ImageDataset>,
    crop: u32,
    seed: u64,
    model: backbone::VisionTransformer,
    spec: features::FeatureSpec,
    device: candle_core::Device,
}

impl linear::TrainBatches for AugmentedBatches {
    fn rows(&self) -> usize {
        self.dataset.len()
    }

    fn epoch(
        &mut self,
        epoch: usize,
        batch_size: usize,
        visit: &mut linear::Visit,
    ) -> Result<(), LinearError> {
        let source = |e: &dyn std::fmt::Display| LinearError::Source(e.to_string());
        let loader = data::loader::Loader::new(
            self.dataset.clone(),
            data::augment::Transform::LinearTrain { size: self.crop },
            data::loader::LoaderConfig {
                batch_size,
                shuffle: true,
                seed: self.seed,
                ..data::loader::LoaderConfig::default()
            },
        )
        .map_err(|e| source(&e))?;
        for batch in loader.epoch(epoch as u64) {
            let batch = batch.map_err(|e| source(&e))?;
            let x = Tensor::from_vec(batch.images, batch.shape.to_vec(), &self.device)
                .map_err(|e| source(&e))?;
            let f = self
                .spec
                .compute(&self.model, &x)
                .and_then(|f| {
                    Ok(f.to_dtype(DType::F32)?
                        .to_device(&candle_core::Device::Cpu)?)
                })
                .map_err(|e| source(&e))?;
            let (rows, dim) = f.dims2().map_err(|e| source(&e))?;
            let values = f
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| source(&e))?;
            let x = Array2::from_shape_vec((rows, dim), values).map_err(|e| source(&e))?;
            visit(x.view(), &batch.labels)?;
        }
        Ok(())
    }
}

/// The official mode: hold-out and val are scored on cached eval-transform features; training batches
/// are freshly augmented images through the frozen backbone.
pub fn augmented_probe(
    ctx: &EvalContext,
    opts: &LinearOptions,
    spec: &features::FeatureSpec,
    train: &features::Features,
    val: &features::Features,
) -> anyhow::Result<(linear::Report, linear::ProbeShape)> {
    if let Some(px) = ctx.model.pixels()? {
        bail!(
            "{}: the augmented mode runs images through a frozen backbone; the pixel baseline has none (use the cached mode)",
            px.name()
        );
    }
    let cfg = opts.probe_config();
    let (train_idx, holdout_idx, classes) = linear::plan(&cfg, &train.labels, &val.labels)?;
    let dataset = features::open_split(ctx.data, features::Split::Train)?;
    if dataset.len() != train.labels.len() {
        bail!(
            "the train split has {} images but its cached features {} rows",
            dataset.len(),
            train.labels.len()
        );
    }
    let device = features::default_device()?;
    let loaded = backbone::load(
        &ctx.model.checkpoint,
        &backbone::LoadSpec {
            key: ctx.model.key.as_deref(),
            arch: ctx.model.arch.as_deref(),
            ..backbone::LoadSpec::default()
        },
        DType::F32,
        &device,
    )?;
    let holdout_x = train.x.select(Axis(0), &holdout_idx);
    let holdout_y: Vec<usize> = holdout_idx.iter().map(|&i| train.labels[i]).collect();
    let batch_size = cfg.batch_size.clamp(1, train_idx.len());
    let mut source = AugmentedBatches {
        dataset: Arc::new(data::loader::Subset {
            inner: dataset,
            rows: train_idx.clone(),
        }),
        crop: ctx.data.transform.crop,
        seed: cfg.seed,
        model: loaded.model,
        spec: spec.clone(),
        device,
    };
    let mut heads = linear::Heads::new(train.x.ncols(), classes, cfg.heads.clone(), cfg.seed);
    let steps = cfg.epochs * train_idx.len().div_ceil(batch_size);
    let bar = ctx.progress.bar(steps as u64, "linear (augmented)");
    let history = linear::train_sweep(
        &mut heads,
        &linear::TrainConfig {
            epochs: cfg.epochs,
            batch_size,
            eval_every: cfg.eval_every,
        },
        &mut source,
        (!holdout_y.is_empty()).then(|| linear::EvalSet {
            x: holdout_x.view(),
            labels: &holdout_y,
        }),
        linear::EvalSet {
            x: val.x.view(),
            labels: &val.labels,
        },
        &mut |p| {
            if let linear::Progress::Step = p {
                bar.inc(1)
            }
        },
    )?;
    drop(bar);
    let shape = linear::ProbeShape {
        train_rows: train_idx.len(),
        holdout_rows: holdout_y.len(),
        val_rows: val.labels.len(),
        dim: train.x.ncols(),
        classes,
        heads: cfg.heads.len(),
        batch_size,
    };
    Ok((
        linear::Report::new(&cfg.heads, batch_size, classes, &history),
        shape,
    ))
}

pub struct Linear;

impl Protocol for Linear {
    const NAME: &'static str = "linear";
    const TITLE: &'static str = "Linear probing";
    const NOTE: &'static str =
        "Frozen features, linear head; top-1 / top-5 in % of the head selected on the held-out \
         train split; best-on-val = DINO's max over the sweep on val (optimistic).";
    type Options = LinearOptions;

    fn evaluate(ctx: &UnitContext, opts: &LinearOptions) -> anyhow::Result<Value> {
        evaluate(ctx.eval, opts)
    }

    fn columns(bodies: &[&Value]) -> Vec<Spec> {
        let has = |path: &[&str]| bodies.iter().any(|b| lookup(b, path).is_some());
        let mut specs = vec![
            spec("top-1", &["linear", "top1"], PERCENT),
            spec("top-5", &["linear", "top5"], PERCENT),
        ];
        for key in ["top1", "val_top1"] {
            if has(&["linear", "best_on_val", key]) {
                specs.push(spec(
                    "best-on-val top-1",
                    &["linear", "best_on_val", key],
                    PERCENT,
                ));
                break;
            }
        }
        for (header, key) in [
            ("optimizer", "optimizer"),
            ("lr", "lr"),
            ("wd", "weight_decay"),
            ("epoch", "epoch"),
        ] {
            if has(&["linear", "selected", key]) {
                specs.push(spec(header, &["linear", "selected", key], ColumnKind::Text));
            }
        }
        specs
    }

    /// The lr sweep of every checkpoint: held-out top-1 against lr per (optimizer, wd).
    fn charts(report: &Report, task: &str) -> anyhow::Result<String> {
        let mut charts = String::new();
        for c in &report.checkpoints {
            let Some(sweep) = report
                .body(task, &c.name)
                .and_then(|b| lookup(b, &["linear", "sweep"]))
                .and_then(Value::as_array)
            else {
                continue;
            };
            let series = sweep_series(sweep);
            if !series.is_empty() {
                charts += &plots::chart_div(&plots::line_chart(
                    &format!("Linear probe sweep: {}", c.name),
                    "learning rate (log scale)",
                    "held-out top-1 %",
                    &series,
                    true,
                )?);
            }
        }
        Ok(charts)
    }
}

/// One series per (optimizer, weight decay) of held-out top-1 against lr.
fn sweep_series(sweep: &[Value]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for entry in sweep {
        let (Some(lr), Some(acc)) = (
            entry.get("lr").and_then(Value::as_f64),
            entry
                .get("holdout_top1")
                .or_else(|| entry.get("val_top1"))
                .and_then(Value::as_f64),
        ) else {
            continue;
        };
        let optimizer = entry
            .get("optimizer")
            .and_then(Value::as_str)
            .unwrap_or("sgd");
        let name = match entry.get("weight_decay").and_then(Value::as_f64) {
            Some(wd) => format!("{optimizer} wd={}", format_number(wd)),
            None => optimizer.to_string(),
        };
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((lr, 100.0 * acc)),
            None => series.push(Series {
                name,
                points: vec![(lr, 100.0 * acc)],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}
