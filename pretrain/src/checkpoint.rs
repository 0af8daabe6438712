//! Training checkpoints: one safetensors file holding student, teacher, optimizer moments and both
//! loss centers, with the position in the schedules and the resolved recipe in its metadata. Keys
//! follow the official `checkpoint.pth` layout (`student.backbone.*`, `teacher.head.*`, …) so the
//! backbone loader reads the teacher straight from it. Written atomically (temp file + rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use backbone::checkpoint::config_metadata;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::PretrainConfig;

pub const FORMAT: &str = "ibot-rs-pretrain-1";

/// Where the run stands; everything else random is derived from (seed, epoch, step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch of the next step.
    pub epoch: usize,
    /// Index of the next step within its epoch.
    pub step_in_epoch: usize,
    /// Global iteration index of the next step (the schedules' position).
    pub step: usize,
    pub iters_per_epoch: usize,
    /// Per-parameter AdamW step counts.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// Loss of the last completed step.
    pub last_loss: Option<f64>,
    /// Data-parallel ranks the run trains on: the sampler shards and the lr scaling depend on it.
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

pub struct Saved {
    pub state: TrainState,
    pub config: PretrainConfig,
    pub tensors: HashMap<String, Tensor>,
}

pub fn save(
    path: &Path,
    config: &PretrainConfig,
    state: &TrainState,
    tensors: Vec<(String, Tensor)>,
) -> Result<()> {
    // The architecture keys let the backbone loader read the teacher straight from it.
    let meta = config_metadata(&config.teacher_vit()?);
    train::checkpoint::save(path, FORMAT, state, config, &tensors, meta)
}

pub fn load(path: &Path, device: &Device) -> Result<Saved> {
    let saved = train::checkpoint::load(path, FORMAT, device)?;
    Ok(Saved {
        state: saved.json("state")?,
        config: saved.json("config")?,
        tensors: saved.tensors,
    })
}
