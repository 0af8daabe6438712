//! Evaluation metrics whose numbers are the reference tools' numbers.
//!
//! | module | reference it reproduces |
//! |---|---|
//! | [`classification`] | top-k accuracy (DINO/timm), mean-per-class accuracy and confusion matrix (scikit-learn) |
//! | [`cluster`] | scikit-learn NMI (arithmetic), ARI, FMI; Hungarian ACC (scipy `linear_sum_assignment`) |
//! | [`coco`] | pycocotools `COCOeval` (bbox, segm), via the `hotcoco` engine, with pycocotools' own summary |
//! | [`mask`] | pycocotools' mask API: RLE encode/decode/merge/area/bbox/polygons/IoU, compressed strings |
//! | [`segmentation`] | mmsegmentation's dataset-level aAcc / mAcc / mIoU |
//!
//! Parity is proven by the tests in `metrics/tests/`, which compare against goldens written by
//! `tests/reference/metrics_goldens.py`.

pub mod classification;
pub mod cluster;
pub mod coco;
mod error;
pub mod mask;
pub mod numeric;
pub mod segmentation;
pub mod synthetic;

pub use error::{Error, Result};
