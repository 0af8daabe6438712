//! LayerNorm, softmax and bias addition that stay differentiable, and fast on the CPU.
//!
//! candle-nn's fused `layer_norm` / `softmax_last_dim` record no backward op (candle #3011), so a
//! model trained through them silently gets no gradients. On the CPU in f32 training goes through
//! our own fused kernels with a backward (`fused`); elsewhere (CUDA, other dtypes) LayerNorm and
//! softmax are composed from tensor ops, whose backward candle derives. [`with_composed_ops`]
//! forces the composed path, the reference the fused kernels are tested against.

use std::cell::Cell;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Defines `fn name(args)` whose body runs compiled for AVX-512 (or AVX2+FMA) when the CPU has
/// it: the portable x86-64 baseline (SSE2) vectorises our polynomials and reductions poorly. The
/// body is a nested `#[inline(always)]` fn called directly from each `#[target_feature]` copy, so
/// it is compiled into them; handing a fn item to a generic wrapper instead goes through its
/// `Fn::call` shim, which LLVM may keep out of line — compiled for the baseline. Kernels take
/// their arguments as one tuple.
macro_rules! simd_kernel {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($args:tt: $ty:ty $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name(args: $ty) $(-> $ret)? {
            #[inline(always)]
            fn body($args: $ty) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn avx512(args: $ty) $(-> $ret)? {
                    body(args)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2(args: $ty) $(-> $ret)? {
                    body(args)
                }
                if $crate::ops::use_avx512() {
                    // SAFETY: the CPU has the enabled features (checked by `use_avx512`).
                    return unsafe { avx512(args) };
                }
                if $crate::ops::use_avx2() {
                    // SAFETY: the CPU has the enabled features (checked by `use_avx2`).
                    return unsafe { avx2(args) };
                }
            }
            body(args)
        }
    };
}

mod amx;
mod attention;
mod fused;
mod gemm;
mod linear;
#[cfg(target_arch = "x86_64")]
mod linear_gemm;
mod soft_ce;
mod weight_norm;

pub use gemm::Precision;
pub use linear::Activation;

thread_local! {
    static COMPOSED_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the fused CPU kernels disabled on this thread: LayerNorm, softmax and bias
/// addition built inside `f` use composed candle ops (the reference implementation). The choice
/// is made when the graph is built, so a backward pass run later follows it too.
pub fn with_composed_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSED_ONLY.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPOSED_ONLY.with(|c| c.replace(true)));
    f()
}

fn fused_f32_cpu(tensors: &[&Tensor]) -> bool {
    !COMPOSED_ONLY.with(|c| c.get())
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = if x.is_contiguous() {
        x.clone()
    } else {
        x.contiguous()?
    };
    let d = x.dim(D::Minus1)?;
    let tracked = x.track_op() || weight.track_op() || bias.track_op();
    if fused_f32_cpu(&[&x, weight, bias]) && weight.dims() == [d] && bias.dims() == [d] && d > 0 {
        let op = fused::LayerNormOp { eps: eps as f32 };
        let (w, b) = (weight.contiguous()?, bias.contiguous()?);
        return if tracked {
            x.apply_op3(&w, &b, op)
        } else {
            x.apply_op3_no_bwd(&w, &b, &op)
        };
    }
    if !tracked {
        return candle_nn::ops::layer_norm(&x, weight, bias, eps as f32);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let mean = x32.mean_keepdim(D::Minus1)?;
    let centered = x32.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dimension, computed in f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    if !x.track_op() {
        let x32 = x32.contiguous()?;
        if x32.device().is_cpu() {
            return x32.apply_op1_no_bwd(&SoftmaxLastDim)?.to_dtype(dtype);
        }
        return candle_nn::ops::softmax_last_dim(&x32)?.to_dtype(dtype);
    }
    if fused_f32_cpu(&[&x32]) {
        return x32.contiguous()?.apply_op1(SoftmaxLastDim)?.to_dtype(dtype);
    }
    let max = x32.max_keepdim(D::Minus1)?.detach();
    let e = x32.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)?.to_dtype(dtype)
}

/// softmax((x − center) / temp) over the last dimension, in f32 and without a gradient: the
/// centred, sharpened teacher targets of DINO/iBOT. `center` holds the last dimension's values
/// (any shape that broadcasts over the leading dimensions, e.g. [1, K]).
pub fn centered_softmax(x: &Tensor, center: &Tensor, temp: f64) -> Result<Tensor> {
    let x = x.detach().to_dtype(DType::F32)?;
    let center = center.detach().to_dtype(DType::F32)?;
    let k = x.dim(D::Minus1)?;
    if fused_f32_cpu(&[&x, &center]) && center.elem_count() == k {
        let op = soft_ce::CenteredSoftmax {
            scale: (1.0 / temp) as f32,
        };
        return x
            .contiguous()?
            .apply_op2_no_bwd(&center.flatten_all()?.contiguous()?, &op);
    }
    softmax_last_dim(&(x.broadcast_sub(&center)? / temp)?)
}

/// `torch.nn.utils.weight_norm` over rows: W = g · v / ‖v‖_row for v [R, C] and g [R, 1] (or
/// [R]), differentiable in both; no eps, as torch's `norm_except_dim` (a zero row gives NaN).
pub fn weight_norm_rows(v: &Tensor, g: &Tensor) -> Result<Tensor> {
    if fused_f32_cpu(&[v, g]) && v.rank() == 2 && g.elem_count() == v.dim(0)? && v.dim(1)? > 0 {
        let (vc, gc) = (v.contiguous()?, g.contiguous()?);
        let op = weight_norm::WeightNorm::new();
        return if v.track_op() || g.track_op() {
            vc.apply_op2(&gc, op)
        } else {
            vc.apply_op2_no_bwd(&gc, &op)
        };
    }
    let dtype = v.dtype();
    let v = v.to_dtype(DType::F32)?;
    let norm = v.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    let scale = g
        .to_dtype(DType::F32)?
        .reshape((v.dim(0)?, 1))?
        .broadcast_div(&norm)?;
    v.broadcast_mul(&scale)?.to_dtype(dtype)
}

/// [.., K] → [K]: the sum over every leading dimension, in f32 and without a gradient (rows in
/// parallel on the CPU; candle reduces a non-last dimension on one thread).
pub fn sum_leading_dims(x: &Tensor) -> Result<Tensor> {
    let x = x.detach().to_dtype(DType::F32)?;
    if fused_f32_cpu(&[&x]) {
        return x.contiguous()?.apply_op1_no_bwd(&fused::ColumnSum);
    }
    let k = x.dim(D::Minus1)?;
    x.reshape(((), k))?.sum(0)
}

/// Per row of `logits` [.., K]: −Σₖ targetₖ · log_softmax(logits / temp)ₖ, in f32, shaped like
/// `logits` without its last dimension. The gradient flows to `logits` only: the targets are
/// constants (a teacher's outputs).
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, temp: f64) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let targets = targets.detach().to_dtype(DType::F32)?;
    if logits.dims() != targets.dims() {
        candle_core::bail!(
            "soft cross-entropy: logits {:?} and targets {:?} differ",
            logits.dims(),
            targets.dims()
        )
    }
    if fused_f32_cpu(&[&logits, &targets]) && logits.dim(D::Minus1)? > 0 {
        let (x, p) = (logits.contiguous()?, targets.contiguous()?);
        let op = soft_ce::SoftCrossEntropy::new((1.0 / temp) as f32);
        return if x.track_op() {
            x.apply_op2(&p, op)
        } else {
            x.apply_op2_no_bwd(&p, &op)
        };
    }
    let z = (logits / temp)?;
    // The detached max cancels exactly in the log-softmax.
    let shifted = z.broadcast_sub(&z.max_keepdim(D::Minus1)?.detach())?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    (targets * shifted.broadcast_sub(&lse)?)?
        .sum(D::Minus1)?
        .neg()
}

/// `x + bias` with `bias` broadcast over the leading dimensions of `x` (a Linear layer's bias).
/// On the CPU in f32 the backward sums the bias gradient over rows in parallel.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if fused_f32_cpu(&[x, bias]) && bias.dims() == [d] {
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        return x.apply_op2(&bias.contiguous()?, fused::AddBias);
    }
    x.broadcast_add(bias)
}

/// Exact (erf) GELU. On the CPU in f32 this is a vectorisable, multi-threaded kernel using the
/// same erf approximation as PyTorch's vectorised CPU GELU (Abramowitz–Stegun 7.1.26, |ε| ≤ 1.5e-7);
/// candle's own `gelu_erf` is a scalar single-threaded loop that took a quarter of ViT forward time.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.apply_op1(GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// The fused-op precision for a `compute` dtype on f32 data, if the fused ops support it.
fn fused_precision(compute: Option<DType>) -> Option<Precision> {
    match compute {
        None | Some(DType::F32) => Some(Precision::F32),
        Some(DType::BF16) => Some(Precision::Bf16),
        _ => None,
    }
}

/// `x · wᵀ` for x [M, K] and w [N, K]. With a `compute` dtype other than x's (mixed precision)
/// the operands are rounded to it for the GEMM and the product comes back in x's dtype, so what
/// follows (bias, LayerNorm, softmax, GELU, residual sums) stays in the master precision; the
/// gradients of f32 weights arrive in f32. On the CPU in f32 (and bf16 compute) this is the fused
/// strided GEMM (bf16 on AMX where available), elsewhere candle's matmul between dtype casts.
pub fn autocast_matmul_t(x: &Tensor, w: &Tensor, compute: Option<DType>) -> Result<Tensor> {
    if let Some(precision) = fused_precision(compute) {
        if fused_f32_cpu(&[x, w]) && x.rank() == 2 && w.rank() == 2 {
            let tracked = x.track_op() || w.track_op();
            let op = linear::LinearOp::new(Activation::Identity, None, precision, false);
            return if tracked {
                x.apply_op2(w, op)
            } else {
                x.apply_op2_no_bwd(w, &op)
            };
        }
    }
    match compute {
        Some(dt) if dt != x.dtype() => x
            .to_dtype(dt)?
            .matmul(&w.to_dtype(dt)?.t()?)?
            .to_dtype(x.dtype()),
        _ => x.matmul(&w.t()?),
    }
}

/// `r + x · wᵀ + b` in one pass over the output when nothing needs a gradient, the operands are
/// f32 CPU tensors and the packed AVX-512 kernel runs here; `None` otherwise (the caller then
/// adds the residual itself). The same sum as `residual_add(r, linear(x, w, b))`.
pub fn linear_residual(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    compute: Option<DType>,
) -> Result<Option<Tensor>> {
    #[cfg(target_arch = "x86_64")]
    {
        let fits = fused_precision(compute) == Some(Precision::F32)
            && fused_f32_cpu(&[x, w, b, r])
            && linear_gemm::available()
            && x.rank() == 2
            && w.rank() == 2
            && x.is_contiguous()
            && r.is_contiguous()
            && x.dim(0)? >= 16
            && x.dim(1)? > 0
            && w.dim(0)? > 0
            && b.dims() == [w.dim(0)?]
            && r.elem_count() == x.dim(0)? * w.dim(0)?;
        if fits && ![x, w, b, r].iter().any(|t| t.track_op()) {
            let op = linear::LinearResidualOp {
                bias: b.to_vec1::<f32>()?,
            };
            return Ok(Some(x.apply_op3_no_bwd(w, r, &op)?));
        }
    }
    let _ = (x, w, b, r, compute);
    Ok(None)
}

/// A Linear layer on rows: `s · act(x · wᵀ + b)` for x [M, K], w [N, K], b [N], where `s` is
/// an optional per-sample factor (drop path): `row_scale = (factors, rows per factor)` scales
/// rows `i·rows .. (i+1)·rows` by `factors[i]`. On the CPU in f32 one fused op with its own
/// backward; elsewhere (and under [`with_composed_ops`]) matmul, bias, GELU and a broadcast
/// multiplication, which candle differentiates.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    act: Activation,
    row_scale: Option<(&[f32], usize)>,
    compute: Option<DType>,
) -> Result<Tensor> {
    if let Some(precision) = fused_precision(compute) {
        let n = w.dim(0)?;
        if fused_f32_cpu(&[x, w, b]) && x.rank() == 2 && w.rank() == 2 && b.dims() == [n] {
            let tracked = x.track_op() || w.track_op() || b.track_op();
            let scale = row_scale.map(|(f, rows)| (f.to_vec(), rows));
            let op = linear::LinearOp::new(act, scale, precision, tracked);
            return if tracked {
                x.apply_op3(w, b, op)
            } else {
                x.apply_op3_no_bwd(w, b, &op)
            };
        }
    }
    let y = add_bias(&autocast_matmul_t(x, w, compute)?, b)?;
    let y = match act {
        Activation::Identity => y,
        Activation::Gelu => gelu_erf(&y)?,
    };
    match row_scale {
        None => Ok(y),
        Some((factors, rows)) => {
            let (m, n) = y.dims2()?;
            let mask = Tensor::from_vec(factors.to_vec(), (factors.len(), 1, 1), y.device())?
                .to_dtype(y.dtype())?;
            y.reshape((factors.len(), rows, n))?
                .broadcast_mul(&mask)?
                .reshape((m, n))
        }
    }
}

/// Multi-head self-attention core on a qkv projection [B, T, 3·D] (per token [3][heads][dim]):
/// softmax(scale · q kᵀ) v with the heads concatenated, [B, T, D]. `None` where the fused CPU
/// op does not apply (other devices or dtypes, [`with_composed_ops`]); the caller then composes it.
pub fn fused_attention(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    compute: Option<DType>,
) -> Result<Option<Tensor>> {
    let Some(precision) = fused_precision(compute) else {
        return Ok(None);
    };
    if !fused_f32_cpu(&[qkv]) || qkv.rank() != 3 {
        return Ok(None);
    }
    let qkv = if qkv.is_contiguous() {
        qkv.clone()
    } else {
        qkv.contiguous()?
    };
    let tracked = qkv.track_op();
    let op = attention::AttentionOp::new(heads, scale as f32, precision, tracked);
    Ok(Some(if tracked {
        qkv.apply_op1(op)?
    } else {
        qkv.apply_op1_no_bwd(&op)?
    }))
}

/// `x + y` (same shapes), one parallel pass on the CPU in f32.
pub fn residual_add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if fused_f32_cpu(&[x, y]) && x.dims() == y.dims() && x.is_contiguous() && y.is_contiguous() {
        return if x.track_op() || y.track_op() {
            x.apply_op2(y, ResidualAdd)
        } else {
            x.apply_op2_no_bwd(y, &ResidualAdd)
        };
    }
    x + y
}

simd_kernel! {
    fn add_slices((a, b, out): (&[f32], &[f32], &mut [std::mem::MaybeUninit<f32>])) {
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            o.write(a + b);
        }
    }
}

struct ResidualAdd;

impl CustomOp2 for ResidualAdd {
    fn name(&self) -> &'static str {
        "residual-add-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("residual add: expected f32 storage")
        };
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("residual add: inputs must be contiguous")
        };
        let (a, b) = (&a[a0..a1], &b[b0..b1]);
        if a.len() != b.len() {
            candle_core::bail!("residual add: {} vs {} elements", a.len(), b.len())
        }
        // SAFETY: the chunks cover the output; add_slices writes each element.
        let out = unsafe {
            linear::written(a.len(), |out| {
                out.par_chunks_mut(PAR_CHUNK)
                    .zip(a.par_chunks(PAR_CHUNK))
                    .zip(b.par_chunks(PAR_CHUNK))
                    .for_each(|((o, a), b)| add_slices((a, b, o)))
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// Whether bf16 GEMMs of the fused CPU ops run on AMX tiles in this process (CPU, OS permission
/// and a self-test; `IBOT_NO_AMX=1` turns it off). Otherwise bf16 operands are multiplied by the
/// f32 kernels after rounding — the same numbers, at f32 speed.
pub fn amx_available() -> bool {
    amx::available()
}

/// Process-wide CPU settings that the fused ops are tuned for; call once at program start,
/// before any other thread exists. Each applies only where the user has not chosen otherwise:
/// - `CANDLE_NUM_THREADS=1`: candle's own element-wise thread pool (used by the ops that remain
///   candle's: gradient accumulation, optimizer updates, losses) runs on the calling thread.
///   Its worker spins ~25,000 pause instructions after every op, which on a 2-core machine
///   steals a core from the rayon threads running the GEMMs (measured: 35 % of the CPU time of
///   a ViT-S training step). Rayon (`RAYON_NUM_THREADS`) still sets the GEMM/fused-op threads.
/// - glibc malloc keeps freed blocks up to 32 MiB for reuse (`M_MMAP_THRESHOLD`) and does not
///   hand memory back below 1 GiB (`M_TRIM_THRESHOLD`): every candle op allocates its output and
///   every gradient starts as a fresh zero tensor, and with glibc's defaults most of those
///   blocks came from fresh `mmap`s, each page faulted in again (≈1 M page faults per step).
///   Blocks above that cap are not mapped separately either (`M_MMAP_MAX` 0): they come from the
///   heap and are reused like the others (forward at batch 32: 22.5 → 24 images/s).
///   `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` / `MALLOC_MMAP_MAX_` take precedence.
pub fn init_cpu_runtime() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        const M_MMAP_MAX: std::ffi::c_int = -4;
        // SAFETY: mallopt only changes allocator parameters; called before other threads run.
        unsafe {
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
            }
            if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
            // glibc caps the threshold at 32 MiB; larger blocks (a ViT-S MLP activation at
            // batch 32 is 39 MB) would still be fresh mappings, faulted in page by page.
            if std::env::var_os("MALLOC_MMAP_MAX_").is_none() {
                mallopt(M_MMAP_MAX, 0);
            }
        }
    }
}

const SQRT1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;
const PAR_CHUNK: usize = 16 * 1024;

/// exp(x) for x ≤ 0 through 2^n · p(r), branch-free so that it vectorises.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round-to-nearest by the 1.5·2^23 trick (no libm call).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // Taylor to r⁷ on |r| ≤ ln2/2: truncation below 1e-8 relative (to r⁶: ~1.2e-7, two ulps).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_452 + r * 0.001_388_889)))));
    // SAFETY: n is an integer in [-126, 0] here (x ∈ [-87, 0]), so the conversion is exact; the
    // saturating `as` conversion would block vectorisation.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    f32::from_bits(((n + 127) as u32) << 23) * p
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * exp_neg(-a * a)).copysign(x)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * SQRT1_2))
}

/// d gelu / dx = Φ(x) + x φ(x)
#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * SQRT1_2)) + x * INV_SQRT_2PI * exp_neg(-0.5 * x * x)
}

/// Whether the element-wise kernels can take their AVX2+FMA build.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn use_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Whether the element-wise kernels take their AVX-512 build (16 lanes: the GELU and softmax
/// polynomials are compute-bound at 8). `IBOT_NO_AVX512=1` keeps them on AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn use_avx512() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("IBOT_NO_AVX512").is_none_or(|v| v.is_empty() || v == "0")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("fma")
    })
}

simd_kernel! {
    fn gelu_kernel((src, dst): (&[f32], &mut [f32])) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = gelu(*s);
        }
    }
}

simd_kernel! {
    fn gelu_grad_kernel((src, dst): (&[f32], &mut [f32])) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = gelu_grad(*s);
        }
    }
}

fn map_f32(
    storage: &CpuStorage,
    layout: &Layout,
    f: fn((&[f32], &mut [f32])),
) -> Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(src) = storage else {
        candle_core::bail!("expected f32 storage")
    };
    let src = match layout.contiguous_offsets() {
        Some((a, b)) => &src[a..b],
        None => candle_core::bail!("input must be contiguous"),
    };
    let mut dst = vec![0f32; src.len()];
    dst.par_chunks_mut(PAR_CHUNK)
        .zip(src.par_chunks(PAR_CHUNK))
        .for_each(|(d, s)| f((s, d)));
    Ok((CpuStorage::F32(dst), layout.shape().clone()))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_f32(storage, layout, gelu_kernel)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let d = arg.contiguous()?.apply_op1_no_bwd(&GeluErfGrad)?;
        Ok(Some(grad_res.mul(&d)?))
    }
}

/// Softmax of one row in place. Eight independent accumulators so that the reductions
/// vectorise without fast-math.
#[inline(always)]
fn softmax_in_place(x: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            m[i] = m[i].max(c[i]);
        }
    }
    let max = chunks.remainder().iter().fold(
        m.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)),
        |a, b| a.max(*b),
    );
    for v in x.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let sum: f32 = acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

simd_kernel! {
    /// Row softmax of `src` [rows, n] into `dst`.
    fn softmax_rows((src, dst, n): (&[f32], &mut [f32], usize)) {
        for (d, s) in dst.chunks_exact_mut(n).zip(src.chunks_exact(n)) {
            d.copy_from_slice(s);
            softmax_in_place(d);
        }
    }
}

simd_kernel! {
    /// Row softmax of `x` [rows, n] in place.
    pub(crate) fn softmax_rows_in_place((x, n): (&mut [f32], usize)) {
        for row in x.chunks_exact_mut(n) {
            softmax_in_place(row);
        }
    }
}

/// Row softmax: rows in parallel, the vectorisable `exp_neg`; backward by `fused::SoftmaxGrad`.
struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = storage else {
            candle_core::bail!("expected f32 storage")
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("input must be contiguous")
        };
        let src = &src[a..b];
        let n = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        let rows_per_task = (PAR_CHUNK / n).max(1) * n;
        dst.par_chunks_mut(rows_per_task)
            .zip(src.par_chunks(rows_per_task))
            .for_each(|(d, s)| softmax_rows((s, d, n)));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &fused::SoftmaxGrad)?))
    }
}

struct GeluErfGrad;

impl CustomOp1 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_f32(storage, layout, gelu_grad_kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_and_composed_paths_agree_and_composed_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 8), &dev)?;
        let w = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let b = Tensor::randn(0f32, 1.0, 8, &dev)?;
        let xv = Var::from_tensor(&x)?;
        let fused = layer_norm(&x, &w, &b, 1e-6)?;
        let composed = layer_norm(xv.as_tensor(), &w, &b, 1e-6)?;
        let diff = (fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        let sm_f = softmax_last_dim(&x)?;
        let sm_c = softmax_last_dim(xv.as_tensor())?;
        let diff = (sm_f - &sm_c)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        let loss = (composed.sqr()?.sum_all()? + sm_c.sqr()?.sum_all()?)?;
        let grads = loss.backward()?;
        let g = grads
            .get(xv.as_tensor())
            .expect("gradient reaches the input");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn gelu_matches_candle_exact_gelu_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (3, 40_000), &dev)? + 0.0)?;
        let ours = gelu_erf(&x)?;
        let reference = x.gelu_erf()?;
        let diff = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "gelu max abs diff {diff}");
        for v in [-90.0f32, -10.0, -1.0, 0.0, 1e-3, 2.0, 50.0] {
            let want = 0.5 * v as f64 * (1.0 + erf_f64(v as f64 / 2f64.sqrt()));
            assert!(
                (gelu(v) as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
                "gelu({v})"
            );
        }
        let xv = Var::from_tensor(&x)?;
        let g_ours = gelu_erf(xv.as_tensor())?.sum_all()?.backward()?;
        let g_ref = xv.as_tensor().gelu_erf()?.sum_all()?.backward()?;
        let diff = (g_ours.get(xv.as_tensor()).unwrap() - g_ref.get(xv.as_tensor()).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "gelu grad max abs diff {diff}");
        Ok(())
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The fused distillation ops against the composed candle path (forward and the logits'
    /// gradient under an arbitrary per-row weighting) and against an f64 evaluation.
    #[test]
    fn soft_cross_entropy_and_centered_softmax_match_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, k, temp) = (3 * 7, 300, 0.1);
        let logits = (Tensor::randn(0f32, 1.0, (3, 7, k), &dev)? * 4.0)?;
        let teacher = (Tensor::randn(0f32, 1.0, (3, 7, k), &dev)? * 3.0)?;
        let center = Tensor::randn(0f32, 0.5, (1, 1, k), &dev)?;
        let weights = Tensor::randn(0f32, 1.0, (3, 7), &dev)?;

        let p = centered_softmax(&teacher, &center, 0.04)?;
        let p_ref = with_composed_ops(|| centered_softmax(&teacher, &center, 0.04))?;
        assert!(max_abs_diff(&p, &p_ref)? < 1e-6);
        assert!(max_abs_diff(&p.sum(D::Minus1)?, &Tensor::ones((3, 7), DType::F32, &dev)?)? < 1e-5);

        let x = Var::from_tensor(&logits)?;
        let ce = soft_cross_entropy(x.as_tensor(), &p, temp)?;
        let ce_ref = with_composed_ops(|| soft_cross_entropy(x.as_tensor(), &p, temp))?;
        assert_eq!(ce.dims(), [3, 7]);
        assert!(max_abs_diff(&ce, &ce_ref)? < 2e-4 * ce_ref.abs()?.max_all()?.to_scalar::<f32>()?);
        // f64 per-row cross-entropy.
        let (lx, lp) = (
            logits.flatten_to(1)?.to_vec2::<f32>()?,
            p.flatten_to(1)?.to_vec2::<f32>()?,
        );
        let got = ce.flatten_all()?.to_vec1::<f32>()?;
        for r in 0..rows {
            let z: Vec<f64> = lx[r].iter().map(|&v| v as f64 / temp).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let want: f64 = -lp[r]
                .iter()
                .zip(&z)
                .map(|(&p, z)| p as f64 * (z - lse))
                .sum::<f64>();
            assert!(
                (got[r] as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                "row {r}"
            );
        }
        let g = (ce * &weights)?.sum_all()?.backward()?;
        let g_ref = with_composed_ops(|| -> Result<_> {
            (soft_cross_entropy(x.as_tensor(), &p, temp)? * &weights)?
                .sum_all()?
                .backward()
        })?;
        let (g, g_ref) = (
            g.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        );
        let scale = g_ref.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(max_abs_diff(g, g_ref)? < 1e-4 * scale, "gradient");

        let sums = sum_leading_dims(&teacher)?;
        let sums_ref = teacher.reshape((rows, k))?.sum(0)?;
        assert!(max_abs_diff(&sums, &sums_ref)? < 1e-4);
        Ok(())
    }

    #[test]
    fn weight_norm_matches_the_composed_ops_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (300, 40), &dev)?)?;
        let g = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (300, 1), &dev)? + 2.0)?)?;
        let upstream = Tensor::randn(0f32, 1.0, (300, 40), &dev)?;
        let run = || -> Result<(Tensor, Tensor, Tensor)> {
            let w = weight_norm_rows(v.as_tensor(), g.as_tensor())?;
            let grads = (&w * &upstream)?.sum_all()?.backward()?;
            let dv = grads.get(v.as_tensor()).unwrap().clone();
            let dg = grads.get(g.as_tensor()).unwrap().clone();
            Ok((w, dv, dg))
        };
        let (w, dv, dg) = run()?;
        let (w_ref, dv_ref, dg_ref) = with_composed_ops(run)?;
        assert!(max_abs_diff(&w, &w_ref)? < 1e-6);
        assert!(max_abs_diff(&dv, &dv_ref)? < 1e-5);
        assert_eq!(dg.dims(), [300, 1]);
        assert!(max_abs_diff(&dg, &dg_ref)? < 1e-4);
        // A frozen gain (a detached tensor) gets no gradient; v still does.
        let frozen = g.as_tensor().detach();
        let grads = weight_norm_rows(v.as_tensor(), &frozen)?
            .sum_all()?
            .backward()?;
        assert!(grads.get(&frozen).is_none() && grads.get(v.as_tensor()).is_some());
        Ok(())
    }

    /// The inference-only residual Linear is the Linear followed by the residual add, to the
    /// bit (same kernel, same order of the three additions), and the composed ops within f32
    /// rounding; shapes it does not take fall back.
    #[test]
    fn linear_residual_is_linear_then_residual_add() -> Result<()> {
        let dev = Device::Cpu;
        let (rows, k, n) = (37, 40, 70);
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
        let w = Tensor::randn(0f32, 0.2, (n, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, n, &dev)?;
        let r = Tensor::randn(0f32, 1.0, (1, rows, n), &dev)?;
        let Some(fused) = linear_residual(&x, &w, &b, &r, None)? else {
            return Ok(()); // no AVX-512 here: nothing to compare
        };
        let y = linear(&x, &w, &b, Activation::Identity, None, None)?;
        let unfused = residual_add(&r, &y.reshape((1, rows, n))?)?;
        assert_eq!(fused.dims(), r.dims());
        assert_eq!(max_abs_diff(&fused, &unfused)?, 0.0);
        let composed = (r.squeeze(0)? + x.matmul(&w.t()?)?.broadcast_add(&b)?)?;
        assert!(max_abs_diff(&fused.squeeze(0)?, &composed)? < 1e-5);
        let short = x.narrow(0, 0, 8)?;
        let r_short = r.narrow(1, 0, 8)?.contiguous()?;
        assert!(linear_residual(&short, &w, &b, &r_short, None)?.is_none());
        let tracked = Var::from_tensor(&x)?;
        assert!(linear_residual(tracked.as_tensor(), &w, &b, &r, None)?.is_none());
        Ok(())
    }

    /// candle-core is patched (vendor/README.md) to store a gradient's first contribution as it
    /// is: contributions from several uses, subtractions, broadcasts and views must still sum.
    #[test]
    fn backward_sums_every_contribution() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(
            &[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]],
            &dev,
        )?)?;
        let xt = x.as_tensor();
        // f = Σ x² + Σ x − Σ exp(x) − Σ_rows (Σ_cols x)·x[:, 0] + Σ (xᵀ)·3
        let row_sums = xt.sum_keepdim(1)?;
        let f = ((xt.sqr()?.sum_all()? + xt.sum_all()?)?
            - xt.exp()?.sum_all()?
            - (row_sums * xt.narrow(1, 0, 1)?)?.sum_all()?
            + (xt.t()? * 3.0)?.sum_all()?)?;
        let g = f.backward()?;
        let g = g.get(xt).unwrap().to_vec2::<f32>()?;
        let v = [[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]];
        for r in 0..2 {
            let s: f32 = v[r].iter().sum();
            for c in 0..3 {
                let mut want = 2.0 * v[r][c] + 1.0 - v[r][c].exp() - v[r][0] + 3.0;
                if c == 0 {
                    want -= s;
                }
                assert!(
                    (g[r][c] - want).abs() < 1e-5,
                    "({r},{c}): {} vs {want}",
                    g[r][c]
                );
            }
        }
        Ok(())
    }

    /// Reference erf in f64 (W. J. Cody's rational approximations are overkill here: a Taylor
    /// series for small |x| and the continued fraction for large |x| suffice to 1e-12).
    fn erf_f64(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let mut sum = 0.0;
            let mut term = a;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -a * a / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        r.copysign(x)
    }
}
