//! mmdet 2.11's `FPN` neck (`mmdet/models/necks/fpn.py`) as iBOT's Cascade Mask R-CNN configures it:
//! `in_channels = [D]·4`, `out_channels`, `num_outs = 5`, `add_extra_convs = False`, no norm, no
//! activation. Keys `neck.lateral_convs.{i}.conv.*` (1×1) and `neck.fpn_convs.{i}.conv.*` (3×3,
//! padding 1), both with bias (mmcv `ConvModule` without norm).
//!
//! Forward: laterals, then the top-down path `laterals[i−1] += F.interpolate(laterals[i],
//! size=laterals[i−1].shape[2:], mode='nearest')` from the coarsest level down, the 3×3 outputs, and
//! the extra level `F.max_pool2d(outs[−1], 1, stride=2)`. Init (`FPN.init_weights`): every conv
//! `xavier_init(distribution='uniform')`, i.e. U(±√(6 / (fan_in + fan_out))), bias 0.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::conv::{Conv2d, Conv2dConfig};
use layers::pool::max_pool2d_k1s2;
use layers::resize::nearest;

/// `xavier_uniform_` bound of a `k×k` conv (fan = channels · k²).
pub fn xavier_bound(c_in: usize, c_out: usize, k: usize) -> f64 {
    (6.0 / ((c_in * k * k + c_out * k * k) as f64)).sqrt()
}

pub struct Fpn {
    lateral_convs: Vec<Conv2d>,
    fpn_convs: Vec<Conv2d>,
    num_outs: usize,
}

fn xavier_conv(c_in: usize, c_out: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    let b = xavier_bound(c_in, c_out, k);
    Conv2d::new_with_init(
        c_in,
        c_out,
        Conv2dConfig::same(k),
        vb,
        Init::Uniform { lo: -b, up: b },
        Init::Const(0.0),
    )
}

impl Fpn {
    /// `vb` at `neck`.
    pub fn new(
        in_channels: &[usize],
        out_channels: usize,
        num_outs: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_outs < in_channels.len() {
            candle_core::bail!("FPN: num_outs {num_outs} < {} inputs", in_channels.len());
        }
        let mut lateral_convs = Vec::new();
        let mut fpn_convs = Vec::new();
        for (i, &c) in in_channels.iter().enumerate() {
            lateral_convs.push(xavier_conv(
                c,
                out_channels,
                1,
                vb.pp(format!("lateral_convs.{i}.conv")),
            )?);
            fpn_convs.push(xavier_conv(
                out_channels,
                out_channels,
                3,
                vb.pp(format!("fpn_convs.{i}.conv")),
            )?);
        }
        Ok(Fpn {
            lateral_convs,
            fpn_convs,
            num_outs,
        })
    }

    /// `[B, C_i, H_i, W_i]` per input level → `num_outs` maps of `out_channels`.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.lateral_convs.len() {
            candle_core::bail!(
                "FPN: {} inputs, expected {}",
                inputs.len(),
                self.lateral_convs.len()
            );
        }
        let mut laterals = inputs
            .iter()
            .zip(&self.lateral_convs)
            .map(|(x, c)| c.forward(x))
            .collect::<Result<Vec<_>>>()?;
        for i in (1..laterals.len()).rev() {
            let (_, _, h, w) = laterals[i - 1].dims4()?;
            let up = nearest(&laterals[i], (h, w))?;
            laterals[i - 1] = (&laterals[i - 1] + up)?;
        }
        let mut outs = laterals
            .iter()
            .zip(&self.fpn_convs)
            .map(|(x, c)| c.forward(x))
            .collect::<Result<Vec<_>>>()?;
        while outs.len() < self.num_outs {
            let last = outs.last().expect("at least one level");
            outs.push(max_pool2d_k1s2(last)?);
        }
        Ok(outs)
    }
}
