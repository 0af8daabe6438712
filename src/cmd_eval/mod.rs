//! `ibot eval …`: frozen-feature protocols, and their benchmarks (`ibot bench knn|kmeans|linear`).
//! One file per protocol; shared input readers live here.

pub mod cluster;
pub mod detect;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod segment;
pub mod semisup;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ndarray::Array2;
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What a protocol needs to evaluate one checkpoint on one data set (shared by `ibot eval … --checkpoint
/// --data` and `ibot suite`). Each protocol file exposes `pub fn evaluate(ctx: &EvalContext, opts:
/// &<Protocol>Options) -> anyhow::Result<serde_json::Value>` returning its whole result.json body.
pub struct EvalContext<'a> {
    pub model: &'a features::ModelSource,
    pub data: &'a features::DataConfig,
    pub store: &'a features::FeatureStore,
    /// Where the protocol's bars go (under `ibot suite`'s display, or on their own).
    pub progress: &'a features::Progress,
}

impl EvalContext<'_> {
    /// The (train, val) features of one layout, from the cache or extracted into it.
    pub fn train_val(
        &self,
        spec: &features::FeatureSpec,
    ) -> anyhow::Result<(features::Features, features::Features)> {
        let get = |split| self.store.get(self.model, self.data, split, spec);
        Ok((get(features::Split::Train)?, get(features::Split::Val)?))
    }
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Weighted k-NN (DINO/iBOT protocol: L2-normalised features, cosine similarity, exp(sim/T) votes).
    Knn(knn::KnnArgs),
    /// Linear probing: a sweep of linear heads on frozen features.
    Linear(linear::LinearArgs),
    /// Semi-supervised (1%/10% labels): logistic regression, k-NN and linear on a label split.
    Semisup(semisup::SemisupArgs),
    /// Unsupervised classification: head argmax and k-means; ACC/NMI/ARI/FMI.
    Cluster(cluster::ClusterArgs),
    /// End-to-end fine-tuning: full (BEiT recipe) or semi-supervised from the projection head.
    Finetune(finetune::FinetuneArgs),
    /// Semantic segmentation (ADE20K layout): frozen linear probe or UperNet, sliding-window mIoU.
    Segment(segment::SegmentArgs),
    /// COCO detection and instance segmentation: ViT pyramid + FPN + (Cascade) Mask R-CNN, AP^b / AP^m.
    Detect(detect::DetectArgs),
}

#[derive(Subcommand)]
pub enum BenchEval {
    /// UperNet training steps (the demo segmentation model by default); compare with
    /// tests/reference/bench_segmentation_torch.py.
    Segment(segment::BenchSegmentArgs),
    /// Mask R-CNN training steps and inference of the detection demo recipe; compare with
    /// tests/reference/bench_detection_torch.py.
    Detect(detect::BenchDetectArgs),
    /// k-means on generated clustered features (compare with tests/reference/bench_kmeans_sklearn.py).
    Kmeans(cluster::BenchKmeansArgs),
    /// Linear-probe sweep time per epoch on cached features.
    Linear(linear::BenchLinearArgs),
    /// k-NN on generated clustered features (60,000 train × 10,000 test × 384 by default).
    Knn {
        #[arg(long, default_value_t = 60_000)]
        train: usize,
        #[arg(long, default_value_t = 10_000)]
        test: usize,
        #[arg(long, default_value_t = 384)]
        dim: usize,
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        #[arg(long, value_delimiter = ',', default_values_t = ::knn::DEFAULT_KS)]
        k: Vec<usize>,
        #[arg(long, default_value_t = ::knn::DEFAULT_TEMPERATURE)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Repetitions of the timed classification (the best is reported).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Also write the generated features and labels here (train.npy, train_labels.txt, test.npy,
        /// test_labels.txt), so `tests/reference/bench_knn_torch.py` times PyTorch on the same data.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Knn(args) => knn::run_knn(args),
        EvalCommand::Linear(args) => linear::run(args),
        EvalCommand::Semisup(args) => semisup::run(args),
        EvalCommand::Cluster(args) => cluster::run(args),
        EvalCommand::Finetune(args) => finetune::run_finetune(args),
        EvalCommand::Segment(args) => segment::run_segment(args),
        EvalCommand::Detect(args) => detect::run_detect(args),
    }
}

/// Precomputed mode of `ibot eval knn|linear|semisup`: features extracted elsewhere.
#[derive(Args)]
pub struct PrecomputedArgs {
    /// Precomputed mode — train features: a 2-D float32/float64 .npy array, one row per sample.
    #[arg(
        long,
        requires_all = ["train_labels", "test_features", "test_labels"],
        conflicts_with_all = ["checkpoint", "data", "checkpoint_key", "arch", "cache"]
    )]
    pub train_features: Option<PathBuf>,
    /// Precomputed mode — train labels: one non-negative integer per line, in row order.
    #[arg(long, requires = "train_features")]
    pub train_labels: Option<PathBuf>,
    /// Precomputed mode — test (val) features: a 2-D float32/float64 .npy array with the train
    /// features' dimension.
    #[arg(long, requires = "train_features")]
    pub test_features: Option<PathBuf>,
    /// Precomputed mode — test (val) labels: one non-negative integer per line, in row order.
    #[arg(long, requires = "train_features")]
    pub test_labels: Option<PathBuf>,
}

/// Precomputed features and labels, checked against each other, with their manifest.
pub struct Precomputed {
    pub train: Array2<f32>,
    pub train_labels: Vec<usize>,
    pub test: Array2<f32>,
    pub test_labels: Vec<usize>,
    /// `train_features`, `train_labels`, `test_features`, `test_labels` entries and `ibot_version`.
    pub manifest: Value,
    /// "on TRAIN (train) and TEST (test)", for error contexts.
    pub what: String,
}

impl PrecomputedArgs {
    /// The four inputs, or `None` when the command runs in checkpoint mode.
    pub fn load(&self) -> anyhow::Result<Option<Precomputed>> {
        let Some(train_features) = &self.train_features else {
            return Ok(None);
        };
        let (Some(train_labels), Some(test_features), Some(test_labels)) =
            (&self.train_labels, &self.test_features, &self.test_labels)
        else {
            bail!(
                "--train-features, --train-labels, --test-features and --test-labels go together"
            );
        };
        let (train, train_entry) = read_features(train_features)?;
        let (train_y, train_labels_entry) = read_labels(train_labels)?;
        let (test, test_entry) = read_features(test_features)?;
        let (test_y, test_labels_entry) = read_labels(test_labels)?;
        check_rows(train_features, train.nrows(), train_labels, train_y.len())?;
        check_rows(test_features, test.nrows(), test_labels, test_y.len())?;
        if train.ncols() != test.ncols() {
            bail!(
                "{} has feature dimension {} but {} has {}",
                test_features.display(),
                test.ncols(),
                train_features.display(),
                train.ncols()
            );
        }
        Ok(Some(Precomputed {
            train,
            train_labels: train_y,
            test,
            test_labels: test_y,
            manifest: json!({
                "train_features": train_entry,
                "train_labels": train_labels_entry,
                "test_features": test_entry,
                "test_labels": test_labels_entry,
                "ibot_version": env!("CARGO_PKG_VERSION"),
            }),
            what: format!(
                "on {} (train) and {} (test)",
                train_features.display(),
                test_features.display()
            ),
        }))
    }
}

/// Checkpoint mode of `ibot eval knn|linear|semisup`: features extracted from a frozen model and
/// cached by the feature store.
#[derive(Args)]
pub struct CheckpointArgs {
    /// Checkpoint mode — the frozen model (.pth or .safetensors); its train and val features are
    /// extracted with the data config's transform and cached.
    #[arg(long, requires = "data")]
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint mode — data config (configs/data/*.toml).
    #[arg(long, requires = "checkpoint")]
    pub data: Option<PathBuf>,
    /// Checkpoint mode — sub-dict holding the weights (default: teacher, then state_dict, model,
    /// module, else the whole file).
    #[arg(long, requires = "checkpoint")]
    pub checkpoint_key: Option<String>,
    /// Checkpoint mode — architecture preset (vit_tiny|vit_small|vit_base|vit_large[/8|/16]);
    /// inferred from the shapes when omitted.
    #[arg(long, requires = "checkpoint")]
    pub arch: Option<String>,
    /// Checkpoint mode — feature cache directory (default: $IBOT_CACHE/features, else
    /// $XDG_CACHE_HOME/ibot/features, else ~/.cache/ibot/features). Entries are keyed by the
    /// checkpoint's sha256, the image list, the transform and the layout, so one cache can be
    /// shared by every run and protocol.
    #[arg(long, requires = "checkpoint")]
    pub cache: Option<PathBuf>,
    /// Checkpoint mode — GEMM precision of the extraction: f32, or bf16 (bf16 operands, f32
    /// accumulation; AMX tiles on CPUs that have them). bf16 features are cached separately.
    #[arg(long, default_value = "f32", requires = "checkpoint")]
    pub precision: features::Precision,
}

impl CheckpointArgs {
    /// Runs `evaluate` on the checkpoint and data config (bars on stderr, features from the
    /// cache); the result's manifest records the data config file. `batch_size`: images per
    /// forward pass, the store's default when `None`.
    pub fn evaluate(
        &self,
        batch_size: Option<usize>,
        evaluate: impl FnOnce(&EvalContext) -> anyhow::Result<Value>,
    ) -> anyhow::Result<Value> {
        let (Some(checkpoint), Some(data_path)) = (&self.checkpoint, &self.data) else {
            bail!("give --train-features … or --checkpoint … --data …");
        };
        let data = features::DataConfig::load(data_path)?;
        let model = features::ModelSource {
            checkpoint: checkpoint.clone(),
            key: self.checkpoint_key.clone(),
            arch: self.arch.clone(),
            precision: self.precision,
        };
        let cache = self.cache.clone().unwrap_or_else(default_cache_dir);
        let mut store = features::FeatureStore::new(cache);
        if let Some(b) = batch_size {
            store = store.with_batch_size(b);
        }
        let ctx = EvalContext {
            model: &model,
            data: &data,
            store: &store,
            progress: &features::Progress::standalone(),
        };
        let mut result = evaluate(&ctx)?;
        result["manifest"]["data_config"] = json!(data_path.display().to_string());
        Ok(result)
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

/// The end of every `ibot eval` command: `out/result.json` written atomically, the short table on
/// stdout, where it went on stderr.
pub fn finish(out: &Path, result: &Value, table: &str) -> anyhow::Result<()> {
    let path = out.join("result.json");
    crate::report::write_atomic(
        &path,
        (serde_json::to_string_pretty(result)? + "\n").as_bytes(),
    )?;
    print!("{table}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// A 2-D array as .npy (benchmark cases for the Python reference scripts).
pub fn write_npy(path: &Path, x: &Array2<f32>) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    x.write_npy(std::io::BufWriter::new(file))
        .with_context(|| format!("writing {}", path.display()))
}

/// One label per line.
pub fn write_labels(path: &Path, labels: &[usize]) -> anyhow::Result<()> {
    let text: String = labels.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn check_rows(features: &Path, rows: usize, labels: &Path, count: usize) -> anyhow::Result<()> {
    if rows != count {
        bail!(
            "{} has {} labels but {} has {} rows",
            labels.display(),
            count,
            features.display(),
            rows
        );
    }
    Ok(())
}

pub fn read_bytes(path: &Path) -> anyhow::Result<(Vec<u8>, Value)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let entry = json!({
        "path": path.display().to_string(),
        "bytes": bytes.len(),
        "sha256": format!("{:x}", Sha256::digest(&bytes)),
    });
    Ok((bytes, entry))
}

/// A 2-D float32 .npy (float64 is converted), with its manifest entry.
pub fn read_features(path: &Path) -> anyhow::Result<(Array2<f32>, Value)> {
    let (bytes, mut entry) = read_bytes(path)?;
    let (features, dtype) = match Array2::<f32>::read_npy(bytes.as_slice()) {
        Ok(a) => (a, "float32"),
        Err(ReadNpyError::WrongDescriptor(_)) => {
            let a = Array2::<f64>::read_npy(bytes.as_slice()).map_err(|e| {
                anyhow::anyhow!(
                    "{}: expected a 2-D float32 or float64 .npy array: {e}",
                    path.display()
                )
            })?;
            (a.mapv(|v| v as f32), "float64")
        }
        Err(e) => bail!(
            "{}: expected a 2-D float32 or float64 .npy array: {e}",
            path.display()
        ),
    };
    if features.nrows() == 0 || features.ncols() == 0 {
        bail!(
            "{}: empty feature array of shape {:?}",
            path.display(),
            features.shape()
        );
    }
    if let Some(row) = features
        .rows()
        .into_iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        bail!("{}: row {row} contains NaN or infinity", path.display());
    }
    entry["shape"] = json!(features.shape());
    entry["dtype"] = json!(dtype);
    Ok((features.as_standard_layout().into_owned(), entry))
}

/// One non-negative integer label per line, with its manifest entry.
pub fn read_labels(path: &Path) -> anyhow::Result<(Vec<usize>, Value)> {
    let (bytes, mut entry) = read_bytes(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("{}: labels file is not UTF-8 text", path.display()))?;
    let labels = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            line.trim().parse::<usize>().map_err(|_| {
                anyhow::anyhow!(
                    "{}:{}: expected one non-negative integer label per line, found {:?}",
                    path.display(),
                    i + 1,
                    line
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if labels.is_empty() {
        bail!("{}: no labels", path.display());
    }
    entry["count"] = json!(labels.len());
    Ok((labels, entry))
}

pub fn run_bench(cmd: BenchEval) -> anyhow::Result<()> {
    match cmd {
        BenchEval::Kmeans(args) => cluster::run_bench(args)?,
        BenchEval::Linear(args) => linear::run_bench(args)?,
        BenchEval::Segment(args) => segment::run_bench(args)?,
        BenchEval::Detect(args) => detect::run_bench(args)?,
        BenchEval::Knn {
            train,
            test,
            dim,
            classes,
            k,
            temperature,
            seed,
            repeat,
            out_dir,
        } => {
            let train_labels = ::knn::synthetic::labels(seed, 3, train, classes, 1);
            let test_labels = ::knn::synthetic::labels(seed, 4, test, classes, 1);
            // Noise 4 around unit-box class centres: neighbours are informative but far from perfect.
            let train_x = ::knn::synthetic::clustered(seed, 0, 1, &train_labels, dim, 4.0);
            let test_x = ::knn::synthetic::clustered(seed, 0, 5, &test_labels, dim, 4.0);
            if let Some(dir) = &out_dir {
                write_case(dir, &train_x, &train_labels, &test_x, &test_labels)?;
            }
            let params = ::knn::Params {
                ks: k,
                temperature,
                ..::knn::Params::default()
            };
            let threads = rayon::current_num_threads();
            let mut best = f64::INFINITY;
            let mut scores = Vec::new();
            for _ in 0..repeat.max(1) {
                let (a, b) = (train_x.clone(), test_x.clone());
                let start = Instant::now();
                scores = ::knn::classify(a, &train_labels, b, &test_labels, &params, &|_| {})?;
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "bench": "knn",
                    "train": train, "test": test, "dim": dim, "classes": classes,
                    "threads": threads,
                    "seconds": best,
                    "note": "normalisation + similarity + top-k + votes; data generation not timed",
                    "knn": crate::protocols::knn::knn_json(&scores),
                }))?
            );
        }
    }
    Ok(())
}

fn write_case(
    dir: &Path,
    train: &Array2<f32>,
    train_labels: &[usize],
    test: &Array2<f32>,
    test_labels: &[usize],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_npy(&dir.join("train.npy"), train)?;
    write_npy(&dir.join("test.npy"), test)?;
    write_labels(&dir.join("train_labels.txt"), train_labels)?;
    write_labels(&dir.join("test_labels.txt"), test_labels)
}
