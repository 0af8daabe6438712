//! `nn.BatchNorm2d` / `nn.SyncBatchNorm` on one device, with PyTorch's semantics
//! (`torch/nn/modules/batchnorm.py`, `aten/src/ATen/native/Normalization.cpp`), as mmcv's
//! `build_norm_layer(dict(type='SyncBN'))` creates it inside `ConvModule` (key prefix `bn`) and
//! the iBOT pyramid uses it (`backbone.fpn1.1`):
//! - training: normalise with the batch mean and the **biased** batch variance over (B, H, W);
//!   update `running_mean`/`running_var` with momentum 0.1 using the **unbiased** variance
//!   (n/(n−1)); increment `num_batches_tracked`;
//! - evaluation: normalise with the running statistics;
//! - ε = 1e-5; affine `weight` (init 1) and `bias` (init 0).
//!
//! On one device SyncBN is exactly this (its statistics are over the global batch).
//!
//! The running statistics are buffers, not parameters: they live in a [`Buffers`] store, never in
//! the `VarMap` the optimiser walks, and the caller saves [`Buffers::tensors`] next to the vars in
//! checkpoints (same key layout as PyTorch's state dict).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// Named non-trainable state (BatchNorm running statistics), shared by clones. Keys are full
/// state-dict paths, e.g. `decode_head.bottleneck.bn.running_mean`.
#[derive(Clone, Default, Debug)]
pub struct Buffers {
    inner: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl Buffers {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store pre-filled from checkpoint tensors; only BatchNorm buffer names are kept
    /// (`*.running_mean`, `*.running_var`, `*.num_batches_tracked`).
    pub fn from_tensors<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Self {
        let b = Self::new();
        for (k, t) in tensors {
            if is_buffer_name(k) {
                b.set(k, t.clone());
            }
        }
        b
    }

    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.lock().get(name).cloned()
    }

    pub fn set(&self, name: &str, t: Tensor) {
        self.lock().insert(name.to_string(), t);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// A snapshot of every buffer, sorted by name (for checkpoints).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tensor>> {
        self.inner.lock().expect("buffer store poisoned")
    }

    /// The buffer `name`: from the store; else from `vb` when its backend holds it (a checkpoint
    /// being loaded), copied into the store; else `init()`, stored.
    fn get_or_init(
        &self,
        vb: &VarBuilder,
        leaf: &str,
        dtype: DType,
        init: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let name = full_name(vb, leaf);
        if let Some(t) = self.get(&name) {
            return Ok(t);
        }
        let t = if vb.contains_tensor(leaf) {
            vb.get_unchecked_dtype(leaf, dtype)?
        } else {
            init()?
        };
        self.set(&name, t.clone());
        Ok(t)
    }
}

/// Whether `name` is a BatchNorm buffer in PyTorch's state-dict naming.
pub fn is_buffer_name(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

fn full_name(vb: &VarBuilder, leaf: &str) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        leaf.to_string()
    } else {
        format!("{p}.{leaf}")
    }
}

/// PyTorch's BatchNorm defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// `nn.BatchNorm2d(c)` (affine, track_running_stats, momentum 0.1, ε 1e-5). Keys: `weight`,
/// `bias` (trainable, through the `VarBuilder`); `running_mean`, `running_var`,
/// `num_batches_tracked` (i64 scalar) in the [`Buffers`] store under the same prefix.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    buffers: Buffers,
    mean_key: String,
    var_key: String,
    count_key: String,
    eps: f64,
    momentum: f64,
    num_features: usize,
}

impl BatchNorm2d {
    pub fn new(num_features: usize, vb: VarBuilder, buffers: &Buffers) -> Result<Self> {
        let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.0))?;
        let (dev, dt) = (vb.device().clone(), vb.dtype());
        let f = num_features;
        buffers.get_or_init(&vb, "running_mean", dt, || Tensor::zeros(f, dt, &dev))?;
        buffers.get_or_init(&vb, "running_var", dt, || Tensor::ones(f, dt, &dev))?;
        buffers.get_or_init(&vb, "num_batches_tracked", DType::I64, || {
            Tensor::new(0i64, &dev)
        })?;
        Ok(Self {
            weight,
            bias,
            buffers: buffers.clone(),
            mean_key: full_name(&vb, "running_mean"),
            var_key: full_name(&vb, "running_var"),
            count_key: full_name(&vb, "num_batches_tracked"),
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            num_features,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn running_mean(&self) -> Result<Tensor> {
        self.buffer(&self.mean_key)
    }

    pub fn running_var(&self) -> Result<Tensor> {
        self.buffer(&self.var_key)
    }

    /// The count as PyTorch keeps it (0-d; a one-element tensor from other writers is accepted).
    pub fn num_batches_tracked(&self) -> Result<i64> {
        let t = self
            .buffer(&self.count_key)?
            .to_dtype(candle_core::DType::I64)?;
        match t.flatten_all()?.to_vec1::<i64>()?.as_slice() {
            [n] => Ok(*n),
            other => candle_core::bail!(
                "{}: expected one count, found {} values",
                self.count_key,
                other.len()
            ),
        }
    }

    fn buffer(&self, key: &str) -> Result<Tensor> {
        self.buffers
            .get(key)
            .ok_or_else(|| candle_core::Error::Msg(format!("BatchNorm2d: buffer {key} missing")))
    }

    /// `[B, C, H, W]` → same shape. `train` normalises with batch statistics and updates the
    /// running ones; otherwise the running statistics are used.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.num_features {
            candle_core::bail!(
                "BatchNorm2d: expected {} channels, got {c}",
                self.num_features
            )
        }
        let n = b * h * w;
        let shape = (1, c, 1, 1);
        if train {
            if n < 2 {
                // PyTorch: "Expected more than 1 value per channel when training".
                candle_core::bail!("BatchNorm2d: need more than 1 value per channel in training")
            }
            // Two-pass statistics over (B, H, W): [B, C, H·W] → [C].
            let flat = x.reshape((b, c, h * w))?;
            let mean = flat.sum(D::Minus1)?.sum(0)?.affine(1.0 / n as f64, 0.0)?;
            let centred = flat.broadcast_sub(&mean.reshape((1, c, 1))?)?;
            let var = centred
                .sqr()?
                .sum(D::Minus1)?
                .sum(0)?
                .affine(1.0 / n as f64, 0.0)?;
            self.update_running(&mean.detach(), &var.detach(), n)?;
            let scale = (&self.weight * (var + self.eps)?.sqrt()?.recip()?)?;
            centred
                .broadcast_mul(&scale.reshape((1, c, 1))?)?
                .broadcast_add(&self.bias.reshape((1, c, 1))?)?
                .reshape((b, c, h, w))
        } else {
            // PyTorch's eval transform: x·α + β with α = w/√(var+ε), β = b − mean·α.
            let scale = (&self.weight * (self.running_var()? + self.eps)?.sqrt()?.recip()?)?;
            let shift = (&self.bias - (self.running_mean()? * &scale)?)?;
            x.broadcast_mul(&scale.reshape(shape)?)?
                .broadcast_add(&shift.reshape(shape)?)
        }
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = var.affine(n as f64 / (n as f64 - 1.0), 0.0)?;
        let rm = (self.running_mean()?.affine(1.0 - m, 0.0)? + mean.affine(m, 0.0)?)?;
        let rv = (self.running_var()?.affine(1.0 - m, 0.0)? + unbiased.affine(m, 0.0)?)?;
        let count = self.num_batches_tracked()? + 1;
        let dev: Device = rm.device().clone();
        self.buffers
            .set(&self.mean_key, rm.to_dtype(self.weight.dtype())?);
        self.buffers
            .set(&self.var_key, rv.to_dtype(self.weight.dtype())?);
        self.buffers.set(&self.count_key, Tensor::new(count, &dev)?);
        Ok(())
    }
}

impl candle_core::ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        BatchNorm2d::forward_t(self, x, train)
    }
}
