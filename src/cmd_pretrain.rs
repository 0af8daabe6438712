//! `ibot pretrain` and `ibot bench pretrain`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use pretrain::config::PretrainConfig;
use pretrain::trainer::{RunOptions, Trainer};
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when built with `--features cuda` and a GPU is present, else CPU.
    Auto,
    Cpu,
    Cuda,
}

pub fn device(choice: DeviceChoice) -> anyhow::Result<candle_core::Device> {
    match choice {
        DeviceChoice::Cpu => Ok(candle_core::Device::Cpu),
        DeviceChoice::Auto => Ok(candle_core::Device::cuda_if_available(0)?),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this binary was built without the `cuda` feature (cargo build --release --features cuda) or no GPU is visible");
            }
            Ok(candle_core::Device::new_cuda(0)?)
        }
    }
}

#[derive(Args)]
pub struct PretrainArgs {
    /// Recipe, e.g. configs/pretrain/fashion-mnist.toml.
    #[arg(long)]
    config: PathBuf,
    /// Output directory (checkpoint.safetensors, teacher.safetensors, init.safetensors,
    /// log.jsonl, summary.json); defaults to runs/<recipe name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps in total (schedules keep the recipe's length).
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Data-parallel training on GPUs 0..N-1: one thread per GPU in this process, gradients and
    /// loss centres all-reduced with NCCL (needs a build with `--features nccl`). The recipe's
    /// optim.batch_size is per GPU and the lr scales with the global batch, as officially.
    #[arg(long, value_name = "N")]
    gpus: Option<usize>,
    /// Hide the progress bar (logs still go to log.jsonl).
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let cfg = PretrainConfig::load(&args.config)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let gpus = match args.gpus {
        Some(0) => bail!("--gpus must be at least 1"),
        Some(n) if matches!(args.device, DeviceChoice::Cpu) => {
            bail!("--gpus {n} trains on GPUs: drop --device cpu")
        }
        Some(n) => n,
        None => 1,
    };
    let dev = if args.gpus.is_some() {
        device(DeviceChoice::Cuda)?
    } else {
        device(args.device)?
    };
    eprintln!(
        "pretraining {} on {} → {}",
        cfg.name,
        match (dev.is_cuda(), gpus) {
            (false, _) => "CPU".to_string(),
            (true, 1) => "CUDA".to_string(),
            (true, n) => format!("{n} GPUs (NCCL)"),
        },
        out.display()
    );
    let opts = RunOptions {
        out: out.clone(),
        resume: args.resume,
        device: dev,
        max_steps: args.max_steps,
        progress: !args.quiet,
    };
    let summary = if gpus > 1 {
        data_parallel(&cfg, &opts, gpus)
            .with_context(|| format!("data-parallel run in {}", out.display()))?
    } else {
        let mut trainer = Trainer::new(cfg, opts)
            .with_context(|| format!("setting up the run in {}", out.display()))?;
        if args.resume {
            let s = trainer.state();
            eprintln!("resuming at epoch {}, step {}", s.epoch, s.step);
        }
        trainer.run()?
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "precision": summary.precision,
            "world_size": summary.world_size,
            "steps": summary.steps,
            "epoch": summary.epoch,
            "last_loss": summary.last_loss,
            "seconds": summary.seconds,
            "images_per_s": summary.images_per_s,
            "checkpoint": summary.checkpoint,
            "teacher": summary.teacher,
        }))?
    );
    Ok(())
}

#[cfg(feature = "nccl")]
fn data_parallel(
    cfg: &PretrainConfig,
    opts: &RunOptions,
    gpus: usize,
) -> anyhow::Result<pretrain::trainer::Summary> {
    let available = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count()
        .map_err(|e| anyhow::anyhow!("counting CUDA devices: {e:?}"))?;
    if gpus > available as usize {
        bail!("--gpus {gpus}: only {available} CUDA device(s) visible");
    }
    let ordinals: Vec<usize> = (0..gpus).collect();
    pretrain::parallel::run_nccl(cfg, opts, &ordinals)
}

#[cfg(not(feature = "nccl"))]
fn data_parallel(
    _: &PretrainConfig,
    _: &RunOptions,
    gpus: usize,
) -> anyhow::Result<pretrain::trainer::Summary> {
    bail!("--gpus {gpus}: this binary was built without the `nccl` feature (cargo build --release --features nccl; needs libnccl)")
}
