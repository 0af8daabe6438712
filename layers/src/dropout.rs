//! `nn.Dropout2d(p)` as mmseg 0.12's `BaseDecodeHead.cls_seg` applies it before `conv_seg`
//! (`mmseg/models/decode_heads/decode_head.py`, `dropout_ratio=0.1`): in training, each whole
//! channel of each sample is zeroed with probability p and the kept ones are scaled by 1/(1−p);
//! in evaluation it is the identity.
//!
//! The mask is drawn on the host from the caller's RNG (the same `&mut dyn RngCore` that
//! `backbone::TrainCtx` carries), one draw per (sample, channel) in row-major order, so a seeded
//! run repeats bit for bit on every device. PyTorch's RNG stream cannot be reproduced; tests check
//! the mask semantics instead.

use candle_core::{Result, Tensor};
use rand::{Rng, RngCore};

/// `nn.Dropout2d(p)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout2d {
    p: f64,
}

impl Dropout2d {
    pub fn new(p: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&p),
            "Dropout2d: p = {p} is not a probability"
        );
        Self { p }
    }

    pub fn p(&self) -> f64 {
        self.p
    }

    /// The `[B, C, 1, 1]` keep mask (values 0 or 1/(1−p)) for a `[B, C, ..]` input: channel
    /// (b, c) is dropped when the uniform draw in [0, 1) is below p.
    pub fn mask(&self, b: usize, c: usize, rng: &mut dyn RngCore) -> Vec<f32> {
        let scale = if self.p < 1.0 {
            (1.0 / (1.0 - self.p)) as f32
        } else {
            0.0
        };
        (0..b * c)
            .map(|_| {
                if rng.gen::<f64>() < self.p {
                    0.0
                } else {
                    scale
                }
            })
            .collect()
    }

    /// Training forward when `rng` is `Some`, identity when `None` (evaluation) or p = 0.
    pub fn forward(&self, x: &Tensor, rng: Option<&mut dyn RngCore>) -> Result<Tensor> {
        let Some(rng) = rng else {
            return Ok(x.clone());
        };
        if self.p == 0.0 {
            return Ok(x.clone());
        }
        let dims = x.dims();
        if dims.len() < 3 {
            candle_core::bail!("Dropout2d expects [B, C, H, W] (or [B, C, L]), got {dims:?}")
        }
        let (b, c) = (dims[0], dims[1]);
        let mut mshape = vec![b, c];
        mshape.extend(std::iter::repeat_n(1, dims.len() - 2));
        let mask =
            Tensor::from_vec(self.mask(b, c, rng), mshape, x.device())?.to_dtype(x.dtype())?;
        x.broadcast_mul(&mask)
    }
}
