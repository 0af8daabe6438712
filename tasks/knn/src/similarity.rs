use ndarray::{ArrayView2, ArrayViewMut2};

/// `out = queries · trainᵀ` on one thread (callers parallelise over query blocks).
pub(crate) fn similarity(
    queries: ArrayView2<f32>,
    train: ArrayView2<f32>,
    mut out: ArrayViewMut2<f32>,
) {
    let (m, k) = queries.dim();
    let n = train.nrows();
    assert_eq!(train.ncols(), k, "feature dimensions differ");
    assert_eq!(out.dim(), (m, n), "output block has the wrong shape");
    let (qs, ts) = (queries.strides(), train.strides());
    let os = [out.strides()[0], out.strides()[1]];
    // SAFETY: the three views are valid for the shapes asserted above and their own strides; `out` is
    // exclusively borrowed and cannot alias the shared inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            os[1],
            os[0],
            false,
            queries.as_ptr(),
            qs[1],
            qs[0],
            train.as_ptr(),
            ts[0],
            ts[1],
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
