//! The two row-wise passes of DINO/iBOT-style self-distillation losses over wide outputs
//! (8,192 prototypes per token): the centred, sharpened teacher softmax, and the soft-target
//! cross-entropy against the student's tempered log-softmax with its backward. Composed from
//! candle ops each is ~10 single-threaded passes over [tokens × prototypes] forward and as many
//! backward; here each is one parallel pass over rows.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::exp_neg;
use super::fused::{contiguous_f32, dot8, last_dim, rows_per_task, sum8};

#[inline(always)]
fn max8(a: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = a.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            m[i] = m[i].max(c[i]);
        }
    }
    chunks.remainder().iter().fold(
        m.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)),
        |a, b| a.max(*b),
    )
}

simd_kernel! {
    /// One row: y = softmax((x − c)·s), using `y` as scratch.
    fn centered_softmax_row((x, c, s, y): (&[f32], &[f32], f32, &mut [f32])) {
        for ((y, x), c) in y.iter_mut().zip(x).zip(c) {
            *y = (x - c) * s;
        }
        let max = max8(y);
        for v in y.iter_mut() {
            *v = exp_neg(*v - max);
        }
        let inv = 1.0 / sum8(y);
        y.iter_mut().for_each(|v| *v *= inv);
    }
}

/// softmax((x − center)·scale) over the last dimension; no backward (a teacher target).
pub(super) struct CenteredSoftmax {
    pub scale: f32,
}

impl CustomOp2 for CenteredSoftmax {
    fn name(&self) -> &'static str {
        "centered-softmax-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "centered softmax x")?;
        let c = contiguous_f32(s2, l2, "centered softmax center")?;
        let n = last_dim(l1);
        if n == 0 || c.len() != n {
            candle_core::bail!("centered softmax: center of {} for rows of {n}", c.len())
        }
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_task(n) * n;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    centered_softmax_row((x, c, self.scale, y));
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}

simd_kernel! {
    /// One row, with z = x·s shifted by its max m: loss = −Σ p·log_softmax(z) = Σp·ln Σe^(z−m) − Σ p·(z−m).
    /// Returns (loss, m, ln Σe^(z−m)); the two parts stay apart because their sum rounds at the
    /// scale of m, which would cost the softmax of the backward pass that many ulps.
    fn soft_ce_row((x, p, s, z): (&[f32], &[f32], f32, &mut [f32])) -> (f32, f32, f32) {
        for (z, x) in z.iter_mut().zip(x) {
            *z = x * s;
        }
        let max = max8(z);
        for v in z.iter_mut() {
            *v -= max;
        }
        let dot = dot8(p, z);
        for v in z.iter_mut() {
            *v = exp_neg(*v);
        }
        let ln_sum = sum8(z).ln();
        (sum8(p) * ln_sum - dot, max, ln_sum)
    }
}

/// (logits, targets, 1/τ, (row max, ln Σexp), upstream gradient, dx) of one row.
type SoftCeGradRow<'a> = (&'a [f32], &'a [f32], f32, (f32, f32), f32, &'a mut [f32]);

simd_kernel! {
    /// Row gradient: dx = g·s·(softmax(x·s)·Σp − p).
    fn soft_ce_grad_row((x, p, s, (max, ln_sum), g, dx): SoftCeGradRow) {
        let psum = sum8(p);
        let gs = g * s;
        for ((d, x), p) in dx.iter_mut().zip(x).zip(p) {
            *d = gs * (exp_neg((x * s - max) - ln_sum) * psum - p);
        }
    }
}

/// Per row of `x` [.., K]: −Σₖ pₖ · log_softmax(x · scale)ₖ against targets `p` of the same
/// shape; the gradient flows to `x` only.
pub(super) struct SoftCrossEntropy {
    pub scale: f32,
    /// Per row: (max of x·s, ln Σ exp(x·s − max)).
    lse: OnceLock<Vec<(f32, f32)>>,
}

impl SoftCrossEntropy {
    pub fn new(scale: f32) -> Self {
        Self {
            scale,
            lse: OnceLock::new(),
        }
    }
}

impl CustomOp2 for SoftCrossEntropy {
    fn name(&self) -> &'static str {
        "soft-cross-entropy-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "soft cross-entropy logits")?;
        let p = contiguous_f32(s2, l2, "soft cross-entropy targets")?;
        let n = last_dim(l1);
        if n == 0 || l1.dims() != l2.dims() {
            candle_core::bail!(
                "soft cross-entropy: logits {:?} and targets {:?}",
                l1.dims(),
                l2.dims()
            )
        }
        let rows = x.len() / n;
        let mut loss = vec![0f32; rows];
        let mut lse = vec![(0f32, 0f32); rows];
        let per = rows_per_task(n);
        loss.par_chunks_mut(per)
            .zip(lse.par_chunks_mut(per))
            .zip(x.par_chunks(per * n).zip(p.par_chunks(per * n)))
            .for_each_init(
                || vec![0f32; n],
                |z, ((loss, lse), (x, p))| {
                    for (((l, e), x), p) in loss
                        .iter_mut()
                        .zip(lse.iter_mut())
                        .zip(x.chunks_exact(n))
                        .zip(p.chunks_exact(n))
                    {
                        let (loss, max, ln_sum) = soft_ce_row((x, p, self.scale, &mut z[..]));
                        (*l, *e) = (loss, (max, ln_sum));
                    }
                },
            );
        let _ = self.lse.set(lse);
        let dims = l1.dims();
        Ok((CpuStorage::F32(loss), Shape::from(&dims[..dims.len() - 1])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(lse) = self.lse.get() else {
            candle_core::bail!("soft cross-entropy backward: forward kept no log-sum-exp")
        };
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(
            p,
            &grad,
            &SoftCrossEntropyGrad {
                scale: self.scale,
                lse,
            },
        )?;
        Ok((Some(dx), None))
    }
}

/// (x, p, per-row gradient) → dx for the stored per-row log-sum-exp.
struct SoftCrossEntropyGrad<'a> {
    scale: f32,
    lse: &'a [(f32, f32)],
}

impl CustomOp3 for SoftCrossEntropyGrad<'_> {
    fn name(&self) -> &'static str {
        "soft-cross-entropy-grad-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "soft cross-entropy logits")?;
        let p = contiguous_f32(s2, l2, "soft cross-entropy targets")?;
        let g = contiguous_f32(s3, l3, "soft cross-entropy gradient")?;
        let n = last_dim(l1);
        if g.len() * n != x.len() || self.lse.len() != g.len() || p.len() != x.len() {
            candle_core::bail!("soft cross-entropy backward: size mismatch")
        }
        let mut dx = vec![0f32; x.len()];
        let per = rows_per_task(n);
        dx.par_chunks_mut(per * n)
            .zip(x.par_chunks(per * n).zip(p.par_chunks(per * n)))
            .zip(self.lse.par_chunks(per).zip(g.par_chunks(per)))
            .for_each(|((dx, (x, p)), (lse, g))| {
                for ((((d, x), p), lse), g) in dx
                    .chunks_exact_mut(n)
                    .zip(x.chunks_exact(n))
                    .zip(p.chunks_exact(n))
                    .zip(lse)
                    .zip(g)
                {
                    soft_ce_grad_row((x, p, self.scale, *lse, *g, d));
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
