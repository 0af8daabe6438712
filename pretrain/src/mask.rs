//! Masks for masked image modelling, as the official `ImageFolderMask` draws them
//! (ibot-reference §5): a prediction ratio per crop (§5.2), then BEiT block-wise rectangles
//! (§5.3) or an exact number of random patches (§5.4). Zero ratio before `pred_start_epoch`.
//! The random stream differs from Python's; the distribution is the same (checked against the
//! transcription in tests/reference/pretrain_reference.py).

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskShape {
    Block,
    Rand,
}

fn default_aspect() -> (f64, f64) {
    (0.3, 1.0 / 0.3)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    pub shape: MaskShape,
    /// One ratio, or several of which each crop picks one (after drawing each with its variance).
    pub pred_ratio: Vec<f64>,
    /// One variance (replicated across `pred_ratio`) or one per ratio.
    pub pred_ratio_var: Vec<f64>,
    /// Aspect-ratio range of block rectangles; hard-wired to (0.3, 1/0.3) in main_ibot.py.
    #[serde(default = "default_aspect")]
    pub pred_aspect_ratio: (f64, f64),
    /// Epochs before this one are not masked at all.
    #[serde(default)]
    pub pred_start_epoch: usize,
}

impl MaskConfig {
    /// The README recipe: each crop unmasked with probability ½, else r ~ U(0.1, 0.5), blocks.
    pub fn readme() -> Self {
        Self {
            shape: MaskShape::Block,
            pred_ratio: vec![0.0, 0.3],
            pred_ratio_var: vec![0.0, 0.2],
            pred_aspect_ratio: default_aspect(),
            pred_start_epoch: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.pred_ratio.is_empty() {
            bail!("mask pred_ratio is empty; give at least one ratio");
        }
        if self.pred_ratio_var.is_empty() {
            bail!("mask pred_ratio_var is empty; give one variance or one per ratio");
        }
        let n = self.pred_ratio.len();
        let nv = self.pred_ratio_var.len();
        // Python zips the lists (silently dropping extras) or fails comparing a float to a list.
        if nv != 1 && nv != n {
            bail!(
                "mask pred_ratio has {n} values but pred_ratio_var has {nv}; give one variance or {n}"
            );
        }
        for (j, &r) in self.pred_ratio.iter().enumerate() {
            let v = self.pred_ratio_var[if nv == 1 { 0 } else { j }];
            if !r.is_finite() || !(0.0..1.0).contains(&r) {
                bail!("mask pred_ratio {r} must lie in [0, 1)");
            }
            if !v.is_finite() || v < 0.0 {
                bail!("mask pred_ratio_var {v} must be ≥ 0");
            }
            if r < v {
                bail!("mask pred_ratio {r} is smaller than its variance {v} (the official code asserts ratio ≥ var)");
            }
            if r + v > 1.0 {
                bail!("mask pred_ratio {r} + variance {v} exceeds 1");
            }
        }
        let (a, b) = self.pred_aspect_ratio;
        if !(a.is_finite() && b.is_finite() && a > 0.0 && b > 0.0) {
            bail!("mask pred_aspect_ratio ({a}, {b}) must be two positive numbers");
        }
        Ok(())
    }
}

/// One drawn mask with how it came about (for logging and the statistics tests).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskDraw {
    /// rows·cols, row-major, true = masked.
    pub mask: Vec<bool>,
    /// The prediction ratio drawn for this crop.
    pub ratio: f64,
    /// ratio·rows·cols, the (float) number of patches aimed at.
    pub target: f64,
    /// Rectangles placed (block shape); 0 for the random shape.
    pub blocks: usize,
}

impl MaskDraw {
    pub fn count(&self) -> usize {
        self.mask.iter().filter(|m| **m).count()
    }
}

pub struct MaskGenerator {
    shape: MaskShape,
    /// (ratio, variance) pairs; one pair is the scalar case.
    ratios: Vec<(f64, f64)>,
    log_aspect: (f64, f64),
    start_epoch: usize,
    rows: usize,
    cols: usize,
}

/// Python's `random.uniform(a, b)` = a + (b − a)·random(); valid for b < a as well.
fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.gen::<f64>()
}

impl MaskGenerator {
    /// `grid` = (rows, cols) of patches of the crop (14×14 for a 224 global crop at patch 16).
    pub fn new(cfg: &MaskConfig, grid: (usize, usize)) -> Result<Self> {
        cfg.validate()?;
        let (rows, cols) = grid;
        if rows == 0 || cols == 0 {
            bail!("mask grid {rows}×{cols} is empty");
        }
        let nv = cfg.pred_ratio_var.len();
        let ratios = cfg
            .pred_ratio
            .iter()
            .enumerate()
            .map(|(j, &r)| (r, cfg.pred_ratio_var[if nv == 1 { 0 } else { j }]))
            .collect();
        Ok(Self {
            shape: cfg.shape,
            ratios,
            log_aspect: (cfg.pred_aspect_ratio.0.ln(), cfg.pred_aspect_ratio.1.ln()),
            start_epoch: cfg.pred_start_epoch,
            rows,
            cols,
        })
    }

    pub fn grid(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// `get_pred_ratio`: every listed ratio is drawn (consuming randomness only when its
    /// variance is positive), then one of them is chosen uniformly.
    fn pred_ratio(&self, epoch: usize, rng: &mut impl Rng) -> f64 {
        if epoch < self.start_epoch {
            return 0.0;
        }
        let draw = |rng: &mut _, (r, v): (f64, f64)| {
            if v > 0.0 {
                uniform(rng, r - v, r + v)
            } else {
                r
            }
        };
        if self.ratios.len() == 1 {
            return draw(rng, self.ratios[0]);
        }
        let drawn: Vec<f64> = self.ratios.iter().map(|&p| draw(rng, p)).collect();
        drawn[rng.gen_range(0..drawn.len())]
    }

    /// rows·cols booleans, row-major, true = masked.
    pub fn sample(&self, epoch: usize, rng: &mut impl Rng) -> Vec<bool> {
        self.sample_with_stats(epoch, rng).mask
    }

    pub fn sample_with_stats(&self, epoch: usize, rng: &mut impl Rng) -> MaskDraw {
        let (h, w) = (self.rows, self.cols);
        let ratio = self.pred_ratio(epoch, rng);
        // Same association as Python's `ratio * H * W`, so integer targets stay exact.
        let target = ratio * h as f64 * w as f64;
        let (mask, blocks) = match self.shape {
            MaskShape::Block => self.block_mask(target, rng),
            MaskShape::Rand => {
                let k = target as usize;
                let mut mask = vec![false; h * w - k];
                mask.extend(std::iter::repeat_n(true, k));
                mask.shuffle(rng);
                (mask, 0)
            }
        };
        MaskDraw {
            mask,
            ratio,
            target,
            blocks,
        }
    }

    /// BEiT block masking as in `ImageFolderMask.__getitem__`: rectangles of random area and
    /// aspect until the target is reached or ten attempts in a row add nothing.
    fn block_mask(&self, target: f64, rng: &mut impl Rng) -> (Vec<bool>, usize) {
        let (h, w) = (self.rows, self.cols);
        let mut mask = vec![false; h * w];
        let mut count = 0usize;
        let mut blocks = 0usize;
        let min_area = ((h.min(w) / 3) as f64).powi(2);
        while (count as f64) < target {
            let remaining = target - count as f64;
            let mut delta = 0usize;
            for _ in 0..10 {
                let area = uniform(rng, min_area, remaining);
                let aspect = uniform(rng, self.log_aspect.0, self.log_aspect.1).exp();
                // Python 3's round() breaks ties to even.
                let bh = (area * aspect).sqrt().round_ties_even() as usize;
                let bw = (area / aspect).sqrt().round_ties_even() as usize;
                if bw < w && bh < h {
                    let top = rng.gen_range(0..=h - bh);
                    let left = rng.gen_range(0..=w - bw);
                    let already = (top..top + bh)
                        .map(|i| {
                            mask[i * w + left..i * w + left + bw]
                                .iter()
                                .filter(|m| **m)
                                .count()
                        })
                        .sum::<usize>();
                    let newly = bh * bw - already;
                    if newly > 0 && newly as f64 <= remaining {
                        for i in top..top + bh {
                            mask[i * w + left..i * w + left + bw].fill(true);
                        }
                        delta = newly;
                        blocks += 1;
                    }
                }
                if delta > 0 {
                    break;
                }
            }
            if delta == 0 {
                break;
            }
            count += delta;
        }
        (mask, blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn no_mask_before_start_epoch_and_rectangles_inside_the_grid() {
        let cfg = MaskConfig {
            shape: MaskShape::Block,
            pred_ratio: vec![0.4],
            pred_ratio_var: vec![0.0],
            pred_aspect_ratio: default_aspect(),
            pred_start_epoch: 2,
        };
        let gen = MaskGenerator::new(&cfg, (14, 10)).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        assert!(!gen.sample(1, &mut rng).contains(&true));
        for _ in 0..200 {
            let d = gen.sample_with_stats(2, &mut rng);
            assert_eq!(d.mask.len(), 140);
            assert!(d.count() as f64 <= d.target, "{} > {}", d.count(), d.target);
            assert!(d.blocks >= 1);
        }
    }
}
