//! Object detection and instance segmentation (mmdet 2.11 semantics, as iBOT's Cascade Mask R-CNN
//! fork runs them).
//!
//! This part is the host-side (plain Rust, f32, no autograd) machinery of mmdet 2.11 two-stage
//! detectors, one component per file, each transcribing the mmdet/mmcv file named in its docs:
//! anchors, the delta box coder, max-IoU assignment, random sampling, NMS, RPN proposals, RPN and
//! R-CNN targets with the cascade hand-off, and test-time post-processing with mask paste and mask
//! targets. The differentiable RoIAlign and the multi-level RoI extractor live in
//! `layers::roi_align`.

pub mod anchors;
pub mod assigner;
pub mod box_coder;
pub mod nms;
pub mod postprocess;
pub mod proposals;
pub mod sampler;
pub mod structures;
pub mod targets;

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
