//! iBOT's ViT → 4-level pyramid adapter for dense tasks (`evaluation/{object_detection,
//! semantic_segmentation}/mmcv_custom/register_backbone.py`, `with_fpn=True`), keys under
//! `backbone.` as in the official state dicts:
//!
//! - patch 16 (maps at stride 16): `fpn1` = ConvT 2×2/2 → SyncBN → GELU → ConvT 2×2/2 (stride 4),
//!   `fpn2` = ConvT 2×2/2 (stride 8), `fpn3` = identity (16), `fpn4` = MaxPool 2 (32);
//! - patch 8 (maps at stride 8): `fpn1` = ConvT (4), `fpn2` = identity (8), `fpn3` = MaxPool 2
//!   (16), `fpn4` = MaxPool 4 (32).
//!
//! SyncBN's single-device form is BatchNorm over the whole per-step batch. The ConvT layers keep
//! PyTorch's default init (the wrapper's `_init_weights` only touches Linear and LayerNorm).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use layers::deconv::ConvTranspose2x2;
use layers::norm::{BatchNorm2d, Buffers};
use layers::pool::max_pool2d;

enum Level {
    /// fpn1 at patch 16.
    DeconvBnGeluDeconv(ConvTranspose2x2, BatchNorm2d, ConvTranspose2x2),
    Deconv(ConvTranspose2x2),
    Identity,
    MaxPool(usize),
}

/// Output strides of the four levels (both patch sizes).
pub const STRIDES: [usize; 4] = [4, 8, 16, 32];

pub struct VitPyramid {
    levels: Vec<Level>,
}

impl VitPyramid {
    /// `vb` at the backbone's prefix (`backbone`); `buffers` keeps the BN running statistics.
    pub fn new(patch: usize, dim: usize, vb: VarBuilder, buffers: &Buffers) -> Result<Self> {
        let levels = match patch {
            16 => vec![
                Level::DeconvBnGeluDeconv(
                    ConvTranspose2x2::new(dim, dim, true, vb.pp("fpn1.0"))?,
                    BatchNorm2d::new(dim, vb.pp("fpn1.1"), buffers)?,
                    ConvTranspose2x2::new(dim, dim, true, vb.pp("fpn1.3"))?,
                ),
                Level::Deconv(ConvTranspose2x2::new(dim, dim, true, vb.pp("fpn2.0"))?),
                Level::Identity,
                Level::MaxPool(2),
            ],
            8 => vec![
                Level::Deconv(ConvTranspose2x2::new(dim, dim, true, vb.pp("fpn1.0"))?),
                Level::Identity,
                Level::MaxPool(2),
                Level::MaxPool(4),
            ],
            p => candle_core::bail!(
                "the official pyramid adapter exists for patch 16 and 8, not {p} (iBOT builds the model without FPN then)"
            ),
        };
        Ok(VitPyramid { levels })
    }

    /// The four block maps [B, D, h, w] → the pyramid; `train` switches BN to batch statistics.
    pub fn forward_t(&self, maps: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        if maps.len() != self.levels.len() {
            candle_core::bail!(
                "the pyramid takes {} maps, got {}",
                self.levels.len(),
                maps.len()
            );
        }
        maps.iter()
            .zip(&self.levels)
            .map(|(x, level)| match level {
                Level::DeconvBnGeluDeconv(a, bn, b) => {
                    b.forward(&bn.forward_t(&a.forward(x)?, train)?.gelu_erf()?)
                }
                Level::Deconv(d) => d.forward(x),
                Level::Identity => Ok(x.clone()),
                Level::MaxPool(k) => max_pool2d(x, *k),
            })
            .collect()
    }
}
