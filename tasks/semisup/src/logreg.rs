//! L2-regularised multinomial logistic regression without intercept, fitted with L-BFGS.
//!
//! Objective (features `x_i` are expected L2-normalised, weights `W ∈ R^{D×C}`):
//!
//! ```text
//! f(W) = (1/n) Σ_i [ logsumexp(x_i W) − (x_i W)_{y_i} ] + (λ/2) ‖W‖²_F
//! ```
//!
//! * cyanure (`MultiClassifier(loss="multiclass-logistic", penalty="l2", fit_intercept=False)`, used by
//!   iBOT's `eval_logistic_regression.py`) minimises `(1/n) Σ L + (λ/2)‖w‖²`: its `lambd` IS this λ.
//!   iBOT passes λ ∈ {0.01, 0.1, 1} as is; the DINO recipe (dino#121) passes λ/n instead.
//! * scikit-learn `LogisticRegression(C, fit_intercept=False)` minimises `C Σ L + ½‖W‖²`, the same
//!   minimiser for `C = 1 / (n λ)`.
//! * `C = max label + 1` columns (cyanure's convention); a class absent from training keeps a column whose
//!   only gradient is the softmax mass it draws, exactly as in cyanure.
//!
//! Solver: argmin's L-BFGS (memory 10) with the Moré–Thuente line search, from W = 0, in f64; it stops
//! when ‖∇f‖₂ < `gradient_tolerance`, when f changes by less than `cost_tolerance`, or after
//! `max_iterations`. The objective is strictly convex for λ > 0, so the minimiser is unique and any
//! well-converged solver (scipy's L-BFGS-B in scikit-learn, cyanure's catalyst-miso) reaches the same W.

use std::sync::Mutex;

use argmin::core::{CostFunction, Error as ArgminError, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::{LabelledSetError, SemisupError};

/// Solver settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Solver {
    pub max_iterations: u64,
    /// Stop when the gradient's L2 norm (of the mean objective) falls below this.
    pub gradient_tolerance: f64,
    /// Stop when the objective changes by less than this between iterations.
    pub cost_tolerance: f64,
}

impl Default for Solver {
    fn default() -> Self {
        Solver {
            max_iterations: 1000,
            gradient_tolerance: 1e-6,
            cost_tolerance: 1e-12,
        }
    }
}

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// `[D, C]`.
    pub weights: Array2<f64>,
    pub lambda: f64,
    pub objective: f64,
    pub gradient_norm: f64,
    pub iterations: u64,
    pub termination: String,
}

impl Fit {
    /// Class probabilities `[N, C]`.
    pub fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut logits = matmul(x, self.weights.view());
        logits.axis_iter_mut(Axis(0)).for_each(|mut row| {
            let max = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        });
        logits
    }

    /// Decision scores `x W` `[N, C]`.
    pub fn decision(&self, x: ArrayView2<f64>) -> Array2<f64> {
        matmul(x, self.weights.view())
    }
}

/// The last point evaluated, its objective and its gradient.
type Evaluated = Option<(Array1<f64>, f64, Array1<f64>)>;

struct Objective<'a> {
    x: ArrayView2<'a, f64>,
    labels: &'a [usize],
    classes: usize,
    lambda: f64,
    /// argmin asks for the cost and then the gradient at the same point; both come from one pass.
    cache: Mutex<Evaluated>,
}

impl Objective<'_> {
    fn evaluate(&self, w: &Array1<f64>) -> (f64, Array1<f64>) {
        if let Some((p, c, g)) = self.cache.lock().expect("cache").as_ref() {
            if p == w {
                return (*c, g.clone());
            }
        }
        let (cost, grad) = objective_and_gradient(
            self.x,
            self.labels,
            self.classes,
            self.lambda,
            w.view()
                .into_shape_with_order((self.x.ncols(), self.classes))
                .expect("D·C"),
        );
        let grad = Array1::from_iter(grad);
        *self.cache.lock().expect("cache") = Some((w.clone(), cost, grad.clone()));
        (cost, grad)
    }
}

impl CostFunction for Objective<'_> {
    type Param = Array1<f64>;
    type Output = f64;
    fn cost(&self, w: &Array1<f64>) -> Result<f64, ArgminError> {
        Ok(self.evaluate(w).0)
    }
}

impl Gradient for Objective<'_> {
    type Param = Array1<f64>;
    type Gradient = Array1<f64>;
    fn gradient(&self, w: &Array1<f64>) -> Result<Array1<f64>, ArgminError> {
        Ok(self.evaluate(w).1)
    }
}

/// `f(W)` and `∇f(W)` (`[D, C]`) as defined in the module docs.
pub fn objective_and_gradient(
    x: ArrayView2<f64>,
    labels: &[usize],
    classes: usize,
    lambda: f64,
    w: ArrayView2<f64>,
) -> (f64, Array2<f64>) {
    let n = x.nrows() as f64;
    let mut p = matmul(x, w);
    let loss: f64 = p
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(labels.par_iter())
        .map(|(mut row, &y)| {
            let max = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let target = row[y] - max;
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum / n);
            row[y] -= 1.0 / n;
            sum.ln() - target
        })
        .sum();
    debug_assert_eq!(p.ncols(), classes);
    let mut grad = matmul(x.t(), p.view());
    grad.scaled_add(lambda, &w);
    let penalty = 0.5 * lambda * w.iter().map(|v| v * v).sum::<f64>();
    (loss / n + penalty, grad)
}

fn matmul(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert_eq!(b.nrows(), k);
    let mut out = Array2::<f64>::zeros((m, n));
    let (as_, bs) = (a.strides(), b.strides());
    let threads = rayon::current_num_threads();
    // SAFETY: both inputs are valid views with the given strides and shapes; `out` is a fresh
    // standard-layout array exclusively borrowed here.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            as_[1],
            as_[0],
            b.as_ptr(),
            bs[1],
            bs[0],
            0.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        );
    }
    out
}

/// Fits W for one λ on `x` (`[n, D]`) with labels in `0..classes`.
pub fn fit<'a>(
    x: ArrayView2<'a, f64>,
    labels: &'a [usize],
    classes: usize,
    lambda: f64,
    solver: &Solver,
) -> Result<Fit, SemisupError> {
    if x.nrows() == 0 {
        return Err(LabelledSetError::Empty("logistic-regression training").into());
    }
    if x.nrows() != labels.len() {
        return Err(LabelledSetError::LabelCount {
            set: "train",
            rows: x.nrows(),
            labels: labels.len(),
        }
        .into());
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(SemisupError::Config(format!(
            "label {bad} is not below the class count {classes}"
        )));
    }
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(SemisupError::Config(format!(
            "λ must be positive and finite, got {lambda}"
        )));
    }
    let dim = x.ncols();
    let problem = Objective {
        x,
        labels,
        classes,
        lambda,
        cache: Mutex::new(None),
    };
    let lbfgs = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(solver.gradient_tolerance)
        .and_then(|s| s.with_tolerance_cost(solver.cost_tolerance))
        .map_err(|e| SemisupError::Config(format!("L-BFGS settings: {e}")))?;
    let init = Array1::<f64>::zeros(dim * classes);
    let result = Executor::new(problem, lbfgs)
        .configure(|state| state.param(init).max_iters(solver.max_iterations))
        .run()
        .map_err(|e| SemisupError::Solver(format!("L-BFGS failed for λ = {lambda}: {e}")))?;
    let state = result.state();
    let best = state
        .get_best_param()
        .cloned()
        .ok_or_else(|| SemisupError::Solver("L-BFGS returned no parameters".into()))?;
    let termination = state.get_termination_status().to_string();
    let iterations = state.get_iter();
    let weights = best
        .into_shape_with_order((dim, classes))
        .expect("D·C parameters");
    let (objective, grad) = objective_and_gradient(x, labels, classes, lambda, weights.view());
    Ok(Fit {
        weights,
        lambda,
        objective,
        gradient_norm: grad.iter().map(|v| v * v).sum::<f64>().sqrt(),
        iterations,
        termination,
    })
}

/// Rows scaled to unit L2 norm (`x / max(‖x‖, 1e-12)`, as `torch.nn.functional.normalize`), in f64.
pub fn l2_normalized(x: ArrayView2<f32>) -> Array2<f64> {
    let mut out = x.mapv(|v| v as f64);
    out.axis_iter_mut(Axis(0)).for_each(|mut row| {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.mapv_inplace(|v| v / norm);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let x = Array2::from_shape_fn((7, 3), |(i, j)| ((i * 3 + j) as f64 * 0.37).sin());
        let labels = [0, 1, 2, 3, 0, 1, 2];
        let w = Array2::from_shape_fn((3, 4), |(i, j)| ((i + 2 * j) as f64 * 0.21).cos() * 0.3);
        let (f, g) = objective_and_gradient(x.view(), &labels, 4, 0.05, w.view());
        let h = 1e-6;
        for i in 0..3 {
            for j in 0..4 {
                let mut wp = w.clone();
                wp[[i, j]] += h;
                let mut wm = w.clone();
                wm[[i, j]] -= h;
                let fp = objective_and_gradient(x.view(), &labels, 4, 0.05, wp.view()).0;
                let fm = objective_and_gradient(x.view(), &labels, 4, 0.05, wm.view()).0;
                assert!(((fp - fm) / (2.0 * h) - g[[i, j]]).abs() < 1e-7);
            }
        }
        assert!(f > 0.0);
    }

    #[test]
    fn normalises_rows_like_torch() {
        let x = ndarray::array![[3.0f32, 4.0], [0.0, 0.0]];
        let n = l2_normalized(x.view());
        assert_eq!(n, ndarray::array![[0.6, 0.8], [0.0, 0.0]]);
    }
}
