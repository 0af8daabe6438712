use ndarray::{Array2, Axis};
use rayon::prelude::*;

/// `torch.nn.functional.normalize(x, p=2, dim=1)`: each row divided by `max(‖row‖₂, 1e-12)`.
/// The norm is accumulated in f64 so it is the correctly rounded f32 norm regardless of the dimension.
pub fn l2_normalize_rows(features: &mut Array2<f32>) {
    features
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .for_each(|mut row| {
            let norm = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt() as f32;
            let denom = norm.max(1e-12);
            row.mapv_inplace(|v| v / denom);
        });
}
