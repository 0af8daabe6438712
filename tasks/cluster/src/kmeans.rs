//! The k-means driver: scikit-learn's `KMeans.fit` for dense input with `algorithm="lloyd"`.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::gemm_block::row_sq_norms;
use crate::lloyd::Lloyd;
pub use crate::lloyd::Stop;
use crate::plusplus::seed_centers;
use crate::{ClusterError, Result};

/// k-means settings; the defaults are scikit-learn's, except `restarts` (sklearn's `n_init="auto"`
/// is 1 for k-means++; the protocol asks for several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmeansOptions {
    /// k-means++ initialisations; the run with the lowest inertia is kept (sklearn's `n_init`).
    pub restarts: usize,
    /// Lloyd iterations per run.
    pub max_iter: usize,
    /// Relative tolerance: a run stops when Σ‖centre shift‖² ≤ tol · mean per-feature variance.
    pub tol: f64,
    /// Seed of the k-means++ draws (one stream for all restarts, so restart r depends on seed only).
    pub seed: u64,
}

impl Default for KmeansOptions {
    fn default() -> Self {
        KmeansOptions {
            restarts: 10,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        }
    }
}

/// One restart's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub inertia: f64,
    pub iterations: usize,
    pub stop: Stop,
}

#[derive(Debug, Clone)]
pub struct KmeansResult {
    /// Cluster of each row, in `0..k`.
    pub labels: Vec<usize>,
    /// k × d centres in the input's coordinates.
    pub centers: Array2<f32>,
    /// Σ‖x − centre‖² of the kept run (f64).
    pub inertia: f64,
    /// Lloyd iterations of the kept run (sklearn's `n_iter_`).
    pub iterations: usize,
    /// Index of the kept run among `restarts`.
    pub best_restart: usize,
    pub restarts: Vec<Restart>,
    /// Distinct labels in `labels` (below k when the data has fewer distinct points; sklearn warns).
    pub distinct_clusters: usize,
}

/// k-means with k-means++ restarts (see the crate docs for the exact semantics).
pub fn kmeans(x: ArrayView2<f32>, k: usize, opts: &KmeansOptions) -> Result<KmeansResult> {
    kmeans_with_progress(x, k, opts, &|_| {})
}

/// [`kmeans`], calling `progress(r)` after restart `r` finishes.
pub fn kmeans_with_progress(
    x: ArrayView2<f32>,
    k: usize,
    opts: &KmeansOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<KmeansResult> {
    validate(x, k)?;
    validate_options(opts)?;
    let centred = Centred::new(x, opts.tol);
    let xc = centred.x.view();
    let norms = row_sq_norms(xc);
    let mut lloyd = Lloyd::new(xc, k);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut best: Option<(usize, crate::lloyd::LloydRun)> = None;
    let mut restarts = Vec::with_capacity(opts.restarts);
    for r in 0..opts.restarts {
        let (init, _) = seed_centers(xc, &norms, k, &mut rng);
        let run = lloyd.run(&init, opts.max_iter, centred.tol);
        restarts.push(Restart {
            inertia: run.inertia,
            iterations: run.iterations,
            stop: run.stop,
        });
        // sklearn keeps a later run only if it is better *and* a different partition: an equal
        // partition can look marginally better from rounding alone.
        let better = match &best {
            None => true,
            Some((_, b)) => run.inertia < b.inertia && !same_clustering(&run.labels, &b.labels, k),
        };
        if better {
            best = Some((r, run));
        }
        progress(r);
    }
    let (best_restart, run) = best.expect("restarts ≥ 1");
    Ok(centred.finish(run, best_restart, restarts, k))
}

/// One Lloyd run from the given centres: sklearn's `KMeans(init=centres, n_init=1,
/// algorithm="lloyd", max_iter, tol).fit(x)`.
pub fn lloyd_from(
    x: ArrayView2<f32>,
    init: ArrayView2<f32>,
    max_iter: usize,
    tol: f64,
) -> Result<KmeansResult> {
    let k = init.nrows();
    if k == 0 || init.ncols() != x.ncols() {
        return Err(ClusterError::InitShape {
            got: init.dim(),
            dim: x.ncols(),
        });
    }
    validate(x, k)?;
    if let Some(row) = init
        .rows()
        .into_iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        return Err(ClusterError::Invalid(format!(
            "initial centre {row} contains NaN or infinity"
        )));
    }
    validate_options(&KmeansOptions {
        restarts: 1,
        max_iter,
        tol,
        seed: 0,
    })?;
    let centred = Centred::new(x, tol);
    let init = &init - &centred.mean.view().insert_axis(Axis(0));
    let mut lloyd = Lloyd::new(centred.x.view(), k);
    let run = lloyd.run(&init, max_iter, centred.tol);
    let restarts = vec![Restart {
        inertia: run.inertia,
        iterations: run.iterations,
        stop: run.stop,
    }];
    Ok(centred.finish(run, 0, restarts, k))
}

pub(crate) fn validate(x: ArrayView2<f32>, k: usize) -> Result<()> {
    let (n, d) = x.dim();
    if n == 0 || d == 0 {
        return Err(ClusterError::Empty { rows: n, cols: d });
    }
    if let Some(row) = x
        .rows()
        .into_iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        return Err(ClusterError::NonFinite { row });
    }
    if k == 0 {
        return Err(ClusterError::NoClusters);
    }
    if k > n {
        return Err(ClusterError::TooManyClusters { k, n });
    }
    Ok(())
}

fn validate_options(opts: &KmeansOptions) -> Result<()> {
    if opts.restarts == 0 {
        return Err(ClusterError::Invalid("restarts must be at least 1".into()));
    }
    if opts.max_iter == 0 {
        return Err(ClusterError::Invalid("max_iter must be at least 1".into()));
    }
    if !(opts.tol >= 0.0 && opts.tol.is_finite()) {
        return Err(ClusterError::Invalid(format!(
            "tol must be a finite number ≥ 0, got {}",
            opts.tol
        )));
    }
    Ok(())
}

/// The data minus its column means, as sklearn fits (smaller values, smaller GEMM rounding), and
/// the absolute tolerance.
struct Centred {
    x: Array2<f32>,
    mean: Array1<f32>,
    tol: f64,
}

impl Centred {
    fn new(x: ArrayView2<f32>, tol: f64) -> Self {
        let n = x.nrows() as f64;
        let mut mean64 = vec![0f64; x.ncols()];
        for row in x.rows() {
            for (m, &v) in mean64.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean64.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; x.ncols()];
        for row in x.rows() {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean64) {
                let t = v as f64 - m;
                *s += t * t;
            }
        }
        let mean_var = var.iter().sum::<f64>() / n / x.ncols() as f64;
        let mean: Array1<f32> = mean64.iter().map(|&m| m as f32).collect();
        let mut xc = x.as_standard_layout().into_owned();
        xc.axis_iter_mut(Axis(0)).for_each(|mut row| row -= &mean);
        Centred {
            x: xc,
            mean,
            tol: tol * mean_var,
        }
    }

    fn finish(
        self,
        run: crate::lloyd::LloydRun,
        best_restart: usize,
        restarts: Vec<Restart>,
        k: usize,
    ) -> KmeansResult {
        let labels: Vec<usize> = run.labels.iter().map(|&l| l as usize).collect();
        let mut seen = vec![false; k];
        labels.iter().for_each(|&l| seen[l] = true);
        let centers = run.centers + self.mean.view().insert_axis(Axis(0));
        KmeansResult {
            labels,
            centers,
            inertia: run.inertia,
            iterations: run.iterations,
            best_restart,
            restarts,
            distinct_clusters: seen.iter().filter(|&&s| s).count(),
        }
    }
}

/// sklearn's `_is_same_clustering`: the two labelings are equal up to a renaming of clusters.
fn same_clustering(a: &[u32], b: &[u32], k: usize) -> bool {
    let mut map = vec![u32::MAX; k];
    for (&x, &y) in a.iter().zip(b) {
        let m = &mut map[x as usize];
        if *m == u32::MAX {
            *m = y;
        } else if *m != y {
            return false;
        }
    }
    true
}
