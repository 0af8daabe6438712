//! Learning-rate (and weight-decay, momentum) schedules as the official scripts compute them, as
//! one value per iteration (or per epoch where the script steps per epoch), so that a loop only
//! looks its value up:
//!
//! - [`cosine_scheduler`]: DINO/iBOT/BEiT `utils.cosine_scheduler` (per iteration, linear
//!   warm-up from `start_warmup_value`), including numpy's `linspace` arithmetic;
//! - [`timm_cosine_epochs`]: timm `CosineLRScheduler` as DeiT-style scripts drive it
//!   (`lr_scheduler.step(epoch)` after each epoch) — the semi-supervised and transfer fine-tuning;
//! - [`mmcv_poly`] and [`mmcv_step`]: mmcv 1.3 `PolyLrUpdaterHook` (mmseg, per iteration) and
//!   `StepLrUpdaterHook` (mmdet, per epoch), each with mmcv's linear warm-up.

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

/// DINO/iBOT/BEiT `utils.cosine_scheduler`: per-iteration values, length `epochs·iters_per_epoch`.
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
    cosine_scheduler_iters(
        base,
        final_value,
        epochs * iters_per_epoch,
        warmup_epochs * iters_per_epoch,
        start_warmup_value,
    )
}

/// [`cosine_scheduler`] with the warm-up given in iterations (BEiT's `warmup_steps`).
pub fn cosine_scheduler_iters(
    base: f64,
    final_value: f64,
    total: usize,
    warmup_iters: usize,
    start_warmup_value: f64,
) -> Vec<f64> {
    let mut schedule = if warmup_iters > 0 {
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

/// timm `CosineLRScheduler(t_initial=epochs, lr_min, warmup_t, warmup_lr_init, cycle_limit=1,
/// t_in_epochs=True, warmup_prefix=False)._get_lr(t)`.
pub fn timm_cosine_at(
    t: usize,
    base: f64,
    lr_min: f64,
    epochs: usize,
    warmup: usize,
    warmup_lr: f64,
) -> f64 {
    if t < warmup {
        return warmup_lr + t as f64 * (base - warmup_lr) / warmup as f64;
    }
    // Without warmup_prefix the cosine counts t from 0, warm-up epochs included.
    let t_initial = epochs.max(1);
    if t / t_initial >= 1 {
        return lr_min;
    }
    let t_curr = t as f64;
    lr_min
        + 0.5 * (base - lr_min) * (1.0 + (std::f64::consts::PI * t_curr / t_initial as f64).cos())
}

/// The lr each EPOCH trains with when a DeiT-style loop steps timm's cosine scheduler with
/// `lr_scheduler.step(epoch)` after epoch `epoch`: epoch 0 runs at the value set at construction
/// (`warmup_lr` when there is a warm-up, else `base`) and epoch e ≥ 1 at `_get_lr(e − 1)` — one
/// epoch behind `_get_lr(e)`, as the official semi-supervised and transfer scripts run it.
pub fn timm_cosine_epochs(
    base: f64,
    lr_min: f64,
    epochs: usize,
    warmup: usize,
    warmup_lr: f64,
) -> Vec<f64> {
    (0..epochs)
        .map(|e| match e {
            0 if warmup > 0 => warmup_lr,
            0 => base,
            _ => timm_cosine_at(e - 1, base, lr_min, epochs, warmup, warmup_lr),
        })
        .collect()
}

/// mmcv's linear warm-up: `regular · (1 − (1 − i/warmup_iters)(1 − ratio))` for i < warmup_iters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearWarmup {
    pub iters: usize,
    pub ratio: f64,
}

impl LinearWarmup {
    pub fn factor(&self, iter: usize) -> f64 {
        if iter >= self.iters {
            1.0
        } else {
            let k = (1.0 - iter as f64 / self.iters as f64) * (1.0 - self.ratio);
            1.0 - k
        }
    }
}

/// mmcv `PolyLrUpdaterHook(power, min_lr, by_epoch=False)`: `(base − min)(1 − i/max)^power + min`
/// per iteration, times the linear warm-up.
pub fn mmcv_poly(
    base: f64,
    min_lr: f64,
    power: f64,
    max_iters: usize,
    warmup: Option<LinearWarmup>,
) -> Vec<f64> {
    (0..max_iters)
        .map(|i| {
            let coeff = (1.0 - i as f64 / max_iters as f64).powf(power);
            let regular = (base - min_lr) * coeff + min_lr;
            regular * warmup.map_or(1.0, |w| w.factor(i))
        })
        .collect()
}

/// mmcv `StepLrUpdaterHook(step=[s…], gamma, by_epoch=True)` with a per-iteration linear warm-up:
/// `base · gamma^(number of steps ≤ epoch)` set at each epoch start, warm-up over the first
/// iterations (computed from that epoch's regular lr, as mmcv does).
pub fn mmcv_step(
    base: f64,
    gamma: f64,
    steps: &[usize],
    epochs: usize,
    iters_per_epoch: usize,
    warmup: Option<LinearWarmup>,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(epochs * iters_per_epoch);
    for epoch in 0..epochs {
        let exp = steps.iter().position(|&s| epoch < s).unwrap_or(steps.len());
        let regular = base * gamma.powi(exp as i32);
        for j in 0..iters_per_epoch {
            let it = epoch * iters_per_epoch + j;
            out.push(regular * warmup.map_or(1.0, |w| w.factor(it)));
        }
    }
    out
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
        let c = cosine_scheduler(1.0, 0.0, 2, 3, 5, 0.0);
        assert_eq!(c.len(), 6);
        assert_eq!(c[0], 0.0);
        assert!(c[5] < 1.0);
    }

    #[test]
    fn warmup_and_steps() {
        let w = LinearWarmup {
            iters: 4,
            ratio: 0.001,
        };
        assert!((w.factor(0) - 0.001).abs() < 1e-15);
        assert_eq!(w.factor(4), 1.0);
        let s = mmcv_step(1.0, 0.1, &[2, 3], 4, 2, None);
        assert_eq!(s, vec![1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1]);
        let p = mmcv_poly(1.0, 0.0, 1.0, 4, None);
        assert_eq!(p, vec![1.0, 0.75, 0.5, 0.25]);
    }
}
