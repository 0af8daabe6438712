//! `ibot eval segment`: semantic segmentation of a checkpoint on an ADE20K-layout data config
//! (frozen linear probe or UperNet), resumable in --out; result.json, pred/*.png, drawings.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use segmentation::HeadKind;
use serde_json::Value;

use crate::protocols::segmentation::{run, SegmentationOptions};

#[derive(Args)]
pub struct SegmentArgs {
    /// The pretrained model (.pth or .safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Segmentation data config (configs/data/ade20k.toml, configs/data/synth-ade.toml).
    #[arg(long)]
    data: PathBuf,
    /// `linear` (frozen backbone, 1×1 conv) or `upernet`.
    #[arg(long)]
    head: HeadKind,
    /// Recipe (configs/segmentation/*.toml); default: the official recipe of the head.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Overrides the recipe's training iterations.
    #[arg(long)]
    iters: Option<usize>,
    /// Overrides the recipe's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Val images drawn (image | ground truth | prediction) into DIR/segmentation/.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Checkpoint sub-dict (teacher, student, state_dict …); default: auto.
    #[arg(long)]
    key: Option<String>,
    /// Architecture preset; default: inferred from the shapes.
    #[arg(long)]
    arch: Option<String>,
    /// Run directory: result.json, pred/<annotation name>.png, model.safetensors, log.jsonl,
    /// checkpoint. Re-running the same command there continues a stopped run.
    #[arg(long)]
    out: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run_segment(args: SegmentArgs) -> anyhow::Result<()> {
    let model = features::ModelSource {
        checkpoint: args.checkpoint.clone(),
        key: args.key.clone(),
        arch: args.arch.clone(),
    };
    let opts = SegmentationOptions {
        data: Some(args.data.clone()),
        head: Some(args.head),
        recipe: args.recipe.clone(),
        iters: args.iters,
        seed: args.seed,
        images: Some(args.images),
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
        std::path::Path::new("segmentation"),
        &progress,
    )
    .with_context(|| {
        format!(
            "segmentation of {} on {}",
            args.checkpoint.display(),
            args.data.display()
        )
    })?;
    result["manifest"]["data_config"] = Value::String(args.data.display().to_string());
    super::finish(&args.out, &result, &table(&result))
}

fn table(result: &Value) -> String {
    let s = &result["segmentation"];
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("–".to_string(), |x| format!("{:.2}", 100.0 * x))
    };
    let mut out = format!(
        "segmentation  {} iterations\n  mIoU {} %  mAcc {} %  aAcc {} %\n",
        result["training"]["iters"],
        pct(&s["mIoU"]),
        pct(&s["mAcc"]),
        pct(&s["aAcc"])
    );
    for c in s["per_class"].as_array().into_iter().flatten().take(20) {
        out += &format!(
            "  {:>16}  IoU {:>6}  Acc {:>6}\n",
            c["name"].as_str().unwrap_or("?"),
            pct(&c["IoU"]),
            pct(&c["Acc"])
        );
    }
    out
}
