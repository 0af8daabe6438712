use ndarray::ArrayView2;
use rayon::prelude::*;

/// Index of each row's largest value; the first one on ties (as `torch.argmax`), and NaN counts as
/// the largest (as torch does), so a corrupt row is visible as cluster of its first NaN.
pub fn argmax_rows(logits: ArrayView2<f32>) -> Vec<usize> {
    let rows: Vec<_> = logits.rows().into_iter().collect();
    rows.par_iter()
        .map(|row| {
            let mut best = 0;
            let mut best_v = f32::NEG_INFINITY;
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    return j;
                }
                if v > best_v || j == 0 {
                    best = j;
                    best_v = v;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn first_maximum_wins() {
        let l = array![
            [1.0f32, 3.0, 3.0],
            [-5.0, -6.0, -7.0],
            [0.0, f32::NAN, 9.0],
            [2.0, 2.0, 2.0]
        ];
        assert_eq!(argmax_rows(l.view()), vec![1, 0, 1, 0]);
    }
}
