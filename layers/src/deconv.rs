//! `nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)`, as the iBOT ViT→pyramid adapter
//! uses it (`backbone.fpn1.0`, `backbone.fpn1.3`, `backbone.fpn2.0` in
//! `evaluation/semantic_segmentation/mmcv_custom/register_backbone.py`) and mmdet's
//! `FCNMaskHead.upsample` (`mmdet/models/roi_heads/mask_heads/fcn_mask_head.py`, `deconv`).
//!
//! With kernel = stride = 2 the output windows do not overlap, so the layer is one GEMM
//! `[B·H·W, C_in] × [C_in, C_out·4]` followed by depth-to-space: output pixel (2i+p, 2j+q) of
//! channel o is Σ_c x[c, i, j]·weight[c, o, p, q] + bias[o]. PyTorch's weight layout
//! `[C_in, C_out, 2, 2]` reshapes to `[C_in, C_out·4]` as stored, so checkpoints load unchanged.
//! The backward is two GEMMs on every device; candle's `conv_transpose2d` is a direct loop on the
//! CPU and its input gradient goes through a naive conv.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// 2×2, stride-2 transposed convolution. Keys: `weight` `[c_in, c_out, 2, 2]`, `bias` `[c_out]`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2x2 {
    weight: Tensor,
    bias: Option<Tensor>,
    c_in: usize,
    c_out: usize,
}

impl ConvTranspose2x2 {
    /// Loads or creates the layer. Fresh parameters get PyTorch's default init
    /// (`_ConvNd.reset_parameters`: kaiming-uniform a = √5 ⇒ U(±1/√fan_in) for weight and bias,
    /// where fan_in is computed from `weight.size(1)·k·k` = c_out·4 for a transposed conv).
    pub fn new(c_in: usize, c_out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / ((c_out * 4) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((c_in, c_out, 2, 2), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(c_out, "bias", init)?)
        } else {
            None
        };
        Ok(Self::from_tensors(weight, bias))
    }

    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        let dims = weight.dims();
        let (c_in, c_out) = (dims[0], dims[1]);
        Self {
            weight,
            bias,
            c_in,
            c_out,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `[B, c_in, H, W]` → `[B, c_out, 2H, 2W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.c_in {
            candle_core::bail!("ConvTranspose2x2: expected {} channels, got {c}", self.c_in)
        }
        let co = self.c_out;
        let rows = x
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b * h * w, c))?;
        let wm = self.weight.reshape((c, co * 4))?;
        // [B·H·W, co·4] = [B, H, W, co, p, q] → [B, co, H, p, W, q] → [B, co, 2H, 2W].
        let y = rows
            .matmul(&wm)?
            .reshape((b, h, w, co, 2, 2))?
            .permute((0, 3, 1, 4, 2, 5))?
            .contiguous()?
            .reshape((b, co, 2 * h, 2 * w))?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, co, 1, 1))?),
            None => Ok(y),
        }
    }
}

impl candle_core::Module for ConvTranspose2x2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ConvTranspose2x2::forward(self, x)
    }
}
