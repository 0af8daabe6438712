use ndarray::ArrayView2;

/// `out[i·m + j] = a_i · b_j` for the rows of `a` (r × d) and `b` (m × d), on one thread
/// (callers parallelise over row blocks of `a`). Both views must be in standard layout.
pub(crate) fn dot_rows(a: ArrayView2<f32>, b: ArrayView2<f32>, out: &mut [f32]) {
    let (r, d) = a.dim();
    let m = b.nrows();
    assert_eq!(b.ncols(), d, "feature dimensions differ");
    assert!(out.len() >= r * m, "output block too small");
    assert!(a.is_standard_layout() && b.is_standard_layout());
    if r == 0 || m == 0 {
        return;
    }
    if d == 0 {
        out[..r * m].fill(0.0);
        return;
    }
    // SAFETY: `a` is r×d and `b` is m×d, both row-major and contiguous (asserted); `out` holds at least
    // r×m elements and is exclusively borrowed, so it cannot alias the shared inputs.
    unsafe {
        gemm::gemm(
            r,
            m,
            d,
            out.as_mut_ptr(),
            1,
            m as isize,
            false,
            a.as_ptr(),
            1,
            d as isize,
            b.as_ptr(),
            d as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// ‖row‖² of each row, accumulated in f64.
pub(crate) fn row_sq_norms(x: ArrayView2<f32>) -> Vec<f32> {
    x.rows()
        .into_iter()
        .map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32)
        .collect()
}

/// ‖a − b‖², accumulated in f64.
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = (x - y) as f64;
            t * t
        })
        .sum()
}

/// Rows per GEMM block: the block, its distances and the centres stay in cache while a block is
/// assigned and accumulated (scikit-learn uses the same chunk size).
pub(crate) const CHUNK: usize = 256;
/// Upper bound on row segments; each segment owns partial sums that are reduced in segment order.
const MAX_SEGMENTS: usize = 32;
/// Budget for all segments' partial sums together.
const SEGMENT_MEMORY: usize = 256 << 20;

/// Contiguous row ranges, each a whole number of [`CHUNK`]s. They depend only on `n` and the memory a
/// segment needs, never on the thread count, so sums reduced segment by segment are reproducible.
pub(crate) fn segments(n: usize, bytes_per_segment: usize) -> Vec<std::ops::Range<usize>> {
    let chunks = n.div_ceil(CHUNK);
    let by_memory = (SEGMENT_MEMORY / bytes_per_segment.max(1)).max(1);
    let s = chunks.min(MAX_SEGMENTS).min(by_memory).max(1);
    (0..s)
        .map(|i| (i * chunks / s * CHUNK).min(n)..((i + 1) * chunks / s * CHUNK).min(n))
        .collect()
}

/// Mutable sub-slices of `buf` for consecutive row `ranges` of `stride` elements per row.
pub(crate) fn split_rows<'a, T>(
    mut buf: &'a mut [T],
    ranges: &[std::ops::Range<usize>],
    stride: usize,
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = buf.split_at_mut(r.len() * stride);
        out.push(head);
        buf = tail;
    }
    out
}
