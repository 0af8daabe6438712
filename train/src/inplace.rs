//! In-place updates of CPU f32 tensors: the AdamW step and the EMA as one pass over each
//! parameter instead of a chain of candle ops (each of which allocates and writes a whole new
//! tensor), computing the same f32 expressions in the same order. Parameters, moments and EMA
//! targets are owned by their loop, so writing them in place is what `Var::set` does anyway.

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 15;

/// Whether `t` is a contiguous f32 tensor on the CPU (what the in-place kernels take).
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Whether two tensors are views of one storage (an in-place write to one would lock, or
/// change, the other).
pub(crate) fn shares_storage(a: &Tensor, b: &Tensor) -> bool {
    let address = |t: &Tensor| &*t.storage_and_layout().0 as *const Storage as usize;
    address(a) == address(b)
}

/// `f` on the data of a contiguous CPU f32 tensor, read-only.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) => Ok(f(&data[a..b])),
        _ => candle_core::bail!("expected a contiguous f32 CPU tensor"),
    }
}

/// `f` on the data of a contiguous CPU f32 tensor, writable in place.
pub(crate) fn with_f32_mut<R>(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> R,
) -> candle_core::Result<R> {
    struct Op<F, R> {
        f: RefCell<Option<F>>,
        out: RefCell<Option<R>>,
    }
    impl<F: FnOnce(&mut [f32]) -> R, R> InplaceOp1 for Op<F, R> {
        fn name(&self) -> &'static str {
            "f32-in-place"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let (CpuStorage::F32(data), Some((a, b))) = (storage, layout.contiguous_offsets())
            else {
                candle_core::bail!("expected a contiguous f32 CPU tensor")
            };
            let f = self
                .f
                .borrow_mut()
                .take()
                .expect("an in-place op runs once");
            *self.out.borrow_mut() = Some(f(&mut data[a..b]));
            Ok(())
        }
    }
    let op = Op {
        f: RefCell::new(Some(f)),
        out: RefCell::new(None),
    };
    t.inplace_op1(&op)?;
    Ok(op.out.into_inner().expect("the in-place op ran"))
}

/// Σ x² of a tensor (the clipping norms): in f64 on CPU f32 data, else by tensor ops.
pub(crate) fn sum_squares(t: &Tensor) -> candle_core::Result<f64> {
    if is_cpu_f32(t) {
        with_f32(t, sum_squares_f64)
    } else {
        t.to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }
}

/// Σ x² in f64, in fixed chunks summed in order (independent of the thread count).
fn sum_squares_f64(x: &[f32]) -> f64 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v as f64 * v as f64).sum::<f64>())
        .collect::<Vec<f64>>()
        .iter()
        .sum()
}

/// One AdamW update's constants, as f32 in the order the tensor path applies them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWStep {
    /// Gradient factor from clipping (None when not clipped).
    pub grad_scale: Option<f32>,
    /// `1 − lr·wd` when the parameter decays.
    pub decay: Option<f32>,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 / sqrt(1 − beta2^t)`.
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
    /// `lr / (1 − beta1^t)`.
    pub step_size: f32,
}

impl AdamWStep {
    /// θ, m, v updated in place from g:
    /// m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; θ ← θ·(1−lr·wd) − step·m / (√v/√bc2 + eps).
    pub fn apply(&self, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let s = *self;
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((th, m), v), g)| s.apply_chunk(th, m, v, g));
    }

    /// The update on tensors: `theta`, `m`, `v` written in place (contiguous CPU f32, distinct
    /// storages, none shared with `g`).
    pub fn apply_to(
        &self,
        theta: &Tensor,
        m: &Tensor,
        v: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<()> {
        with_f32(g, |g| {
            with_f32_mut(theta, |theta| {
                with_f32_mut(m, |m| with_f32_mut(v, |v| self.apply(theta, m, v, g)))
            })
        })???
    }

    #[inline(always)]
    fn apply_chunk(&self, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        for (((th, m), v), &g) in theta.iter_mut().zip(m).zip(v).zip(g) {
            let g = match self.grad_scale {
                Some(c) => g * c,
                None => g,
            };
            let t = match self.decay {
                Some(d) => *th * d,
                None => *th,
            };
            *m = *m * self.beta1 + g * self.one_minus_beta1;
            *v = *v * self.beta2 + (g * g) * self.one_minus_beta2;
            let denom = v.sqrt() * self.inv_sqrt_bc2 + self.eps;
            *th = t - (*m / denom) * self.step_size;
        }
    }
}

/// target ← m·target + (1 − m)·source, in place.
pub(crate) fn ema_update(target: &mut [f32], source: &[f32], momentum: f32, rest: f32) {
    target
        .par_chunks_mut(CHUNK)
        .zip(source.par_chunks(CHUNK))
        .for_each(|(t, s)| {
            for (t, &s) in t.iter_mut().zip(s) {
                *t = *t * momentum + s * rest;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place update is the tensor path's f32 expression, bit for bit.
    #[test]
    fn adamw_kernel_equals_the_tensor_expression() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let n = 100_003;
        let theta = Tensor::randn(0f32, 1.0, n, &dev)?;
        let m = (Tensor::randn(0f32, 1.0, n, &dev)? * 0.1)?;
        let v = Tensor::randn(0f32, 1.0, n, &dev)?.sqr()?;
        let g = Tensor::randn(0f32, 1.0, n, &dev)?;
        let (b1, b2, eps, lr, wd, step, clip) = (0.9, 0.999, 1e-8, 3e-4, 0.05, 7, 0.37);
        let (bc1, bc2) = (1.0 - f64::powi(b1, step), 1.0 - f64::powi(b2, step));
        let gc = (&g * clip)?;
        let want_m = ((&m * b1)? + (&gc * (1.0 - b1))?)?;
        let want_v = ((&v * b2)? + (gc.sqr()? * (1.0 - b2))?)?;
        let denom = ((want_v.sqrt()? / bc2.sqrt())? + eps)?;
        let want_theta = ((&theta * (1.0 - lr * wd))? - ((&want_m / denom)? * (lr / bc1))?)?;

        let (theta, m, v) = (theta.copy()?, m.copy()?, v.copy()?);
        let kernel = AdamWStep {
            grad_scale: Some(clip as f32),
            decay: Some((1.0 - lr * wd) as f32),
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: eps as f32,
            step_size: (lr / bc1) as f32,
        };
        kernel.apply_to(&theta, &m, &v, &g)?;
        for (got, want) in [(&theta, &want_theta), (&m, &want_m), (&v, &want_v)] {
            assert_eq!(got.to_vec1::<f32>()?, want.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn ema_kernel_equals_the_tensor_expression() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::randn(0f32, 1.0, 70_001, &dev)?;
        let s = Tensor::randn(0f32, 1.0, 70_001, &dev)?;
        let momentum = 0.996f64;
        let want = ((&t * momentum)? + (&s * (1.0 - momentum))?)?;
        let t = t.copy()?;
        with_f32(&s, |src| {
            with_f32_mut(&t, |dst| {
                ema_update(dst, src, momentum as f32, (1.0 - momentum) as f32)
            })
        })??;
        assert_eq!(t.to_vec1::<f32>()?, want.to_vec1::<f32>()?);
        assert!(shares_storage(&t, &t.clone()) && !shares_storage(&t, &s));
        Ok(())
    }
}
