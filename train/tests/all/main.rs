//! The `train` crate against its references: AdamW vs torch.optim.AdamW, parameter groups vs the
//! BEiT / mmcv_custom / timm rules, schedules vs numpy / timm / an mmcv transcription, losses vs
//! timm/torch, and byte-reproducible checkpoints.

mod common;
mod groups;
mod io;
mod losses;
mod optim;
mod schedules;
