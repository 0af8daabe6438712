//! Dense differentiable layers shared by segmentation and detection (the counterpart of
//! detectron2's `layers/`): exact PyTorch/mmcv semantics, official state-dict keys, and a backward
//! through candle's autograd for every op, built from GEMMs, reshapes, views and elementwise ops
//! so the same code runs on the CPU and CUDA (`shared/design/dense-and-finetune.md` §2, §3.1).
//!
//! candle ops deliberately avoided: `upsample_bilinear2d` (no backward), `max_pool2d` (backward
//! only for kernel = stride, and wrong in value), candle-nn's fused `softmax`/`layer_norm` (no
//! backward), candle-nn's `BatchNorm` (running stats are `Var`s the optimiser would see).

mod cache;
pub mod conv;
pub mod conv_module;
pub mod deconv;
pub mod dropout;
pub mod losses;
pub mod norm;
pub mod pool;
pub mod resize;
pub mod roi_align;
pub mod testing;

pub use conv::{Conv2d, Conv2dConfig, ConvImpl};
pub use conv_module::{Activation, ConvModule, ConvModuleConfig};
pub use deconv::ConvTranspose2x2;
pub use dropout::Dropout2d;
pub use norm::{BatchNorm2d, Buffers};
