//! iBOT's teacher-temperature arrays as `iBOTLoss` builds them (ibot-reference §4.3); the
//! per-iteration cosine schedules live in `train::schedule` and are re-exported here.

pub use train::schedule::{cosine_scheduler, linspace};

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
    fn short_runs_truncate_instead_of_failing() {
        let s = teacher_temp_schedule(0.04, 0.07, 30, 5, 0);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], 0.04);
        assert!(s[4] < 0.07);
        let s = teacher_temp_schedule(0.04, 0.07, 3, 4, 2);
        assert_eq!(s.len(), 4);
        assert_eq!(&s[..3], &[0.04, 0.04, 0.04]);
        assert!((s[3] - 0.055).abs() < 1e-15);
    }
}
