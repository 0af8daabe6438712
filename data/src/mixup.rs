//! timm `Mixup` in `mode='batch'`: Mixup / CutMix with the flipped batch, and the smoothed, mixed
//! soft targets.
//!
//! Transcribes timm 1.0 `data/mixup.py`: `Mixup._params_per_batch` (apply when a uniform draw is
//! below `prob`; CutMix when a second draw is below `switch_prob` if both alphas are positive;
//! λ ~ Beta(α, α) drawn once per batch), `_mix_batch` (CutMix copies the box from `x.flip(0)`, Mixup
//! computes `x·λ + x.flip(0)·(1 − λ)` in f32), `rand_bbox` (cut = `int(side · √(1 − λ))`, centre
//! `randint(0, side)`, clipped), `cutmix_bbox_and_lam` (`correct_lam`: λ = 1 − box area / image area)
//! and `mixup_target` (`λ·smooth(y) + (1 − λ)·smooth(y.flip(0))`, off = ε / C, on = 1 − ε + off).
//! `__call__` rejects odd batches. The element/pair modes and `cutmix_minmax` are not implemented.
//!
//! The draws are explicit in [`MixDraw`]; [`mix_batch`] and [`mixup_target`] are pure.

use rand::Rng;
use rand_distr::{Beta, Distribution};

use crate::error::{DataError, Result};

/// What one batch's draws decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MixDraw {
    /// λ = 1: nothing mixed (`prob` not met, or Beta returned exactly 1).
    None,
    Mixup {
        lam: f64,
    },
    /// `cy`, `cx`: the box centre `rand_bbox` drew.
    Cutmix {
        lam: f64,
        cy: usize,
        cx: usize,
    },
}

/// A CutMix box `[yl, yh) × [xl, xh)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutBox {
    pub yl: usize,
    pub yh: usize,
    pub xl: usize,
    pub xh: usize,
}

/// timm `rand_bbox((…, h, w), lam)` with the centre given (`margin = 0`).
pub fn rand_bbox(h: usize, w: usize, lam: f64, cy: usize, cx: usize) -> CutBox {
    let ratio = (1.0 - lam).sqrt();
    let cut_h = (h as f64 * ratio) as i64;
    let cut_w = (w as f64 * ratio) as i64;
    let (cy, cx) = (cy as i64, cx as i64);
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    CutBox {
        yl: clip(cy - cut_h.div_euclid(2), h),
        yh: clip(cy + (cut_h + 1).div_euclid(2), h),
        xl: clip(cx - cut_w.div_euclid(2), w),
        xh: clip(cx + (cut_w + 1).div_euclid(2), w),
    }
}

/// timm `cutmix_bbox_and_lam` without `ratio_minmax`: the box and, with `correct_lam`, λ recomputed
/// from the clipped box area.
pub fn cutmix_bbox_and_lam(
    h: usize,
    w: usize,
    lam: f64,
    cy: usize,
    cx: usize,
    correct_lam: bool,
) -> (CutBox, f64) {
    let b = rand_bbox(h, w, lam, cy, cx);
    let lam = if correct_lam {
        let area = ((b.yh - b.yl) * (b.xh - b.xl)) as f64;
        1.0 - area / (h * w) as f64
    } else {
        lam
    };
    (b, lam)
}

/// timm `mixup_target(target, num_classes, lam, smoothing)` → `[batch, num_classes]` row-major, in
/// torch's f32 arithmetic (`y1 * lam + y2 * (1 - lam)` with the scalars rounded to f32).
pub fn mixup_target(labels: &[usize], num_classes: usize, lam: f64, smoothing: f64) -> Vec<f32> {
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let (off, on) = (off as f32, on as f32);
    let (l1, l2) = (lam as f32, (1.0 - lam) as f32);
    let n = labels.len();
    let mut out = vec![0f32; n * num_classes];
    for (i, row) in out.chunks_exact_mut(num_classes).enumerate() {
        let (a, b) = (labels[i], labels[n - 1 - i]);
        for (k, v) in row.iter_mut().enumerate() {
            let y1 = if k == a { on } else { off };
            let y2 = if k == b { on } else { off };
            *v = y1 * l1 + y2 * l2;
        }
    }
    out
}

/// `Mixup._mix_batch` on an NCHW batch in place, for given draws; returns the λ the targets use
/// (CutMix's corrected λ when `correct_lam`).
pub fn mix_batch(images: &mut [f32], shape: [usize; 4], draw: &MixDraw, correct_lam: bool) -> f64 {
    let [n, c, h, w] = shape;
    assert_eq!(images.len(), n * c * h * w, "NCHW buffer size");
    let per = c * h * w;
    match *draw {
        MixDraw::None => 1.0,
        MixDraw::Mixup { lam } => {
            if lam == 1.0 {
                return 1.0;
            }
            let (a, b) = (lam as f32, (1.0 - lam) as f32);
            let original = images.to_vec();
            for (i, img) in images.chunks_exact_mut(per).enumerate() {
                let other = &original[(n - 1 - i) * per..][..per];
                for (x, &y) in img.iter_mut().zip(other) {
                    *x = *x * a + y * b;
                }
            }
            lam
        }
        MixDraw::Cutmix { lam, cy, cx } => {
            if lam == 1.0 {
                return 1.0;
            }
            let (bx, lam) = cutmix_bbox_and_lam(h, w, lam, cy, cx, correct_lam);
            let original = images.to_vec();
            for (i, img) in images.chunks_exact_mut(per).enumerate() {
                let other = &original[(n - 1 - i) * per..][..per];
                for ch in 0..c {
                    for y in bx.yl..bx.yh {
                        let row = (ch * h + y) * w;
                        img[row + bx.xl..row + bx.xh]
                            .copy_from_slice(&other[row + bx.xl..row + bx.xh]);
                    }
                }
            }
            lam
        }
    }
}

/// timm `Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, mode='batch', correct_lam,
/// label_smoothing, num_classes)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixup {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
    pub prob: f64,
    pub switch_prob: f64,
    pub correct_lam: bool,
    pub label_smoothing: f64,
    pub num_classes: usize,
}

impl Mixup {
    /// The BEiT fine-tuning recipe: mixup 0.8, cutmix 1.0, prob 1, switch 0.5, smoothing 0.1.
    pub fn finetune(num_classes: usize) -> Self {
        Mixup {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            correct_lam: true,
            label_smoothing: 0.1,
            num_classes,
        }
    }

    /// `_params_per_batch` plus the CutMix centre `rand_bbox` draws, for an `h × w` batch.
    pub fn draw(&self, h: usize, w: usize, rng: &mut impl Rng) -> MixDraw {
        if !(rng.random::<f64>() < self.prob) {
            return MixDraw::None;
        }
        let beta = |alpha: f64, rng: &mut dyn rand::RngCore| -> f64 {
            Beta::new(alpha, alpha).expect("positive alpha").sample(rng)
        };
        let (cutmix, lam) = if self.mixup_alpha > 0.0 && self.cutmix_alpha > 0.0 {
            let cutmix = rng.random::<f64>() < self.switch_prob;
            let alpha = if cutmix {
                self.cutmix_alpha
            } else {
                self.mixup_alpha
            };
            (cutmix, beta(alpha, rng))
        } else if self.mixup_alpha > 0.0 {
            (false, beta(self.mixup_alpha, rng))
        } else if self.cutmix_alpha > 0.0 {
            (true, beta(self.cutmix_alpha, rng))
        } else {
            return MixDraw::None;
        };
        if lam == 1.0 {
            return MixDraw::None;
        }
        if cutmix {
            let cy = rng.random_range(0..h);
            let cx = rng.random_range(0..w);
            MixDraw::Cutmix { lam, cy, cx }
        } else {
            MixDraw::Mixup { lam }
        }
    }

    /// `Mixup.__call__(x, target)`: mixes the NCHW batch in place and returns the soft targets
    /// `[n, num_classes]` with the draw made.
    pub fn apply(
        &self,
        images: &mut [f32],
        shape: [usize; 4],
        labels: &[usize],
        rng: &mut impl Rng,
    ) -> Result<(Vec<f32>, MixDraw)> {
        if shape[0] % 2 != 0 {
            return Err(DataError::Invalid(format!(
                "Mixup needs an even batch size (timm asserts it), got {}",
                shape[0]
            )));
        }
        if labels.len() != shape[0] {
            return Err(DataError::Invalid(format!(
                "{} labels for a batch of {}",
                labels.len(),
                shape[0]
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= self.num_classes) {
            return Err(DataError::Invalid(format!(
                "label {bad} out of range for {} classes",
                self.num_classes
            )));
        }
        let draw = self.draw(shape[2], shape[3], rng);
        let lam = mix_batch(images, shape, &draw, self.correct_lam);
        let targets = mixup_target(labels, self.num_classes, lam, self.label_smoothing);
        Ok((targets, draw))
    }
}
