//! Strided GEMM entry point of the fused CPU ops, f32 or bf16 operands with f32 accumulation.
//!
//! f32 runs on the `gemm` crate (the one candle uses), built with its `x86-v4` feature so that
//! AVX-512 CPUs get its AVX-512 kernels (≈2× its AVX2 kernels here; detected at run time, other
//! CPUs keep AVX2/FMA or scalar code). Operands are strided views, so transposed weights, one
//! head's columns of a fused qkv buffer or a gradient read column-wise need no copy.
//!
//! bf16 ("autocast": operands rounded to bf16, products accumulated in f32, result in f32) runs
//! on AMX tiles where the CPU and the OS allow it ([`super::amx`]); elsewhere the operands are
//! rounded to bf16 values held in f32 and the f32 GEMM multiplies them — the same numbers up to
//! summation order.

use ::gemm::Parallelism;
use rayon::prelude::*;

use super::amx;

/// Operand precision of a GEMM; accumulation and the result are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// Operands rounded to bf16 (round to nearest even), f32 accumulation.
    Bf16,
}

/// A read-only strided matrix view: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a MatRef is only a pointer into a buffer that outlives the GEMM call that reads it;
// GEMMs only read through it.
unsafe impl Send for MatRef {}
unsafe impl Sync for MatRef {}

impl MatRef {
    pub fn new(data: &[f32], offset: usize, rs: usize, cs: usize) -> Self {
        Self {
            ptr: data[offset..].as_ptr(),
            rs: rs as isize,
            cs: cs as isize,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }

    #[inline(always)]
    pub unsafe fn at(&self, i: usize, j: usize) -> f32 {
        *self.ptr.offset(i as isize * self.rs + j as isize * self.cs)
    }
}

/// A mutable row-major destination with row stride `rs` (column stride 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
}

// SAFETY: as MatRef; callers hand disjoint destinations to concurrent GEMMs.
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}

impl MatMut {
    /// Element (i, j)'s address. (A method, so that closures capture the whole Send view.)
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> *mut f32 {
        self.ptr.wrapping_offset(i as isize * self.rs + j as isize)
    }

    pub fn new(data: &mut [f32], offset: usize, rs: usize) -> Self {
        Self {
            ptr: data[offset..].as_mut_ptr(),
            rs: rs as isize,
        }
    }
}

/// Threads a GEMM may use: the rayon pool's size, or 1 inside an already parallel task.
pub(crate) fn pool_threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `dst[m×n] := (accumulate ? dst : 0) + scale · a[m×k] · b[k×n]`.
///
/// # Safety
/// `a`, `b` must be valid for the index ranges `m×k`, `k×n`; `dst` for `m×n` with its row
/// stride, not overlapping `a` or `b`, and not written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    scale: f32,
    precision: Precision,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.ptr.offset(i as isize * dst.rs), n).fill(0.0);
            }
        }
        return;
    }
    match precision {
        Precision::F32 => gemm_f32(m, n, k, dst, accumulate, a, b, scale, threads),
        Precision::Bf16 if amx::available() => {
            amx::gemm_bf16(m, n, k, dst, accumulate, a, b, scale, threads)
        }
        Precision::Bf16 => {
            // Round both operands to bf16 values (kept in f32), then multiply exactly those.
            let ra = rounded_copy(m, k, a, threads);
            let rb = rounded_copy(k, n, b, threads);
            gemm_f32(
                m,
                n,
                k,
                dst,
                accumulate,
                MatRef::new(&ra, 0, k, 1),
                MatRef::new(&rb, 0, n, 1),
                scale,
                threads,
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    scale: f32,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    ::gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        1,
        dst.rs,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0f32,
        scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// bf16 rounding of an f32 (round to nearest even; NaN stays NaN), as its 16 high bits.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `x` rounded to the nearest bf16, as an f32.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// A contiguous row-major copy of `a` (rows × cols) rounded to bf16 values.
unsafe fn rounded_copy(rows: usize, cols: usize, a: MatRef, threads: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    let fill = |(i, row): (usize, &mut [f32])| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = round_bf16(a.at(i, j));
        }
    };
    if threads > 1 && rows * cols >= 1 << 16 {
        out.par_chunks_mut(cols).enumerate().for_each(fill);
    } else {
        out.chunks_mut(cols).enumerate().for_each(fill);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    pub fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// f64 reference of (accumulate ? dst : 0) + scale·op(a)·op(b), operands optionally bf16-rounded.
    #[allow(clippy::too_many_arguments)]
    pub fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: MatRef,
        b: MatRef,
        scale: f32,
        round: bool,
        init: Option<&[f32]>,
    ) -> Vec<f64> {
        let r = |x: f32| if round { round_bf16(x) } else { x } as f64;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += unsafe { r(a.at(i, p)) * r(b.at(p, j)) };
                }
                out[i * n + j] = init.map_or(0.0, |d| d[i * n + j] as f64) + scale as f64 * s;
            }
        }
        out
    }

    fn check(m: usize, n: usize, k: usize, ta: bool, tb: bool, precision: Precision) {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        // Stored transposed when ta/tb: the view reads them back as m×k / k×n.
        let av = if ta {
            MatRef::new(&a, 0, 1, m)
        } else {
            MatRef::new(&a, 0, k, 1)
        };
        let bv = if tb {
            MatRef::new(&b, 0, 1, k)
        } else {
            MatRef::new(&b, 0, n, 1)
        };
        for accumulate in [false, true] {
            for threads in [1, 2] {
                let init = random(m * n, 3);
                let mut dst = init.clone();
                unsafe {
                    matmul(
                        m,
                        n,
                        k,
                        MatMut::new(&mut dst, 0, n),
                        accumulate,
                        av,
                        bv,
                        0.5,
                        precision,
                        threads,
                    )
                };
                let want = reference(
                    m,
                    n,
                    k,
                    av,
                    bv,
                    0.5,
                    precision == Precision::Bf16,
                    accumulate.then_some(&init[..]),
                );
                let scale = want.iter().fold(1e-3f64, |a, b| a.max(b.abs()));
                let err = dst
                    .iter()
                    .zip(&want)
                    .fold(0f64, |e, (x, y)| e.max((*x as f64 - y).abs()));
                assert!(
                    err / scale < 2e-6,
                    "{precision:?} {m}x{n}x{k} ta={ta} tb={tb} acc={accumulate} t={threads}: rel err {}",
                    err / scale
                );
            }
        }
    }

    #[test]
    fn f32_and_bf16_gemms_match_the_reference_for_all_layouts() {
        for precision in [Precision::F32, Precision::Bf16] {
            for (m, n, k) in [
                (1, 1, 1),
                (3, 5, 7),
                (17, 33, 65),
                (40, 16, 32),
                (64, 64, 64),
                (197, 64, 197),
                (100, 130, 300),
            ] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    check(m, n, k, ta, tb, precision);
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        for x in random(1000, 9) {
            let want = half::bf16::from_f32(x).to_bits();
            assert_eq!(bf16_bits(x), want, "{x}");
        }
    }
}
