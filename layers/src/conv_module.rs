//! mmcv 1.3's `ConvModule` (`mmcv/cnn/bricks/conv_module.py`) in the order mmseg 0.12 and
//! mmdet 2.11 use it: conv → norm → activation, with `bias='auto'` (no conv bias when a norm
//! follows), `norm_cfg=dict(type='SyncBN')` → [`BatchNorm2d`] named `bn` (mmcv's `infer_abbr`
//! of a `_BatchNorm`), `act_cfg=dict(type='ReLU')`. Keys: `conv.weight`, `conv.bias` (only
//! without a norm), `bn.weight`, `bn.bias`, `bn.running_mean`, `bn.running_var`,
//! `bn.num_batches_tracked`.
//!
//! Fresh parameters follow `ConvModule.init_weights`: mmcv `kaiming_init` (normal, mode
//! `fan_out`, gain √2, bias 0) for the conv, weight 1 / bias 0 for the norm.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::conv::{Conv2d, Conv2dConfig, ConvImpl};
use crate::norm::{BatchNorm2d, Buffers};

/// `ReLU` with PyTorch's derivative (0 at x = 0: `threshold_backward`); candle's `relu` passes the
/// gradient at 0, which differs on the exact zeros a ReLU stack produces.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let mask = x.gt(0.0)?.to_dtype(x.dtype())?;
    x * mask
}

/// The activation after the norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    None,
    #[default]
    Relu,
}

/// Hyper-parameters of a `ConvModule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvModuleConfig {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    /// `None` = mmcv's `bias='auto'`: a bias only when there is no norm.
    pub bias: Option<bool>,
    /// `norm_cfg` set (BN/SyncBN) or `None`.
    pub norm: bool,
    pub act: Activation,
}

impl ConvModuleConfig {
    /// mmseg's usual `ConvModule(c_in, c_out, k, padding=k//2, norm_cfg=SyncBN)` + ReLU.
    pub fn bn_relu(kernel: usize) -> Self {
        Self {
            kernel,
            stride: 1,
            padding: kernel / 2,
            dilation: 1,
            groups: 1,
            bias: None,
            norm: true,
            act: Activation::Relu,
        }
    }

    /// A conv + ReLU without norm (mmdet's RPN/mask-head convs: bias on).
    pub fn relu(kernel: usize) -> Self {
        Self {
            norm: false,
            ..Self::bn_relu(kernel)
        }
    }

    fn conv_config(&self) -> Conv2dConfig {
        Conv2dConfig {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            bias: self.bias.unwrap_or(!self.norm),
        }
    }
}

/// mmcv `ConvModule`: `conv` → `bn` → ReLU.
#[derive(Clone, Debug)]
pub struct ConvModule {
    conv: Conv2d,
    bn: Option<BatchNorm2d>,
    act: Activation,
}

impl ConvModule {
    pub fn new(
        c_in: usize,
        c_out: usize,
        cfg: ConvModuleConfig,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        let conv_cfg = cfg.conv_config();
        // kaiming_normal_(mode='fan_out', nonlinearity='relu'): std = √2 / √(c_out·k²).
        let fan_out = c_out * cfg.kernel * cfg.kernel;
        let std = (2.0 / fan_out as f64).sqrt();
        let conv = Conv2d::new_with_init(
            c_in,
            c_out,
            conv_cfg,
            vb.pp("conv"),
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            Init::Const(0.0),
        )?;
        let bn = if cfg.norm {
            Some(BatchNorm2d::new(c_out, vb.pp("bn"), buffers)?)
        } else {
            None
        };
        Ok(Self {
            conv,
            bn,
            act: cfg.act,
        })
    }

    /// Selects the convolution kernel (default [`ConvImpl::Auto`]).
    pub fn with_impl(mut self, imp: ConvImpl) -> Self {
        self.conv = self.conv.with_impl(imp);
        self
    }

    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    pub fn bn(&self) -> Option<&BatchNorm2d> {
        self.bn.as_ref()
    }

    /// `train` selects batch statistics (and updates the running ones) in the norm.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.conv.forward(x)?;
        if let Some(bn) = &self.bn {
            y = bn.forward_t(&y, train)?;
        }
        match self.act {
            Activation::Relu => relu(&y),
            Activation::None => Ok(y),
        }
    }
}

impl candle_core::ModuleT for ConvModule {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        ConvModule::forward_t(self, x, train)
    }
}
