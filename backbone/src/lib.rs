//! ViT backbone for iBOT/DINO: presets, forward and feature API, exact position-embedding
//! interpolation, and strict checkpoint I/O for the official `.pth` layouts and safetensors.

pub mod checkpoint;
pub mod config;
pub mod dense;
pub mod head;
pub mod init;
pub mod ops;
pub mod pos_embed;
pub mod pyramid;
pub mod vit;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use checkpoint::{Checkpoint, LoadOptions, LoadReport, Selection};
pub use config::VitConfig;
pub use vit::{Pool, TrainCtx, VisionTransformer};

/// Build a model from named weights (already validated) on `device` in `dtype`.
pub fn build_model(
    cfg: &VitConfig,
    weights: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<VisionTransformer> {
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    Ok(VisionTransformer::new(cfg, vb)?)
}

/// Build a model whose weights are trainable `Var`s held in the returned `VarMap`.
pub fn build_trainable(
    cfg: &VitConfig,
    weights: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<(candle_nn::VarMap, VisionTransformer)> {
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().expect("fresh VarMap");
        for (name, t) in weights {
            let var = candle_core::Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?;
            data.insert(name, var);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    let model = VisionTransformer::new(cfg, vb)?;
    Ok((varmap, model))
}

/// What loading a checkpoint found and did.
pub struct Loaded {
    pub model: VisionTransformer,
    pub config: VitConfig,
    pub selection: Selection,
    pub report: LoadReport,
}

/// Options for [`load`]: which sub-dict, which architecture, how strict.
#[derive(Debug, Clone, Default)]
pub struct LoadSpec<'a> {
    pub key: Option<&'a str>,
    pub arch: Option<&'a str>,
    pub heads: Option<usize>,
    pub options: LoadOptions,
}

/// Open, select, infer the architecture, strictly load and build: the one call evaluation code needs.
pub fn load(path: &Path, spec: &LoadSpec, dtype: DType, device: &Device) -> Result<Loaded> {
    let ckpt = Checkpoint::open(path)?;
    let selection = ckpt.select(spec.key)?;
    let config = ckpt.infer_config(&selection, spec.arch, spec.heads)?;
    let init = init::init_weights(&config, 0)?;
    let (weights, report) = ckpt.load_backbone(&selection, &config, spec.options, init)?;
    let model = build_model(&config, weights, dtype, device)?;
    Ok(Loaded {
        model,
        config,
        selection,
        report,
    })
}
