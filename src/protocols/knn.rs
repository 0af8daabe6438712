//! k-NN (ibot-reference §8.1, DINO's `eval_knn.py`): weighted votes of the k nearest train
//! features (cosine similarity, exp(sim/T)) for every val image, every k in one pass.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Protocol, UnitContext};
use crate::cmd_eval::EvalContext;
use crate::report::plots::{self, Series};
use crate::report::tables::{numeric_keys, spec, Spec, PERCENT};
use crate::report::Report;

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

pub fn knn_json(scores: &[knn::KScore]) -> Value {
    scores
        .iter()
        .map(|s| (s.k.to_string(), json!({"top1": s.top1(), "top5": s.top5()})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub fn knn_config(scores: &[knn::KScore], temperature: f32) -> Value {
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

pub struct Knn;

impl Protocol for Knn {
    const NAME: &'static str = "knn";
    const TITLE: &'static str = "k-NN";
    const NOTE: &'static str =
        "Weighted k-NN on frozen CLS features (DINO protocol); top-1 / top-5 accuracy in %.";
    type Options = KnnOptions;

    fn evaluate(ctx: &UnitContext, opts: &KnnOptions) -> anyhow::Result<Value> {
        evaluate(ctx.eval, opts)
    }

    fn columns(bodies: &[&Value]) -> Vec<Spec> {
        let mut specs = Vec::new();
        for k in numeric_keys(bodies, &["knn"]) {
            specs.push(spec(format!("k={k} top-1"), &["knn", k, "top1"], PERCENT));
            specs.push(spec(format!("k={k} top-5"), &["knn", k, "top5"], PERCENT));
        }
        specs
    }

    /// Top-1 against k, one line per checkpoint.
    fn charts(report: &Report, task: &str) -> anyhow::Result<String> {
        let series: Vec<Series> = report
            .checkpoints
            .iter()
            .filter_map(|c| {
                let per_k = report.body(task, &c.name)?.get("knn")?.as_object()?;
                let mut points: Vec<(f64, f64)> = per_k
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.parse::<f64>().ok()?, 100.0 * v.get("top1")?.as_f64()?))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Some(Series {
                    name: c.name.clone(),
                    points,
                })
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            return Ok(String::new());
        }
        Ok(plots::chart_div(&plots::line_chart(
            "k-NN top-1 vs k",
            "k (log scale)",
            "top-1 %",
            &series,
            true,
        )?))
    }
}
