//! `ibot eval detect`: COCO detection and instance segmentation of a checkpoint on a COCO-layout
//! data config (Mask R-CNN or Cascade Mask R-CNN on the ViT pyramid + FPN), resumable in --out;
//! result.json, detections.json (COCO results), drawings.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::protocols::detection::{run, DetectionOptions};

#[derive(Args)]
pub struct DetectArgs {
    /// The pretrained model (.pth or .safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// COCO-layout data config (configs/data/coco.toml, configs/data/synth-coco.toml).
    #[arg(long)]
    data: PathBuf,
    /// Recipe (configs/detection/*.toml or a built-in name: demo,
    /// cascade_mask_rcnn_vit_{small,base}_giou_4conv1f_coco_1x); default: the official Cascade
    /// Mask R-CNN 1× recipe of the checkpoint's width.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Train for this many steps in all (whole epochs, lr steps moved in proportion).
    #[arg(long)]
    iters: Option<usize>,
    /// Overrides the recipe's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Val images drawn (image | ground truth | prediction) into DIR/detection/.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Checkpoint sub-dict (teacher, student, state_dict …); default: auto.
    #[arg(long)]
    key: Option<String>,
    /// Architecture preset; default: inferred from the shapes.
    #[arg(long)]
    arch: Option<String>,
    /// Run directory: result.json, detections.json, model.safetensors, log.jsonl, checkpoint.
    /// Re-running the same command there continues a stopped run.
    #[arg(long)]
    out: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run_detect(args: DetectArgs) -> anyhow::Result<()> {
    let model = features::ModelSource {
        checkpoint: args.checkpoint.clone(),
        key: args.key.clone(),
        arch: args.arch.clone(),
    };
    let opts = DetectionOptions {
        data: Some(args.data.clone()),
        recipe: args.recipe.clone(),
        iters: args.iters,
        seed: args.seed,
        images: Some(args.images),
        draw_score: None,
    };
    let progress = if args.quiet {
        features::Progress::hidden()
    } else {
        features::Progress::standalone()
    };
    let cwd = std::env::current_dir()?;
    let mut result = run(
        &model,
        &args.data,
        &opts,
        &cwd,
        &args.out,
        &args.out,
        std::path::Path::new("detection"),
        &progress,
    )
    .with_context(|| {
        format!(
            "detection of {} on {}",
            args.checkpoint.display(),
            args.data.display()
        )
    })?;
    result["manifest"]["data_config"] = Value::String(args.data.display().to_string());
    super::finish(&args.out, &result, &table(&result))
}

fn table(result: &Value) -> String {
    // pycocotools' −1: no objects of that size in the ground truth
    let pct = |v: &Value| match v.as_f64() {
        Some(x) if x >= 0.0 => format!("{:.1}", 100.0 * x),
        _ => "–".to_string(),
    };
    let mut out = format!(
        "detection  {} steps ({} epochs)\n",
        result["training"]["steps"], result["training"]["epochs"]
    );
    for (kind, name) in [("bbox", "boxes"), ("segm", "masks")] {
        let s = &result["detection"][kind];
        out += &format!(
            "  {name:<6} AP {}  AP50 {}  AP75 {}  APs {}  APm {}  APl {}\n",
            pct(&s["AP"]),
            pct(&s["AP50"]),
            pct(&s["AP75"]),
            pct(&s["APs"]),
            pct(&s["APm"]),
            pct(&s["APl"])
        );
    }
    out
}
