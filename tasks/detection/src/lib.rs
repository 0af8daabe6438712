//! Object detection and instance segmentation (mmdet 2.11 semantics, as iBOT's Cascade Mask R-CNN
//! fork runs them).
//!
//! This part is the host-side (plain Rust, f32, no autograd) machinery of mmdet 2.11 two-stage
//! detectors, one component per file, each transcribing the mmdet/mmcv file named in its docs:
//! anchors, the delta box coder, max-IoU assignment, random sampling, NMS, RPN proposals, RPN and
//! R-CNN targets with the cascade hand-off, and test-time post-processing with mask paste and mask
//! targets. The differentiable RoIAlign and the multi-level RoI extractor live in
//! `layers::roi_align`.
//!
//! On top of it, the networks (one component per file, `VarBuilder` paths = mmdet 2.11 state-dict
//! keys): [`fpn`] (`neck.*`), [`rpn`] (`rpn_head.*`), [`roi_heads`] (`roi_head.*`: box heads, mask
//! heads, the Mask R-CNN / Cascade stage loop), [`detector`] (backbone → FPN → RPN → RoI heads);
//! the recipe ([`config`]); the resumable training loop ([`train`]) and the COCO evaluation
//! ([`eval`]). [`run`] is the entry point the `ibot` binary calls.

pub mod anchors;
pub mod assigner;
pub mod box_coder;
pub mod config;
pub mod data_config;
pub mod detector;
pub mod eval;
pub mod fpn;
pub mod nms;
pub mod postprocess;
pub mod proposals;
pub mod roi_heads;
pub mod rpn;
pub mod sampler;
pub mod structures;
pub mod targets;
pub mod train;

pub use anchors::{anchor_inside_flags, fpn_featmap_sizes, AnchorGenerator};
pub use assigner::{AssignResult, MaxIoUAssigner, NegThr};
pub use box_coder::DeltaXYWHBBoxCoder;
pub use nms::{batched_nms, nms, NmsConfig};
pub use proposals::{rpn_proposals, LevelOutput, ProposalConfig};
pub use sampler::{Draw, RandomSampler, SamplingResult};
pub use structures::{
    bbox_overlaps, bbox_overlaps_aligned, BitMask, Box4, ImageMeta, ImageTargets, OverlapMode,
    Overlaps, Roi,
};

pub use config::DetectionConfig;
pub use data_config::DetDataConfig;
pub use detector::{Batch, Detector};
pub use eval::CocoStats;
pub use train::{DetectionData, Init, Outcome, RunOptions, Trainer};

/// Trains the recipe from `init` on `data` in `opts.out` (continuing a checkpointed run there),
/// evaluates on the val split and writes `opts.out/detections.json`; returns the COCO stats.
pub fn run(
    cfg: DetectionConfig,
    init: Init,
    data: DetectionData,
    opts: RunOptions,
) -> anyhow::Result<Outcome> {
    Trainer::new(cfg, init, data, opts)?.run()
}

/// Training steps per epoch of `cfg` on `data` (mmdet's group sampler pads each aspect group to
/// whole batches).
pub fn iters_per_epoch(cfg: &DetectionConfig, data: &DetectionData) -> usize {
    let b = cfg.train.batch_size.max(1);
    crate::train::group_sampler_order(&data.train.aspect_groups(), b, cfg.run.seed, 0).len() / b
}

/// Rescales the recipe to `iters` steps in all: whole epochs (rounded up) of `ipe` steps, the lr
/// steps moved in proportion (at least one epoch apart from the end); the caller stops at `iters`
/// (`RunOptions::max_steps`).
pub fn set_iters(cfg: &mut DetectionConfig, iters: usize, ipe: usize) {
    let old = cfg.train.epochs.max(1);
    let epochs = iters.div_ceil(ipe.max(1)).max(1);
    cfg.train.steps = cfg
        .train
        .steps
        .iter()
        .map(|&s| ((s * epochs) as f64 / old as f64).round() as usize)
        .map(|s| s.clamp(1, epochs))
        .collect();
    cfg.train.epochs = epochs;
}
