//! iBOT pretraining (ibot-reference §3–§7): block/random masks, the iBOT loss with teacher centering,
//! schedules, multi-crop batches, the EMA teacher and the training loop with atomic, resumable checkpoints.

pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod loss;
pub mod mask;
pub mod monitor;
pub mod multicrop;
pub mod parallel;
pub mod schedule;
pub mod trainer;
