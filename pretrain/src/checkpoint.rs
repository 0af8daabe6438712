//! Training checkpoints: one safetensors file holding student, teacher, optimizer moments and both
//! loss centers, with the position in the schedules and the resolved recipe in its metadata. Keys
//! follow the official `checkpoint.pth` layout (`student.backbone.*`, `teacher.head.*`, …) so the
//! backbone loader reads the teacher straight from it. Written atomically (temp file + rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use backbone::checkpoint::{config_metadata, save_safetensors};
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
    let mut meta = config_metadata(&config.teacher_vit()?);
    meta.insert("format".into(), FORMAT.into());
    meta.insert("state".into(), serde_json::to_string(state)?);
    meta.insert("config".into(), serde_json::to_string(config)?);
    save_safetensors(path, &tensors, meta)
}

pub fn load(path: &Path, device: &Device) -> Result<Saved> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let meta = st_meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        bail!(
            "{}: not a pretraining checkpoint of this tool (metadata format {:?}, expected {FORMAT:?})",
            path.display(),
            meta.get("format")
        );
    }
    let field = |k: &str| {
        meta.get(k)
            .ok_or_else(|| anyhow::anyhow!("{}: metadata has no {k:?}", path.display()))
    };
    let state: TrainState = serde_json::from_str(field("state")?)
        .with_context(|| format!("{}: bad training state", path.display()))?;
    let config: PretrainConfig = serde_json::from_str(field("config")?)
        .with_context(|| format!("{}: bad recipe", path.display()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("{}: reading tensors", path.display()))?;
    Ok(Saved {
        state,
        config,
        tensors,
    })
}
