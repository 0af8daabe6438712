//! `nn.Conv2d` with PyTorch's state-dict keys (`weight` `[c_out, c_in/groups, kh, kw]`, optional
//! `bias` `[c_out]`), as mmcv's `build_conv_layer` creates it inside `ConvModule`
//! (`mmcv/cnn/bricks/conv_module.py`), mmseg's `conv_seg` (`BaseDecodeHead`) and mmdet's FPN.
//!
//! Two interchangeable implementations, tested equal in forward and backward:
//! - [`ConvImpl::Candle`]: `Tensor::conv2d` (CPU: tiled im2col + GEMM; CUDA: im2col + cuBLAS).
//!   Its input gradient is `conv_transpose2d`, a direct loop on the CPU.
//! - [`ConvImpl::Im2col`]: the zero-padded input, channels-last, is unfolded by one
//!   `index_select` with a cached host-built index into `[B·H'·W', k·k·C]` and multiplied by the
//!   weight reordered to `[k·k·C, c_out]`: one GEMM forward, two GEMMs and an `index_add` backward.
//!
//! [`ConvImpl::Auto`] takes the one measured faster on the device (see `AUTO_*` below).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::cache::cached;

/// Which kernel computes the convolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvImpl {
    /// [`AUTO_CPU`] on the CPU, [`AUTO_GPU`] elsewhere.
    #[default]
    Auto,
    /// `Tensor::conv2d`.
    Candle,
    /// Unfold (strided views) + GEMM.
    Im2col,
}

/// Measured on this project's 2-core CPU (shared with other builds, medians of 10, `conv_timing`
/// test): 3×3, 64→64, 32×32, batch 4 — forward im2col 9–14 ms vs candle 15–19 ms; forward +
/// backward (input and weight gradients) 60–64 ms vs 46–71 ms, i.e. a tie within the noise. The
/// im2col path wins the forward (inference, sliding windows) and ties in training.
pub const AUTO_CPU: ConvImpl = ConvImpl::Im2col;
/// On CUDA the im2col backward's `index_add` loops serially over all taps of all output pixels
/// (one thread per (sample, channel)), whereas candle's conv is im2col + cuBLAS; not yet measured
/// on a GPU, so candle's kernel is the default there.
pub const AUTO_GPU: ConvImpl = ConvImpl::Candle;

impl ConvImpl {
    fn resolve(self, device: &Device) -> ConvImpl {
        match self {
            ConvImpl::Auto if device.is_cpu() => AUTO_CPU,
            ConvImpl::Auto => AUTO_GPU,
            other => other,
        }
    }
}

/// Hyper-parameters of a square-kernel `nn.Conv2d` (symmetric padding, as mmcv builds them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            kernel: 1,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }
}

impl Conv2dConfig {
    /// `k×k`, stride 1, padding `k/2` (mmseg's 3×3 convs use padding 1), with bias.
    pub fn same(kernel: usize) -> Self {
        Self {
            kernel,
            padding: kernel / 2,
            ..Self::default()
        }
    }
}

/// `nn.Conv2d`. Keys: `weight` `[c_out, c_in/groups, k, k]`, `bias` `[c_out]` when configured.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
    imp: ConvImpl,
}

impl Conv2d {
    /// Loads or creates the layer; fresh parameters get PyTorch's default init
    /// (`_ConvNd.reset_parameters`: U(±1/√fan_in) for weight and bias, fan_in = c_in/groups·k²).
    pub fn new(c_in: usize, c_out: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Self> {
        let fan_in = c_in / cfg.groups * cfg.kernel * cfg.kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Self::new_with_init(c_in, c_out, cfg, vb, init, init)
    }

    /// Loads or creates the layer with explicit initialisers for fresh parameters (e.g. mmcv's
    /// `kaiming_init` or `normal_init(std=0.01)` of `conv_seg`).
    pub fn new_with_init(
        c_in: usize,
        c_out: usize,
        cfg: Conv2dConfig,
        vb: VarBuilder,
        weight_init: Init,
        bias_init: Init,
    ) -> Result<Self> {
        if c_in % cfg.groups != 0 || c_out % cfg.groups != 0 {
            candle_core::bail!(
                "Conv2d: {c_in}→{c_out} channels not divisible by {} groups",
                cfg.groups
            )
        }
        let k = cfg.kernel;
        let weight = vb.get_with_hints((c_out, c_in / cfg.groups, k, k), "weight", weight_init)?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(c_out, "bias", bias_init)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            cfg,
            imp: ConvImpl::Auto,
        })
    }

    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            cfg,
            imp: ConvImpl::Auto,
        }
    }

    /// Selects the implementation (default [`ConvImpl::Auto`]).
    pub fn with_impl(mut self, imp: ConvImpl) -> Self {
        self.imp = imp;
        self
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            c.stride,
            c.padding,
            c.dilation,
            c.groups,
            self.imp,
        )
    }
}

impl candle_core::Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x)
    }
}

/// `F.conv2d(x, weight, bias, stride, padding, dilation, groups)` on `[B, C, H, W]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
    imp: ConvImpl,
) -> Result<Tensor> {
    let y = match imp.resolve(x.device()) {
        ConvImpl::Im2col => conv2d_im2col(x, weight, stride, padding, dilation, groups)?,
        _ => {
            // candle wants a contiguous kernel; a 1×1 conv is a GEMM either way.
            x.conv2d(&weight.contiguous()?, padding, stride, dilation, groups)?
        }
    };
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

/// Output size of a convolution along one axis.
fn out_len(n: usize, k: usize, stride: usize, padding: usize, dilation: usize) -> Result<usize> {
    let span = dilation * (k - 1) + 1;
    if n + 2 * padding < span {
        candle_core::bail!("conv2d: input {n} (+2·{padding}) smaller than the kernel span {span}")
    }
    Ok((n + 2 * padding - span) / stride + 1)
}

/// Flat indices into the zero-padded `[Hp·Wp]` map of every (output pixel, tap) pair, in the
/// order (oy, ox, i, j): row-major output pixels, then the kernel taps as the weight stores them.
fn unfold_index(
    (hp, wp): (usize, usize),
    (oh, ow): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    dilation: usize,
) -> Vec<u32> {
    let mut idx = Vec::with_capacity(oh * ow * kh * kw);
    for oy in 0..oh {
        for ox in 0..ow {
            for i in 0..kh {
                for j in 0..kw {
                    let (r, c) = (oy * stride + i * dilation, ox * stride + j * dilation);
                    debug_assert!(r < hp && c < wp);
                    idx.push((r * wp + c) as u32);
                }
            }
        }
    }
    idx
}

/// The unfold-and-GEMM convolution (no bias), channels-last: the zero-padded input becomes
/// `[B, Hp·Wp, C]`, one `index_select` along the pixel axis gathers the taps of every output pixel
/// into `[B·H'·W', kh·kw·C]`, and a single GEMM with the weight reordered to `[kh·kw·C, c_out]`
/// gives `[B·H'·W', c_out]`. The backward is two GEMMs and an `index_add` whose inner slices are
/// contiguous C-vectors (fast on the CPU; on CUDA it loops over the taps serially, hence
/// `AUTO_GPU`).
pub fn conv2d_im2col(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (c_out, c_per_group, kh, kw) = weight.dims4()?;
    if c != c_per_group * groups {
        candle_core::bail!("conv2d: input has {c} channels, weight expects {c_per_group}×{groups}")
    }
    let oh = out_len(h, kh, stride, padding, dilation)?;
    let ow = out_len(w, kw, stride, padding, dilation)?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    let taps = kh * kw;
    let rows = if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
        // A 1×1 convolution needs no unfold.
        x.permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b * h * w, c))?
    } else {
        let xp = x
            .pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b, hp * wp, c))?;
        let index = cached(
            "unfold",
            &[hp, wp, oh, ow, kh, kw, stride, dilation],
            x.device(),
            DType::U32,
            || {
                let idx = unfold_index((hp, wp), (oh, ow), (kh, kw), stride, dilation);
                let n = idx.len();
                Tensor::from_vec(idx, n, &Device::Cpu)
            },
        )?;
        xp.index_select(&index, 1)?
            .reshape((b * oh * ow, taps * c))?
    };
    // [c_out, c/g, kh, kw] → [kh, kw, c/g, c_out] → [kh·kw·c/g, c_out]: the row order of `rows`.
    let g_out = c_out / groups;
    let mut outs = Vec::with_capacity(groups);
    for g in 0..groups {
        let wg = weight
            .narrow(0, g * g_out, g_out)?
            .permute((2, 3, 1, 0))?
            .contiguous()?
            .reshape((taps * c_per_group, g_out))?;
        let rg = if groups == 1 {
            rows.clone()
        } else {
            rows.reshape((b * oh * ow, taps, c))?
                .narrow(2, g * c_per_group, c_per_group)?
                .contiguous()?
                .reshape((b * oh * ow, taps * c_per_group))?
        };
        outs.push(rg.matmul(&wg)?);
    }
    let y = if groups == 1 {
        outs.pop().expect("one group")
    } else {
        Tensor::cat(&outs, 1)?
    };
    y.reshape((b, oh, ow, c_out))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}
