//! Feature store shared by every frozen-feature protocol: a data-set config, the frozen-model
//! feature layouts of DINO/iBOT/DINOv2, and an on-disk cache keyed by content (checkpoint bytes,
//! image list, transform, layout) so that k-NN, logistic regression, clustering and linear probes on
//! cached features extract once and never read a stale cache.
//!
//! Modules: [`data_config`] (configs and split readers), [`spec`] (feature layouts), [`file`] (the
//! feature file format shared with `ibot extract`), [`store`] (cache key, resumable extraction),
//! [`progress`] (where bars and log lines go: alone, under `ibot suite`'s display, or hidden).

pub mod data_config;
pub mod file;
pub mod pixels;
pub mod progress;
pub mod spec;
pub mod store;

use std::path::PathBuf;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

/// Which split of a data config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
}

/// An evaluation data set: `configs/data/<name>.toml`. Relative paths resolve against the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub name: String,
    pub train: SplitSource,
    pub val: SplitSource,
    #[serde(default)]
    pub transform: EvalTransform,
}

/// Where one split's labelled images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum SplitSource {
    /// torchvision ImageFolder layout: `root/<class>/<image>`.
    ImageFolder { root: PathBuf },
    /// `relative/path label` lines, paths relative to `root`.
    FileList { list: PathBuf, root: PathBuf },
    /// IDX (MNIST / Fashion-MNIST), gzip or raw.
    Idx { images: PathBuf, labels: PathBuf },
}

/// Resize(shorter side, bicubic) → CenterCrop → ImageNet Normalize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTransform {
    pub resize: u32,
    pub crop: u32,
}

impl Default for EvalTransform {
    fn default() -> Self {
        EvalTransform {
            resize: 256,
            crop: 224,
        }
    }
}

/// What to take from the frozen model. Serialised as `"cls"`, `{"cls_last_n": {"n": 4}}`, …;
/// deserialised from that form or from the CLI spelling (`"cls-last-4+avg"`, see [`spec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureSpec {
    /// Final-norm CLS token (k-NN, logistic regression, k-means).
    Cls,
    /// CLS of each of the last `n` blocks (each through the final norm), concatenated.
    ClsLastN { n: usize },
    /// Mean of the last block's patch tokens.
    AvgPatch,
    /// [CLS of the last `n` blocks…, mean patch tokens]; `interleaved` = DINO's layout.
    ClsAvg { n: usize, interleaved: bool },
    /// CLS logits of the checkpoint's projection head (iBOT unsupervised classification).
    HeadLogits,
}

/// A checkpoint and how to read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSource {
    pub checkpoint: PathBuf,
    /// Sub-dict (`teacher`, `student`, `state_dict`, …); `None` = auto.
    pub key: Option<String>,
    /// Architecture preset; `None` = inferred from shapes.
    pub arch: Option<String>,
    /// GEMM precision of the forward pass (part of the cache key when not f32).
    #[serde(default)]
    pub precision: Precision,
}

/// GEMM precision of feature extraction: f32, or bf16 operands with f32 accumulation (AMX tiles on
/// CPUs that have them); weights, LayerNorm, softmax and GELU stay f32 either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The dtype the GEMMs take.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    /// The model with its GEMMs in this precision (f32 leaves it untouched).
    pub fn apply(self, vit: backbone::VisionTransformer) -> backbone::VisionTransformer {
        match self {
            Precision::F32 => vit,
            Precision::Bf16 => vit.with_compute_dtype(self.compute_dtype()),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("precision must be f32 or bf16, got {other:?}")),
        }
    }
}

pub use data_config::{class_names, open_split, open_split_data, SplitData};
pub use file::{read_feature_file, write_feature_file, FeatureFile};
pub use pixels::PixelSource;
pub use progress::Progress;
pub use store::{default_device, sha256_file, FeatureStore};

/// Features of one split, row-aligned with the labels.
#[derive(Debug, Clone)]
pub struct Features {
    pub x: Array2<f32>,
    pub labels: Vec<usize>,
    pub class_names: Vec<String>,
    /// Checkpoint sha256, data list hash, transform, spec, cache key, shape.
    pub manifest: serde_json::Value,
}
