//! mmdet 2.11's detection pipelines on [`JointSample`]s, as iBOT's Cascade Mask R-CNN configs
//! build them (`evaluation/object_detection/configs/cascade_rcnn/vit_*_giou_4conv1f_coco_3x.py`,
//! `mmdet/datasets/pipelines/{transforms,auto_augment}.py`):
//!
//! - train: `RandomFlip(flip_ratio=0.5)` → `AutoAugment(policies)` (one policy drawn uniformly per
//!   sample; each policy is a list of `Resize(img_scale=[...], multiscale_mode='value',
//!   keep_ratio=True)` and `RandomCrop(crop_type='absolute_range', crop_size=(lo, hi),
//!   allow_negative_crop=True)` steps) → `Normalize(mean, std, to_rgb=True)` → `Pad(size_divisor=32)`;
//!   the DETR-style policy pair is [`DetTrainPipeline::detr_policies`];
//! - test: `Resize(img_scale=(1333, 800), keep_ratio=True)` → `Normalize` → `Pad(32)`
//!   (`MultiScaleFlipAug(flip=False)` with one scale).
//!
//! Semantics kept: `Resize` samples one of its scales per call (so the second resize of the crop
//! policy, `override=True`, re-samples), `keep_ratio` uses mmcv's `rescale_size`, boxes are scaled
//! by the f32 factors and clipped, `scale_factor` in the metadata is the LAST resize's
//! `(new_w / w, new_h / h)` as mmdet leaves it; `RandomCrop` draws the crop height then width in
//! `[min(size, lo), min(size, hi)]`, the offsets uniformly, clips boxes to the crop and drops boxes
//! (with their masks) that keep no area, crowd boxes included; a crop without objects is kept
//! (`allow_negative_crop=True`); flip mirrors boxes as `W − x`; masks follow every step (nearest)
//! and are padded with 0 to `pad_shape`. Normalisation happens before padding, so the padded
//! border is 0 in normalised space (the mean colour), as mmdet's `Pad` after `Normalize` and the
//! zero-padded batch collate give.
//!
//! Deviations, by project decision: images are resampled with PIL's kernels (mmcv's
//! `backend='pillow'`; the configs use the cv2 default), and random draws come from the per-sample
//! seeded RNG rather than numpy's global stream.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_io::LabelMap;
use crate::joint::{self, BoxXyxy, JointSample};
use crate::transforms::Interpolation;

/// mmdet's `img_norm_cfg` mean (RGB, 0–255).
pub const MMDET_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// mmdet's `img_norm_cfg` std (RGB, 0–255).
pub const MMDET_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// One step of an AutoAugment policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// `Resize(img_scale=scales, multiscale_mode='value', keep_ratio=True)`: each scale is an
    /// mmdet `(w, h)`-style pair whose larger entry bounds the long side and smaller entry the
    /// short side.
    Resize { scales: Vec<[u32; 2]> },
    /// `RandomCrop(crop_type='absolute_range', crop_size=(lo, hi), allow_negative_crop=True)`.
    RandomCrop { min: u32, max: u32 },
}

/// What mmdet's `img_metas` carry, (h, w) order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImgMeta {
    pub ori_shape: (usize, usize),
    pub img_shape: (usize, usize),
    pub pad_shape: (usize, usize),
    /// `(w_scale, h_scale, w_scale, h_scale)` of the last resize.
    pub scale_factor: [f32; 4],
    pub flip: bool,
}

/// A pipeline's output: the normalised image (CHW, `img_shape`, not padded) and its targets.
#[derive(Debug, Clone, PartialEq)]
pub struct DetInput {
    pub image: Vec<f32>,
    pub meta: ImgMeta,
    pub boxes: Vec<BoxXyxy>,
    pub labels: Vec<u64>,
    pub ignore: Vec<BoxXyxy>,
    /// One 0/1 map per box, padded to `pad_shape`.
    pub masks: Vec<LabelMap>,
}

/// The training pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct DetTrainPipeline {
    pub flip_ratio: f64,
    /// AutoAugment policies; one is drawn uniformly per sample (a single policy is a plain
    /// pipeline).
    pub policies: Vec<Vec<Step>>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad_divisor: u32,
    pub interpolation: Interpolation,
}

/// The test pipeline (one scale, no flip).
#[derive(Debug, Clone, PartialEq)]
pub struct DetTestPipeline {
    pub scale: [u32; 2],
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad_divisor: u32,
    pub interpolation: Interpolation,
}

/// `[lo, lo + step, …, hi]`.
fn range_scales(lo: u32, hi: u32, step: u32, long: u32) -> Vec<[u32; 2]> {
    (lo..=hi)
        .step_by(step as usize)
        .map(|s| [s, long])
        .collect()
}

impl DetTrainPipeline {
    /// The DETR / Sparse R-CNN policy pair of iBOT's configs, with every size multiplied by
    /// `scale` (1 = official: short sides 480–800 step 32 with long side 1333; or short 400/500/600,
    /// crop 384–600, short 480–800).
    pub fn detr_policies(scale: f64) -> Vec<Vec<Step>> {
        let s = |v: u32| ((v as f64 * scale).round() as u32).max(1);
        let long = s(1333);
        let multi: Vec<[u32; 2]> = range_scales(480, 800, 32, 1333)
            .into_iter()
            .map(|[a, _]| [s(a), long])
            .collect();
        vec![
            vec![Step::Resize {
                scales: multi.clone(),
            }],
            vec![
                Step::Resize {
                    scales: [400, 500, 600].iter().map(|&a| [s(a), long]).collect(),
                },
                Step::RandomCrop {
                    min: s(384),
                    max: s(600),
                },
                Step::Resize { scales: multi },
            ],
        ]
    }

    pub fn validate(&self) -> Result<()> {
        if self.policies.is_empty() || self.policies.iter().any(|p| p.is_empty()) {
            return Err(DataError::Invalid(
                "every AutoAugment policy needs at least one step".into(),
            ));
        }
        for step in self.policies.iter().flatten() {
            match step {
                Step::Resize { scales }
                    if scales.is_empty() || scales.iter().any(|s| s.contains(&0)) =>
                {
                    return Err(DataError::Invalid(format!(
                        "Resize needs positive scales, got {scales:?}"
                    )))
                }
                Step::RandomCrop { min, max } if *min == 0 || min > max => {
                    return Err(DataError::Invalid(format!(
                        "RandomCrop needs 0 < min <= max, got ({min}, {max})"
                    )))
                }
                _ => {}
            }
        }
        if self.pad_divisor == 0 {
            return Err(DataError::Invalid("pad divisor must be positive".into()));
        }
        Ok(())
    }

    /// Runs the pipeline on one sample (`ignore` = its crowd boxes).
    pub fn apply(
        &self,
        sample: &JointSample,
        ignore: &[BoxXyxy],
        rng: &mut impl Rng,
    ) -> Result<DetInput> {
        let ori_shape = (sample.height() as usize, sample.width() as usize);
        let mut s = sample.clone();
        let mut ignore = ignore.to_vec();
        let mut flip = false;
        // RandomFlip(flip_ratio): np.random.choice(['horizontal', None], p=[r, 1 − r])
        if self.flip_ratio > 0.0 && rng.random::<f64>() < self.flip_ratio {
            ignore = flip_boxes(&ignore, s.width());
            s = joint::hflip(&s);
            flip = true;
        }
        let mut scale_factor = [1.0f32; 4];
        let policy = &self.policies[rng.random_range(0..self.policies.len())];
        for step in policy {
            match step {
                Step::Resize { scales } => {
                    let [a, b] = scales[rng.random_range(0..scales.len())];
                    let (w, h) = (s.width(), s.height());
                    let (nw, nh) = joint::rescale_size(w, h, a.max(b), a.min(b));
                    ignore = resize_boxes(&ignore, w, h, nw, nh);
                    s = joint::resize(&s, nw, nh, self.interpolation);
                    scale_factor = factors(w, h, nw, nh);
                }
                Step::RandomCrop { min, max } => {
                    let (w, h) = (s.width(), s.height());
                    let crop_h = rng.random_range(h.min(*min)..=h.min(*max));
                    let crop_w = rng.random_range(w.min(*min)..=w.min(*max));
                    let margin_h = h.saturating_sub(crop_h);
                    let margin_w = w.saturating_sub(crop_w);
                    let y = rng.random_range(0..=margin_h);
                    let x = rng.random_range(0..=margin_w);
                    ignore = crop_boxes(&ignore, x, y, crop_w, crop_h);
                    s = joint::crop(&s, x, y, crop_w, crop_h);
                }
            }
        }
        finish(
            &s,
            ignore,
            ori_shape,
            scale_factor,
            flip,
            self.mean,
            self.std,
            self.pad_divisor,
        )
    }
}

impl DetTestPipeline {
    pub fn apply(&self, sample: &JointSample) -> Result<DetInput> {
        let ori_shape = (sample.height() as usize, sample.width() as usize);
        let [a, b] = self.scale;
        let (w, h) = (sample.width(), sample.height());
        let (nw, nh) = joint::rescale_size(w, h, a.max(b), a.min(b));
        let s = joint::resize(sample, nw, nh, self.interpolation);
        finish(
            &s,
            Vec::new(),
            ori_shape,
            factors(w, h, nw, nh),
            false,
            self.mean,
            self.std,
            self.pad_divisor,
        )
    }
}

// `w_scale = new_w / w` in double, stored as f32 (np.array(..., dtype=np.float32)).
fn factors(w: u32, h: u32, nw: u32, nh: u32) -> [f32; 4] {
    let ws = (nw as f64 / w as f64) as f32;
    let hs = (nh as f64 / h as f64) as f32;
    [ws, hs, ws, hs]
}

#[allow(clippy::too_many_arguments)]
fn finish(
    s: &JointSample,
    ignore: Vec<BoxXyxy>,
    ori_shape: (usize, usize),
    scale_factor: [f32; 4],
    flip: bool,
    mean: [f32; 3],
    std: [f32; 3],
    pad_divisor: u32,
) -> Result<DetInput> {
    let (w, h) = (s.width(), s.height());
    if pad_divisor == 0 {
        return Err(DataError::Invalid("pad divisor must be positive".into()));
    }
    let (pw, ph) = (
        w.div_ceil(pad_divisor) * pad_divisor,
        h.div_ceil(pad_divisor) * pad_divisor,
    );
    Ok(DetInput {
        image: normalize(&s.image, mean, std),
        meta: ImgMeta {
            ori_shape,
            img_shape: (h as usize, w as usize),
            pad_shape: (ph as usize, pw as usize),
            scale_factor,
            flip,
        },
        boxes: s.boxes.clone(),
        labels: s.labels.clone(),
        ignore,
        masks: s
            .instance_masks
            .iter()
            .map(|m| pad_mask(m, pw, ph))
            .collect(),
    })
}

// `BitmapMasks.pad(pad_shape, pad_val=0)`: zeros at the bottom and right.
fn pad_mask(m: &LabelMap, width: u32, height: u32) -> LabelMap {
    let mut out = LabelMap::new(width, height, 0);
    for (src, dst) in m
        .labels
        .chunks_exact(m.width as usize)
        .zip(out.labels.chunks_exact_mut(width as usize))
    {
        dst[..src.len()].copy_from_slice(src);
    }
    out
}

/// mmcv `imnormalize(img, mean, std, to_rgb=True)` on an RGB image: `(v − mean) · (1 / std)`, CHW.
pub fn normalize(img: &image::RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    let mut out = vec![0f32; 3 * plane];
    let inv: [f64; 3] = std::array::from_fn(|c| 1.0 / std[c] as f64);
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let d = p.0[c] as f32 - mean[c];
            out[c * plane + i] = (d as f64 * inv[c]) as f32;
        }
    }
    out
}

fn flip_boxes(boxes: &[BoxXyxy], width: u32) -> Vec<BoxXyxy> {
    let w = width as f32;
    boxes
        .iter()
        .map(|b| [w - b[2], b[1], w - b[0], b[3]])
        .collect()
}

fn resize_boxes(boxes: &[BoxXyxy], w: u32, h: u32, nw: u32, nh: u32) -> Vec<BoxXyxy> {
    let [ws, hs, _, _] = factors(w, h, nw, nh);
    let (wf, hf) = (nw as f32, nh as f32);
    boxes
        .iter()
        .map(|b| {
            [
                (b[0] * ws).clamp(0.0, wf),
                (b[1] * hs).clamp(0.0, hf),
                (b[2] * ws).clamp(0.0, wf),
                (b[3] * hs).clamp(0.0, hf),
            ]
        })
        .collect()
}

fn crop_boxes(boxes: &[BoxXyxy], x: u32, y: u32, cw: u32, ch: u32) -> Vec<BoxXyxy> {
    let (xf, yf, wf, hf) = (x as f32, y as f32, cw as f32, ch as f32);
    boxes
        .iter()
        .map(|b| {
            [
                (b[0] - xf).clamp(0.0, wf),
                (b[1] - yf).clamp(0.0, hf),
                (b[2] - xf).clamp(0.0, wf),
                (b[3] - yf).clamp(0.0, hf),
            ]
        })
        .filter(|c| c[2] > c[0] && c[3] > c[1])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::sample_rng;
    use image::RgbImage;

    fn sample(w: u32, h: u32) -> JointSample {
        let image = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 100]));
        let mut m = LabelMap::new(w, h, 0);
        for y in 2..6 {
            for x in 3..9 {
                m.labels[(y * w + x) as usize] = 1;
            }
        }
        JointSample::new(image)
            .with_boxes(vec![[3.0, 2.0, 9.0, 6.0]], vec![4])
            .with_instance_masks(vec![m])
    }

    #[test]
    fn test_pipeline_resizes_keeps_ratio_and_pads() {
        let p = DetTestPipeline {
            scale: [1333, 800],
            mean: MMDET_MEAN,
            std: MMDET_STD,
            pad_divisor: 32,
            interpolation: Interpolation::Bilinear,
        };
        // 640x480 → 1067x800 (mmcv rescale_size), padded to 1088x800
        let out = p.apply(&sample(640, 480)).unwrap();
        assert_eq!(out.meta.img_shape, (800, 1067));
        assert_eq!(out.meta.pad_shape, (800, 1088));
        assert_eq!(out.meta.ori_shape, (480, 640));
        assert_eq!(out.image.len(), 3 * 800 * 1067);
        assert!((out.meta.scale_factor[0] - 1067.0 / 640.0).abs() < 1e-6);
        assert_eq!(out.masks[0].width, 1088);
        // normalised: pixel (0, 0) of channel 2 is (100 − 103.53) / 57.375
        assert!((out.image[2 * 800 * 1067] - (100.0 - 103.53) / 57.375).abs() < 1e-5);
    }

    #[test]
    fn train_pipeline_is_seeded_and_keeps_targets_consistent() {
        let p = DetTrainPipeline {
            flip_ratio: 0.5,
            policies: DetTrainPipeline::detr_policies(0.05),
            mean: MMDET_MEAN,
            std: MMDET_STD,
            pad_divisor: 32,
            interpolation: Interpolation::Bilinear,
        };
        p.validate().unwrap();
        let s = sample(64, 48);
        let ignore = vec![[40.0, 30.0, 50.0, 40.0]];
        let mut flips = 0;
        for i in 0..100 {
            let a = p.apply(&s, &ignore, &mut sample_rng(1, 0, i)).unwrap();
            let b = p.apply(&s, &ignore, &mut sample_rng(1, 0, i)).unwrap();
            assert_eq!(a, b);
            flips += a.meta.flip as usize;
            let (h, w) = a.meta.img_shape;
            assert_eq!(a.meta.pad_shape, (h.div_ceil(32) * 32, w.div_ceil(32) * 32));
            assert_eq!(a.boxes.len(), a.masks.len());
            for bx in a.boxes.iter().chain(&a.ignore) {
                assert!(bx[0] >= 0.0 && bx[2] <= w as f32 && bx[2] > bx[0]);
                assert!(bx[1] >= 0.0 && bx[3] <= h as f32 && bx[3] > bx[1]);
            }
            // short side within the policy's sizes (24..=40 at scale 0.05) or a crop of them
            assert!(h.min(w) <= 40, "{:?}", a.meta.img_shape);
        }
        assert!((25..75).contains(&flips), "{flips} flips");
    }

    #[test]
    fn crop_drops_boxes_left_empty() {
        assert_eq!(
            crop_boxes(
                &[[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 20.0, 20.0]],
                5,
                5,
                10,
                10
            ),
            vec![[5.0, 5.0, 10.0, 10.0]]
        );
        assert_eq!(
            flip_boxes(&[[1.0, 2.0, 3.0, 4.0]], 10),
            vec![[7.0, 2.0, 9.0, 4.0]]
        );
    }
}
