//! `ibot eval linear`: iBOT's linear-probe sweep on frozen features (tasks/linear), on precomputed
//! features, on a checkpoint's cached features, or in the official augmented mode (every epoch's
//! RandomResizedCrop + flip images forwarded through the frozen backbone); and `ibot bench linear`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use clap::{ArgGroup, Args};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CheckpointArgs, EvalContext, PrecomputedArgs};
use linear::{LinearError, ProbeConfig, Sweep};

#[derive(Args)]
#[command(group(
    ArgGroup::new("mode")
        .required(true)
        .args(["train_features", "checkpoint"])
))]
pub struct LinearArgs {
    #[command(flatten)]
    precomputed: PrecomputedArgs,
    #[command(flatten)]
    model: CheckpointArgs,
    /// Checkpoint mode — feature layout (cls, cls-last-N, cls+avg, …). Default as iBOT's run.sh:
    /// cls-last-4 for embed dim ≤ 384 (ViT-S/T), cls+avg otherwise (ViT-B/L).
    #[arg(long, requires = "checkpoint", conflicts_with = "train_features")]
    features: Option<features::FeatureSpec>,
    /// Checkpoint mode — the official training mode: every epoch, RandomResizedCrop(crop) + flip
    /// train images go through the frozen backbone (slow; hold-out and val use cached eval features).
    #[arg(long, requires = "checkpoint", conflicts_with = "train_features")]
    augment: bool,
    /// Heads: `full` = 45 lrs × wd {0, 1e-6} × {sgd, lars} (180), `lr-only` = the 45 SGD wd-0 heads.
    #[arg(long, default_value = "full")]
    sweep: Sweep,
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Training batch size (clamped to the training rows); lrs are scaled by batch/256.
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// Fraction of each TRAIN class held out to select the head and epoch (0: select on val, labelled).
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Evaluate every N epochs (and after the last).
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    /// Seeds the hold-out, the head initialisation, the shuffles and the augmentations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory; result.json is written there.
    #[arg(long)]
    out: PathBuf,
}

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

pub fn run(args: LinearArgs) -> anyhow::Result<()> {
    let opts = LinearOptions {
        sweep: args.sweep,
        epochs: args.epochs,
        batch_size: args.batch_size,
        holdout: args.holdout,
        eval_every: args.eval_every,
        seed: args.seed,
        features: args.features.clone(),
        augment: args.augment,
    };
    let result = match args.precomputed.load()? {
        Some(p) => evaluate_precomputed(p, &opts)?,
        None => args.model.evaluate(None, |ctx| evaluate(ctx, &opts))?,
    };
    super::finish(&args.out, &result, &table(&result))
}

fn evaluate_precomputed(p: super::Precomputed, opts: &LinearOptions) -> anyhow::Result<Value> {
    let progress = features::Progress::standalone();
    let (report, shape) = run_probe(
        p.train.view(),
        &p.train_labels,
        p.test.view(),
        &p.test_labels,
        opts,
        &progress,
    )
    .with_context(|| format!("linear probe {}", p.what))?;
    Ok(json!({
        "linear": report,
        "config": config_json(opts, &shape, "precomputed (used as given, no normalisation)"),
        "manifest": p.manifest,
    }))
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

fn config_json(opts: &LinearOptions, shape: &linear::ProbeShape, features: &str) -> Value {
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

/// Train rows (a subset of the split's images) for the augmented loader.
struct Rows {
    inner: Arc<dyn data::loader::ImageDataset>,
    rows: Vec<usize>,
}

impl data::loader::ImageDataset for Rows {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(self.rows[index])
    }
    fn load(&self, index: usize) -> data::Result<image::RgbImage> {
        self.inner.load(self.rows[index])
    }
}

/// Each epoch: the loader crops and flips the training images (seeded per sample), the frozen
/// backbone turns them into features, and the heads take one step per batch.
struct AugmentedBatches {
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
fn augmented_probe(
    ctx: &EvalContext,
    opts: &LinearOptions,
    spec: &features::FeatureSpec,
    train: &features::Features,
    val: &features::Features,
) -> anyhow::Result<(linear::Report, linear::ProbeShape)> {
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
        dataset: Arc::new(Rows {
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

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".to_string(), |f| format!("{:.2}", 100.0 * f))
}

fn table(result: &Value) -> String {
    let l = &result["linear"];
    let c = &result["config"];
    let s = &l["selected"];
    let b = &l["best_on_val"];
    let mut out = format!(
        "linear probe  {} heads  {} epochs  batch {}  train {} (+{} hold-out)  val {}\n",
        c["heads"], c["epochs"], c["batch_size"], c["train_rows"], c["holdout_rows"], c["val_rows"]
    );
    out += &format!(
        "selected on {}: {} lr {} wd {} epoch {}{}\n",
        l["selected_on"].as_str().unwrap_or("?"),
        s["optimizer"].as_str().unwrap_or("?"),
        s["lr"],
        s["weight_decay"],
        s["epoch"],
        match s["holdout_top1"].as_f64() {
            Some(h) => format!("  (hold-out top-1 {:.2} %)", 100.0 * h),
            None => String::new(),
        }
    );
    out += &format!("{:<34} {:>8} {:>8}\n", "", "top-1 %", "top-5 %");
    out += &format!(
        "{:<34} {:>8} {:>8}\n",
        "val, selected head",
        pct(&l["top1"]),
        pct(&l["top5"])
    );
    out += &format!(
        "{:<34} {:>8} {:>8}\n",
        "val, best on val (*)",
        pct(&b["top1"]),
        pct(&b["top5"])
    );
    out += "(*) selected on the evaluation set, for comparison with papers\n";
    out
}

#[derive(Args)]
pub struct BenchLinearArgs {
    /// Training rows.
    #[arg(long, default_value_t = 60_000)]
    train: usize,
    /// Validation rows (evaluation is timed separately).
    #[arg(long, default_value_t = 10_000)]
    test: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// Timed epochs per sweep (the mean is reported).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Sweeps to time: full (180 heads), lr-only (45 heads), or both.
    #[arg(long, value_delimiter = ',', default_values = ["full", "lr-only"])]
    sweep: Vec<Sweep>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the generated features and labels here (train.npy, train_labels.txt, test.npy,
    /// test_labels.txt) for `tests/reference/bench_linear_torch.py`.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub fn run_bench(args: BenchLinearArgs) -> anyhow::Result<()> {
    let train_y = ::knn::synthetic::labels(args.seed, 3, args.train, args.classes, 1);
    let test_y = ::knn::synthetic::labels(args.seed, 4, args.test, args.classes, 1);
    let train_x = ::knn::synthetic::clustered(args.seed, 0, 1, &train_y, args.dim, 4.0);
    let test_x = ::knn::synthetic::clustered(args.seed, 0, 5, &test_y, args.dim, 4.0);
    if let Some(dir) = &args.out_dir {
        super::write_case(dir, &train_x, &train_y, &test_x, &test_y)?;
    }
    let batch = args.batch_size.clamp(1, args.train);
    let mut runs = Vec::new();
    for &sweep in &args.sweep {
        let heads = linear::official_grid(sweep);
        let mut model = linear::Heads::new(args.dim, args.classes, heads.clone(), args.seed);
        let cfg = linear::TrainConfig {
            epochs: args.epochs.max(1),
            batch_size: batch,
            eval_every: usize::MAX,
        };
        let mut source = linear::CachedBatches::new(train_x.view(), &train_y, args.seed);
        let mut epoch_seconds = Vec::new();
        let mut last = Instant::now();
        let mut steps = 0usize;
        let per_epoch = args.train.div_ceil(batch);
        // Evaluation runs after the last epoch only; it is excluded from the epoch times.
        let mut eval_start = None;
        let history = linear::train_sweep(
            &mut model,
            &cfg,
            &mut source,
            None,
            linear::EvalSet {
                x: test_x.view(),
                labels: &test_y,
            },
            &mut |p| match p {
                linear::Progress::Step => {
                    steps += 1;
                    if steps == per_epoch {
                        steps = 0;
                        epoch_seconds.push(last.elapsed().as_secs_f64());
                        last = Instant::now();
                        if epoch_seconds.len() == cfg.epochs {
                            eval_start = Some(Instant::now());
                        }
                    }
                }
                linear::Progress::Evaluated(_) => {}
            },
        )?;
        let eval_seconds = eval_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let best = history[0].val.iter().map(|c| c.top1()).fold(0.0, f64::max);
        runs.push(json!({
            "sweep": sweep,
            "heads": heads.len(),
            "seconds_per_epoch": epoch_seconds.iter().sum::<f64>() / epoch_seconds.len().max(1) as f64,
            "epoch_seconds": epoch_seconds,
            "eval_seconds": eval_seconds,
            "best_val_top1": best,
        }));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "linear",
            "train": args.train, "test": args.test, "dim": args.dim, "classes": args.classes,
            "batch_size": batch,
            "threads": rayon::current_num_threads(),
            "note": "one epoch = forward + backward + optimiser step of every head on every batch; data generation and evaluation not included",
            "runs": runs,
        }))?
    );
    Ok(())
}
