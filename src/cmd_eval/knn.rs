//! `ibot eval knn`: DINO's weighted k-NN, on precomputed features or on a checkpoint's features
//! extracted (and cached) by the feature store.

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::{json, Value};

use super::{CheckpointArgs, PrecomputedArgs};
use crate::protocols::knn::{evaluate, knn_config, knn_json, KnnOptions};

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

/// (k, top-1, top-5) rows as a text table.
fn knn_table(scores: &[(usize, f64, f64)], temperature: f32, train: usize, test: usize) -> String {
    let mut out = format!("k-NN  T = {temperature}  train {train}  test {test}\n");
    out += &format!("{:>6} {:>8} {:>8}\n", "k", "top-1 %", "top-5 %");
    for &(k, top1, top5) in scores {
        out += &format!("{:>6} {:>8.2} {:>8.2}\n", k, 100.0 * top1, 100.0 * top5);
    }
    out
}
