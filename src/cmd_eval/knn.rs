//! `ibot eval knn`: DINO's weighted k-NN, on precomputed features or on a checkpoint's features
//! extracted (and cached) by the feature store.

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CheckpointArgs, EvalContext, PrecomputedArgs};

#[derive(Args)]
#[command(group(
    ArgGroup::new("mode")
        .required(true)
        .args(["train_features", "checkpoint"])
))]
pub struct KnnArgs {
    #[command(flatten)]
    precomputed: PrecomputedArgs,
    #[command(flatten)]
    model: CheckpointArgs,
    /// Checkpoint mode — feature layout: cls, cls-last-N, avg, cls+avg, cls-last-N+avg,
    /// cls+avg-interleaved, head-logits.
    #[arg(
        long,
        requires = "checkpoint",
        conflicts_with = "train_features",
        default_value = "cls"
    )]
    features: features::FeatureSpec,
    /// Checkpoint mode — images per forward pass.
    #[arg(
        long,
        requires = "checkpoint",
        conflicts_with = "train_features",
        default_value_t = 64
    )]
    batch_size: usize,
    /// Neighbour counts, evaluated in one pass.
    #[arg(long, value_delimiter = ',', default_values_t = knn::DEFAULT_KS)]
    k: Vec<usize>,
    /// Vote weight is exp(similarity / temperature).
    #[arg(long, default_value_t = knn::DEFAULT_TEMPERATURE)]
    temperature: f32,
    /// Output directory; result.json is written there.
    #[arg(long)]
    out: PathBuf,
}

/// k-NN options of `ibot suite` (`[knn]` table) and of the checkpoint mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnOptions {
    pub k: Vec<usize>,
    pub temperature: f32,
    pub features: features::FeatureSpec,
}

impl Default for KnnOptions {
    fn default() -> Self {
        KnnOptions {
            k: knn::DEFAULT_KS.to_vec(),
            temperature: knn::DEFAULT_TEMPERATURE,
            features: features::FeatureSpec::Cls,
        }
    }
}

pub fn run_knn(args: KnnArgs) -> anyhow::Result<()> {
    let (result, train, test) = match args.precomputed.load()? {
        Some(p) => {
            let counts = (p.train.nrows(), p.test.nrows());
            (evaluate_precomputed(p, &args)?, counts.0, counts.1)
        }
        None => {
            let opts = KnnOptions {
                k: args.k.clone(),
                temperature: args.temperature,
                features: args.features.clone(),
            };
            let result = args
                .model
                .evaluate(Some(args.batch_size), |ctx| evaluate(ctx, &opts))?;
            let images = |split: &str| {
                result["manifest"][split]["data"]["num_images"]
                    .as_u64()
                    .unwrap_or(0) as usize
            };
            let (train, val) = (images("train"), images("val"));
            (result, train, val)
        }
    };
    let table = knn_table(&scores_from_json(&result)?, args.temperature, train, test);
    super::finish(&args.out, &result, &table)
}

/// The feature cache used when `--cache` is not given.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("IBOT_CACHE") {
        return dir.join("features");
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return dir.join("ibot/features");
    }
    match env("HOME") {
        Some(home) => home.join(".cache/ibot/features"),
        None => PathBuf::from(".cache/ibot/features"),
    }
}

/// k-NN of one checkpoint on one data set (train split = the neighbours, val split = queries):
/// the whole result.json body `{"knn": {...}, "config": {...}, "manifest": {...}}`.
pub fn evaluate(ctx: &EvalContext, opts: &KnnOptions) -> anyhow::Result<Value> {
    let (train, val) = ctx.train_val(&opts.features)?;
    let params = knn::Params {
        ks: opts.k.clone(),
        temperature: opts.temperature,
        ..knn::Params::default()
    };
    let bar = ctx.progress.bar(val.x.nrows() as u64, "k-NN");
    let scores = knn::classify(
        train.x,
        &train.labels,
        val.x,
        &val.labels,
        &params,
        &|rows| bar.inc(rows as u64),
    )
    .with_context(|| {
        format!(
            "k-NN of {} on '{}' (train {} images, val {} images)",
            ctx.model.checkpoint.display(),
            ctx.data.name,
            train.labels.len(),
            val.labels.len()
        )
    })?;
    drop(bar);
    let mut config = knn_config(&scores, opts.temperature);
    config["features"] = json!(format!(
        "{} of the frozen model, L2-normalised per row",
        opts.features
    ));
    config["data"] = json!(ctx.data.name);
    Ok(json!({
        "knn": knn_json(&scores),
        "config": config,
        "manifest": {
            "train": train.manifest,
            "val": val.manifest,
            "ibot_version": env!("CARGO_PKG_VERSION"),
        },
    }))
}

fn scores_from_json(result: &Value) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let mut out = Vec::new();
    for (k, v) in result["knn"].as_object().into_iter().flatten() {
        out.push((
            k.parse()?,
            v["top1"].as_f64().unwrap_or(f64::NAN),
            v["top5"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    out.sort_by_key(|s| s.0);
    Ok(out)
}

fn evaluate_precomputed(p: super::Precomputed, args: &KnnArgs) -> anyhow::Result<Value> {
    let params = knn::Params {
        ks: args.k.clone(),
        temperature: args.temperature,
        ..knn::Params::default()
    };
    let bar = features::Progress::standalone().bar(p.test.nrows() as u64, "k-NN");
    let scores = knn::classify(
        p.train,
        &p.train_labels,
        p.test,
        &p.test_labels,
        &params,
        &|rows| bar.inc(rows as u64),
    )
    .with_context(|| format!("k-NN {}", p.what))?;
    drop(bar);
    Ok(json!({
        "knn": knn_json(&scores),
        "config": knn_config(&scores, args.temperature),
        "manifest": p.manifest,
    }))
}

pub fn knn_json(scores: &[knn::KScore]) -> Value {
    scores
        .iter()
        .map(|s| (s.k.to_string(), json!({"top1": s.top1(), "top5": s.top5()})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn knn_config(scores: &[knn::KScore], temperature: f32) -> Value {
    json!({
        "protocol": "knn",
        "k": scores.iter().map(|s| s.k).collect::<Vec<_>>(),
        "temperature": temperature,
        "features": "precomputed, L2-normalised per row",
        "similarity": "cosine",
        "weight": "exp(similarity / temperature)",
        "top5": "label among the first min(5, k) voted classes",
        "tie_breaking": "neighbours by similarity desc then train row asc; classes by vote desc then class id asc; classes without votes are not predictions",
    })
}

/// (k, top-1, top-5) rows as a text table.
fn knn_table(scores: &[(usize, f64, f64)], temperature: f32, train: usize, test: usize) -> String {
    let mut out = format!("k-NN  T = {temperature}  train {train}  test {test}\n");
    out += &format!("{:>6} {:>8} {:>8}\n", "k", "top-1 %", "top-5 %");
    for &(k, top1, top5) in scores {
        out += &format!("{:>6} {:>8.2} {:>8.2}\n", k, 100.0 * top1, 100.0 * top5);
    }
    out
}
