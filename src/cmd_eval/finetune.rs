//! `ibot eval finetune`: end-to-end fine-tuning of a checkpoint on a data config (BEiT full
//! fine-tuning, or semi-supervised from the projection head on a label split), resumable in --out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use finetune::Mode;
use serde_json::Value;

use crate::protocols::finetune::{prepare, run, FinetuneOptions};

#[derive(Args)]
pub struct FinetuneArgs {
    /// The pretrained model (.pth or .safetensors); semisup mode also needs its projection head.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data config (configs/data/*.toml): the train split to fine-tune on, the val split to score.
    #[arg(long)]
    data: PathBuf,
    /// Recipe (configs/finetune/*.toml); default: the official recipe of the mode.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// `full` (BEiT: CLS → Linear) or `semisup` (head.mlp.0 + GELU → Linear); default: the recipe's.
    #[arg(long)]
    mode: Option<Mode>,
    /// Fine-tune on a class-balanced share of the train labels.
    #[arg(long, conflicts_with = "split_file")]
    percent: Option<f64>,
    /// Fine-tune on the train images a SimCLR-style split file lists.
    #[arg(long)]
    split_file: Option<PathBuf>,
    /// Overrides the recipe's epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Overrides the recipe's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many steps (schedules keep the recipe's length).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Print the parameter groups (name, lr_scale, weight_decay) as JSON and exit.
    #[arg(long)]
    dry_run: bool,
    /// Checkpoint sub-dict (teacher, student, state_dict …); default: auto.
    #[arg(long)]
    key: Option<String>,
    /// Architecture preset; default: inferred from the shapes.
    #[arg(long)]
    arch: Option<String>,
    /// Run directory: result.json, predictions.txt, model.safetensors, log.jsonl, checkpoint.
    /// Re-running the same command there continues a stopped run.
    #[arg(long, required_unless_present = "dry_run")]
    out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run_finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    let data = features::DataConfig::load(&args.data)?;
    let model = features::ModelSource {
        checkpoint: args.checkpoint.clone(),
        key: args.key.clone(),
        arch: args.arch.clone(),
        precision: features::Precision::F32,
    };
    let opts = FinetuneOptions {
        recipe: args.recipe.clone(),
        mode: args.mode,
        data: None,
        percent: args.percent,
        split_file: args.split_file.clone(),
        epochs: args.epochs,
        seed: args.seed,
        max_steps: args.max_steps,
    };
    let cwd = std::env::current_dir()?;
    let prepared = prepare(&model, &data, &opts, &cwd)?;
    if args.dry_run {
        let rows = finetune::train::parameter_groups(
            &prepared.cfg,
            &prepared.init,
            prepared.data.classes,
        )?;
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let progress = if args.quiet {
        features::Progress::hidden()
    } else {
        features::Progress::standalone()
    };
    let out = args
        .out
        .as_ref()
        .expect("clap requires --out without --dry-run");
    let mut result = run(prepared, out, &progress, args.max_steps).with_context(|| {
        format!(
            "fine-tuning {} on {}",
            args.checkpoint.display(),
            args.data.display()
        )
    })?;
    result["manifest"]["data_config"] = Value::String(args.data.display().to_string());
    super::finish(out, &result, &table(&result))
}

fn table(result: &Value) -> String {
    let f = &result["finetune"];
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("–".to_string(), |x| format!("{:.2}", 100.0 * x))
    };
    let mut out = format!(
        "fine-tuning  {} epochs  {} train images\n",
        f["epochs"], f["train_images"]
    );
    out += &format!(
        "  best top-1 {} % (epoch {})\n",
        pct(&f["max_top1"]),
        f["best_epoch"]
    );
    out += &format!(
        "  last top-1 {} %  top-5 {} %\n",
        pct(&f["top1"]),
        pct(&f["top5"])
    );
    if f.get("ema_top1").is_some() {
        out += &format!("  EMA top-1 {} %\n", pct(&f["ema_top1"]));
    }
    out
}
