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
        precision: features::Precision::F32,
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

/// `ibot bench detect`: training steps (batches prepared before timing) and val inference of the
/// demo recipe's Mask R-CNN on a random demo ViT; compare with
/// tests/reference/bench_detection_torch.py (same flags).
#[derive(Args)]
pub struct BenchDetectArgs {
    /// COCO-layout directory with annotations/instances_{train,val}.json and train/, val/ (the
    /// `coco/` of `ibot data synth` or of an `ibot demo` directory).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 80)]
    eval_images: usize,
    #[arg(long, default_value_t = 8)]
    eval_batch: usize,
    /// PyTorch's JSON (bench_detection_torch.py) to print the ratios against.
    #[arg(long)]
    torch_json: Option<PathBuf>,
}

pub fn run_bench(a: BenchDetectArgs) -> anyhow::Result<()> {
    let mut cfg = detection::DetectionConfig::parse(
        include_str!("../../configs/detection/demo.toml"),
        "configs/detection/demo.toml",
    )?;
    cfg.train.batch_size = a.batch_size;
    cfg.run.eval_batch_size = a.eval_batch;
    let vit = backbone::VitConfig {
        embed_dim: 96,
        depth: 4,
        num_heads: 3,
        mlp_hidden: 384,
        patch_size: 8,
        img_size: 64,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    };
    let data = detection::DetectionData::from_dir(&a.data)?;
    let init = detection::Init::random(&vit, &cfg, 0)?;
    let dir = tempfile::tempdir()?;
    let mut trainer = detection::Trainer::new(
        cfg,
        init,
        data,
        detection::RunOptions {
            out: dir.path().to_path_buf(),
            device: train::device::device(train::device::DeviceChoice::Auto)?,
            progress: indicatif::ProgressBar::hidden(),
            max_steps: None,
        },
    )?;
    let (times, losses) = trainer.time_steps(a.warmup, a.steps)?;
    let step = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let (detections, seconds) = trainer.time_inference(a.eval_images, a.eval_batch)?;
    let images = a.eval_images as f64 / seconds;
    let mut out = serde_json::json!({
        "bench": "detect", "framework": "ibot-rs", "threads": rayon::current_num_threads(),
        "batch_size": a.batch_size, "train_seconds_per_step": step, "train_steps_timed": times.len(),
        "first_loss": losses.first(), "last_loss": losses.last(),
        "eval_images": a.eval_images, "eval_images_per_s": images, "detections": detections,
        "note": "inference time includes decoding and the test pipeline (PyTorch's excludes them)",
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    if let Some(p) = &a.torch_json {
        let theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{}: not JSON", p.display()))?;
        let ts = theirs["train_seconds_per_step"]
            .as_f64()
            .context("the PyTorch JSON has no train_seconds_per_step")?;
        let ti = theirs["eval_images_per_s"]
            .as_f64()
            .context("the PyTorch JSON has no eval_images_per_s")?;
        out["pytorch"] = theirs.clone();
        out["train_ratio_vs_pytorch"] = serde_json::json!(ts / step);
        out["eval_ratio_vs_pytorch"] = serde_json::json!(images / ti);
        out["ratio_note"] = serde_json::json!("above 1 = ours faster");
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
