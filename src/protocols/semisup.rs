//! Semi-supervised evaluation on frozen features (ibot-reference §8.4): class-balanced 1 % / 10 %
//! label splits (or SimCLR split files); logistic regression, k-NN and linear on each split.

use std::path::PathBuf;

use anyhow::{bail, Context};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::linear::{run_probe, LinearOptions};
use super::{Protocol, UnitContext};
use crate::cmd_eval::{read_bytes, EvalContext};
use crate::report::lookup;
use crate::report::tables::{numeric_keys, spec, Spec, PERCENT};

/// One protocol run on each split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Logreg,
    Knn,
    Linear,
}

pub fn protocol_name(p: Method) -> &'static str {
    match p {
        Method::Logreg => "logreg",
        Method::Knn => "knn",
        Method::Linear => "linear",
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "logreg" => Ok(Method::Logreg),
            "knn" => Ok(Method::Knn),
            "linear" => Ok(Method::Linear),
            _ => Err(format!(
                "unknown protocol {s:?}: expected logreg, knn or linear"
            )),
        }
    }
}

/// Semi-supervised options of `ibot suite` (`[semisup]` table) and of the checkpoint mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemisupOptions {
    pub percent: Vec<f64>,
    pub split_files: Vec<PathBuf>,
    pub protocols: Vec<Method>,
    pub lambdas: Vec<f64>,
    pub holdout: f64,
    pub seed: u64,
    pub k: usize,
    pub temperature: f32,
    /// Features for logistic regression and k-NN (iBOT: final-norm CLS).
    pub features: features::FeatureSpec,
    pub solver: semisup::Solver,
    /// The linear part (its `holdout` and `seed` are replaced by the ones above).
    pub linear: LinearOptions,
}

impl Default for SemisupOptions {
    fn default() -> Self {
        SemisupOptions {
            percent: vec![1.0, 10.0],
            split_files: Vec::new(),
            protocols: vec![Method::Logreg, Method::Knn, Method::Linear],
            lambdas: semisup::default_lambdas(),
            holdout: 0.1,
            seed: 0,
            k: 20,
            temperature: knn::DEFAULT_TEMPERATURE,
            features: features::FeatureSpec::Cls,
            solver: semisup::Solver::default(),
            linear: LinearOptions::default(),
        }
    }
}

/// Full-train features and what the splits need.
pub struct Inputs<'a> {
    pub train: &'a Array2<f32>,
    pub train_labels: &'a [usize],
    pub val: &'a Array2<f32>,
    pub val_labels: &'a [usize],
    /// Separate (train, val) features for the linear part; `None` uses `train`/`val`.
    pub linear: Option<(&'a Array2<f32>, &'a Array2<f32>)>,
    /// File name per train row, for split files.
    pub names: Option<&'a [String]>,
    pub progress: &'a features::Progress,
}

pub fn evaluate_splits(inputs: &Inputs, opts: &SemisupOptions) -> anyhow::Result<(Value, Value)> {
    if opts.percent.is_empty() && opts.split_files.is_empty() {
        bail!("no split: give --percent and/or --split-file");
    }
    if opts.protocols.is_empty() {
        bail!("no protocol to run");
    }
    let mut splits: Vec<(String, Vec<usize>, Value)> = Vec::new();
    for &p in &opts.percent {
        let rows = semisup::percent_split(inputs.train_labels, p, opts.seed)?;
        splits.push((
            format!("{p}%"),
            rows,
            json!({"kind": "class-balanced percentage", "percent": p, "seed": opts.seed}),
        ));
    }
    for path in &opts.split_files {
        let Some(names) = inputs.names else {
            bail!(
                "{}: a split file needs the train images' file names (--train-names in precomputed mode; an image-folder or file-list data config in checkpoint mode)",
                path.display()
            );
        };
        let listed = semisup::read_split_file(path)?;
        let rows = semisup::names_split(names, &listed, path)?;
        let (_, entry) = read_bytes(path)?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        splits.push((name, rows, json!({"kind": "split file", "file": entry})));
    }

    let mut body = Map::new();
    let mut manifest = Map::new();
    for (name, rows, entry) in splits {
        let labels: Vec<usize> = rows.iter().map(|&i| inputs.train_labels[i]).collect();
        let x = inputs.train.select(Axis(0), &rows);
        let mut out = Map::new();
        out.insert("train_images".into(), json!(rows.len()));
        for protocol in &opts.protocols {
            let what = || format!("{name} split: {}", protocol_name(*protocol));
            let value = match protocol {
                Method::Logreg => logreg(&x, &labels, inputs, opts, &name).with_context(what)?,
                Method::Knn => knn_part(&x, &labels, inputs, opts).with_context(what)?,
                Method::Linear => {
                    let (lx, lv) = inputs.linear.unwrap_or((inputs.train, inputs.val));
                    let split_x = lx.select(Axis(0), &rows);
                    let lopts = LinearOptions {
                        holdout: opts.holdout,
                        seed: opts.seed,
                        ..opts.linear.clone()
                    };
                    let (report, _) = run_probe(
                        split_x.view(),
                        &labels,
                        lv.view(),
                        inputs.val_labels,
                        &lopts,
                        inputs.progress,
                    )
                    .with_context(what)?;
                    serde_json::to_value(report)?
                }
            };
            out.insert(protocol_name(*protocol).into(), value);
        }
        body.insert(name.clone(), Value::Object(out));
        let mut entry = entry;
        entry["train_images"] = json!(rows.len());
        manifest.insert(name, entry);
    }
    Ok((Value::Object(body), Value::Object(manifest)))
}

pub fn logreg(
    x: &Array2<f32>,
    labels: &[usize],
    inputs: &Inputs,
    opts: &SemisupOptions,
    name: &str,
) -> anyhow::Result<Value> {
    let cfg = semisup::LogRegConfig {
        lambdas: opts.lambdas.clone(),
        holdout: opts.holdout,
        seed: opts.seed,
        solver: opts.solver,
    };
    let bar = inputs
        .progress
        .bar(cfg.lambdas.len() as u64 + 1, format!("logreg {name}"));
    let report = semisup::logistic_regression(
        x.view(),
        labels,
        inputs.val.view(),
        inputs.val_labels,
        &cfg,
        &mut |msg| {
            bar.set_message(format!("logreg {name} {msg}"));
            bar.inc(1)
        },
    )?;
    drop(bar);
    Ok(serde_json::to_value(report)?)
}

pub fn knn_part(
    x: &Array2<f32>,
    labels: &[usize],
    inputs: &Inputs,
    opts: &SemisupOptions,
) -> anyhow::Result<Value> {
    if opts.k > labels.len() {
        bail!(
            "k = {} is larger than the split's {} training images",
            opts.k,
            labels.len()
        );
    }
    let params = knn::Params {
        ks: vec![opts.k],
        temperature: opts.temperature,
        ..knn::Params::default()
    };
    let scores = knn::classify(
        x.clone(),
        labels,
        inputs.val.clone(),
        inputs.val_labels,
        &params,
        &|_| {},
    )?;
    let s = scores[0];
    Ok(json!({"top1": s.top1(), "top5": s.top5(), "k": s.k, "temperature": opts.temperature}))
}

pub fn config_json(opts: &SemisupOptions, features: &str) -> Value {
    json!({
        "protocol": "semisup",
        "percent": opts.percent,
        "split_files": opts.split_files,
        "protocols": opts.protocols,
        "seed": opts.seed,
        "holdout": opts.holdout,
        "features": features,
        "logreg": {
            "objective": "mean cross-entropy + λ/2 ‖W‖², no intercept, L2-normalised features (cyanure's λ; sklearn C = 1/(n λ))",
            "solver": "L-BFGS (argmin, memory 10, Moré–Thuente), f64, from W = 0",
            "solver_settings": opts.solver,
            "lambdas": opts.lambdas,
            "selection": "λ with the best hold-out top-1 (ties: larger λ), then refit on the whole split",
        },
        "knn": {"k": opts.k, "temperature": opts.temperature},
        "linear": {
            "sweep": opts.linear.sweep,
            "epochs": opts.linear.epochs,
            "batch_size": opts.linear.batch_size,
            "selection": "best hold-out top-1 over (head, epoch)",
        },
    })
}

/// Semi-supervised evaluation of one checkpoint on one data set: the whole result.json body.
pub fn evaluate(ctx: &EvalContext, opts: &SemisupOptions) -> anyhow::Result<Value> {
    let (train, val) = ctx.train_val(&opts.features)?;
    let linear_features = if opts.protocols.contains(&Method::Linear) {
        let spec = match &opts.linear.features {
            Some(s) => s.clone(),
            None => super::linear::default_spec(ctx.model)?,
        };
        if spec == opts.features {
            None
        } else {
            Some(ctx.train_val(&spec)?)
        }
    } else {
        None
    };
    let names = if opts.split_files.is_empty() {
        None
    } else {
        Some(train_names(ctx.data)?)
    };
    if let Some(n) = &names {
        if n.len() != train.labels.len() {
            bail!(
                "the train split lists {} images but its features have {} rows",
                n.len(),
                train.labels.len()
            );
        }
    }
    let inputs = Inputs {
        train: &train.x,
        train_labels: &train.labels,
        val: &val.x,
        val_labels: &val.labels,
        linear: linear_features.as_ref().map(|(t, v)| (&t.x, &v.x)),
        names: names.as_deref(),
        progress: ctx.progress,
    };
    let (body, split_manifest) = evaluate_splits(&inputs, opts).with_context(|| {
        format!(
            "semi-supervised evaluation of {} on '{}'",
            ctx.model.checkpoint.display(),
            ctx.data.name
        )
    })?;
    let mut config = config_json(
        opts,
        &format!(
            "{} of the frozen model (L2-normalised for logreg and k-NN)",
            opts.features
        ),
    );
    config["data"] = json!(ctx.data.name);
    let mut manifest = json!({
        "train": train.manifest,
        "val": val.manifest,
        "splits": split_manifest,
        "checkpoint": ctx.model.checkpoint.display().to_string(),
        "ibot_version": env!("CARGO_PKG_VERSION"),
    });
    if let Some((t, v)) = &linear_features {
        manifest["linear_train"] = t.manifest.clone();
        manifest["linear_val"] = v.manifest.clone();
    }
    Ok(json!({"semisup": body, "config": config, "manifest": manifest}))
}

/// Relative paths of the train split's images, in feature-row order.
pub fn train_names(data: &features::DataConfig) -> anyhow::Result<Vec<String>> {
    let folder = match &data.train {
        features::SplitSource::ImageFolder { root } => data::folder::ImageFolder::open(root)?,
        features::SplitSource::FileList { list, root } => {
            data::folder::ImageFolder::open_with_list(root, list)?
        }
        features::SplitSource::Idx { .. } => bail!(
            "data set '{}': IDX files have no file names, so split files cannot select from them",
            data.name
        ),
    };
    Ok((0..folder.len()).map(|i| folder.relative_path(i)).collect())
}

pub struct Semisup;

impl Protocol for Semisup {
    const NAME: &'static str = "semisup";
    const TITLE: &'static str = "Semi-supervised";
    const NOTE: &'static str =
        "Top-1 in % with the given share of the train labels (class-balanced splits; frozen features).";
    type Options = SemisupOptions;

    fn evaluate(ctx: &UnitContext, opts: &SemisupOptions) -> anyhow::Result<Value> {
        evaluate(ctx.eval, opts)
    }

    fn columns(bodies: &[&Value]) -> Vec<Spec> {
        let mut specs = Vec::new();
        for p in numeric_keys(bodies, &["semisup"]) {
            for method in ["logreg", "knn", "linear"] {
                if bodies
                    .iter()
                    .any(|b| lookup(b, &["semisup", p, method, "top1"]).is_some())
                {
                    specs.push(spec(
                        format!("{p} {method}"),
                        &["semisup", p, method, "top1"],
                        PERCENT,
                    ));
                }
            }
        }
        specs
    }
}
