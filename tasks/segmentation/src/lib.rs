//! ADE20K-style semantic segmentation as iBOT evaluates it (ibot-reference §8.8; mmseg 0.12.0):
//! the frozen linear probe and UperNet on the ViT pyramid (`heads`, `segmentor`), the mmseg train
//! and test pipelines (`pipeline`), sliding-window inference (`inference`), and the resumable
//! training loop with mmseg's mIoU (`train`). Recipes and data configs are in `config`.

pub mod config;
pub mod heads;
pub mod inference;
pub mod pipeline;
pub mod segmentor;
pub mod train;

pub use config::{HeadKind, SegConfig, SegDataConfig};
pub use train::{Init, Outcome, RunOptions, Scores, SegTrainer};
