//! Floating-point reductions in numpy's summation order.
//!
//! Float addition is not associative: a mean matches numpy's to the last bit only when the values
//! are added in the order `np.add.reduce` adds them. Every mean the reference tools report
//! (`np.mean`, `np.nanmean`, `ndarray.sum`) goes through these.

const UNROLL: usize = 8;
const BLOCK: usize = 128;

/// `np.sum` of a contiguous `f64` array: numpy's `pairwise_sum` (serial below 8 values, eight
/// interleaved accumulators up to 128, recursive halving above, split at a multiple of 8).
pub fn pairwise_sum(values: &[f64]) -> f64 {
    let n = values.len();
    if n < UNROLL {
        let mut sum = 0.0;
        for &v in values {
            sum += v;
        }
        sum
    } else if n <= BLOCK {
        let mut r = [0.0f64; UNROLL];
        r.copy_from_slice(&values[..UNROLL]);
        let body_end = n - n % UNROLL;
        for chunk in values[UNROLL..body_end].chunks_exact(UNROLL) {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc += v;
            }
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &values[body_end..] {
            sum += v;
        }
        sum
    } else {
        let half = n / 2;
        let split = half - half % UNROLL;
        pairwise_sum(&values[..split]) + pairwise_sum(&values[split..])
    }
}

/// `np.mean`; NaN for an empty slice (numpy warns and returns NaN).
pub fn mean(values: &[f64]) -> f64 {
    pairwise_sum(values) / values.len() as f64
}

/// `np.nanmean`: NaNs are replaced by 0 for the sum and left out of the count; NaN when every value
/// is NaN.
pub fn nanmean(values: &[f64]) -> f64 {
    let zeroed: Vec<f64> = values
        .iter()
        .map(|&v| if v.is_nan() { 0.0 } else { v })
        .collect();
    let count = values.iter().filter(|v| !v.is_nan()).count();
    pairwise_sum(&zeroed) / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_order_differs_from_serial_like_numpy() {
        // 1 + 8 * 1e-16: serial addition loses every tiny term; numpy's lanes keep some.
        let mut v = vec![1e-16; 9];
        v[0] = 1.0;
        let lanes = ((1.0 + 1e-16) + (1e-16 + 1e-16)) + ((1e-16 + 1e-16) + (1e-16 + 1e-16));
        assert_eq!(pairwise_sum(&v), lanes + 1e-16);
        assert_ne!(pairwise_sum(&v), v.iter().sum::<f64>());
    }

    #[test]
    fn nanmean_skips_nans() {
        assert_eq!(nanmean(&[1.0, f64::NAN, 3.0]), 2.0);
        assert!(nanmean(&[f64::NAN]).is_nan());
        assert!(mean(&[]).is_nan());
    }
}
