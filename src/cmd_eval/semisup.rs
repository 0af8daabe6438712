//! `ibot eval semisup`: frozen-feature semi-supervised evaluation (iBOT §8.4). For each label split of
//! TRAIN (class-balanced 1% / 10%, or SimCLR split files) it runs logistic regression (tasks/semisup),
//! weighted k-NN (tasks/knn) and the linear-probe sweep (tasks/linear) on the split, scored on full val.

use std::path::PathBuf;

use clap::{ArgGroup, Args};
use serde_json::{json, Value};

use super::{check_rows, read_bytes, CheckpointArgs, PrecomputedArgs};
use crate::protocols::linear::LinearOptions;
use crate::protocols::semisup::{
    config_json, evaluate, evaluate_splits, Inputs, Method, SemisupOptions,
};

#[derive(Args)]
#[command(group(
    ArgGroup::new("mode")
        .required(true)
        .args(["train_features", "checkpoint"])
))]
pub struct SemisupArgs {
    // Precomputed mode: the train features are those of the FULL train set; the splits are drawn
    // from their rows.
    #[command(flatten)]
    precomputed: PrecomputedArgs,
    /// Precomputed mode — one file name per train row (needed by --split-file).
    #[arg(long, requires = "train_features")]
    train_names: Option<PathBuf>,
    #[command(flatten)]
    model: CheckpointArgs,
    /// Label percentages: class-balanced, deterministic (seeded) subsets of TRAIN.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 10.0])]
    percent: Vec<f64>,
    /// SimCLR-style split files (one train file name per line, e.g. `1percent.txt`), evaluated in
    /// addition to --percent; each is reported under its file name.
    #[arg(long)]
    split_file: Vec<PathBuf>,
    /// Protocols to run on each split.
    #[arg(long, value_delimiter = ',', default_values = ["logreg", "knn", "linear"])]
    protocols: Vec<Method>,
    /// Logistic-regression λ grid (objective mean CE + λ/2‖W‖², cyanure's λ; sklearn C = 1/(nλ)).
    #[arg(long, value_delimiter = ',')]
    lambdas: Option<Vec<f64>>,
    /// Fraction of each class of a split held out to choose λ and the linear head.
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// k-NN neighbours.
    #[arg(long, default_value_t = 20)]
    k: usize,
    #[arg(long, default_value_t = knn::DEFAULT_TEMPERATURE)]
    temperature: f32,
    /// Linear part: heads (full | lr-only).
    #[arg(long, default_value = "full")]
    linear_sweep: linear::Sweep,
    #[arg(long, default_value_t = 100)]
    linear_epochs: usize,
    #[arg(long, default_value_t = 1024)]
    linear_batch_size: usize,
    /// Seeds the percentage splits, hold-outs and the linear heads.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory; result.json is written there.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: SemisupArgs) -> anyhow::Result<()> {
    let opts = SemisupOptions {
        percent: args.percent.clone(),
        split_files: args.split_file.clone(),
        protocols: args.protocols.clone(),
        lambdas: args
            .lambdas
            .clone()
            .unwrap_or_else(semisup::default_lambdas),
        holdout: args.holdout,
        seed: args.seed,
        k: args.k,
        temperature: args.temperature,
        linear: LinearOptions {
            sweep: args.linear_sweep,
            epochs: args.linear_epochs,
            batch_size: args.linear_batch_size,
            ..LinearOptions::default()
        },
        ..SemisupOptions::default()
    };
    let result = match args.precomputed.load()? {
        Some(p) => precomputed(p, &args, &opts)?,
        None => args.model.evaluate(None, |ctx| evaluate(ctx, &opts))?,
    };
    super::finish(&args.out, &result, &table(&result))
}

fn precomputed(
    p: super::Precomputed,
    args: &SemisupArgs,
    opts: &SemisupOptions,
) -> anyhow::Result<Value> {
    let mut manifest = p.manifest;
    let names = match &args.train_names {
        Some(path) => {
            let (bytes, entry) = read_bytes(path)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
            let names = semisup::name_lines(&text);
            if let Some(features) = &args.precomputed.train_features {
                check_rows(features, p.train.nrows(), path, names.len())?;
            }
            manifest["train_names"] = entry;
            Some(names)
        }
        None => None,
    };
    let inputs = Inputs {
        train: &p.train,
        train_labels: &p.train_labels,
        val: &p.test,
        val_labels: &p.test_labels,
        linear: None,
        names: names.as_deref(),
        progress: &features::Progress::standalone(),
    };
    let (body, split_manifest) = evaluate_splits(&inputs, opts)?;
    manifest["splits"] = split_manifest;
    Ok(json!({
        "semisup": body,
        "config": config_json(opts, "precomputed (L2-normalised for logreg and k-NN; as given for linear)"),
        "manifest": manifest,
    }))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".to_string(), |f| format!("{:.2}", 100.0 * f))
}

fn table(result: &Value) -> String {
    let mut out = format!(
        "semi-supervised  {:<14} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "split", "images", "logreg", "k-NN", "linear", "λ"
    );
    if let Some(splits) = result["semisup"].as_object() {
        for (name, s) in splits {
            out += &format!(
                "                 {:<14} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                name,
                s["train_images"],
                pct(&s["logreg"]["top1"]),
                pct(&s["knn"]["top1"]),
                pct(&s["linear"]["top1"]),
                s["logreg"]["lambda"]
                    .as_f64()
                    .map_or("—".into(), |l| format!("{l:e}")),
            );
        }
    }
    out += "top-1 % on val; λ and the linear head chosen on a hold-out of each split\n";
    out
}
