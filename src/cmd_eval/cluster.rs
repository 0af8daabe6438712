//! `ibot eval cluster`: unsupervised classification — iBOT's head argmax and k-means on L2-normalised
//! features, scored with ACC (Hungarian) / NMI / ARI / FMI; `ibot bench kmeans`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::{check_rows, read_features, read_labels, EvalContext};
use crate::protocols::cluster::{
    cluster_inputs, distinct, evaluate, ClusterOptions, Inputs, Method,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SplitArg {
    Train,
    Val,
}

impl From<SplitArg> for features::Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Train => features::Split::Train,
            SplitArg::Val => features::Split::Val,
        }
    }
}

#[derive(Args)]
pub struct ClusterArgs {
    /// Checkpoint (.pth or .safetensors) to evaluate; needs --data. Features come from the feature store.
    #[arg(long, requires = "data", conflicts_with_all = ["features", "labels", "logits"])]
    checkpoint: Option<PathBuf>,
    /// Sub-dict of the checkpoint (teacher, student, state_dict, …); default: teacher first, as iBOT.
    #[arg(long, requires = "checkpoint")]
    key: Option<String>,
    /// Architecture preset; default: inferred from the checkpoint's shapes.
    #[arg(long, requires = "checkpoint")]
    arch: Option<String>,
    /// Data config (configs/data/<name>.toml).
    #[arg(long, requires = "checkpoint")]
    data: Option<PathBuf>,
    /// Feature store directory (extracted features are cached there).
    #[arg(long, default_value = "cache/features")]
    cache_dir: PathBuf,
    /// GEMM precision of the extraction: f32, or bf16 (bf16 operands, f32 accumulation; AMX
    /// tiles on CPUs that have them). bf16 features are cached separately.
    #[arg(long, default_value = "f32", requires = "checkpoint")]
    precision: features::Precision,
    /// Split of the data config to cluster.
    #[arg(long, value_enum, default_value = "val")]
    split: SplitArg,
    /// Precomputed features: a 2-D float32/float64 .npy, one row per sample (k-means input).
    #[arg(long, requires = "labels")]
    features: Option<PathBuf>,
    /// True classes for --features/--logits: one non-negative integer per line, in row order.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Precomputed projection-head logits: a 2-D .npy, one row per sample (method head).
    #[arg(long, requires = "labels")]
    logits: Option<PathBuf>,
    /// Methods to run. head is skipped with a note when there is no head (no --logits, or a
    /// backbone-only checkpoint), unless it is the only method asked for.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Method::Kmeans, Method::Head])]
    method: Vec<Method>,
    /// Number of k-means clusters; default: the number of classes.
    #[arg(long)]
    k: Option<usize>,
    /// k-means++ restarts; the lowest inertia is kept.
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// Seed of the k-means++ draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Lloyd iterations per restart.
    #[arg(long, default_value_t = 300)]
    max_iter: usize,
    /// Relative tolerance (× mean feature variance) on the squared centre shift, as scikit-learn.
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Output directory; result.json is written there.
    #[arg(long)]
    out: PathBuf,
}

/// Short table in percent.
fn table(result: &Value) -> String {
    let cfg = &result["config"];
    let mut out = format!(
        "Unsupervised classification  {}: {} samples, {} classes\n",
        cfg["split"].as_str().unwrap_or("?"),
        cfg["samples"],
        cfg["classes"]
    );
    out += &format!(
        "{:<8} {:>6} {:>7} {:>7} {:>7} {:>7}\n",
        "method", "k", "ACC %", "NMI %", "ARI %", "FMI %"
    );
    for method in ["head", "kmeans"] {
        let e = &result["cluster"][method];
        if e.is_null() {
            continue;
        }
        let pct = |f: &str| 100.0 * e[f].as_f64().unwrap_or(f64::NAN);
        out += &format!(
            "{:<8} {:>6} {:>7.2} {:>7.2} {:>7.2} {:>7.2}\n",
            method,
            e["k"].as_u64().unwrap_or(0),
            pct("acc"),
            pct("nmi"),
            pct("ari"),
            pct("fmi")
        );
    }
    if let Some(notes) = result["notes"].as_array() {
        for n in notes {
            out += &format!("note: {}\n", n.as_str().unwrap_or_default());
        }
    }
    out
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let opts = ClusterOptions {
        methods: args.method.clone(),
        k: args.k,
        restarts: args.restarts,
        seed: args.seed,
        max_iter: args.max_iter,
        tol: args.tol,
        split: args.split.into(),
    };
    opts.check()?;
    let result = if let Some(checkpoint) = &args.checkpoint {
        let data_path = args.data.as_ref().expect("clap requires --data");
        let data = features::DataConfig::load(data_path)
            .with_context(|| format!("reading data config {}", data_path.display()))?;
        let model = features::ModelSource {
            checkpoint: checkpoint.clone(),
            key: args.key.clone(),
            arch: args.arch.clone(),
            precision: args.precision,
        };
        let store = features::FeatureStore::new(&args.cache_dir);
        let ctx = EvalContext {
            model: &model,
            data: &data,
            store: &store,
            progress: &features::Progress::standalone(),
        };
        evaluate(&ctx, &opts)?
    } else {
        cluster_inputs(
            read_inputs(&args, &opts)?,
            &opts,
            &features::Progress::standalone(),
        )?
    };
    super::finish(&args.out, &result, &table(&result))
}

/// `--features/--labels/--logits` mode.
fn read_inputs(args: &ClusterArgs, opts: &ClusterOptions) -> anyhow::Result<Inputs> {
    let Some(labels_path) = &args.labels else {
        bail!("give either --checkpoint and --data, or --labels with --features and/or --logits");
    };
    let (labels, labels_entry) = read_labels(labels_path)?;
    let mut manifest = json!({ "labels": labels_entry });
    let mut notes = Vec::new();
    let features = match (&args.features, opts.wants(Method::Kmeans)) {
        (Some(path), true) => {
            let (x, entry) = read_features(path)?;
            check_rows(path, x.nrows(), labels_path, labels.len())?;
            manifest["features"] = entry;
            Some(x)
        }
        (None, true) if opts.methods == [Method::Kmeans] || args.logits.is_none() => {
            bail!("method kmeans needs --features (a 2-D .npy of per-sample features)")
        }
        (None, true) => {
            notes.push("kmeans skipped: no --features given".to_string());
            None
        }
        (_, false) => None,
    };
    let logits = match (&args.logits, opts.wants(Method::Head)) {
        (Some(path), true) => {
            let (x, entry) = read_features(path)?;
            check_rows(path, x.nrows(), labels_path, labels.len())?;
            manifest["logits"] = entry;
            Some(x)
        }
        (None, true) if opts.methods == [Method::Head] => {
            bail!("method head needs --logits (the projection head's CLS logits as a 2-D .npy)")
        }
        (None, true) => {
            notes.push("head skipped: no --logits given".to_string());
            None
        }
        (_, false) => None,
    };
    Ok(Inputs {
        features,
        logits,
        classes: distinct(&labels),
        labels,
        notes,
        manifest,
        split: "given",
    })
}

#[derive(Args)]
pub struct BenchKmeansArgs {
    /// Samples.
    #[arg(long, default_value_t = 60_000)]
    n: usize,
    /// Feature dimension.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Clusters (= generating classes).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// k-means++ restarts.
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// Noise amplitude around the class centres (uniform in ±noise per coordinate, centres in ±1).
    #[arg(long, default_value_t = 4.0)]
    noise: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Also write the data here (x.npy, labels.txt) for tests/reference/bench_kmeans_sklearn.py.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub fn run_bench(args: BenchKmeansArgs) -> anyhow::Result<()> {
    if args.k == 0 || args.k > args.n {
        bail!("--k must be between 1 and --n");
    }
    let (x, truth) =
        cluster::synthetic::blobs(args.seed, args.n, args.dim, args.k, args.noise, true);
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        super::write_npy(&dir.join("x.npy"), &x)?;
        super::write_labels(&dir.join("labels.txt"), &truth)?;
    }
    let opts = cluster::KmeansOptions {
        restarts: args.restarts,
        ..Default::default()
    };
    let mut best = f64::INFINITY;
    let mut result = None;
    for _ in 0..args.repeat.max(1) {
        let start = Instant::now();
        let r = cluster::kmeans(x.view(), args.k, &opts)?;
        best = best.min(start.elapsed().as_secs_f64());
        result = Some(r);
    }
    let r = result.expect("repeat ≥ 1");
    let s = cluster::score(&truth, &r.labels)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "kmeans",
            "n": args.n, "dim": args.dim, "k": args.k, "restarts": args.restarts,
            "threads": rayon::current_num_threads(),
            "seconds": best,
            "inertia": r.inertia,
            "iterations": r.restarts.iter().map(|s| s.iterations).collect::<Vec<_>>(),
            "ari": s.ari, "nmi": s.nmi, "acc": s.acc,
            "note": "L2-normalised synthetic blobs; time covers centring, k-means++ and Lloyd for all restarts",
        }))?
    );
    Ok(())
}
