//! Fused CPU f32 kernels with their own backward for the ops that dominate ViT training time.
//!
//! Composed from candle tensor ops, one LayerNorm is ~9 graph nodes forward and ~30 backward,
//! each a separate pass over memory, and the row reductions among them run single-threaded. Here
//! each op is one pass forward and one backward, rows in parallel on rayon. Gradients that reduce
//! over rows (LayerNorm weight/bias, Linear bias) are summed per fixed block of rows and the
//! partial sums are added in block order, so results do not depend on the number of threads.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::PAR_CHUNK;

pub(super) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: expected f32 storage")
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

pub(super) fn last_dim(layout: &Layout) -> usize {
    layout.shape().dims().last().copied().unwrap_or(1)
}

/// Rows per rayon task: about PAR_CHUNK elements, at least one row.
pub(super) fn rows_per_task(n: usize) -> usize {
    (PAR_CHUNK / n.max(1)).max(1)
}

/// Σ a, with eight independent accumulators so that it vectorises without fast-math.
#[inline(always)]
pub(super) fn sum8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = a.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Σ aᵢ·bᵢ.
#[inline(always)]
pub(super) fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Σ (aᵢ − m)².
#[inline(always)]
fn centered_sumsq8(a: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = a.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| (v - m) * (v - m)).sum();
    acc.iter().sum::<f32>() + tail
}

/// Σ aᵢ·bᵢ·(cᵢ − m).
#[inline(always)]
fn dot_centered8(a: &[f32], b: &[f32], c: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let (mut ca, mut cb, mut cc) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    for ((x, y), z) in (&mut ca).zip(&mut cb).zip(&mut cc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i] * (z[i] - m);
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .map(|((x, y), z)| x * y * (z - m))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// Mean and √(var + eps) of one row, as the composed LayerNorm computes them.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8(x) / n;
    let var = centered_sumsq8(x, mean) / n;
    (mean, (var + eps).sqrt())
}

// ---------------------------------------------------------------- LayerNorm

type LnFwd<'a> = (
    &'a [f32],
    &'a [f32],
    &'a [f32],
    &'a mut [MaybeUninit<f32>],
    f32,
);

simd_kernel! {
    fn ln_fwd_rows((x, w, b, y, eps): LnFwd) {
        let n = w.len();
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let (mean, std) = row_stats(xr, eps);
            for (((y, x), w), b) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                y.write((*x - mean) / std * w + b);
            }
        }
    }
}

type LnBwd<'a> = (
    &'a [f32],
    &'a [f32],
    &'a [f32],
    &'a mut [f32],
    &'a mut [f32],
    &'a mut [f32],
    f32,
);

simd_kernel! {
    /// dx = (g⊙w − mean(g⊙w) − x̂·mean(g⊙w⊙x̂)) / σ;  dw += g⊙x̂;  db += g.
    fn ln_bwd_rows((x, w, g, dx, dw, db, eps): LnBwd) {
        let n = w.len();
        let nf = n as f32;
        for ((xr, gr), dxr) in x
            .chunks_exact(n)
            .zip(g.chunks_exact(n))
            .zip(dx.chunks_exact_mut(n))
        {
            let (mean, std) = row_stats(xr, eps);
            let rstd = 1.0 / std;
            let k1 = dot8(gr, w) / nf;
            let k2 = dot_centered8(gr, w, xr, mean) * rstd / nf;
            for (((((dx, x), g), w), dw), db) in dxr
                .iter_mut()
                .zip(xr)
                .zip(gr)
                .zip(w)
                .zip(dw.iter_mut())
                .zip(db.iter_mut())
            {
                let xhat = (*x - mean) * rstd;
                *dx = (g * w - k1 - xhat * k2) * rstd;
                *dw += g * xhat;
                *db += g;
            }
        }
    }
}

/// y = (x − mean) / √(var + eps) · weight + bias over the last dimension.
pub(super) struct LayerNormOp {
    pub eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-f32"
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
        let x = contiguous_f32(s1, l1, "layer_norm x")?;
        let w = contiguous_f32(s2, l2, "layer_norm weight")?;
        let b = contiguous_f32(s3, l3, "layer_norm bias")?;
        let n = last_dim(l1);
        if n == 0 || w.len() != n || b.len() != n {
            candle_core::bail!(
                "layer_norm: weight {} / bias {} do not match the last dim {n}",
                w.len(),
                b.len()
            )
        }
        let chunk = rows_per_task(n) * n;
        // SAFETY: the row chunks cover y; ln_fwd_rows writes each element.
        let y = unsafe {
            super::linear::written(x.len(), |y| {
                y.par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk))
                    .for_each(|(y, x)| ln_fwd_rows((x, w, b, y, self.eps)))
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed =
            x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let len = x.elem_count();
        let n = w.elem_count();
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        let dw = packed.narrow(0, len, n)?.reshape(w.shape())?;
        let db = packed.narrow(0, len + n, n)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// (x, weight, grad) → [dx (flattened), dweight, dbias] packed in one buffer, so that one pass
/// over the rows yields all three.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad-f32"
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
        let x = contiguous_f32(s1, l1, "layer_norm grad x")?;
        let w = contiguous_f32(s2, l2, "layer_norm grad weight")?;
        let g = contiguous_f32(s3, l3, "layer_norm grad")?;
        let n = w.len();
        if n == 0 || g.len() != x.len() || x.len() % n != 0 {
            candle_core::bail!("layer_norm grad: inconsistent shapes")
        }
        let len = x.len();
        let mut out = vec![0f32; len + 2 * n];
        let (dx, dwb) = out.split_at_mut(len);
        let chunk = rows_per_task(n) * n;
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(g.par_chunks(chunk))
            .map(|((dx, x), g)| {
                let mut dw = vec![0f32; n];
                let mut db = vec![0f32; n];
                ln_bwd_rows((x, w, g, dx, &mut dw, &mut db, self.eps));
                (dw, db)
            })
            .collect();
        let (dw, db) = dwb.split_at_mut(n);
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let total = out.len();
        Ok((CpuStorage::F32(out), Shape::from(total)))
    }
}

// ---------------------------------------------------------------- softmax

simd_kernel! {
    fn softmax_grad_rows((y, g, dx, n): (&[f32], &[f32], &mut [f32], usize)) {
        for ((yr, gr), dr) in y
            .chunks_exact(n)
            .zip(g.chunks_exact(n))
            .zip(dx.chunks_exact_mut(n))
        {
            let s = dot8(gr, yr);
            for ((d, y), g) in dr.iter_mut().zip(yr).zip(gr) {
                *d = y * (g - s);
            }
        }
    }
}

/// (softmax output y, grad g) → y ⊙ (g − Σ g⊙y) over the last dimension.
pub(super) struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "softmax grad y")?;
        let g = contiguous_f32(s2, l2, "softmax grad")?;
        if y.len() != g.len() {
            candle_core::bail!("softmax grad: shapes differ")
        }
        let n = last_dim(l1).max(1);
        let mut dx = vec![0f32; y.len()];
        let chunk = rows_per_task(n) * n;
        dx.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk))
            .zip(g.par_chunks(chunk))
            .for_each(|((dx, y), g)| softmax_grad_rows((y, g, dx, n)));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- bias add

simd_kernel! {
    fn add_bias_rows((x, b, y): (&[f32], &[f32], &mut [f32])) {
        let n = b.len();
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            for ((y, x), b) in yr.iter_mut().zip(xr).zip(b) {
                *y = x + b;
            }
        }
    }
}

simd_kernel! {
    fn column_sum_rows((g, acc): (&[f32], &mut [f32])) {
        let n = acc.len();
        for gr in g.chunks_exact(n) {
            acc.iter_mut().zip(gr).for_each(|(a, g)| *a += g);
        }
    }
}

/// x [.., n] + bias [n]; its backward sums the gradient over rows in parallel (candle's
/// broadcast backward does that reduction on one thread).
pub(super) struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "add_bias x")?;
        let b = contiguous_f32(s2, l2, "add_bias bias")?;
        let n = last_dim(l1);
        if b.len() != n {
            candle_core::bail!("add_bias: bias {} does not match the last dim {n}", b.len())
        }
        let mut y = vec![0f32; x.len()];
        if n > 0 {
            let chunk = rows_per_task(n) * n;
            y.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk))
                .for_each(|(y, x)| add_bias_rows((x, b, y)));
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSum)?
            .reshape(bias.shape())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// [.., n] → [n]: the sum over all leading dimensions.
pub(super) struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout, "column sum")?;
        let n = last_dim(layout);
        let mut out = vec![0f32; n];
        if n > 0 {
            let chunk = rows_per_task(n) * n;
            let partials: Vec<Vec<f32>> = g
                .par_chunks(chunk)
                .map(|g| {
                    let mut acc = vec![0f32; n];
                    column_sum_rows((g, &mut acc));
                    acc
                })
                .collect();
            for p in &partials {
                out.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
