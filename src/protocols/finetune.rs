//! End-to-end fine-tuning (ibot-reference §8.4, §8.6, §8.9; tasks/finetune): BEiT full
//! fine-tuning, semi-supervised fine-tuning from the projection head's first layer on a label
//! split, and transfer — one run per unit, resumable in the unit's directory, reporting the last
//! epoch's top-1/top-5 and the best top-1 over epochs (the official number).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use finetune::{FinetuneConfig, Mode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Protocol, UnitContext};
use crate::report::plots::{self, Series};
use crate::report::tables::{spec, ColumnKind, Spec, PERCENT};
use crate::report::{lookup, Report};

const BEIT_VIT_SMALL: &str = include_str!("../../configs/finetune/beit_vit_small_imagenet.toml");
const BEIT_VIT_BASE: &str = include_str!("../../configs/finetune/beit_vit_base_imagenet.toml");
const SEMISUP: &str = include_str!("../../configs/finetune/semisup_vit_small_imagenet.toml");

/// Recipes shipped in the binary, usable by name (`recipe = "demo"`) without the configs/ tree.
pub const BUILTIN: &[(&str, &str)] = &[
    ("beit_vit_small_imagenet", BEIT_VIT_SMALL),
    ("beit_vit_base_imagenet", BEIT_VIT_BASE),
    ("semisup_vit_small_imagenet", SEMISUP),
    (
        "transfer_cifar10",
        include_str!("../../configs/finetune/transfer_cifar10.toml"),
    ),
    ("demo", include_str!("../../configs/finetune/demo.toml")),
    (
        "fashion-mnist",
        include_str!("../../configs/finetune/fashion-mnist.toml"),
    ),
    (
        "fashion-mnist-few-labels",
        include_str!("../../configs/finetune/fashion-mnist-few-labels.toml"),
    ),
];

/// `[finetune]` of a suite and the flags of `ibot eval finetune`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneOptions {
    /// Recipe file (configs/finetune/*.toml); default: the official recipe of the mode (BEiT ViT-S
    /// or ViT-B by the checkpoint's width; the semi-supervised DeiT recipe).
    pub recipe: Option<PathBuf>,
    /// Overrides the recipe's mode (`full` or `semisup`).
    pub mode: Option<Mode>,
    /// Data config; default: the suite's data.
    pub data: Option<PathBuf>,
    /// Train on a class-balanced share of the train labels (semi-supervised protocol).
    pub percent: Option<f64>,
    /// Train on the images a SimCLR-style split file lists (`1percent.txt`).
    pub split_file: Option<PathBuf>,
    /// Overrides the recipe's epochs (the schedules follow).
    pub epochs: Option<usize>,
    /// Overrides the recipe's seed.
    pub seed: Option<u64>,
    /// Stop after this many steps (the schedules keep their length); for smoke runs.
    pub max_steps: Option<usize>,
}

/// The recipe with the options applied; `width` picks the default BEiT recipe.
pub fn resolve_recipe(
    opts: &FinetuneOptions,
    base: &Path,
    width: usize,
) -> anyhow::Result<FinetuneConfig> {
    let mut cfg = match &opts.recipe {
        Some(p) => {
            let (text, what) = super::recipe_text(p, base, BUILTIN, "configs/finetune")?;
            FinetuneConfig::parse(&text, &what)?
        }
        None => {
            let (text, what) = match opts.mode.unwrap_or(Mode::Full) {
                Mode::Semisup => (SEMISUP, "configs/finetune/semisup_vit_small_imagenet.toml"),
                Mode::Full if width <= 384 => (
                    BEIT_VIT_SMALL,
                    "configs/finetune/beit_vit_small_imagenet.toml",
                ),
                Mode::Full => (
                    BEIT_VIT_BASE,
                    "configs/finetune/beit_vit_base_imagenet.toml",
                ),
            };
            FinetuneConfig::parse(text, what)?
        }
    };
    if let Some(m) = opts.mode {
        cfg.mode = m;
    }
    if let Some(e) = opts.epochs {
        cfg.optim.epochs = e;
    }
    if let Some(s) = opts.seed {
        cfg.run.seed = s;
    }
    if opts.percent.is_some() && opts.split_file.is_some() {
        bail!("give a percentage or a split file, not both");
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The pretrained weights: the backbone strictly loaded, plus `head.mlp.0.*` in semisup mode.
pub fn load_init(
    model: &features::ModelSource,
    mode: Mode,
) -> anyhow::Result<(finetune::Init, Value)> {
    let path = &model.checkpoint;
    let ckpt = backbone::Checkpoint::open(path)?;
    let sel = ckpt.select(model.key.as_deref())?;
    let vit = ckpt.infer_config(&sel, model.arch.as_deref(), None)?;
    let init = backbone::init::init_weights(&vit, 0)?;
    let (mut weights, report) =
        ckpt.load_backbone(&sel, &vit, backbone::LoadOptions::default(), init)?;
    if mode == Mode::Semisup {
        let head = backbone::head::read_head(path, model.key.as_deref()).with_context(|| {
            format!("{}: semi-supervised fine-tuning starts from the projection head's first layer (head.mlp.0)", path.display())
        })?;
        for k in ["mlp.0.weight", "mlp.0.bias"] {
            let t = head.get(k).with_context(|| {
                format!(
                    "{}: the projection head has no {k} (found: {})",
                    path.display(),
                    {
                        let mut names: Vec<&String> = head.keys().collect();
                        names.sort();
                        names
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )
            })?;
            weights.insert(format!("head.{k}"), t.clone());
        }
    }
    let manifest = json!({
        "checkpoint": path.display().to_string(),
        "key": sel.key,
        "arch": vit.preset_name(),
        "load": {"loaded": report.loaded.len(), "missing": report.missing, "unexpected": report.unexpected},
    });
    Ok((finetune::Init { vit, weights }, manifest))
}

/// The train/val datasets, restricted to the label split when one is asked for.
fn open_data(
    data: &features::DataConfig,
    opts: &FinetuneOptions,
    seed: u64,
) -> anyhow::Result<(finetune::FinetuneData, Value)> {
    let train = features::open_split_data(data, features::Split::Train)?;
    let val = features::open_split_data(data, features::Split::Val)?;
    let labels: Vec<usize> = (0..train.dataset.len())
        .map(|i| train.dataset.label(i))
        .collect();
    let val_max = (0..val.dataset.len())
        .map(|i| val.dataset.label(i))
        .max()
        .unwrap_or(0);
    let classes = labels.iter().copied().max().unwrap_or(0).max(val_max) + 1;
    let (rows, split) = match (&opts.percent, &opts.split_file) {
        (Some(p), _) => (
            Some(semisup::percent_split(&labels, *p, seed)?),
            json!({"kind": "class-balanced percentage", "percent": p, "seed": seed}),
        ),
        (None, Some(path)) => {
            let names = super::semisup::train_names(data)?;
            let listed = semisup::read_split_file(path)?;
            let (_, entry) = crate::cmd_eval::read_bytes(path)?;
            (
                Some(semisup::names_split(&names, &listed, path)?),
                json!({"kind": "split file", "file": entry}),
            )
        }
        (None, None) => (None, json!({"kind": "all train labels"})),
    };
    let train_set: Arc<dyn data::loader::ImageDataset> = match rows {
        Some(rows) => Arc::new(data::loader::Subset {
            inner: train.dataset.clone(),
            rows,
        }),
        None => train.dataset.clone(),
    };
    let manifest = json!({
        "data": data.name, "split": split,
        "train_images": train_set.len(), "val_images": val.dataset.len(),
        "train_list_sha256": train.list_hash, "val_list_sha256": val.list_hash,
        "classes": classes,
    });
    Ok((
        finetune::FinetuneData {
            train: train_set,
            val: val.dataset,
            classes,
        },
        manifest,
    ))
}

/// Recipe, weights and data of a unit, ready to train (shared with `--dry-run`).
pub struct Prepared {
    pub cfg: FinetuneConfig,
    pub init: finetune::Init,
    pub data: finetune::FinetuneData,
    pub manifest: Value,
}

pub fn prepare(
    model: &features::ModelSource,
    data: &features::DataConfig,
    opts: &FinetuneOptions,
    base: &Path,
) -> anyhow::Result<Prepared> {
    let ckpt = backbone::Checkpoint::open(&model.checkpoint)?;
    let sel = ckpt.select(model.key.as_deref())?;
    let width = ckpt
        .infer_config(&sel, model.arch.as_deref(), None)?
        .embed_dim;
    let mut cfg = resolve_recipe(opts, base, width)?;
    if cfg.model.input_size.is_none() {
        cfg.model.input_size = Some(data.transform.crop);
    }
    let (init, model_manifest) = load_init(model, cfg.mode)?;
    let (data, data_manifest) = open_data(data, opts, cfg.run.seed)?;
    Ok(Prepared {
        cfg,
        init,
        data,
        manifest: json!({"model": model_manifest, "data": data_manifest, "ibot_version": env!("CARGO_PKG_VERSION")}),
    })
}

/// Fine-tunes in `work_dir` (resuming what is there) and returns the result.json body.
pub fn run(
    p: Prepared,
    work_dir: &Path,
    progress: &features::Progress,
    max_steps: Option<usize>,
) -> anyhow::Result<Value> {
    let device = train::device::device(train::device::DeviceChoice::Auto)?;
    let bar = progress.bar_with_template(0, features::progress::RATE_TEMPLATE, "fine-tune");
    let outcome = finetune::Finetuner::new(
        p.cfg.clone(),
        p.init,
        p.data,
        finetune::RunOptions {
            out: work_dir.to_path_buf(),
            device,
            progress: (*bar).clone(),
            max_steps,
        },
    )?
    .run()?;
    drop(bar);
    let cfg = &p.cfg;
    let mut body = json!({
        "top1": outcome.top1,
        "top5": outcome.top5,
        "max_top1": outcome.max_top1,
        "best_epoch": outcome.best_epoch,
        "epochs": outcome.epochs,
        "completed": outcome.completed,
        "history": outcome.history,
        "train_images": outcome.train_images,
        "steps": outcome.steps,
        "train_images_per_s": outcome.train_images_per_s,
        "notes": {
            "top1": "last epoch",
            "max_top1": "best epoch (the number the official scripts report)",
        },
    });
    if let Some(e) = outcome.ema_top1 {
        body["ema_top1"] = json!(e);
        body["notes"]["ema_top1"] = json!("model EMA after the last epoch (kept as DeiT does; the official loop evaluates the raw model)");
    }
    Ok(json!({
        "finetune": body,
        "config": {
            "protocol": "finetune",
            "recipe": cfg,
            "base_lr": cfg.base_lr(),
            "layer_decay": cfg.uses_layer_decay().then_some(cfg.optim.layer_decay),
            "deviations": cfg.deviations,
        },
        "manifest": p.manifest,
    }))
}

pub struct Finetune;

impl Protocol for Finetune {
    const NAME: &'static str = "finetune";
    const TITLE: &'static str = "Fine-tuning";
    const NOTE: &'static str = "End-to-end fine-tuning; top-1 % of the last epoch and the best epoch (the official number).";
    type Options = FinetuneOptions;

    fn evaluate(ctx: &UnitContext, opts: &FinetuneOptions) -> anyhow::Result<Value> {
        let data = match &opts.data {
            Some(p) => features::DataConfig::load(&ctx.resolve(p))?,
            None => ctx.eval.data.clone(),
        };
        let mut opts = opts.clone();
        opts.split_file = opts.split_file.as_ref().map(|p| ctx.resolve(p));
        let prepared = prepare(ctx.eval.model, &data, &opts, &ctx.base_dir)?;
        run(prepared, &ctx.work_dir, ctx.eval.progress, opts.max_steps)
    }

    fn columns(bodies: &[&Value]) -> Vec<Spec> {
        let mut specs = vec![
            spec("best top-1", &["finetune", "max_top1"], PERCENT),
            spec("last top-1", &["finetune", "top1"], PERCENT),
            spec("last top-5", &["finetune", "top5"], PERCENT),
        ];
        if bodies
            .iter()
            .any(|b| lookup(b, &["finetune", "ema_top1"]).is_some())
        {
            specs.push(spec("EMA top-1", &["finetune", "ema_top1"], PERCENT));
        }
        specs.push(spec(
            "best epoch",
            &["finetune", "best_epoch"],
            ColumnKind::Text,
        ));
        specs.push(spec("epochs", &["finetune", "epochs"], ColumnKind::Text));
        specs
    }

    /// Val top-1 over the epochs, one line per checkpoint.
    fn charts(report: &Report, task: &str) -> anyhow::Result<String> {
        let series: Vec<Series> = report
            .checkpoints
            .iter()
            .filter_map(|c| {
                let history =
                    lookup(report.body(task, &c.name)?, &["finetune", "history"])?.as_array()?;
                let points: Vec<(f64, f64)> = history
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r.get("epoch")?.as_f64()? + 1.0,
                            100.0 * r.get("top1")?.as_f64()?,
                        ))
                    })
                    .collect();
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
            "Fine-tuning: val top-1 over epochs",
            "epoch",
            "top-1 %",
            &series,
            false,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_recipe_parses_under_its_file_name() {
        for (name, text) in BUILTIN {
            let cfg = FinetuneConfig::parse(text, name).unwrap();
            assert_eq!(&cfg.name.replace('_', "-"), &name.replace('_', "-"));
        }
    }
}
