//! `ibot eval knn`: DINO's weighted k-NN, on precomputed features or on a checkpoint's features
//! extracted (and cached) by the feature store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_rows, progress_bar, read_features, read_labels, EvalContext};

#[derive(Args)]
#[command(group(
    ArgGroup::new("mode")
        .required(true)
        .args(["train_features", "checkpoint"])
))]
pub struct KnnArgs {
    /// Precomputed mode — train features: a 2-D float32/float64 .npy array, one row per sample.
    #[arg(
        long,
        requires_all = ["train_labels", "test_features", "test_labels"],
        conflicts_with_all = ["checkpoint", "data", "checkpoint_key", "arch", "features", "cache", "batch_size"]
    )]
    pub train_features: Option<PathBuf>,
    /// Precomputed mode — train labels: one non-negative integer per line, in row order.
    #[arg(long, requires = "train_features")]
    train_labels: Option<PathBuf>,
    /// Precomputed mode — test features: a 2-D float32/float64 .npy array with the train
    /// features' dimension.
    #[arg(long, requires = "train_features")]
    test_features: Option<PathBuf>,
    /// Precomputed mode — test labels: one non-negative integer per line, in row order.
    #[arg(long, requires = "train_features")]
    test_labels: Option<PathBuf>,
    /// Checkpoint mode — the model (.pth or .safetensors); its train and val features are
    /// extracted with the data config's transform and cached.
    #[arg(long, requires = "data")]
    checkpoint: Option<PathBuf>,
    /// Checkpoint mode — data config (configs/data/*.toml).
    #[arg(long, requires = "checkpoint")]
    data: Option<PathBuf>,
    /// Checkpoint mode — sub-dict holding the weights (default: teacher, then state_dict, model,
    /// module, else the whole file).
    #[arg(long, requires = "checkpoint")]
    checkpoint_key: Option<String>,
    /// Checkpoint mode — architecture preset (vit_tiny|vit_small|vit_base|vit_large[/8|/16]);
    /// inferred from the shapes when omitted.
    #[arg(long, requires = "checkpoint")]
    arch: Option<String>,
    /// Checkpoint mode — feature layout: cls, cls-last-N, avg, cls+avg, cls-last-N+avg,
    /// cls+avg-interleaved, head-logits.
    #[arg(long, requires = "checkpoint", default_value = "cls")]
    features: features::FeatureSpec,
    /// Checkpoint mode — feature cache directory (default: $IBOT_CACHE/features, else
    /// $XDG_CACHE_HOME/ibot/features, else ~/.cache/ibot/features). Entries are keyed by the
    /// checkpoint's sha256, the image list, the transform and the layout, so one cache can be
    /// shared by every run and protocol.
    #[arg(long, requires = "checkpoint")]
    cache: Option<PathBuf>,
    /// Checkpoint mode — images per forward pass.
    #[arg(long, requires = "checkpoint", default_value_t = 64)]
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
    match (&args.train_features, &args.checkpoint) {
        (Some(_), _) => run_precomputed(args),
        (None, Some(_)) => run_checkpoint(args),
        (None, None) => bail!("give --train-features … or --checkpoint … --data …"),
    }
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

fn run_checkpoint(args: KnnArgs) -> anyhow::Result<()> {
    let (Some(checkpoint), Some(data_path)) = (&args.checkpoint, &args.data) else {
        bail!("--checkpoint and --data go together");
    };
    let data = features::DataConfig::load(data_path)?;
    let model = features::ModelSource {
        checkpoint: checkpoint.clone(),
        key: args.checkpoint_key.clone(),
        arch: args.arch.clone(),
    };
    let cache = args.cache.clone().unwrap_or_else(default_cache_dir);
    let store = features::FeatureStore::new(cache).with_batch_size(args.batch_size);
    let opts = KnnOptions {
        k: args.k.clone(),
        temperature: args.temperature,
        features: args.features.clone(),
    };
    let ctx = EvalContext {
        model: &model,
        data: &data,
        store: &store,
    };
    let mut result = evaluate(&ctx, &opts)?;
    result["manifest"]["data_config"] = json!(data_path.display().to_string());
    write_result(&args.out, &result)?;
    let scores = scores_from_json(&result)?;
    print!(
        "{}",
        knn_table(
            &scores,
            args.temperature,
            result["manifest"]["train"]["data"]["num_images"]
                .as_u64()
                .unwrap_or(0) as usize,
            result["manifest"]["val"]["data"]["num_images"]
                .as_u64()
                .unwrap_or(0) as usize,
        )
    );
    eprintln!("wrote {}", args.out.join("result.json").display());
    Ok(())
}

/// k-NN of one checkpoint on one data set (train split = the neighbours, val split = queries):
/// the whole result.json body `{"knn": {...}, "config": {...}, "manifest": {...}}`.
pub fn evaluate(ctx: &EvalContext, opts: &KnnOptions) -> anyhow::Result<Value> {
    let train = ctx
        .store
        .get(ctx.model, ctx.data, features::Split::Train, &opts.features)?;
    let val = ctx
        .store
        .get(ctx.model, ctx.data, features::Split::Val, &opts.features)?;
    let params = knn::Params {
        ks: opts.k.clone(),
        temperature: opts.temperature,
        ..knn::Params::default()
    };
    let bar = progress_bar(val.x.nrows(), "k-NN")?;
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
    bar.finish_and_clear();
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

fn write_result(out: &Path, result: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("result.json");
    let tmp = tempfile::NamedTempFile::new_in(out)
        .with_context(|| format!("{}: cannot create a temporary file", out.display()))?;
    std::fs::write(tmp.path(), serde_json::to_string_pretty(result)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

fn run_precomputed(args: KnnArgs) -> anyhow::Result<()> {
    let (
        Some(train_features),
        Some(train_labels_path),
        Some(test_features),
        Some(test_labels_path),
    ) = (
        &args.train_features,
        &args.train_labels,
        &args.test_features,
        &args.test_labels,
    )
    else {
        bail!("--train-features, --train-labels, --test-features and --test-labels go together");
    };
    let (train, train_entry) = read_features(train_features)?;
    let (train_labels, train_labels_entry) = read_labels(train_labels_path)?;
    let (test, test_entry) = read_features(test_features)?;
    let (test_labels, test_labels_entry) = read_labels(test_labels_path)?;
    check_rows(
        train_features,
        train.nrows(),
        train_labels_path,
        train_labels.len(),
    )?;
    check_rows(
        test_features,
        test.nrows(),
        test_labels_path,
        test_labels.len(),
    )?;
    if train.ncols() != test.ncols() {
        bail!(
            "{} has feature dimension {} but {} has {}",
            test_features.display(),
            test.ncols(),
            train_features.display(),
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
            train_features.display(),
            test_features.display()
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
    let rows: Vec<(usize, f64, f64)> = scores.iter().map(|s| (s.k, s.top1(), s.top5())).collect();
    print!(
        "{}",
        knn_table(&rows, args.temperature, num_train, num_test)
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

/// (k, top-1, top-5) rows as a text table.
fn knn_table(scores: &[(usize, f64, f64)], temperature: f32, train: usize, test: usize) -> String {
    let mut out = format!("k-NN  T = {temperature}  train {train}  test {test}\n");
    out += &format!("{:>6} {:>8} {:>8}\n", "k", "top-1 %", "top-5 %");
    for &(k, top1, top5) in scores {
        out += &format!("{:>6} {:>8.2} {:>8.2}\n", k, 100.0 * top1, 100.0 * top5);
    }
    out
}
