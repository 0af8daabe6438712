//! What every training loop of the workspace shares and nothing model-specific: PyTorch-exact
//! AdamW over named parameters with per-parameter groups (layer decay, no-decay lists), the
//! official schedules, EMA, the classification losses of the fine-tuning recipes, clipping,
//! byte-reproducible atomic checkpoints with exact resume, run directories with JSON-lines logs,
//! timers and device selection. `pretrain`, `finetune`, `segmentation` and `detection` build on it.

pub mod checkpoint;
pub mod device;
pub mod ema;
mod inplace;
pub mod io;
pub mod loss;
pub mod meter;
pub mod optim;
pub mod param_groups;
pub mod run_dir;
pub mod schedule;
pub mod vars;

pub use optim::{AdamW, AdamWConfig, Clip};
pub use param_groups::ParamGroup;
pub use run_dir::RunDir;
