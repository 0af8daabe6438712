//! COCO object detection and instance segmentation (ibot-reference §8.7; tasks/detection): the
//! ViT + pyramid + FPN with Mask R-CNN or the official Cascade Mask R-CNN, trained on a COCO-layout
//! data config, evaluated on its val split into `detections.json` (COCO results, bbox + RLE) and
//! pycocotools' 12 bbox and 12 segm numbers, with a few val images drawn.

use std::path::{Path, PathBuf};

use anyhow::Context;
use detection::{DetDataConfig, DetectionConfig};
use image::{Rgb, RgbImage};
use metrics::coco::Detection;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::segmentation::class_colour;
use super::{Protocol, UnitContext};
use crate::report::safe_file_name;
use crate::report::tables::{spec, ColumnKind, Spec, COCO_PERCENT};

const CASCADE_VIT_SMALL: &str =
    include_str!("../../configs/detection/cascade_mask_rcnn_vit_small_giou_4conv1f_coco_1x.toml");
const CASCADE_VIT_BASE: &str =
    include_str!("../../configs/detection/cascade_mask_rcnn_vit_base_giou_4conv1f_coco_1x.toml");

/// Recipes shipped in the binary, usable by name (`recipe = "demo"`).
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "cascade_mask_rcnn_vit_small_giou_4conv1f_coco_1x",
        CASCADE_VIT_SMALL,
    ),
    (
        "cascade_mask_rcnn_vit_base_giou_4conv1f_coco_1x",
        CASCADE_VIT_BASE,
    ),
    ("demo", include_str!("../../configs/detection/demo.toml")),
];

/// `[detection]` of a suite and the flags of `ibot eval detect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionOptions {
    /// COCO-layout data config (configs/data/coco.toml, configs/data/synth-coco.toml).
    pub data: Option<PathBuf>,
    /// Recipe (configs/detection/*.toml or a built-in name); default: the official Cascade Mask
    /// R-CNN 1× recipe of the checkpoint's width (ViT-S or ViT-B).
    pub recipe: Option<PathBuf>,
    /// Train for this many steps in all (whole epochs, lr steps moved in proportion).
    pub iters: Option<usize>,
    pub seed: Option<u64>,
    /// Val images drawn for the report (image | ground truth | prediction).
    pub images: Option<usize>,
    /// Score threshold of the drawn predictions (the evaluation keeps every detection).
    pub draw_score: Option<f64>,
}

pub fn resolve_recipe(
    opts: &DetectionOptions,
    base: &Path,
    width: usize,
) -> anyhow::Result<DetectionConfig> {
    let mut cfg = match &opts.recipe {
        Some(p) => {
            let (text, what) = super::recipe_text(p, base, BUILTIN, "configs/detection")?;
            DetectionConfig::parse(&text, &what)?
        }
        None if width <= 384 => DetectionConfig::parse(
            CASCADE_VIT_SMALL,
            "configs/detection/cascade_mask_rcnn_vit_small_giou_4conv1f_coco_1x.toml",
        )?,
        None => DetectionConfig::parse(
            CASCADE_VIT_BASE,
            "configs/detection/cascade_mask_rcnn_vit_base_giou_4conv1f_coco_1x.toml",
        )?,
    };
    if let Some(s) = opts.seed {
        cfg.run.seed = s;
    }
    Ok(cfg)
}

/// Trains and evaluates in `work_dir` (resuming what is there); drawings go to
/// `report_dir/<figures>`. Returns the result.json body.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &features::ModelSource,
    data_path: &Path,
    opts: &DetectionOptions,
    base: &Path,
    work_dir: &Path,
    report_dir: &Path,
    figures: &Path,
    progress: &features::Progress,
) -> anyhow::Result<Value> {
    let data_cfg = DetDataConfig::load(data_path)?;
    let data = data_cfg.open()?;
    let ckpt = backbone::Checkpoint::open(&model.checkpoint)?;
    let sel = ckpt.select(model.key.as_deref())?;
    let vit = ckpt.infer_config(&sel, model.arch.as_deref(), None)?;
    let mut cfg = resolve_recipe(opts, base, vit.embed_dim)?;
    let max_steps = match opts.iters {
        Some(n) => {
            let ipe = detection::iters_per_epoch(&cfg, &data);
            detection::set_iters(&mut cfg, n, ipe);
            Some(n)
        }
        None => None,
    };
    cfg.validate()?;
    let (init, report) = detection::Init::from_checkpoint(
        &model.checkpoint,
        model.key.as_deref(),
        model.arch.as_deref(),
        &cfg,
    )?;
    let vit = init.vit.clone();
    let device = train::device::device(train::device::DeviceChoice::Auto)?;
    let bar = progress.bar(0, "detection");
    let outcome = detection::run(
        cfg.clone(),
        init,
        data,
        detection::RunOptions {
            out: work_dir.to_path_buf(),
            device,
            progress: (*bar).clone(),
            max_steps,
        },
    )?;
    drop(bar);
    let gt = data_cfg.val_annotations();
    let images = draw(
        &data_cfg,
        &outcome.detections_path,
        report_dir,
        figures,
        opts.images.unwrap_or(4),
        opts.draw_score.unwrap_or(0.3),
    )?;
    let reproduce = |iou: &str| {
        format!(
            "ibot metrics coco --gt {} --dt {} --iou-type {iou} --json",
            gt.display(),
            outcome.detections_path.display()
        )
    };
    Ok(json!({
        "detection": {"bbox": outcome.bbox, "segm": outcome.segm},
        "training": {
            "epochs": outcome.epochs,
            "steps": outcome.steps,
            "steps_per_epoch": outcome.steps_per_epoch,
            "completed": outcome.completed,
            "history": outcome.history,
            "train_images": outcome.train_images,
            "val_images": outcome.val_images,
            "classes": outcome.classes,
            "seconds": outcome.seconds,
            "seconds_per_step": outcome.seconds_per_step,
            "eval_images_per_s": outcome.eval_images_per_s,
        },
        "images": images,
        "config": {
            "protocol": "detection",
            "recipe": cfg,
            "metric": "pycocotools COCOeval on detections.json: bbox, and segm with the records' boxes as their areas (mmdet 2.11's results.segm.json)",
            "layer_decay_note": "mmcv_custom LayerDecayOptimizerConstructor: pos_embed and cls_token are weight-decayed, as in iBOT's code",
            "deviations": cfg.deviations,
        },
        "manifest": {
            "checkpoint": model.checkpoint.display().to_string(),
            "key": sel.key,
            "arch": vit.preset_name(),
            "load": {"loaded": report.loaded.len(), "missing": report.missing, "unexpected": report.unexpected},
            "data": data_cfg,
            "ground_truth": gt.display().to_string(),
            "detections": outcome.detections_path.display().to_string(),
            "num_detections": outcome.detections,
            "reproduce": [reproduce("bbox"), reproduce("segm")],
            "ibot_version": env!("CARGO_PKG_VERSION"),
        },
    }))
}

/// Colours the pixels of a row-major mask and outlines a box, both in `colour`.
fn paint(canvas: &mut RgbImage, mask: Option<&[u8]>, bbox: [f64; 4], colour: [u8; 3]) {
    let (w, h) = (canvas.width(), canvas.height());
    if let Some(mask) = mask {
        for x in 0..w {
            for y in 0..h {
                if mask[(y * w + x) as usize] != 0 {
                    let p = canvas.get_pixel_mut(x, y);
                    p.0 = [0, 1, 2].map(|k| (p.0[k] as f32 * 0.45 + colour[k] as f32 * 0.55) as u8);
                }
            }
        }
    }
    let [bx, by, bw, bh] = bbox;
    let clampx = |v: f64| (v.round().max(0.0) as u32).min(w.saturating_sub(1));
    let clampy = |v: f64| (v.round().max(0.0) as u32).min(h.saturating_sub(1));
    let (x0, x1, y0, y1) = (
        clampx(bx),
        clampx(bx + bw - 1.0),
        clampy(by),
        clampy(by + bh - 1.0),
    );
    for x in x0..=x1 {
        canvas.put_pixel(x, y0, Rgb(colour));
        canvas.put_pixel(x, y1, Rgb(colour));
    }
    for y in y0..=y1 {
        canvas.put_pixel(x0, y, Rgb(colour));
        canvas.put_pixel(x1, y, Rgb(colour));
    }
}

/// The first `count` val images: image | ground truth | predictions scoring at least `min_score`.
fn draw(
    data: &DetDataConfig,
    detections: &Path,
    report_dir: &Path,
    figures: &Path,
    count: usize,
    min_score: f64,
) -> anyhow::Result<Vec<Value>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let val = data::coco_instances::CocoInstances::load(
        &data.val_annotations(),
        &data.root.join(&data.val_split),
        false,
    )?;
    let dets: Vec<Detection> = detection::eval::read_detections(detections)?;
    let out_dir = report_dir.join(figures);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let label_of = |cat: u64| val.cat_ids.iter().position(|&c| c == cat).unwrap_or(0) as u8;
    let mut out = Vec::new();
    for (i, entry) in val.entries.iter().take(count).enumerate() {
        let img = data::image_io::load_rgb(&val.image_path(i))?;
        let (w, h) = (img.width(), img.height());
        let mut truth = img.clone();
        for ((b, &label), mask) in entry.boxes.iter().zip(&entry.labels).zip(&entry.masks) {
            let decoded = mask.as_ref().and_then(|m| m.to_mask().ok());
            let bbox = [
                b[0] as f64,
                b[1] as f64,
                (b[2] - b[0]) as f64,
                (b[3] - b[1]) as f64,
            ];
            paint(
                &mut truth,
                decoded.as_deref(),
                bbox,
                class_colour(label as u8),
            );
        }
        let mut pred = img.clone();
        let mut shown = 0;
        for d in dets
            .iter()
            .filter(|d| d.image_id == entry.image.id && d.score >= min_score)
        {
            let decoded = match &d.segmentation {
                // pycocotools' masks are column-major
                Some(rle) => {
                    let m = metrics::mask::decode(&metrics::mask::from_string(
                        &rle.counts,
                        rle.size[0],
                        rle.size[1],
                    )?);
                    let (mh, mw) = (rle.size[0] as usize, rle.size[1] as usize);
                    Some(
                        (0..mh * mw)
                            .map(|i| m.get((i % mw) * mh + i / mw).copied().unwrap_or(0))
                            .collect::<Vec<u8>>(),
                    )
                }
                None => None,
            };
            let decoded = decoded.filter(|m| m.len() == (w * h) as usize);
            let bbox = d.bbox.unwrap_or([0.0; 4]);
            paint(
                &mut pred,
                decoded.as_deref(),
                bbox,
                class_colour(label_of(d.category_id)),
            );
            shown += 1;
        }
        let stem = Path::new(&entry.image.file_name)
            .file_stem()
            .map_or_else(|| format!("{i}"), |s| s.to_string_lossy().into_owned());
        let file = figures.join(format!("{}.png", safe_file_name(&stem)));
        out.push(super::save_panels(
            vec![img, truth, pred],
            report_dir,
            &file,
            format!("{stem}: image | ground truth | {shown} predictions with score ≥ {min_score}"),
        )?);
    }
    Ok(out)
}

pub struct CocoDetection;

impl Protocol for CocoDetection {
    const NAME: &'static str = "detection";
    const ALIASES: &'static [&'static str] = &["coco"];
    const TITLE: &'static str = "Object detection and instance segmentation";
    const NOTE: &'static str =
        "COCO AP in % on the val split (pycocotools on detections.json): boxes (AP^b) and masks (AP^m).";
    type Options = DetectionOptions;

    fn evaluate(ctx: &UnitContext, opts: &DetectionOptions) -> anyhow::Result<Value> {
        let data = opts
            .data
            .as_ref()
            .context("[detection] needs `data`: a COCO-layout data config (configs/data/coco.toml or synth-coco.toml)")?;
        let figures = PathBuf::from("detection").join(safe_file_name(ctx.checkpoint_name));
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

    fn columns(_bodies: &[&Value]) -> Vec<Spec> {
        let mut specs = Vec::new();
        for (kind, tag) in [("bbox", "b"), ("segm", "m")] {
            for stat in ["AP", "AP50", "AP75", "APs", "APm", "APl"] {
                specs.push(spec(
                    format!("{stat}^{tag}"),
                    &["detection", kind, stat],
                    COCO_PERCENT,
                ));
            }
        }
        specs.push(spec("steps", &["training", "steps"], ColumnKind::Text));
        specs
    }
}
