//! Fused Linear layer `y = s · act(x · wᵀ + b)` for CPU f32 tensors, with its own backward.
//!
//! One op replaces candle's matmul (whose weight transpose and batched broadcast cost copies),
//! the bias addition, the exact GELU of the MLP's first layer and the drop-path rescaling of a
//! residual branch (`s`, one factor per sample): forward is one GEMM plus one element-wise pass,
//! backward one pass for the effective output gradient and two GEMMs that read their operands
//! in place through strides (dx = g·w, dw = gᵀ·x) plus a parallel column sum for the bias.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, pool_threads, MatMut, MatRef, Precision};
#[cfg(target_arch = "x86_64")]
use super::linear_gemm::{self, PackedWeights};
use super::{gelu, gelu_grad, PAR_CHUNK};

/// Element-wise activation applied after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// Exact (erf) GELU, the same kernel as [`super::gelu_erf`].
    Gelu,
}

/// `y = s_r · act(x · wᵀ + b)`; `x` [rows, in], `w` [out, in], `b` [out].
pub(crate) struct LinearOp {
    pub act: Activation,
    /// Per-sample factors (drop path): row r is scaled by `factors[r / rows_per_factor]`.
    pub row_scale: Option<(Vec<f32>, usize)>,
    pub precision: Precision,
    /// Keep the pre-activation for the backward pass (only when a gradient is wanted).
    pub keep_pre: bool,
    pre: OnceLock<Vec<f32>>,
}

impl LinearOp {
    pub fn new(
        act: Activation,
        row_scale: Option<(Vec<f32>, usize)>,
        precision: Precision,
        keep_pre: bool,
    ) -> Self {
        Self {
            act,
            row_scale,
            precision,
            keep_pre,
            pre: OnceLock::new(),
        }
    }
}

/// `y = r + x · wᵀ + b` without a gradient: the residual stream `r` added to each output tile
/// while it is in cache ([`linear_gemm`]), instead of a separate pass over both. The bias is
/// held by the op (an inference-only op needs no gradient for it).
#[cfg(target_arch = "x86_64")]
pub(crate) struct LinearResidualOp {
    pub bias: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
impl CustomOp3 for LinearResidualOp {
    fn name(&self) -> &'static str {
        "linear-residual-f32"
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
        let (xv, rows, k) = mat_view(f32_slice(s1, "linear x")?, l1, "linear x")?;
        let (wv, n, wk) = mat_view(f32_slice(s2, "linear weight")?, l2, "linear weight")?;
        let r = match l3.contiguous_offsets() {
            Some((a, b)) => &f32_slice(s3, "linear residual")?[a..b],
            None => candle_core::bail!("linear residual: the residual must be contiguous"),
        };
        if l2.dims().len() != 2 || wk != k || self.bias.len() != n || r.len() != rows * n {
            candle_core::bail!(
                "linear residual: x {:?}, weight {:?}, bias {}, residual {:?} do not fit",
                l1.dims(),
                l2.dims(),
                self.bias.len(),
                l3.dims()
            )
        }
        if xv.cs != 1 || n == 0 || k == 0 || !linear_gemm::available() {
            candle_core::bail!("linear residual: needs AVX-512 and rows of x in place")
        }
        // SAFETY: the views were bounds-checked; linear_f32 writes every element of y, then the
        // epilogue adds the residual's matching segment.
        let y = unsafe {
            let packed = PackedWeights::pack(wv, n, k);
            written(rows * n, |y| {
                let add = |row: usize, c0: usize, seg: &mut [f32]| {
                    add_in_place((&r[row * n + c0..row * n + c0 + seg.len()], seg))
                };
                linear_gemm::linear_f32(rows, xv, &packed, Some(&self.bias), mat_out(y, n), &add)
            })
        };
        Ok((CpuStorage::F32(y), l3.shape().clone()))
    }
}

#[cfg(target_arch = "x86_64")]
simd_kernel! {
    /// y += r (IEEE addition commutes: the same value as the residual add r + y).
    fn add_in_place((r, y): (&[f32], &mut [f32])) {
        for (y, r) in y.iter_mut().zip(r) {
            *y += r;
        }
    }
}

/// The f32 data of a CPU tensor with its layout.
pub(crate) fn cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => f(data, layout),
        _ => candle_core::bail!("fused CPU op: expected an f32 CPU tensor"),
    }
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, what: &str) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(data) => Ok(data),
        _ => candle_core::bail!("{what}: expected f32 storage"),
    }
}

/// A 2-D view (rows × cols) of a rank-2 tensor with any strides, or of a contiguous tensor of
/// any rank flattened over its leading dimensions.
pub(crate) fn mat_view(data: &[f32], l: &Layout, what: &str) -> Result<(MatRef, usize, usize)> {
    let dims = l.dims();
    let cols = *dims.last().unwrap_or(&1);
    let rows = if dims.is_empty() {
        1
    } else {
        dims[..dims.len() - 1].iter().product()
    };
    let o = l.start_offset();
    if rows == 0 || cols == 0 {
        return Ok((MatRef::new(data, 0, cols.max(1), 1), rows, cols));
    }
    if dims.len() == 2 {
        let st = l.stride();
        let last = o + (rows - 1) * st[0] + (cols - 1) * st[1];
        if last >= data.len() {
            candle_core::bail!("{what}: layout out of bounds")
        }
        return Ok((MatRef::new(data, o, st[0], st[1]), rows, cols));
    }
    match l.contiguous_offsets() {
        Some((a, b)) if b <= data.len() => Ok((MatRef::new(data, a, cols, 1), rows, cols)),
        _ => candle_core::bail!("{what}: expected a rank-2 or contiguous tensor"),
    }
}

fn bias_slice<'a>(data: &'a [f32], l: &Layout, n: usize) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == n => Ok(&data[a..b]),
        _ => candle_core::bail!("linear: bias must be contiguous with {n} elements"),
    }
}

/// A new vector of `len` values, every one written by `fill` — the outputs below are written
/// whole by a GEMM or an element-wise pass, so zeroing them first (a serial memset on the
/// calling thread) would only cost time.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(super) unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    v.set_len(len);
    v
}

/// A GEMM destination over uninitialised memory (written, never read, with `accumulate` off).
fn mat_out(v: &mut [MaybeUninit<f32>], rs: usize) -> MatMut {
    MatMut {
        ptr: v.as_mut_ptr() as *mut f32,
        rs: rs as isize,
    }
}

simd_kernel! {
    fn fill_rows((rows, b): (&mut [MaybeUninit<f32>], &[f32])) {
        for r in rows.chunks_exact_mut(b.len()) {
            for (d, s) in r.iter_mut().zip(b) {
                d.write(*s);
            }
        }
    }
}

simd_kernel! {
    fn gelu_into((pre, out): (&[f32], &mut [MaybeUninit<f32>])) {
        for (o, p) in out.iter_mut().zip(pre) {
            o.write(gelu(*p));
        }
    }
}

simd_kernel! {
    fn gelu_in_place(y: &mut [f32]) {
        for v in y.iter_mut() {
            *v = gelu(*v);
        }
    }
}

simd_kernel! {
    pub(super) fn scale_rows((y, s): (&mut [f32], f32)) {
        for v in y.iter_mut() {
            *v *= s;
        }
    }
}

simd_kernel! {
    fn gelu_backward((g, pre, s, out): (&[f32], &[f32], f32, &mut [MaybeUninit<f32>])) {
        for ((o, g), p) in out.iter_mut().zip(g).zip(pre) {
            o.write(g * s * gelu_grad(*p));
        }
    }
}

simd_kernel! {
    fn scaled_copy((g, s, out): (&[f32], f32, &mut [MaybeUninit<f32>])) {
        for (o, g) in out.iter_mut().zip(g) {
            o.write(g * s);
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

/// Rows per rayon task of an element-wise pass over rows of length n.
fn task_rows(n: usize) -> usize {
    (PAR_CHUNK / n.max(1)).max(1)
}

/// Σ over rows of g [rows, n], in fixed row blocks summed in order (thread-count independent).
pub(crate) fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    if n == 0 {
        return out;
    }
    let chunk = task_rows(n) * n;
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
    out
}

impl LinearOp {
    fn factor(&self, row: usize) -> f32 {
        match &self.row_scale {
            Some((f, per)) => f[row / (*per).max(1)],
            None => 1.0,
        }
    }

    fn forward(
        &self,
        x: &[f32],
        lx: &Layout,
        w: &[f32],
        lw: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (xv, rows, k) = mat_view(x, lx, "linear x")?;
        if lw.dims().len() != 2 || lw.dims()[1] != k {
            candle_core::bail!(
                "linear: weight {:?} does not take inputs of width {k}",
                lw.dims()
            )
        }
        let n = lw.dims()[0];
        let (wv, _, _) = mat_view(w, lw, "linear weight")?;
        if let Some((f, per)) = &self.row_scale {
            if f.len() * per != rows {
                candle_core::bail!("linear: {} row factors × {per} rows ≠ {rows} rows", f.len())
            }
        }
        let mut dims = lx.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        #[cfg(target_arch = "x86_64")]
        if self.precision == Precision::F32
            && xv.cs == 1
            && rows >= 16
            && n > 0
            && k > 0
            && linear_gemm::available()
        {
            // SAFETY: as below; linear_f32 writes every element of y once (then the epilogue).
            let y = unsafe { self.forward_packed(xv, rows, k, wv, n, bias) };
            return Ok((CpuStorage::F32(y), Shape::from(dims)));
        }
        let chunk = task_rows(n) * n;
        // SAFETY: the views were bounds-checked against their buffers; y is rows × n, written
        // whole: by the bias rows and the accumulating GEMM, or by the GEMM alone.
        let y = unsafe {
            written(rows * n, |y| {
                if let Some(b) = bias {
                    if n > 0 {
                        y.par_chunks_mut(chunk).for_each(|r| fill_rows((r, b)));
                    }
                }
                matmul(
                    rows,
                    n,
                    k,
                    mat_out(y, n.max(1)),
                    bias.is_some(),
                    xv,
                    wv.t(),
                    1.0,
                    self.precision,
                    pool_threads(),
                )
            })
        };
        let mut y = match self.act {
            Activation::Identity => y,
            Activation::Gelu if self.keep_pre => {
                // SAFETY: the chunks cover the output; gelu_into writes each element.
                let out = unsafe {
                    written(y.len(), |out| {
                        out.par_chunks_mut(PAR_CHUNK)
                            .zip(y.par_chunks(PAR_CHUNK))
                            .for_each(|(o, p)| gelu_into((p, o)))
                    })
                };
                let _ = self.pre.set(y);
                out
            }
            Activation::Gelu => {
                let mut y = y;
                y.par_chunks_mut(PAR_CHUNK).for_each(gelu_in_place);
                y
            }
        };
        if self.row_scale.is_some() && n > 0 {
            y.par_chunks_mut(n)
                .enumerate()
                .for_each(|(r, row)| scale_rows((row, self.factor(r))));
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    /// The forward on packed weights with the bias, activation and row factor applied per tile
    /// (see [`linear_gemm`]); keeps the pre-activation when asked, as the general path does.
    ///
    /// # Safety
    /// `x` (rows × k, column stride 1) and `w` (n × k) must be valid views.
    #[cfg(target_arch = "x86_64")]
    unsafe fn forward_packed(
        &self,
        x: MatRef,
        rows: usize,
        k: usize,
        w: MatRef,
        n: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let packed = PackedWeights::pack(w, n, k);
        let gelu = self.act == Activation::Gelu;
        let keep = gelu && self.keep_pre;
        let mut pre: Vec<f32> = Vec::with_capacity(if keep { rows * n } else { 0 });
        let pre_out = mat_out(pre.spare_capacity_mut(), n);
        let y = written(rows * n, |y| {
            let epilogue = |r: usize, c0: usize, seg: &mut [f32]| {
                if keep {
                    // SAFETY: (r, c0..c0 + seg.len()) lies inside pre's rows × n capacity and
                    // only this segment's task writes it.
                    std::ptr::copy_nonoverlapping(seg.as_ptr(), pre_out.at(r, c0), seg.len());
                }
                if gelu {
                    gelu_in_place(seg);
                }
                if self.row_scale.is_some() {
                    scale_rows((seg, self.factor(r)));
                }
            };
            linear_gemm::linear_f32(rows, x, &packed, bias, mat_out(y, n), &epilogue)
        });
        if keep {
            // SAFETY: every (row, column) of pre was written by the epilogue.
            pre.set_len(rows * n);
            let _ = self.pre.set(pre);
        }
        y
    }

    /// (dx, dw, db) for the output gradient `grad`; only for the inputs that track a gradient.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w) = (x.track_op(), w.track_op());
        let want_b = bias.is_some_and(|b| b.track_op());
        let grad = grad.contiguous()?;
        let (dx, dw, db) = cpu_f32(&grad, |g, lg| {
            let g = &g[lg.start_offset()..lg.start_offset() + lg.shape().elem_count()];
            cpu_f32(x, |xd, lx| {
                cpu_f32(w, |wd, lw| {
                    let (xv, rows, k) = mat_view(xd, lx, "linear x")?;
                    let (wv, n, _) = mat_view(wd, lw, "linear weight")?;
                    if g.len() != rows * n {
                        candle_core::bail!("linear backward: gradient size mismatch")
                    }
                    let chunk = task_rows(n) * n.max(1);
                    // Effective output gradient: through the row factors and the activation.
                    let owned: Option<Vec<f32>> = match (self.act, &self.row_scale) {
                        (Activation::Identity, None) => None,
                        // SAFETY (both arms): the row chunks cover the output, each written.
                        (Activation::Identity, Some(_)) => Some(unsafe {
                            written(g.len(), |out| {
                                out.par_chunks_mut(n.max(1))
                                    .zip(g.par_chunks(n.max(1)))
                                    .enumerate()
                                    .for_each(|(r, (o, g))| scaled_copy((g, self.factor(r), o)))
                            })
                        }),
                        (Activation::Gelu, _) => {
                            let Some(pre) = self.pre.get() else {
                                candle_core::bail!("linear backward: forward kept no activation")
                            };
                            Some(unsafe {
                                written(g.len(), |out| {
                                    out.par_chunks_mut(chunk)
                                        .zip(g.par_chunks(chunk))
                                        .zip(pre.par_chunks(chunk))
                                        .enumerate()
                                        .for_each(|(t, ((o, g), p))| {
                                            let r0 = t * (chunk / n.max(1));
                                            for (i, ((o, g), p)) in o
                                                .chunks_mut(n)
                                                .zip(g.chunks(n))
                                                .zip(p.chunks(n))
                                                .enumerate()
                                            {
                                                let s = self.factor(r0 + i);
                                                gelu_backward((g, p, s, o));
                                            }
                                        })
                                })
                            })
                        }
                    };
                    let ge: &[f32] = owned.as_deref().unwrap_or(g);
                    let gv = MatRef::new(ge, 0, n.max(1), 1);
                    // SAFETY: all views lie inside their (checked) buffers; outputs are fresh.
                    // A GEMM without accumulation writes its whole destination.
                    let dx = want_x.then(|| unsafe {
                        written(rows * k, |dx| {
                            matmul(
                                rows,
                                k,
                                n,
                                mat_out(dx, k.max(1)),
                                false,
                                gv,
                                wv,
                                1.0,
                                self.precision,
                                pool_threads(),
                            )
                        })
                    });
                    let dw = want_w.then(|| unsafe {
                        written(n * k, |dw| {
                            matmul(
                                n,
                                k,
                                rows,
                                mat_out(dw, k.max(1)),
                                false,
                                gv.t(),
                                xv,
                                1.0,
                                self.precision,
                                pool_threads(),
                            )
                        })
                    });
                    let db = want_b.then(|| column_sums(ge, n));
                    Ok((dx, dw, db))
                })
            })
        })?;
        let dev = x.device();
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), dev))
            .transpose()?;
        let dw = dw
            .map(|v| Tensor::from_vec(v, w.shape(), dev))
            .transpose()?;
        let db = match (db, bias) {
            (Some(v), Some(b)) => Some(Tensor::from_vec(v, b.shape(), dev)?),
            _ => None,
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-f32"
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
        let x = f32_slice(s1, "linear x")?;
        let w = f32_slice(s2, "linear weight")?;
        let n = l2.dims().first().copied().unwrap_or(0);
        let b = bias_slice(f32_slice(s3, "linear bias")?, l3, n)?;
        self.forward(x, l1, w, l2, Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, Some(b), grad)
    }
}

/// Without a bias: `x · wᵀ` (the head's projections).
impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "matmul-t-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, "matmul x")?;
        let w = f32_slice(s2, "matmul weight")?;
        self.forward(x, l1, w, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, None, grad)?;
        Ok((dx, dw))
    }
}
