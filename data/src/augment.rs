//! Random augmentations with torchvision's sampling algorithms, drawing from an explicit RNG so
//! that a (seed, epoch, index) triple reproduces a sample exactly.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::color::{self, JitterOp, JitterParams};
use crate::finetune_transform::{FinetuneEvalTransform, FinetuneTrainTransform};
use crate::transforms::{self, round_half_even, Interpolation, IMAGENET_MEAN, IMAGENET_STD};

pub type SampleRng = ChaCha8Rng;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG for one sample: independent of worker count and visiting order.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> SampleRng {
    let key = splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ index);
    ChaCha8Rng::seed_from_u64(key)
}

/// torchvision `RandomResizedCrop`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomResizedCrop {
    pub size: u32,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub interpolation: Interpolation,
}

impl RandomResizedCrop {
    pub fn new(size: u32, scale: (f64, f64), interpolation: Interpolation) -> Self {
        RandomResizedCrop {
            size,
            scale,
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            interpolation,
        }
    }

    /// `get_params`: up to 10 attempts at a (scale, log-uniform ratio) box that fits, then the
    /// central crop clamped to the ratio range. Returns (top, left, height, width).
    pub fn params(&self, width: u32, height: u32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
        let area = (width as f64) * (height as f64);
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(log_lo..=log_hi).exp();
            let w = round_half_even((target_area * aspect).sqrt());
            let h = round_half_even((target_area / aspect).sqrt());
            if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
                let i = rng.random_range(0..=(height as i64 - h)) as u32;
                let j = rng.random_range(0..=(width as i64 - w)) as u32;
                return (i, j, h as u32, w as u32);
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.ratio.0.min(self.ratio.1) {
            let w = width as i64;
            (
                w,
                round_half_even(w as f64 / self.ratio.0.min(self.ratio.1)),
            )
        } else if in_ratio > self.ratio.0.max(self.ratio.1) {
            let h = height as i64;
            (
                round_half_even(h as f64 * self.ratio.0.max(self.ratio.1)),
                h,
            )
        } else {
            (width as i64, height as i64)
        };
        let i = (height as i64 - h) / 2;
        let j = (width as i64 - w) / 2;
        (i as u32, j as u32, h as u32, w as u32)
    }

    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (i, j, h, w) = self.params(img.width(), img.height(), rng);
        let cropped = transforms::crop(img, i as i64, j as i64, h, w);
        transforms::resize(&cropped, self.size, self.size, self.interpolation)
    }
}

/// torchvision `ColorJitter(brightness, contrast, saturation, hue)`; 0 disables an op.
#[derive(Debug, Clone, PartialEq)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl ColorJitter {
    /// iBOT/DINO's ColorJitter(0.4, 0.4, 0.2, 0.1).
    pub fn ibot() -> Self {
        ColorJitter {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
        }
    }

    /// `get_params`: a random order of the four ops and one uniform factor per enabled op
    /// (brightness etc. in [max(0, 1 - v), 1 + v], hue in [-v, v]).
    pub fn params(&self, rng: &mut impl Rng) -> JitterParams {
        let mut order = [
            JitterOp::Brightness,
            JitterOp::Contrast,
            JitterOp::Saturation,
            JitterOp::Hue,
        ];
        for i in (1..4).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut factor =
            |v: f32| (v > 0.0).then(|| rng.random_range((1.0 - v).max(0.0)..=(1.0 + v)));
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let saturation = factor(self.saturation);
        let hue = (self.hue > 0.0).then(|| rng.random_range(-self.hue..=self.hue));
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }

    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let p = self.params(rng);
        color::apply_jitter(img, &p)
    }
}

/// iBOT's colour pipeline knobs (ibot-reference §6), with the official values as the default:
/// `RandomApply(ColorJitter(0.4, 0.4, 0.2, 0.1), p=0.8)`, `RandomGrayscale(0.2)`, and for the
/// second and later global crops `Solarization(p=0.2)`. A recipe for grey 28-px images can switch
/// the ops that do nothing (saturation, hue, grayscale) or harm (solarize) off; the draws keep
/// their order whatever the probabilities, so a setting changes only what it names.
#[derive(Debug, Clone, PartialEq)]
pub struct IbotColor {
    pub jitter: ColorJitter,
    /// Probability of applying the jitter.
    pub jitter_p: f64,
    pub grayscale_p: f64,
    /// Probability of solarizing (threshold 128) global crops 2..G.
    pub solarize_p: f64,
    /// Gaussian-blur probability of global crop 1, of global crops 2..G and of the local crops
    /// (official 1.0 / 0.1 / 0.5).
    pub blur_p: (f64, f64, f64),
}

impl Default for IbotColor {
    fn default() -> Self {
        IbotColor {
            jitter: ColorJitter::ibot(),
            jitter_p: 0.8,
            grayscale_p: 0.2,
            solarize_p: 0.2,
            blur_p: IBOT_BLUR_P,
        }
    }
}

/// The official blur probabilities: global crop 1, global crops 2..G, local crops.
pub const IBOT_BLUR_P: (f64, f64, f64) = (1.0, 0.1, 0.5);

/// The flip / jitter / grayscale tail shared by every iBOT crop.
fn flip_and_color(img: RgbImage, color: &IbotColor, rng: &mut SampleRng) -> RgbImage {
    let mut img = img;
    if rng.random::<f64>() < 0.5 {
        img = transforms::hflip(&img);
    }
    if rng.random::<f64>() < color.jitter_p {
        img = color.jitter.apply(&img, rng);
    }
    if rng.random::<f64>() < color.grayscale_p {
        img = color::rgb_to_grayscale(&img);
    }
    img
}

/// iBOT's `utils.GaussianBlur(p)`: radius ~ U(0.1, 2.0) officially, applied when a uniform draw ≤ p
/// (p = 0 never applies it).
fn maybe_blur(img: RgbImage, p: f64, radius: (f64, f64), rng: &mut SampleRng) -> RgbImage {
    let apply = rng.random::<f64>() <= p && p > 0.0;
    if apply {
        let radius: f64 = rng.random_range(radius.0..=radius.1);
        color::gaussian_blur(&img, radius as f32)
    } else {
        img
    }
}

/// `DataAugmentationiBOT` (ibot-reference §6): G global crops and L local crops per image.
#[derive(Debug, Clone, PartialEq)]
pub struct IbotAugment {
    pub global_size: u32,
    pub local_size: u32,
    pub global_scale: (f64, f64),
    pub local_scale: (f64, f64),
    pub global_crops: usize,
    pub local_crops: usize,
    /// Gaussian blur radius range in pixels; the official (0.1, 2.0) is sized for 224-px crops.
    pub blur_radius: (f64, f64),
    /// Jitter strengths and the probabilities of jitter, grayscale, solarize and blur.
    pub color: IbotColor,
}

/// The official blur radius range.
pub const IBOT_BLUR_RADIUS: (f64, f64) = (0.1, 2.0);

impl IbotAugment {
    /// The README ViT-S recipe at a given resolution.
    pub fn new(global_size: u32, local_size: u32, local_crops: usize) -> Self {
        IbotAugment {
            global_size,
            local_size,
            global_scale: (0.25, 1.0),
            local_scale: (0.05, 0.25),
            global_crops: 2,
            local_crops,
            blur_radius: IBOT_BLUR_RADIUS,
            color: IbotColor::default(),
        }
    }

    /// Crops in iBOT's order [global1, global2.., local1..], each CHW normalized.
    pub fn apply(&self, img: &RgbImage, rng: &mut SampleRng) -> Vec<Vec<f32>> {
        let color = &self.color;
        let mut crops = Vec::with_capacity(self.global_crops + self.local_crops);
        let global =
            RandomResizedCrop::new(self.global_size, self.global_scale, Interpolation::Bicubic);
        for g in 0..self.global_crops {
            let mut c = flip_and_color(global.apply(img, rng), color, rng);
            if g == 0 {
                c = maybe_blur(c, color.blur_p.0, self.blur_radius, rng);
            } else {
                c = maybe_blur(c, color.blur_p.1, self.blur_radius, rng);
                if rng.random::<f64>() < color.solarize_p {
                    c = color::solarize(&c, 128);
                }
            }
            crops.push(transforms::to_normalized_chw(
                &c,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ));
        }
        let local =
            RandomResizedCrop::new(self.local_size, self.local_scale, Interpolation::Bicubic);
        for _ in 0..self.local_crops {
            let c = flip_and_color(local.apply(img, rng), color, rng);
            let c = maybe_blur(c, color.blur_p.2, self.blur_radius, rng);
            crops.push(transforms::to_normalized_chw(
                &c,
                IMAGENET_MEAN,
                IMAGENET_STD,
            ));
        }
        crops
    }
}

/// Per-image transforms the loader can run.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Resize(resize, bicubic) → CenterCrop(crop) → Normalize: frozen-feature evaluation.
    Eval { resize: u32, crop: u32 },
    /// RandomResizedCrop(size, bilinear, scale (0.08, 1)) → flip → Normalize: linear probing.
    LinearTrain { size: u32 },
    /// RandomResizedCrop(size, bicubic, scale) → flip → ColorJitter(0.4,0.4,0.2,0.1) p=0.8:
    /// one iBOT-style view (used for throughput measurements and single-view training).
    CropJitter { size: u32, scale: (f64, f64) },
    /// The fine-tuning train pipeline (crop, flip, RandAugment, normalise, RandomErasing).
    FinetuneTrain(FinetuneTrainTransform),
    /// The fine-tuning eval pipeline (resize, centre crop, normalise).
    FinetuneEval(FinetuneEvalTransform),
}

impl Transform {
    /// Why `img` cannot go through this transform, if it cannot.
    pub fn check_input(&self, img: &RgbImage) -> std::result::Result<(), String> {
        match self {
            Transform::FinetuneEval(t) => t.check_input(img),
            _ => Ok(()),
        }
    }

    /// Output (channels, height, width).
    pub fn output_shape(&self) -> (usize, usize, usize) {
        let s = match *self {
            Transform::Eval { crop, .. } => crop,
            Transform::LinearTrain { size } | Transform::CropJitter { size, .. } => size,
            Transform::FinetuneTrain(ref t) => return t.output_shape(),
            Transform::FinetuneEval(ref t) => return t.output_shape(),
        };
        (3, s as usize, s as usize)
    }

    /// Applies the transform, writing CHW floats into `out`.
    pub fn apply_into(&self, img: &RgbImage, rng: &mut SampleRng, out: &mut [f32]) {
        let img = match *self {
            // These normalise (and erase) themselves.
            Transform::FinetuneTrain(ref t) => return t.apply_into(img, rng, out),
            Transform::FinetuneEval(ref t) => return t.apply_into(img, out),
            Transform::Eval { resize, crop } => {
                let r = transforms::resize_shorter(img, resize, Interpolation::Bicubic);
                transforms::center_crop(&r, crop)
            }
            Transform::LinearTrain { size } => {
                let c = RandomResizedCrop::new(size, (0.08, 1.0), Interpolation::Bilinear)
                    .apply(img, rng);
                if rng.random::<f64>() < 0.5 {
                    transforms::hflip(&c)
                } else {
                    c
                }
            }
            Transform::CropJitter { size, scale } => {
                let c = RandomResizedCrop::new(size, scale, Interpolation::Bicubic).apply(img, rng);
                let c = if rng.random::<f64>() < 0.5 {
                    transforms::hflip(&c)
                } else {
                    c
                };
                if rng.random::<f64>() < 0.8 {
                    ColorJitter::ibot().apply(&c, rng)
                } else {
                    c
                }
            }
        };
        transforms::write_normalized_chw(&img, IMAGENET_MEAN, IMAGENET_STD, out);
    }
}
