//! `ibot eval knn`: DINO's weighted k-NN on precomputed features.

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

use super::{check_rows, progress_bar, read_features, read_labels};

#[derive(Args)]
pub struct KnnArgs {
    /// Train features: a 2-D float32/float64 .npy array, one row per sample.
    #[arg(long)]
    pub train_features: PathBuf,
    /// Train labels: one non-negative integer per line, in row order.
    #[arg(long)]
    train_labels: PathBuf,
    /// Test features: a 2-D float32/float64 .npy array with the train features' dimension.
    #[arg(long)]
    test_features: PathBuf,
    /// Test labels: one non-negative integer per line, in row order.
    #[arg(long)]
    test_labels: PathBuf,
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
    let (train, train_entry) = read_features(&args.train_features)?;
    let (train_labels, train_labels_entry) = read_labels(&args.train_labels)?;
    let (test, test_entry) = read_features(&args.test_features)?;
    let (test_labels, test_labels_entry) = read_labels(&args.test_labels)?;
    check_rows(
        &args.train_features,
        train.nrows(),
        &args.train_labels,
        train_labels.len(),
    )?;
    check_rows(
        &args.test_features,
        test.nrows(),
        &args.test_labels,
        test_labels.len(),
    )?;
    if train.ncols() != test.ncols() {
        bail!(
            "{} has feature dimension {} but {} has {}",
            args.test_features.display(),
            test.ncols(),
            args.train_features.display(),
            train.ncols()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let params = knn::Params {
        ks: args.k.clone(),
        temperature: args.temperature,
        ..knn::Params::default()
    };
    let (num_train, num_test) = (train.nrows(), test.nrows());
    let bar = progress_bar(num_test, "k-NN")?;
    let scores = knn::classify(train, &train_labels, test, &test_labels, &params, &|rows| {
        bar.inc(rows as u64)
    })
    .with_context(|| {
        format!(
            "k-NN on {} (train) and {} (test)",
            args.train_features.display(),
            args.test_features.display()
        )
    })?;
    bar.finish_and_clear();

    let result = json!({
        "knn": knn_json(&scores),
        "config": knn_config(&scores, args.temperature),
        "manifest": {
            "train_features": train_entry,
            "train_labels": train_labels_entry,
            "test_features": test_entry,
            "test_labels": test_labels_entry,
            "ibot_version": env!("CARGO_PKG_VERSION"),
        },
    });
    let path = args.out.join("result.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    print!(
        "{}",
        knn_table(&scores, args.temperature, num_train, num_test)
    );
    eprintln!("wrote {}", path.display());
    Ok(())
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

fn knn_table(scores: &[knn::KScore], temperature: f32, train: usize, test: usize) -> String {
    let mut out = format!("k-NN  T = {temperature}  train {train}  test {test}\n");
    out += &format!("{:>6} {:>8} {:>8}\n", "k", "top-1 %", "top-5 %");
    for s in scores {
        out += &format!(
            "{:>6} {:>8.2} {:>8.2}\n",
            s.k,
            100.0 * s.top1(),
            100.0 * s.top5()
        );
    }
    out
}

