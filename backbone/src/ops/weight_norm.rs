//! `torch.nn.utils.weight_norm` over rows (dim 0): W = g · v / ‖v‖_row, one parallel pass forward
//! and one backward. Composed from candle ops the 8,192 × 256 prototype layer of the iBOT head
//! costs ~10 single-threaded passes over v per use.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::{contiguous_f32, dot8, last_dim, rows_per_task};

/// (v [R, C], g [R] or [R, 1]) → W [R, C]; keeps ‖v‖ per row for the backward pass.
pub(super) struct WeightNorm {
    norms: OnceLock<Vec<f32>>,
}

impl WeightNorm {
    pub fn new() -> Self {
        Self {
            norms: OnceLock::new(),
        }
    }
}

simd_kernel! {
    fn row_dot((a, b): (&[f32], &[f32])) -> f32 {
        dot8(a, b)
    }
}

simd_kernel! {
    fn scale_row((v, s, w): (&[f32], f32, &mut [f32])) {
        for (w, v) in w.iter_mut().zip(v) {
            *w = v * s;
        }
    }
}

simd_kernel! {
    /// dv = (g/n)·(G − (G·v / n²)·v) for one row.
    fn weight_norm_grad_row((v, gr, g, n, dv): (&[f32], &[f32], f32, f32, &mut [f32])) {
        let dot = dot8(gr, v);
        let s = g / n;
        let c = dot / (n * n);
        for ((d, gr), v) in dv.iter_mut().zip(gr).zip(v) {
            *d = s * (gr - c * v);
        }
    }
}

fn check(lv: &Layout, g: &[f32]) -> Result<(usize, usize)> {
    let c = last_dim(lv);
    let r = lv.shape().elem_count() / c.max(1);
    if lv.dims().len() != 2 || g.len() != r || c == 0 {
        candle_core::bail!("weight norm: v {:?} with {} gains", lv.dims(), g.len())
    }
    Ok((r, c))
}

impl CustomOp2 for WeightNorm {
    fn name(&self) -> &'static str {
        "weight-norm-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = contiguous_f32(s1, l1, "weight norm v")?;
        let g = contiguous_f32(s2, l2, "weight norm g")?;
        let (r, c) = check(l1, g)?;
        // torch's norm_except_dim has no eps: a zero row gives NaN there too.
        let norms: Vec<f32> = v
            .par_chunks(c)
            .map(|row| row_dot((row, row)).sqrt())
            .collect();
        let mut w = vec![0f32; r * c];
        let per = rows_per_task(c);
        w.par_chunks_mut(per * c)
            .zip(v.par_chunks(per * c))
            .zip(norms.par_chunks(per).zip(g.par_chunks(per)))
            .for_each(|((w, v), (n, g))| {
                for (((w, v), n), g) in w.chunks_exact_mut(c).zip(v.chunks_exact(c)).zip(n).zip(g) {
                    scale_row((v, g / n, w));
                }
            });
        let _ = self.norms.set(norms);
        Ok((CpuStorage::F32(w), l1.shape().clone()))
    }

    fn bwd(
        &self,
        v: &Tensor,
        g: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(norms) = self.norms.get() else {
            candle_core::bail!("weight norm backward: the forward pass kept no norms")
        };
        let grad = grad.contiguous()?;
        let g_flat = g.flatten_all()?.contiguous()?;
        let dv = v.apply_op3_no_bwd(&g_flat, &grad, &WeightNormGrad { norms })?;
        let dg = if g.track_op() {
            let dg = v.apply_op2_no_bwd(&grad, &GainGrad { norms })?;
            Some(dg.reshape(g.shape())?)
        } else {
            None
        };
        Ok((Some(dv), dg))
    }
}

/// (v, g, G) → dv.
struct WeightNormGrad<'a> {
    norms: &'a [f32],
}

impl CustomOp3 for WeightNormGrad<'_> {
    fn name(&self) -> &'static str {
        "weight-norm-grad-f32"
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
        let v = contiguous_f32(s1, l1, "weight norm v")?;
        let g = contiguous_f32(s2, l2, "weight norm g")?;
        let gr = contiguous_f32(s3, l3, "weight norm gradient")?;
        let (r, c) = check(l1, g)?;
        if gr.len() != v.len() || self.norms.len() != r {
            candle_core::bail!("weight norm backward: size mismatch")
        }
        let mut dv = vec![0f32; r * c];
        let per = rows_per_task(c);
        dv.par_chunks_mut(per * c)
            .zip(v.par_chunks(per * c).zip(gr.par_chunks(per * c)))
            .zip(self.norms.par_chunks(per).zip(g.par_chunks(per)))
            .for_each(|((dv, (v, gr)), (n, g))| {
                for ((((dv, v), gr), n), g) in dv
                    .chunks_exact_mut(c)
                    .zip(v.chunks_exact(c))
                    .zip(gr.chunks_exact(c))
                    .zip(n)
                    .zip(g)
                {
                    weight_norm_grad_row((v, gr, *g, *n, dv));
                }
            });
        Ok((CpuStorage::F32(dv), l1.shape().clone()))
    }
}

/// (v, G) → dg = G·v / ‖v‖ per row.
struct GainGrad<'a> {
    norms: &'a [f32],
}

impl CustomOp2 for GainGrad<'_> {
    fn name(&self) -> &'static str {
        "weight-norm-gain-grad-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = contiguous_f32(s1, l1, "weight norm v")?;
        let gr = contiguous_f32(s2, l2, "weight norm gradient")?;
        let c = last_dim(l1).max(1);
        if gr.len() != v.len() || self.norms.len() * c != v.len() {
            candle_core::bail!("weight norm backward: size mismatch")
        }
        let dg: Vec<f32> = v
            .par_chunks(c)
            .zip(gr.par_chunks(c))
            .zip(self.norms.par_iter())
            .map(|((v, gr), n)| row_dot((gr, v)) / n)
            .collect();
        Ok((CpuStorage::F32(dg), Shape::from(self.norms.len())))
    }
}
