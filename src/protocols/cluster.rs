//! Unsupervised classification (ibot-reference §8.5, `unsup_cls.py`): k-means on frozen features and
//! the projection head's argmax, scored with ACC (Hungarian), NMI, ARI and FMI.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::ValueEnum;
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Protocol, UnitContext};
use crate::cmd_eval::EvalContext;
use crate::report::plots;
use crate::report::tables::{numeric_keys, spec, Spec, PERCENT};
use crate::report::{lookup, Report};

/// Confusion matrices up to this many classes and clusters go into result.json; a larger one (1000 ×
/// 1000 on ImageNet) would be a million JSON lines and unreadable as a plot, so only its size is noted.
pub const MAX_INLINE_CONFUSION: usize = 128;

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

    pub fn wants(&self, m: Method) -> bool {
        self.methods.contains(&m)
    }

    pub fn check(&self) -> anyhow::Result<()> {
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
pub struct Inputs {
    pub features: Option<Array2<f32>>,
    pub logits: Option<Array2<f32>>,
    pub labels: Vec<usize>,
    /// Classes of the data set (from the data config), else the distinct labels.
    pub classes: usize,
    pub notes: Vec<String>,
    pub manifest: Value,
    pub split: &'static str,
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
        } else if ctx.model.pixels()?.is_some() {
            notes.push("head skipped: the pixel baseline has no projection head".to_string());
            None
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
pub fn checkpoint_has_head(model: &features::ModelSource) -> anyhow::Result<bool> {
    if model.pixels()?.is_some() {
        return Ok(false);
    }
    let ckpt = backbone::Checkpoint::open(&model.checkpoint)?;
    let sel = ckpt.select(model.key.as_deref())?;
    Ok(sel
        .other
        .iter()
        .any(|n| n.contains("head.") && n.contains("last_layer")))
}

pub fn split_name(s: features::Split) -> &'static str {
    match s {
        features::Split::Train => "train",
        features::Split::Val => "val",
    }
}

pub fn distinct(labels: &[usize]) -> usize {
    let mut v = labels.to_vec();
    v.sort_unstable();
    v.dedup();
    v.len()
}

pub fn l2_normalised(mut x: Array2<f32>) -> Array2<f32> {
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
pub fn cluster_inputs(
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

pub fn scores_json(s: &cluster::Scores, k: usize) -> Value {
    json!({"acc": s.acc, "nmi": s.nmi, "ari": s.ari, "fmi": s.fmi, "k": k})
}

pub fn confusion_entry(entry: &mut Value, s: &cluster::Scores) {
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

pub struct Cluster;

impl Protocol for Cluster {
    const NAME: &'static str = "cluster";
    const TITLE: &'static str = "Unsupervised classification";
    const NOTE: &'static str =
        "Clustering of frozen features against the labels (iBOT Tab. 5); in %.";
    type Options = ClusterOptions;

    fn evaluate(ctx: &UnitContext, opts: &ClusterOptions) -> anyhow::Result<Value> {
        evaluate(ctx.eval, opts)
    }

    fn columns(bodies: &[&Value]) -> Vec<Spec> {
        let mut specs = Vec::new();
        let methods = numeric_keys(bodies, &["cluster"]);
        // The paper's column order (Tab. 5).
        let ordered = ["head", "kmeans"]
            .into_iter()
            .filter(|m| methods.contains(m))
            .chain(
                methods
                    .iter()
                    .copied()
                    .filter(|m| !["head", "kmeans"].contains(m)),
            );
        for method in ordered {
            for (header, key) in [
                ("ACC", "acc"),
                ("ARI", "ari"),
                ("NMI", "nmi"),
                ("FMI", "fmi"),
            ] {
                if bodies
                    .iter()
                    .any(|b| lookup(b, &["cluster", method, key]).is_some())
                {
                    specs.push(spec(
                        format!("{method} {header}"),
                        &["cluster", method, key],
                        PERCENT,
                    ));
                }
            }
        }
        specs
    }

    /// ACC / ARI / NMI / FMI bars per method, one bar group per checkpoint.
    fn charts(report: &Report, task: &str) -> anyhow::Result<String> {
        let mut charts = String::new();
        let methods: Vec<String> = report
            .checkpoints
            .iter()
            .filter_map(|c| report.body(task, &c.name)?.get("cluster")?.as_object())
            .flat_map(|m| m.keys().cloned())
            .fold(Vec::new(), |mut acc, k| {
                if !acc.contains(&k) {
                    acc.push(k);
                }
                acc
            });
        let metrics = ["acc", "ari", "nmi", "fmi"];
        let groups: Vec<String> = metrics.iter().map(|m| m.to_uppercase()).collect();
        for method in methods {
            let series: Vec<(String, Vec<Option<f64>>)> = report
                .checkpoints
                .iter()
                .filter_map(|c| {
                    let m = report.body(task, &c.name)?.get("cluster")?.get(&method)?;
                    Some((
                        c.name.clone(),
                        metrics
                            .iter()
                            .map(|k| m.get(*k).and_then(Value::as_f64).map(|v| 100.0 * v))
                            .collect(),
                    ))
                })
                .collect();
            if !series.is_empty() {
                charts += &plots::chart_div(&plots::grouped_bars(
                    &format!("Clustering ({method})"),
                    "%",
                    &groups,
                    &series,
                )?);
            }
        }
        Ok(charts)
    }
}
