//! ADE20K-style semantic segmentation (ibot-reference §8.8; tasks/segmentation): the frozen
//! linear probe or UperNet trained on a segmentation data config, sliding-window evaluation,
//! mmseg's mIoU / mAcc / aAcc with per-class scores, the prediction PNGs, and a few drawings.

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::{Rgb, RgbImage};
use segmentation::{HeadKind, SegConfig, SegDataConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Protocol, UnitContext};
use crate::report::tables::{spec, ColumnKind, Spec, PERCENT};
use crate::report::{lookup, safe_file_name};

const UPERNET_VIT_SMALL: &str =
    include_str!("../../configs/segmentation/upernet_vit_small_512_ade20k_160k.toml");
const UPERNET_VIT_BASE: &str =
    include_str!("../../configs/segmentation/upernet_vit_base_512_ade20k_160k.toml");
const LINEAR_VIT_BASE: &str =
    include_str!("../../configs/segmentation/linear_vit_base_512_ade20k_160k.toml");

/// Recipes shipped in the binary, usable by name (`recipe = "demo"`).
pub const BUILTIN: &[(&str, &str)] = &[
    ("upernet_vit_small_512_ade20k_160k", UPERNET_VIT_SMALL),
    ("upernet_vit_base_512_ade20k_160k", UPERNET_VIT_BASE),
    ("linear_vit_base_512_ade20k_160k", LINEAR_VIT_BASE),
    ("demo", include_str!("../../configs/segmentation/demo.toml")),
    (
        "demo-linear",
        include_str!("../../configs/segmentation/demo-linear.toml"),
    ),
];

/// `[segmentation]` of a suite and the flags of `ibot eval segment`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentationOptions {
    /// Segmentation data config (configs/data/ade20k.toml, configs/data/synth-ade.toml).
    pub data: Option<PathBuf>,
    /// `linear` or `upernet`; default: the recipe's.
    pub head: Option<HeadKind>,
    /// Recipe (configs/segmentation/*.toml); default: the official recipe of the head (UperNet
    /// ViT-S or ViT-B by the checkpoint's width; the linear ViT-B recipe).
    pub recipe: Option<PathBuf>,
    /// Overrides the recipe's iterations (the schedule follows).
    pub iters: Option<usize>,
    pub seed: Option<u64>,
    /// Val images drawn for the report (image, ground truth, prediction).
    pub images: Option<usize>,
}

pub fn resolve_recipe(
    opts: &SegmentationOptions,
    base: &Path,
    width: usize,
) -> anyhow::Result<SegConfig> {
    let mut cfg = match &opts.recipe {
        Some(p) => {
            let (text, what) = super::recipe_text(p, base, BUILTIN, "configs/segmentation")?;
            SegConfig::parse(&text, &what)?
        }
        None => {
            let (text, what) = match opts.head.unwrap_or(HeadKind::Upernet) {
                HeadKind::Linear => (
                    LINEAR_VIT_BASE,
                    "configs/segmentation/linear_vit_base_512_ade20k_160k.toml",
                ),
                HeadKind::Upernet if width <= 384 => (
                    UPERNET_VIT_SMALL,
                    "configs/segmentation/upernet_vit_small_512_ade20k_160k.toml",
                ),
                HeadKind::Upernet => (
                    UPERNET_VIT_BASE,
                    "configs/segmentation/upernet_vit_base_512_ade20k_160k.toml",
                ),
            };
            SegConfig::parse(text, what)?
        }
    };
    if let Some(h) = opts.head {
        if opts.recipe.is_some() && h != cfg.head {
            anyhow::bail!(
                "--head {} but the recipe is for the {} head",
                format!("{h:?}").to_lowercase(),
                format!("{:?}", cfg.head).to_lowercase()
            );
        }
        cfg.head = h;
    }
    if let Some(i) = opts.iters {
        cfg.optim.iters = i;
    }
    if let Some(s) = opts.seed {
        cfg.run.seed = s;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Trains and evaluates in `work_dir` (resuming what is there); drawings go to
/// `report_dir/<figures>`. Returns the result.json body.
pub fn run(
    model: &features::ModelSource,
    data_path: &Path,
    opts: &SegmentationOptions,
    base: &Path,
    work_dir: &Path,
    report_dir: &Path,
    figures: &Path,
    progress: &features::Progress,
) -> anyhow::Result<Value> {
    let data = SegDataConfig::load(data_path)?;
    let ckpt = backbone::Checkpoint::open(&model.checkpoint)?;
    let sel = ckpt.select(model.key.as_deref())?;
    let vit = ckpt.infer_config(&sel, model.arch.as_deref(), None)?;
    let cfg = resolve_recipe(opts, base, vit.embed_dim)?;
    let dense = segmentation::segmentor::dense_config(&cfg, &vit);
    let (vit, weights, report) = backbone::dense::load_dense_weights(
        &model.checkpoint,
        model.key.as_deref(),
        model.arch.as_deref(),
        &dense,
    )?;
    let device = train::device::device(train::device::DeviceChoice::Auto)?;
    let bar = progress.bar(0, "segmentation");
    let outcome = segmentation::SegTrainer::new(
        cfg.clone(),
        data.clone(),
        segmentation::Init {
            vit: vit.clone(),
            weights,
        },
        segmentation::RunOptions {
            out: work_dir.to_path_buf(),
            device,
            progress: (*bar).clone(),
            max_iters: None,
        },
    )?
    .run()?;
    drop(bar);
    let images = draw(
        &data,
        &outcome.pred_dir,
        report_dir,
        figures,
        opts.images.unwrap_or(4),
    )?;
    let ann_dir = data.root.join("annotations").join(&data.val_split);
    Ok(json!({
        "segmentation": outcome.scores,
        "training": {
            "iters": outcome.iters,
            "completed": outcome.completed,
            "evals": outcome.evals,
            "train_images": outcome.train_images,
            "val_images": outcome.val_images,
            "train_images_per_s": outcome.train_images_per_s,
            "seconds": outcome.seconds,
        },
        "images": images,
        "config": {
            "protocol": "segmentation",
            "recipe": cfg,
            "dense_backbone": dense,
            "loss": "cross-entropy, ignore 255, mean over all pixels (mmseg 0.12)",
            "layer_decay_note": "mmcv_custom LayerDecayOptimizerConstructor: pos_embed and cls_token are weight-decayed, as in iBOT's code",
            "deviations": cfg.deviations,
        },
        "manifest": {
            "checkpoint": model.checkpoint.display().to_string(),
            "key": sel.key,
            "arch": vit.preset_name(),
            "load": {"loaded": report.loaded.len(), "missing": report.missing, "unexpected": report.unexpected},
            "data": data,
            "predictions": outcome.pred_dir.display().to_string(),
            "reproduce": format!(
                "ibot metrics segmentation --gt-dir {} --pred-dir {} --num-classes {}{} --json",
                ann_dir.display(),
                outcome.pred_dir.display(),
                data.num_classes,
                if data.reduce_zero_label { " --reduce-zero-label" } else { "" }
            ),
            "ibot_version": env!("CARGO_PKG_VERSION"),
        },
    }))
}

/// A colour per class (golden-angle hues), black for ignored pixels.
pub(crate) fn class_colour(label: u8) -> [u8; 3] {
    if label == 255 {
        return [0, 0, 0];
    }
    let h = (label as f32 * 137.508) % 360.0;
    let (s, v) = (0.75f32, 0.95f32);
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [
        ((r + m) * 255.0) as u8,
        ((g + m) * 255.0) as u8,
        ((b + m) * 255.0) as u8,
    ]
}

fn overlay(img: &RgbImage, labels: &[u8]) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        let l = labels[(y * img.width() + x) as usize];
        if l == 255 {
            return Rgb([p[0] / 3, p[1] / 3, p[2] / 3]);
        }
        let c = class_colour(l);
        Rgb([0, 1, 2].map(|k| ((p[k] as f32 * 0.45) + (c[k] as f32 * 0.55)) as u8))
    })
}

/// The first `count` val images: image | ground truth | prediction, upscaled for legibility.
fn draw(
    data: &SegDataConfig,
    pred_dir: &Path,
    report_dir: &Path,
    figures: &Path,
    count: usize,
) -> anyhow::Result<Vec<Value>> {
    let pairs = data::segmentation::SegPairs::ade(
        &data.root,
        &data.val_split,
        data.num_classes,
        data.reduce_zero_label,
    )?;
    let ann_root = data.root.join("annotations").join(&data.val_split);
    let out_dir = report_dir.join(figures);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut out = Vec::new();
    for i in 0..count.min(pairs.pairs.len()) {
        let (img_path, label_path) = &pairs.pairs[i];
        let img = data::image_io::load_rgb(img_path)?;
        let gt = pairs.load_labels(i)?;
        let rel = label_path.strip_prefix(&ann_root).unwrap_or(label_path);
        let mut pred = data::image_io::load_label_png(&pred_dir.join(rel))?;
        if data.reduce_zero_label {
            pred.labels
                .iter_mut()
                .for_each(|v| *v = if *v == 0 { 255 } else { *v - 1 });
        }
        let stem = img_path
            .file_stem()
            .map_or_else(|| format!("{i}"), |s| s.to_string_lossy().into_owned());
        let file = figures.join(format!("{}.png", safe_file_name(&stem)));
        let (truth, predicted) = (overlay(&img, &gt.labels), overlay(&img, &pred.labels));
        out.push(super::save_panels(
            vec![img, truth, predicted],
            report_dir,
            &file,
            format!("{stem}: image | ground truth | prediction"),
        )?);
    }
    Ok(out)
}

pub struct Segmentation;

impl Protocol for Segmentation {
    const NAME: &'static str = "segmentation";
    const ALIASES: &'static [&'static str] = &["ade20k"];
    const TITLE: &'static str = "Semantic segmentation";
    const NOTE: &'static str =
        "mmseg mIoU / mAcc / aAcc in % on the val split (sliding-window inference, single scale).";
    type Options = SegmentationOptions;

    fn evaluate(ctx: &UnitContext, opts: &SegmentationOptions) -> anyhow::Result<Value> {
        let data = opts
            .data
            .as_ref()
            .context("[segmentation] needs `data`: a segmentation data config (configs/data/ade20k.toml or synth-ade.toml)")?;
        let figures = PathBuf::from("segmentation").join(safe_file_name(ctx.checkpoint_name));
        run(
            ctx.eval.model,
            &ctx.resolve(data),
            opts,
            &ctx.base_dir,
            &ctx.work_dir,
            ctx.report_dir,
            &figures,
            ctx.eval.progress,
        )
    }

    fn columns(bodies: &[&Value]) -> Vec<Spec> {
        let mut specs = vec![
            spec("mIoU", &["segmentation", "mIoU"], PERCENT),
            spec("mAcc", &["segmentation", "mAcc"], PERCENT),
            spec("aAcc", &["segmentation", "aAcc"], PERCENT),
        ];
        // Per-class IoU when the class list is short enough to read.
        let classes = bodies
            .iter()
            .filter_map(|b| {
                lookup(b, &["segmentation", "per_class"])?
                    .as_array()
                    .map(|a| a.len())
            })
            .max()
            .unwrap_or(0);
        if classes <= 12 {
            for c in 0..classes {
                let name = bodies
                    .iter()
                    .find_map(|b| {
                        lookup(b, &["segmentation", "per_class"])?
                            .get(c)?
                            .get("name")?
                            .as_str()
                    })
                    .unwrap_or("?")
                    .to_string();
                let index = c.to_string();
                specs.push(spec(
                    format!("IoU {name}"),
                    &["segmentation", "per_class", &index, "IoU"],
                    PERCENT,
                ));
            }
        }
        specs.push(spec("iters", &["training", "iters"], ColumnKind::Text));
        specs
    }
}
