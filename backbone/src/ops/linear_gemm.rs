//! The forward GEMM of the fused Linear on AVX-512 CPUs, f32: `y = epilogue(x · wᵀ + b)`.
//!
//! A general GEMM (the `gemm` crate) writes its whole output before the bias, the GELU, the
//! drop-path factor or the residual can be applied, so each of those is another pass over an
//! output that no longer fits in cache (a ViT-S MLP activation is 39 MB at batch 32), and a
//! GEMM over a block of rows repacks the weights every call. Here the weights are packed once
//! per call into panels of [`NR`] output columns, the rows are split into blocks that rayon tasks
//! take whole, and each 6 × 64 tile of the output gets the bias in registers and then the caller's
//! epilogue while it is still in L1. Each output is one FMA chain over k in order, plus the bias.
//! The general GEMM blocks k and adds the bias first, so a layer's outputs can differ in the last
//! bit between this kernel and the fallback (fewer than 16 rows, or a CPU without AVX-512).
//!
//! Used for f32 when the CPU has AVX-512F (and `IBOT_NO_AVX512` is unset), by the Linear forward
//! when the rows of x are contiguous and at least 16, and by the attention core for its two
//! GEMMs per (sample, head); everything else goes through [`super::gemm::matmul`].

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::{MatMut, MatRef};

/// Output columns per packed weight panel: four 16-lane registers.
pub(crate) const NR: usize = 64;
/// Rows per register tile: 6 × 4 accumulators + 4 weight vectors + 1 broadcast ≤ 32 registers.
const MR: usize = 6;
/// Rows per rayon task, about: the task's input rows stay in L2 while every weight panel
/// passes by.
const BLOCK_ROWS: usize = 32 * MR;
/// Bytes of packed weight panels one group may take: a good part of a 2 MiB L2.
const GROUP_BYTES: usize = 1 << 20;
/// Panel rows (values of k) ahead that the tile loop prefetches into L1: without it the
/// kernel ran ~8 % under the `gemm` crate's on these shapes, waiting on L2.
const PREFETCH: usize = 16;
/// Packed sizes (floats) from which the panels are packed in parallel.
const PAR_PACK: usize = 1 << 16;

/// Rows per task: about BLOCK_ROWS, the same number of blocks for every thread, whole tiles
/// where that does not add a block.
fn block_rows(rows: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let per_thread = rows.div_ceil(threads);
    let blocks = threads * per_thread.div_ceil(BLOCK_ROWS).max(1);
    let even = rows.div_ceil(blocks).max(1);
    let whole_tiles = even.next_multiple_of(MR);
    if rows.div_ceil(whole_tiles) == blocks {
        whole_tiles
    } else {
        even
    }
}

/// Whether [`linear_f32`] may run here: AVX-512F and the fused CPU kernels' AVX-512 switch.
pub(crate) fn available() -> bool {
    super::use_avx512()
}

/// Weights w [n × k] repacked as ⌈n / NR⌉ panels of k rows × NR columns, 64-byte aligned,
/// zero beyond column n.
#[derive(Default)]
pub(crate) struct PackedWeights {
    buf: Vec<f32>,
    start: usize,
    n: usize,
    k: usize,
}

impl PackedWeights {
    /// # Safety
    /// `w` must be valid for n × k elements through its strides.
    pub unsafe fn pack(w: MatRef, n: usize, k: usize) -> Self {
        let mut packed = Self::default();
        packed.repack(w, n, k);
        packed
    }

    /// [`Self::pack`] into this buffer, reusing its allocation (per-task scratch).
    ///
    /// # Safety
    /// As [`Self::pack`].
    pub unsafe fn repack(&mut self, w: MatRef, n: usize, k: usize) {
        let len = n.div_ceil(NR) * k * NR;
        let buf = &mut self.buf;
        buf.clear();
        buf.reserve(len + 16);
        let start = buf.as_ptr().align_offset(64).min(16);
        let panels_out = &mut buf.spare_capacity_mut()[start..start + len];
        let one = |(j, panel): (usize, &mut [MaybeUninit<f32>])| pack_panel(w, n, k, j, panel);
        if len >= PAR_PACK {
            panels_out.par_chunks_mut(k * NR).enumerate().for_each(one);
        } else {
            panels_out.chunks_mut(k * NR).enumerate().for_each(one);
        }
        // SAFETY: the panels (start..start + len) were written whole; the alignment slack before
        // them is never read.
        buf.spare_capacity_mut()[..start].fill(MaybeUninit::new(0.0));
        buf.set_len(start + len);
        (self.start, self.n, self.k) = (start, n, k);
    }

    fn panel(&self, j: usize) -> *const f32 {
        self.buf[self.start + j * self.k * NR..].as_ptr()
    }
}

/// Panel j of w (columns j·NR.. of the packed layout): `panel[p · NR + c] = w[j·NR + c, p]`.
unsafe fn pack_panel(w: MatRef, n: usize, k: usize, j: usize, panel: &mut [MaybeUninit<f32>]) {
    let cols = NR.min(n - j * NR);
    let mut p0 = 0;
    if w.rs == 1 && cols == NR {
        // Column-major weights (the transpose of a row-major matrix): rows copy as they are.
        for p in 0..k {
            let src = w.ptr.offset((j * NR) as isize + p as isize * w.cs);
            std::ptr::copy_nonoverlapping(src, panel[p * NR..].as_mut_ptr() as *mut f32, NR);
        }
        return;
    }
    if w.cs == 1 && cols == NR {
        // Row-major weights: 16 × 16 blocks transposed in registers.
        while p0 + 16 <= k {
            for cb in 0..NR / 16 {
                let src = w
                    .ptr
                    .offset((j * NR + cb * 16) as isize * w.rs + p0 as isize);
                transpose16(
                    src,
                    w.rs,
                    panel[p0 * NR + cb * 16..].as_mut_ptr() as *mut f32,
                    NR,
                );
            }
            p0 += 16;
        }
    }
    // The rest element by element, k in blocks of 16 so that the destination rows stay in L1
    // while the panel's columns are read.
    for p0 in (p0..k).step_by(16) {
        let p1 = (p0 + 16).min(k);
        for c in 0..NR {
            for p in p0..p1 {
                let v = if c < cols { w.at(j * NR + c, p) } else { 0.0 };
                panel[p * NR + c].write(v);
            }
        }
    }
}

/// dst[p · drs + c] = src[c · srs + p] for c, p < 16: a 16 × 16 transpose in three rounds of
/// shuffles (32-bit, 64-bit, then 128-bit lanes twice).
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, srs: isize, dst: *mut f32, drs: usize) {
    let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.offset(i as isize * srs)));
    let mut a = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let pd = _mm512_castps_pd;
    let ps = _mm512_castpd_ps;
    let mut b = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a0, a1, a2, a3) = (a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]);
        b[4 * i] = ps(_mm512_unpacklo_pd(pd(a0), pd(a2)));
        b[4 * i + 1] = ps(_mm512_unpackhi_pd(pd(a0), pd(a2)));
        b[4 * i + 2] = ps(_mm512_unpacklo_pd(pd(a1), pd(a3)));
        b[4 * i + 3] = ps(_mm512_unpackhi_pd(pd(a1), pd(a3)));
    }
    // Each 128-bit lane L of b[4i + q] now holds rows 4i..4i+4 of column 4L + q.
    for q in 0..4 {
        let c0 = _mm512_shuffle_f32x4::<0x88>(b[q], b[4 + q]);
        let c1 = _mm512_shuffle_f32x4::<0xdd>(b[q], b[4 + q]);
        let c2 = _mm512_shuffle_f32x4::<0x88>(b[8 + q], b[12 + q]);
        let c3 = _mm512_shuffle_f32x4::<0xdd>(b[8 + q], b[12 + q]);
        let store = |col: usize, v: __m512| _mm512_storeu_ps(dst.add(col * drs), v);
        store(q, _mm512_shuffle_f32x4::<0x88>(c0, c2));
        store(8 + q, _mm512_shuffle_f32x4::<0xdd>(c0, c2));
        store(4 + q, _mm512_shuffle_f32x4::<0x88>(c1, c3));
        store(12 + q, _mm512_shuffle_f32x4::<0xdd>(c1, c3));
    }
}

/// What happens to each finished output segment: `(row, first column, values)`; the values
/// already include the bias.
pub(crate) type Epilogue<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// `y[rows × n] = x[rows × k] · wᵀ (+ bias)`, then `epilogue` on every row segment of ≤ NR
/// columns while it is in L1.
///
/// # Safety
/// [`available`] must be true. `x` must be valid for rows × k elements with column stride 1,
/// `y` for rows × n with its row stride, not overlapping `x` or `w`; `bias`, when given, has n
/// elements.
pub(crate) unsafe fn linear_f32(
    rows: usize,
    x: MatRef,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    y: MatMut,
    epilogue: Epilogue,
) {
    let block_rows = block_rows(rows, rayon::current_num_threads());
    (0..rows.div_ceil(block_rows))
        .into_par_iter()
        .for_each(|b| {
            let r0 = b * block_rows;
            linear_rows(r0..(r0 + block_rows).min(rows), x, w, bias, y, epilogue)
        });
}

/// [`linear_f32`] for the rows in `rows`, on the calling thread.
///
/// # Safety
/// As [`linear_f32`], for the rows in `rows`; the weights must have n > 0 and k > 0.
pub(crate) unsafe fn linear_rows(
    rows: std::ops::Range<usize>,
    x: MatRef,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    y: MatMut,
    epilogue: Epilogue,
) {
    debug_assert_eq!(x.cs, 1);
    let (n, k) = (w.n, w.k);
    // Panels in groups that fit in L2 together; within a group each row tile (in L1) meets
    // every panel of the group before the next tile is read.
    let panels = n.div_ceil(NR);
    let group = (GROUP_BYTES / (k * NR * 4).max(1)).clamp(1, panels);
    for g0 in (0..panels).step_by(group) {
        let mut r = rows.start;
        while r < rows.end {
            let m = MR.min(rows.end - r);
            for j in g0..(g0 + group).min(panels) {
                let c0 = j * NR;
                let cols = NR.min(n - c0);
                let t = Tile {
                    k,
                    x: x.ptr.offset(r as isize * x.rs),
                    xrs: x.rs,
                    w: w.panel(j),
                    y: y.at(r, c0),
                    yrs: y.rs,
                    cols,
                    bias: bias.map(|b| &b[c0..c0 + cols]),
                };
                // Only the vectors that hold live columns (a ragged last panel).
                match (m, cols.div_ceil(16)) {
                    (6, 4) => t.run::<6, 4>(),
                    (6, 3) => t.run::<6, 3>(),
                    (6, 2) => t.run::<6, 2>(),
                    (6, _) => t.run::<6, 1>(),
                    (5, 4) => t.run::<5, 4>(),
                    (5, 3) => t.run::<5, 3>(),
                    (5, 2) => t.run::<5, 2>(),
                    (5, _) => t.run::<5, 1>(),
                    (4, 4) => t.run::<4, 4>(),
                    (4, 3) => t.run::<4, 3>(),
                    (4, 2) => t.run::<4, 2>(),
                    (4, _) => t.run::<4, 1>(),
                    (3, 4) => t.run::<3, 4>(),
                    (3, 3) => t.run::<3, 3>(),
                    (3, 2) => t.run::<3, 2>(),
                    (3, _) => t.run::<3, 1>(),
                    (2, 4) => t.run::<2, 4>(),
                    (2, 3) => t.run::<2, 3>(),
                    (2, 2) => t.run::<2, 2>(),
                    (2, _) => t.run::<2, 1>(),
                    (_, 4) => t.run::<1, 4>(),
                    (_, 3) => t.run::<1, 3>(),
                    (_, 2) => t.run::<1, 2>(),
                    (_, _) => t.run::<1, 1>(),
                }
                for i in 0..m {
                    let seg = std::slice::from_raw_parts_mut(y.at(r + i, c0), cols);
                    epilogue(r + i, c0, seg);
                }
            }
            r += m;
        }
    }
}

/// One M × (16·NV) tile: M rows of x (row stride `xrs`) times a packed panel, plus the bias,
/// into the first `cols` columns of y.
struct Tile<'a> {
    k: usize,
    x: *const f32,
    xrs: isize,
    w: *const f32,
    y: *mut f32,
    yrs: isize,
    cols: usize,
    bias: Option<&'a [f32]>,
}

impl Tile<'_> {
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const M: usize, const NV: usize>(&self) {
        let cols = self.cols;
        let mut acc = [[_mm512_setzero_ps(); NV]; M];
        let mut w = self.w;
        for p in 0..self.k as isize {
            let wv: [__m512; NV] = std::array::from_fn(|v| _mm512_load_ps(w.add(16 * v)));
            for v in 0..NV {
                // (wrapping: near the panel's end this points past the buffer; a prefetch
                // never faults.)
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH * NR + 16 * v) as *const i8);
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*self.x.offset(i as isize * self.xrs + p));
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(a, wv[v], acc[v]);
                }
            }
            w = w.add(NR);
        }
        if let Some(bias) = self.bias {
            for v in 0..NV {
                let b = _mm512_maskz_loadu_ps(lane_mask(cols, v), bias.as_ptr().add(16 * v));
                for acc in acc.iter_mut() {
                    acc[v] = _mm512_add_ps(acc[v], b);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let row = self.y.offset(i as isize * self.yrs);
            for (v, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(row.add(16 * v), lane_mask(cols, v), *a);
            }
        }
    }
}

/// The lanes of vector `v` (columns 16v..16v+16) that lie below `cols`.
#[inline(always)]
fn lane_mask(cols: usize, v: usize) -> __mmask16 {
    let live = cols.saturating_sub(16 * v).min(16);
    ((1u32 << live) - 1) as __mmask16
}

#[cfg(test)]
mod tests {
    use super::super::gemm::tests::{random, reference};
    use super::*;

    #[test]
    fn packed_linear_matches_the_reference_with_bias_and_epilogue() {
        if !available() {
            return;
        }
        for (rows, n, k) in [
            (1, 1, 1),
            (7, 65, 3),
            (97, 64, 40),
            (200, 130, 77),
            (13, 200, 384),
        ] {
            let x = random(rows * k, 1);
            let w = random(n * k, 2);
            let bias = random(n, 3);
            let xv = MatRef::new(&x, 0, k, 1);
            let wv = MatRef::new(&w, 0, k, 1);
            let packed = unsafe { PackedWeights::pack(wv, n, k) };
            let mut y = vec![f32::NAN; rows * n];
            let epi = |r: usize, c0: usize, seg: &mut [f32]| {
                for (c, v) in seg.iter_mut().enumerate() {
                    *v = *v * 2.0 + (r * 1000 + c0 + c) as f32 * 1e-6;
                }
            };
            unsafe {
                linear_f32(
                    rows,
                    xv,
                    &packed,
                    Some(&bias),
                    MatMut::new(&mut y, 0, n),
                    &epi,
                )
            };
            let want = reference(rows, n, k, xv, wv.t(), 1.0, false, None);
            for r in 0..rows {
                for c in 0..n {
                    let w = (want[r * n + c] + bias[c] as f64) * 2.0 + (r * 1000 + c) as f64 * 1e-6;
                    let got = y[r * n + c] as f64;
                    assert!(
                        (got - w).abs() < 1e-5 * (1.0 + w.abs()),
                        "{rows}x{n}x{k} at ({r}, {c}): {got} vs {w}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::super::gemm::{matmul, tests::random, Precision};
    use super::*;

    /// cargo test --release -p backbone linear_gemm::speed -- --ignored --nocapture
    #[test]
    #[ignore]
    fn gflops() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for (rows, n, k) in [(1576, 384, 1536), (1576, 1536, 384), (1576, 1152, 384)] {
            let x = random(rows * k, 1);
            let w = random(n * k, 2);
            let xv = MatRef::new(&x, 0, k, 1);
            let wv = MatRef::new(&w, 0, k, 1);
            let mut y = vec![0f32; rows * n];
            crate::ops::init_cpu_runtime();
            let flop = 2.0 * (rows * n * k) as f64;
            pool.install(|| {
                for _ in 0..2 {
                    let t = std::time::Instant::now();
                    let packed = unsafe { PackedWeights::pack(wv, n, k) };
                    let tp = t.elapsed().as_secs_f64();
                    unsafe {
                        linear_f32(
                            rows,
                            xv,
                            &packed,
                            None,
                            MatMut::new(&mut y, 0, n),
                            &|_, _, _| {},
                        )
                    };
                    let ours = t.elapsed().as_secs_f64();
                    let t = std::time::Instant::now();
                    unsafe {
                        matmul(
                            rows,
                            n,
                            k,
                            MatMut::new(&mut y, 0, n),
                            false,
                            xv,
                            wv.t(),
                            1.0,
                            Precision::F32,
                            1,
                        )
                    };
                    let theirs = t.elapsed().as_secs_f64();
                    println!(
                        "{rows}x{n}x{k}: ours {:.1} GFLOP/s (pack {:.2} ms), gemm crate {:.1}",
                        flop / ours / 1e9,
                        tp * 1e3,
                        flop / theirs / 1e9
                    );
                }
            });
        }
    }
}
