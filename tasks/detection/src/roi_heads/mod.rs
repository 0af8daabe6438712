//! The R-CNN part of the detector: box heads, mask heads and the stage loop.
//!
//! - [`box_head`]: `Shared2FCBBoxHead` / `ConvFCBBoxHead` (4conv1fc + BN) and `BBoxHead.loss`;
//! - [`mask_head`]: `FCNMaskHead` and `mask_cross_entropy`;
//! - [`cascade`]: `CascadeRoIHead` (mmdet 2.11 `cascade_roi_head.py`), whose one-stage case is
//!   exactly `StandardRoIHead` (`standard_roi_head.py`, Mask R-CNN): same assign → sample → RoIAlign →
//!   head → loss per stage, same test path, only the loss names differ (no `s{i}.` prefix).

pub mod box_head;
pub mod cascade;
pub mod mask_head;

pub use box_head::{box_loss, BoxHead, BoxLosses};
pub use cascade::{ImageDetections, RoiHead};
pub use mask_head::{mask_loss, MaskHead};
