//! timm `RandomErasing` on one normalised CHW image, as the fine-tuning recipes use it
//! (`--reprob 0.25 --remode pixel --recount 1`).
//!
//! Transcribes timm 1.0 `data/random_erasing.py` (`RandomErasing._erase`): skip when a uniform draw
//! exceeds the probability; `count` boxes (a `randint(min_count, max_count)` draw only when they
//! differ), each from up to 10 attempts of `target_area = uniform(min_area, max_area) · area / count`,
//! `aspect = exp(uniform(log min_aspect, log max_aspect))`, `h = round(√(target·aspect))`,
//! `w = round(√(target / aspect))` (Python's half-even round), accepted when `w < W and h < H`, then
//! `top = randint(0, H − h)`, `left = randint(0, W − w)` (inclusive). The box is filled per pixel with
//! N(0, 1) (`pixel`), per channel (`rand`) or with zeros (`const`).
//!
//! The geometry takes its draws through [`EraseDraws`], so the same code runs on the crate's RNG and
//! on scripted draws fed identically to timm's code in the goldens.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::transforms::round_half_even;

/// How erased pixels are filled (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseMode {
    /// Zeros.
    Const,
    /// One N(0, 1) value per channel.
    Rand,
    /// Independent N(0, 1) values per pixel and channel.
    Pixel,
}

/// A box `img[:, top:top+height, left:left+width]`; height or width may be 0 (nothing erased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EraseBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// The three kinds of draws `_erase` makes from Python's `random` module.
pub trait EraseDraws {
    /// `random.random()` in [0, 1).
    fn unit(&mut self) -> f64;
    /// `random.uniform(a, b)` = `a + (b - a) · random()`.
    fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.unit()
    }
    /// `random.randint(a, b)`, both ends included.
    fn randint(&mut self, a: i64, b: i64) -> i64;
}

impl<R: Rng> EraseDraws for R {
    fn unit(&mut self) -> f64 {
        self.random::<f64>()
    }
    fn randint(&mut self, a: i64, b: i64) -> i64 {
        self.random_range(a..=b)
    }
}

/// timm `RandomErasing(probability, min_area, max_area, min_aspect, max_aspect, mode, min_count,
/// max_count)`; `num_splits` only matters for batched input and is not modelled.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomErasing {
    pub probability: f64,
    pub min_area: f64,
    pub max_area: f64,
    /// (ln min_aspect, ln max_aspect); `max_aspect` defaults to `1 / min_aspect`.
    pub log_aspect: (f64, f64),
    pub min_count: usize,
    pub max_count: usize,
    pub mode: EraseMode,
}

impl RandomErasing {
    /// timm's defaults with the given probability and mode (`max_count = None` → `min_count`).
    pub fn new(probability: f64, mode: EraseMode) -> Self {
        let min_aspect: f64 = 0.3;
        RandomErasing {
            probability,
            min_area: 0.02,
            max_area: 1.0 / 3.0,
            log_aspect: (min_aspect.ln(), (1.0 / min_aspect).ln()),
            min_count: 1,
            max_count: 1,
            mode,
        }
    }

    /// The fine-tuning recipes' `RandomErasing(0.25, mode='pixel', max_count=1)`.
    pub fn finetune() -> Self {
        RandomErasing::new(0.25, EraseMode::Pixel)
    }

    /// The boxes `_erase` picks for an `img_h × img_w` image, in order (empty when skipped).
    pub fn regions(
        &self,
        img_h: usize,
        img_w: usize,
        draws: &mut impl EraseDraws,
    ) -> Vec<EraseBox> {
        if draws.unit() > self.probability {
            return Vec::new();
        }
        let area = (img_h * img_w) as f64;
        let count = if self.min_count == self.max_count {
            self.min_count
        } else {
            draws.randint(self.min_count as i64, self.max_count as i64) as usize
        };
        let mut boxes = Vec::with_capacity(count);
        for _ in 0..count {
            for _ in 0..10 {
                let target = draws.uniform(self.min_area, self.max_area) * area / count as f64;
                let aspect = draws.uniform(self.log_aspect.0, self.log_aspect.1).exp();
                let h = round_half_even((target * aspect).sqrt());
                let w = round_half_even((target / aspect).sqrt());
                if w < img_w as i64 && h < img_h as i64 {
                    let top = draws.randint(0, img_h as i64 - h) as usize;
                    let left = draws.randint(0, img_w as i64 - w) as usize;
                    boxes.push(EraseBox {
                        top,
                        left,
                        height: h as usize,
                        width: w as usize,
                    });
                    break;
                }
            }
        }
        boxes
    }

    /// Fills `boxes` of a CHW buffer (`channels × img_h × img_w`) per `mode`, drawing the values.
    pub fn fill(
        &self,
        img: &mut [f32],
        channels: usize,
        img_h: usize,
        img_w: usize,
        boxes: &[EraseBox],
        rng: &mut impl Rng,
    ) {
        assert_eq!(img.len(), channels * img_h * img_w, "CHW buffer size");
        for b in boxes {
            for c in 0..channels {
                let per_channel: f32 = match self.mode {
                    EraseMode::Rand => StandardNormal.sample(rng),
                    _ => 0.0,
                };
                for y in b.top..b.top + b.height {
                    let row = &mut img[(c * img_h + y) * img_w..][..img_w];
                    for v in &mut row[b.left..b.left + b.width] {
                        *v = match self.mode {
                            EraseMode::Pixel => StandardNormal.sample(rng),
                            EraseMode::Rand => per_channel,
                            EraseMode::Const => 0.0,
                        };
                    }
                }
            }
        }
    }

    /// `RandomErasing.__call__` on one CHW image in place; returns the erased boxes.
    pub fn apply(
        &self,
        img: &mut [f32],
        channels: usize,
        img_h: usize,
        img_w: usize,
        rng: &mut impl Rng,
    ) -> Vec<EraseBox> {
        let boxes = self.regions(img_h, img_w, rng);
        self.fill(img, channels, img_h, img_w, &boxes, rng);
        boxes
    }
}
