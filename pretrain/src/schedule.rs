//! Schedules as the official code computes them (ibot-reference §4.3, §7.2): transcriptions of
//! DINO/iBOT `utils.cosine_scheduler` and of the teacher-temperature arrays built in `iBOTLoss`,
//! including numpy's `linspace` arithmetic so that values agree to the last bits.

/// `np.linspace(start, stop, num)` (endpoint inclusive): `i·step + start`, last value exactly
/// `stop`; a single point is `start`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let div = (num - 1) as f64;
            let delta = stop - start;
            let step = delta / div;
            let mut y: Vec<f64> = if step == 0.0 {
                (0..num).map(|i| i as f64 / div * delta + start).collect()
            } else {
                (0..num).map(|i| i as f64 * step + start).collect()
            };
            y[num - 1] = stop;
            y
        }
    }
}

/// DINO/iBOT `utils.cosine_scheduler`: per-iteration values, length `epochs·iters_per_epoch`.
/// Warm-up is `linspace(start_warmup_value, base, warmup_epochs·iters)`, then
/// `final + ½(base − final)(1 + cos(π j / T))` for j < T remaining iterations.
/// The official code asserts `warmup_epochs ≤ epochs`; here a longer warm-up is cut at the run
/// length (the ramp keeps its slope, so it never reaches `base`).
pub fn cosine_scheduler(
    base: f64,
    final_value: f64,
    epochs: usize,
    iters_per_epoch: usize,
    warmup_epochs: usize,
    start_warmup_value: f64,
) -> Vec<f64> {
    let total = epochs * iters_per_epoch;
    let warmup_iters = warmup_epochs * iters_per_epoch;
    let mut schedule = if warmup_epochs > 0 {
        linspace(start_warmup_value, base, warmup_iters)
    } else {
        Vec::new()
    };
    let remaining = total.saturating_sub(warmup_iters);
    let t = remaining as f64;
    schedule.extend((0..remaining).map(|j| {
        final_value
            + 0.5 * (base - final_value) * (1.0 + (std::f64::consts::PI * j as f64 / t).cos())
    }));
    schedule.truncate(total);
    schedule
}

/// Teacher temperature per EPOCH as `iBOTLoss` builds it: `start_epoch` epochs at `warmup_temp`
/// (the patch schedule when `pred_start_epoch > 0`; 0 otherwise), then
/// `linspace(warmup_temp, temp, warmup_epochs)` (inclusive endpoints), then `temp`. Length
/// `epochs`. When `start_epoch + warmup_epochs > epochs` numpy would raise (negative `np.ones`
/// length); here the array is cut at `epochs` instead.
pub fn teacher_temp_schedule(
    warmup_temp: f64,
    temp: f64,
    warmup_epochs: usize,
    epochs: usize,
    start_epoch: usize,
) -> Vec<f64> {
    let mut schedule = vec![warmup_temp; start_epoch];
    schedule.extend(linspace(warmup_temp, temp, warmup_epochs));
    let filled = schedule.len().min(epochs);
    schedule.truncate(filled);
    schedule.resize(epochs, temp);
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_endpoints() {
        assert_eq!(linspace(1.0, 2.0, 0), Vec::<f64>::new());
        assert_eq!(linspace(1.0, 2.0, 1), vec![1.0]);
        assert_eq!(linspace(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(linspace(0.3, 0.3, 3), vec![0.3; 3]);
    }

    #[test]
    fn short_runs_truncate_instead_of_failing() {
        let s = teacher_temp_schedule(0.04, 0.07, 30, 5, 0);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], 0.04);
        assert!(s[4] < 0.07);
        let s = teacher_temp_schedule(0.04, 0.07, 3, 4, 2);
        assert_eq!(s.len(), 4);
        assert_eq!(&s[..3], &[0.04, 0.04, 0.04]);
        assert!((s[3] - 0.055).abs() < 1e-15);
        let c = cosine_scheduler(1.0, 0.0, 2, 3, 5, 0.0);
        assert_eq!(c.len(), 6);
        assert_eq!(c[0], 0.0);
        assert!(c[5] < 1.0);
    }
}
