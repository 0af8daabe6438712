//! Image data for iBOT pretraining and evaluation: decoding, torchvision/PIL-exact transforms,
//! dataset readers, a parallel batch loader and a deterministic synthetic-scene generator.
//! Batches are plain `Vec<f32>` in NCHW order; nothing here depends on a tensor library.

pub mod augment;
pub mod bench;
pub mod cifar;
pub mod coco;
pub mod coco_instances;
pub mod color;
pub mod detection_pipeline;
pub mod erasing;
pub mod error;
pub mod finetune_transform;
pub mod folder;
pub mod idx;
pub mod image_io;
pub mod joint;
pub mod labelled;
pub mod loader;
pub mod mixup;
pub mod photometric;
pub mod pil;
pub mod pil_geometry;
pub mod pil_ops;
pub mod randaugment;
pub mod rle;
pub mod segmentation;
pub mod splits;
pub mod synth;
pub mod transforms;

pub use error::{DataError, Result};
