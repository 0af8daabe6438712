//! The train and eval transforms of iBOT's fine-tuning scripts.
//!
//! Transcribes `build_transform` of bytedance/ibot `evaluation/classification_layer_decay/
//! run_class_finetuning.py` (BEiT recipe) and `evaluation/semi_supervised/eval_cls.py` (DeiT recipe),
//! which call timm's `create_transform(is_training=True, …)` = `transforms_imagenet_train`:
//!
//! * train: `RandomResizedCropAndInterpolation(size, scale (0.08, 1), ratio (3/4, 4/3), bicubic)` →
//!   `RandomHorizontalFlip(0.5)` → RandAugment `rand-m9-mstd0.5-inc1` → ToTensor → Normalize →
//!   `RandomErasing(0.25, 'pixel', count 1)`. With `input_size <= 32` the scripts replace the first op
//!   by torchvision `RandomCrop(size, padding=4)` (zero padding). `--color_jitter 0.4` is inert:
//!   timm adds ColorJitter only when no auto-augment policy is given, so there is none here.
//! * eval: `Resize(int(size / crop_pct), interpolation)` → `CenterCrop(size)` → ToTensor → Normalize,
//!   with `crop_pct = 224/256` below 384 px (1.0 from 384 on) in the BEiT script, which resizes
//!   bilinearly; the semi-supervised script resizes to `int(256/224 · size)` bicubically (the same
//!   integer for every size). With `input_size <= 32` neither resizes nor crops.
//!
//! timm's crop condition (`w <= W and h <= H`) differs from torchvision's only for zero-sized boxes,
//! which timm cannot resize anyway, so [`RandomResizedCrop`] is reused. Normalisation uses ImageNet's
//! mean/std (the BEiT script's `--imagenet_default_mean_and_std`, as iBOT's run scripts pass it).
//! Batch-level Mixup/CutMix is in [`crate::mixup`].

use image::RgbImage;
use rand::Rng;

use crate::augment::RandomResizedCrop;
use crate::erasing::RandomErasing;
use crate::randaugment::{RaDraw, RandAugment};
use crate::transforms::{self, Interpolation, IMAGENET_MEAN, IMAGENET_STD};

/// The first op of the train pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainCrop {
    /// timm `RandomResizedCropAndInterpolation`.
    Resized(RandomResizedCrop),
    /// torchvision `RandomCrop(size, padding)` with zero fill (inputs of 32 px or less).
    Padded { size: u32, padding: u32 },
}

/// torchvision `RandomCrop(size, padding)`'s output for a drawn offset: pad with zeros, then crop
/// `size × size` at (`top`, `left`) of the padded image.
pub fn random_crop_padded(
    img: &RgbImage,
    size: u32,
    padding: u32,
    top: u32,
    left: u32,
) -> RgbImage {
    let p = padding as i64;
    transforms::crop(img, top as i64 - p, left as i64 - p, size, size)
}

/// `RandomCrop.get_params` on the padded image: `(top, left)`, both `torch.randint(0, n - size + 1)`,
/// or (0, 0) without draws when the padded image already has the size.
pub fn random_crop_params(
    width: u32,
    height: u32,
    size: u32,
    padding: u32,
    rng: &mut impl Rng,
) -> (u32, u32) {
    let (h, w) = (height + 2 * padding, width + 2 * padding);
    assert!(
        h >= size && w >= size,
        "RandomCrop: crop size {size} is larger than the padded image {w}x{h}"
    );
    if h == size && w == size {
        return (0, 0);
    }
    let top = rng.random_range(0..=h - size);
    let left = rng.random_range(0..=w - size);
    (top, left)
}

/// The per-image draws of the train pipeline before the tensor stage.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainDraws {
    /// (top, left, height, width) in the input for RandomResizedCrop; (top, left, size, size) in the
    /// padded image for RandomCrop.
    pub crop: (u32, u32, u32, u32),
    pub flip: bool,
    pub rand_augment: Vec<RaDraw>,
}

/// The fine-tuning train transform.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneTrainTransform {
    pub size: u32,
    pub crop: TrainCrop,
    /// `RandomHorizontalFlip` probability.
    pub hflip: f64,
    pub rand_augment: Option<RandAugment>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub erasing: Option<RandomErasing>,
}

impl FinetuneTrainTransform {
    /// Both recipes at `size` with `--train_interpolation` (bicubic in both scripts).
    pub fn new(size: u32, interpolation: Interpolation) -> Self {
        let crop = if size <= 32 {
            TrainCrop::Padded { size, padding: 4 }
        } else {
            TrainCrop::Resized(RandomResizedCrop {
                size,
                scale: (0.08, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
                interpolation,
            })
        };
        FinetuneTrainTransform {
            size,
            crop,
            hflip: 0.5,
            rand_augment: Some(RandAugment::finetune(size, IMAGENET_MEAN, interpolation)),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            erasing: Some(RandomErasing::finetune()),
        }
    }

    pub fn output_shape(&self) -> (usize, usize, usize) {
        (3, self.size as usize, self.size as usize)
    }

    /// Crop, flip and RandAugment draws, in the pipeline's order.
    pub fn draw(&self, width: u32, height: u32, rng: &mut impl Rng) -> TrainDraws {
        let crop = match &self.crop {
            TrainCrop::Resized(rrc) => rrc.params(width, height, rng),
            TrainCrop::Padded { size, padding } => {
                let (t, l) = random_crop_params(width, height, *size, *padding, rng);
                (t, l, *size, *size)
            }
        };
        let flip = rng.random::<f64>() < self.hflip;
        let rand_augment = self
            .rand_augment
            .as_ref()
            .map_or_else(Vec::new, |ra| ra.draw(rng));
        TrainDraws {
            crop,
            flip,
            rand_augment,
        }
    }

    /// The uint8 image after crop, flip and RandAugment for given draws.
    pub fn apply_draws(&self, img: &RgbImage, d: &TrainDraws) -> RgbImage {
        let (top, left, h, w) = d.crop;
        let mut out = match &self.crop {
            TrainCrop::Resized(rrc) => {
                let c = transforms::crop(img, top as i64, left as i64, h, w);
                transforms::resize(&c, rrc.size, rrc.size, rrc.interpolation)
            }
            TrainCrop::Padded { size, padding } => {
                random_crop_padded(img, *size, *padding, top, left)
            }
        };
        if d.flip {
            out = transforms::hflip(&out);
        }
        if let Some(ra) = &self.rand_augment {
            out = ra.apply_draws(&out, &d.rand_augment);
        }
        out
    }

    /// The whole pipeline into a CHW slice of `3 × size × size`.
    pub fn apply_into(&self, img: &RgbImage, rng: &mut impl Rng, out: &mut [f32]) {
        let d = self.draw(img.width(), img.height(), rng);
        let aug = self.apply_draws(img, &d);
        transforms::write_normalized_chw(&aug, self.mean, self.std, out);
        if let Some(er) = &self.erasing {
            let s = self.size as usize;
            er.apply(out, 3, s, s, rng);
        }
    }
}

/// The fine-tuning eval transform.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneEvalTransform {
    pub size: u32,
    /// Shorter-side resize before the centre crop; `None` (inputs of 32 px or less) = neither.
    pub resize: Option<u32>,
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl FinetuneEvalTransform {
    /// `run_class_finetuning.py`: `int(size / crop_pct)` (crop_pct 224/256 below 384 px, else 1),
    /// bilinear.
    pub fn beit(size: u32) -> Self {
        let crop_pct = if size < 384 { 224.0 / 256.0 } else { 1.0 };
        FinetuneEvalTransform {
            size,
            resize: (size > 32).then(|| (size as f64 / crop_pct) as u32),
            interpolation: Interpolation::Bilinear,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// `semi_supervised/eval_cls.py`: `int(256 / 224 · size)`, bicubic.
    pub fn semisup(size: u32) -> Self {
        FinetuneEvalTransform {
            size,
            resize: (size > 32).then(|| ((256.0 / 224.0) * size as f64) as u32),
            interpolation: Interpolation::Bicubic,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    pub fn output_shape(&self) -> (usize, usize, usize) {
        (3, self.size as usize, self.size as usize)
    }

    /// The uint8 image before ToTensor. Without a resize the input passes through unchanged.
    pub fn apply_image(&self, img: &RgbImage) -> RgbImage {
        match self.resize {
            Some(r) => {
                let resized = transforms::resize_shorter(img, r, self.interpolation);
                transforms::center_crop(&resized, self.size)
            }
            None => img.clone(),
        }
    }

    /// The ≤ 32 px path does not resize, so it takes only images of exactly its size (the official
    /// pipeline would return another size and fail at collation).
    pub fn check_input(&self, img: &RgbImage) -> Result<(), String> {
        if self.resize.is_none() && (img.width() != self.size || img.height() != self.size) {
            return Err(format!(
                "fine-tuning eval at {} px without resize needs {0}x{0} images, got {}x{}",
                self.size,
                img.width(),
                img.height()
            ));
        }
        Ok(())
    }

    /// Into a CHW slice of `3 × size × size` (see [`Self::check_input`]; panics on what it refuses).
    pub fn apply_into(&self, img: &RgbImage, out: &mut [f32]) {
        if let Err(e) = self.check_input(img) {
            panic!("{e}");
        }
        let img = self.apply_image(img);
        transforms::write_normalized_chw(&img, self.mean, self.std, out);
    }
}
