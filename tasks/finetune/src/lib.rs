//! End-to-end fine-tuning as iBOT evaluates it (ibot-reference §8.4, §8.6, §8.9): BEiT's full
//! fine-tuning with layer decay, and DeiT-style semi-supervised fine-tuning from the projection
//! head's first layer (also the transfer recipe). The recipe (`config`), the network (`model`),
//! the sampler, the loop with exact resume (`train`) and the accuracy (`eval`); reading data
//! configs, checkpoints and writing result.json is the caller's (the `ibot` binary's) business.

pub mod config;
pub mod eval;
pub mod model;
pub mod sampler;
pub mod train;

pub use config::{FinetuneConfig, Mode};
pub use train::{FinetuneData, Finetuner, Init, Outcome, RunOptions};
