//! Golden tests of the detection crate (and of `layers::roi_align`) against
//! `tests/reference/detection_reference.py`: torch transcriptions of mmdet 2.11 / mmcv 1.3.9 and the
//! real torchvision `nms`, `batched_nms` and `roi_align`. One module per source file. Integer
//! outputs (indices, flags, labels, orders) must match exactly; floats within the stated relative
//! tolerance, `max |a − b| / max |b|` over the array (the measured values are printed: run with
//! `-- --nocapture`).

mod util;

mod anchors;
mod assigner;
mod box_coder;
mod config;
mod model;
mod nms;
mod postprocess;
mod proposals;
mod roi_align;
mod sampler;
mod structures;
mod targets;
mod training;
