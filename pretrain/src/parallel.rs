//! Data-parallel pretraining in one process: one [`Trainer`] replica per rank, each on its own
//! thread and device, joined by a [`Collective`]. Semantics follow the official DDP run: the
//! recipe's batch size is per rank (global batch = world × batch), each rank reads a disjoint
//! DistributedSampler shard, gradients are averaged before clipping and AdamW, the centres use
//! all-reduced batch sums, the EMA teacher stays identical everywhere, and only rank 0 logs,
//! exports and checkpoints.

use std::sync::mpsc;

use anyhow::{anyhow, bail, Result};
use candle_core::Device;

use crate::collective::{Collective, ThreadGroup};
use crate::config::PretrainConfig;
use crate::trainer::{RunOptions, Summary, Trainer};

/// Runs one trainer per `(device, collective)` pair (ranks in order) and returns rank 0's
/// summary. `opts.device` is ignored: each rank trains on its own device. Returns as soon as a
/// rank fails, with that rank's error.
pub fn run_data_parallel(
    cfg: &PretrainConfig,
    opts: &RunOptions,
    ranks: Vec<(Device, Box<dyn Collective>)>,
) -> Result<Summary> {
    if ranks.is_empty() {
        bail!("a data-parallel run needs at least one rank");
    }
    let world = ranks.len();
    let (tx, rx) = mpsc::channel();
    for (device, comm) in ranks {
        let rank = comm.rank();
        let cfg = cfg.clone();
        let opts = RunOptions {
            out: opts.out.clone(),
            resume: opts.resume,
            device,
            max_steps: opts.max_steps,
            progress: opts.progress,
        };
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("ibot-rank-{rank}"))
            .spawn(move || {
                let result = Trainer::with_collective(cfg, opts, comm).and_then(|mut t| t.run());
                let _ = tx.send((rank, result));
            })?;
    }
    drop(tx);
    let mut main_summary = None;
    // When one rank fails the others fail too ("rank r left the group"): report the cause.
    let mut failures: Vec<(usize, anyhow::Error)> = Vec::new();
    for _ in 0..world {
        let (rank, result) = rx
            .recv()
            .map_err(|_| anyhow!("a rank thread ended without reporting (it panicked)"))?;
        match result {
            Ok(summary) if rank == 0 => main_summary = Some(summary),
            Ok(_) => {}
            Err(e) => {
                let secondary = format!("{e:#}").contains("left the group");
                if !secondary {
                    return Err(e.context(format!("rank {rank} of {world}")));
                }
                failures.push((rank, e));
            }
        }
    }
    if let Some((rank, e)) = failures.into_iter().next() {
        return Err(e.context(format!("rank {rank} of {world}")));
    }
    main_summary.ok_or_else(|| anyhow!("rank 0 reported no summary"))
}

/// `world` CPU replicas as threads of this process, reducing on the host. The data-parallel
/// semantics are the same as on GPUs, which makes them testable here; it is not faster than one
/// process on the CPU (the replicas share the cores).
pub fn run_cpu_threads(cfg: &PretrainConfig, opts: &RunOptions, world: usize) -> Result<Summary> {
    if world == 0 {
        bail!("the number of ranks must be positive");
    }
    let ranks = ThreadGroup::new(world)
        .into_iter()
        .map(|c| (Device::Cpu, Box::new(c) as Box<dyn Collective>))
        .collect();
    run_data_parallel(cfg, opts, ranks)
}

/// One rank per GPU in `gpus` (CUDA ordinals), NCCL all-reduce between them.
#[cfg(feature = "nccl")]
pub fn run_nccl(cfg: &PretrainConfig, opts: &RunOptions, gpus: &[usize]) -> Result<Summary> {
    let ranks = crate::collective::nccl::NcclGroup::new(gpus)?
        .into_iter()
        .map(|c| (c.device().clone(), Box::new(c) as Box<dyn Collective>))
        .collect();
    run_data_parallel(cfg, opts, ranks)
}
