//! `ibot eval linear`: iBOT's linear-probe sweep on frozen features (tasks/linear), on precomputed
//! features, on a checkpoint's cached features, or in the official augmented mode (every epoch's
//! RandomResizedCrop + flip images forwarded through the frozen backbone); and `ibot bench linear`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::{json, Value};

use super::{CheckpointArgs, PrecomputedArgs};
use crate::protocols::linear::{config_json, evaluate, run_probe, LinearOptions};
use linear::Sweep;

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
