//! `ibot eval cluster`: unsupervised classification — iBOT's head argmax and k-means on L2-normalised
//! features, scored with ACC (Hungarian) / NMI / ARI / FMI; `ibot bench kmeans`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_rows, read_features, read_labels, EvalContext};

/// Confusion matrices up to this many classes and clusters go into result.json; a larger one (1000 ×
/// 1000 on ImageNet) would be a million JSON lines and unreadable as a plot, so only its size is noted.
const MAX_INLINE_CONFUSION: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// k-means on the L2-normalised CLS features (k-means++, restarts, best inertia).
    Kmeans,
    /// Argmax of the projection head's CLS logits (iBOT's protocol; needs a head with out_dim ≈ classes).
    Head,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Kmeans => "kmeans",
            Method::Head => "head",
        }
    }
}

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

/// Options of the clustering protocol (`ibot eval cluster`, and the suite's `[cluster]` table).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterOptions {
    pub methods: Vec<Method>,
    /// k-means clusters; `None` = number of classes.
    pub k: Option<usize>,
    pub restarts: usize,
    pub seed: u64,
    pub max_iter: usize,
    pub tol: f64,
    pub split: features::Split,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let km = cluster::KmeansOptions::default();
        ClusterOptions {
            methods: vec![Method::Kmeans, Method::Head],
            k: None,
            restarts: km.restarts,
            seed: km.seed,
            max_iter: km.max_iter,
            tol: km.tol,
            split: features::Split::Val,
        }
    }
}

impl ClusterOptions {
    fn kmeans(&self) -> cluster::KmeansOptions {
        cluster::KmeansOptions {
            restarts: self.restarts,
            max_iter: self.max_iter,
            tol: self.tol,
            seed: self.seed,
        }
    }

    fn wants(&self, m: Method) -> bool {
        self.methods.contains(&m)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.methods.is_empty() {
            bail!("no clustering method selected (choose kmeans and/or head)");
        }
        if self.restarts == 0 || self.max_iter == 0 {
            bail!("--restarts and --max-iter must be at least 1");
        }
        if !(self.tol >= 0.0 && self.tol.is_finite()) {
            bail!("--tol must be a finite number ≥ 0, got {}", self.tol);
        }
        if self.k == Some(0) {
            bail!("--k must be at least 1");
        }
        Ok(())
    }
}

/// What the protocol clusters: CLS features and/or head logits, row-aligned with `labels`.
struct Inputs {
    features: Option<Array2<f32>>,
    logits: Option<Array2<f32>>,
    labels: Vec<usize>,
    /// Classes of the data set (from the data config), else the distinct labels.
    classes: usize,
    notes: Vec<String>,
    manifest: Value,
    split: &'static str,
}

/// The whole result.json body for one checkpoint on one data set (used by `ibot suite`).
pub fn evaluate(ctx: &EvalContext, opts: &ClusterOptions) -> anyhow::Result<Value> {
    opts.check()?;
    let mut notes = Vec::new();
    let mut manifest = serde_json::Map::new();
    let mut labels: Option<Vec<usize>> = None;
    let mut class_names = Vec::new();
    let mut take = |f: features::Features, what: &str| -> anyhow::Result<Array2<f32>> {
        if let Some(l) = &labels {
            if *l != f.labels {
                bail!("the {what} rows are not aligned with the CLS feature rows (labels differ)");
            }
        } else {
            labels = Some(f.labels);
            class_names = f.class_names;
        }
        manifest.insert(what.to_string(), f.manifest);
        Ok(f.x)
    };
    let features = if opts.wants(Method::Kmeans) {
        let f = ctx
            .store
            .get(ctx.model, ctx.data, opts.split, &features::FeatureSpec::Cls)?;
        Some(take(f, "features")?)
    } else {
        None
    };
    let logits = if opts.wants(Method::Head) {
        if checkpoint_has_head(ctx.model)? {
            let f = ctx.store.get(
                ctx.model,
                ctx.data,
                opts.split,
                &features::FeatureSpec::HeadLogits,
            )?;
            Some(take(f, "head_logits")?)
        } else if opts.methods == [Method::Head] {
            bail!(
                "{}: no projection head in the checkpoint (backbone only), so method head cannot run",
                ctx.model.checkpoint.display()
            );
        } else {
            notes.push(format!(
                "head skipped: {} has no projection head (backbone only)",
                ctx.model.checkpoint.display()
            ));
            None
        }
    } else {
        None
    };
    let labels = labels.expect("at least one method ran");
    let classes = if class_names.is_empty() {
        distinct(&labels)
    } else {
        class_names.len()
    };
    manifest.insert(
        "checkpoint".into(),
        json!({
            "path": ctx.model.checkpoint.display().to_string(),
            "key": ctx.model.key,
            "arch": ctx.model.arch,
        }),
    );
    manifest.insert("data".into(), json!(ctx.data.name));
    let inputs = Inputs {
        features,
        logits,
        labels,
        classes,
        notes,
        manifest: manifest.into(),
        split: split_name(opts.split),
    };
    cluster_inputs(inputs, opts, ctx.progress)
}

/// iBOT/DINO heads end in `last_layer`; a backbone-only export has no such key.
fn checkpoint_has_head(model: &features::ModelSource) -> anyhow::Result<bool> {
    let ckpt = backbone::Checkpoint::open(&model.checkpoint)?;
    let sel = ckpt.select(model.key.as_deref())?;
    Ok(sel
        .other
        .iter()
        .any(|n| n.contains("head.") && n.contains("last_layer")))
}

fn split_name(s: features::Split) -> &'static str {
    match s {
        features::Split::Train => "train",
        features::Split::Val => "val",
    }
}

fn distinct(labels: &[usize]) -> usize {
    let mut v = labels.to_vec();
    v.sort_unstable();
    v.dedup();
    v.len()
}

fn l2_normalised(mut x: Array2<f32>) -> Array2<f32> {
    // torch.nn.functional.normalize: x / max(‖x‖, 1e-12), so an all-zero row stays zero.
    x.axis_iter_mut(Axis(0)).for_each(|mut row| {
        let norm = row
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        let inv = 1.0 / norm.max(1e-12);
        row.mapv_inplace(|v| (v as f64 * inv) as f32);
    });
    x
}

/// Runs the selected methods on loaded inputs and builds result.json.
fn cluster_inputs(
    inputs: Inputs,
    opts: &ClusterOptions,
    progress: &features::Progress,
) -> anyhow::Result<Value> {
    let Inputs {
        features,
        logits,
        labels,
        classes,
        mut notes,
        manifest,
        split,
    } = inputs;
    let mut out = serde_json::Map::new();
    let mut k_used = None;

    if let Some(x) = features {
        let k = opts.k.unwrap_or(classes);
        if k > x.nrows() {
            bail!(
                "k = {k} clusters but only {} samples; pass a smaller --k",
                x.nrows()
            );
        }
        k_used = Some(k);
        let x = l2_normalised(x);
        let bar = progress.bar(opts.restarts as u64, "k-means restarts");
        let start = Instant::now();
        let r = cluster::kmeans_with_progress(x.view(), k, &opts.kmeans(), &|_| bar.inc(1))
            .context("k-means")?;
        let seconds = start.elapsed().as_secs_f64();
        drop(bar);
        if r.distinct_clusters < k {
            notes.push(format!(
                "kmeans: only {} distinct clusters of {k} (duplicate points)",
                r.distinct_clusters
            ));
        }
        let s = cluster::score(&labels, &r.labels)?;
        let mut entry = scores_json(&s, k);
        entry["inertia"] = json!(r.inertia);
        entry["restarts"] = json!(opts.restarts);
        entry["best_restart"] = json!(r.best_restart);
        entry["iterations"] = json!(r.iterations);
        entry["distinct_clusters"] = json!(r.distinct_clusters);
        entry["restart_inertia"] = json!(r.restarts.iter().map(|s| s.inertia).collect::<Vec<_>>());
        entry["seconds"] = json!(seconds);
        confusion_entry(&mut entry, &s);
        out.insert("kmeans".into(), entry);
    }
    if let Some(logits) = logits {
        let k = logits.ncols();
        if k != classes {
            let msg = format!(
                "head: out_dim {k} ≠ {classes} classes; clusters cannot map one-to-one to classes \
                 (ACC uses a rectangular Hungarian matching)"
            );
            progress.println(format!("warning: {msg}"));
            notes.push(msg);
        }
        let pred = cluster::argmax_rows(logits.view());
        let s = cluster::score(&labels, &pred)?;
        let mut entry = scores_json(&s, k);
        entry["clusters_used"] = json!(s.clusters);
        confusion_entry(&mut entry, &s);
        out.insert("head".into(), entry);
    }

    let methods: Vec<&str> = opts.methods.iter().map(|m| m.name()).collect();
    let config = json!({
        "protocol": "cluster",
        "methods": methods,
        "split": split,
        "samples": labels.len(),
        "classes": classes,
        "kmeans": {
            "k": k_used,
            "features": "CLS, L2-normalised per row",
            "init": "k-means++ (greedy, 2 + floor(ln k) candidates), scikit-learn semantics",
            "algorithm": "lloyd",
            "restarts": opts.restarts,
            "seed": opts.seed,
            "max_iter": opts.max_iter,
            "tol": opts.tol,
        },
        "head": "argmax of the projection head's CLS logits (iBOT unsup_cls)",
        "metrics": "ACC: Hungarian matching of clusters to classes; NMI arithmetic; ARI; FMI (scikit-learn)",
    });
    let mut result = json!({
        "cluster": out,
        "config": config,
        "manifest": manifest,
    });
    result["manifest"]["ibot_version"] = json!(env!("CARGO_PKG_VERSION"));
    if !notes.is_empty() {
        result["notes"] = json!(notes);
    }
    Ok(result)
}

fn scores_json(s: &cluster::Scores, k: usize) -> Value {
    json!({"acc": s.acc, "nmi": s.nmi, "ari": s.ari, "fmi": s.fmi, "k": k})
}

fn confusion_entry(entry: &mut Value, s: &cluster::Scores) {
    let c = &s.confusion;
    if c.classes.len() <= MAX_INLINE_CONFUSION && c.clusters.len() <= MAX_INLINE_CONFUSION {
        entry["confusion"] = json!({
            "layout": "rows: classes; columns: clusters, column i matched to class i, unmatched clusters last",
            "classes": c.classes,
            "clusters": c.clusters,
            "counts": c.counts,
        });
    } else {
        entry["confusion"] = json!({
            "omitted": format!(
                "{} classes x {} clusters exceeds {MAX_INLINE_CONFUSION} x {MAX_INLINE_CONFUSION}",
                c.classes.len(),
                c.clusters.len()
            ),
        });
    }
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
