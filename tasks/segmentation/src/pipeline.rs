//! The mmseg 0.12 ADE20K pipelines (`configs/_base_/datasets/ade20k.py`) on the joint transforms
//! of `data::joint`, each random draw from the sample's own seeded RNG:
//!
//! - train: load (labels with `reduce_zero_label`) → `Resize(img_scale, ratio_range)` (keep
//!   ratio, bilinear; labels nearest) → `RandomCrop(crop_size, cat_max_ratio)` → `RandomFlip` →
//!   `PhotoMetricDistortion` → `Normalize` → `Pad(crop_size, pad_val=0, seg_pad_val=255)` — the
//!   padding comes after normalisation, so padded pixels are 0 in normalised space, as in mmseg;
//! - test: load → keep-ratio `Resize(test_scale)` → `Normalize`.

use data::image_io::{load_rgb, LabelMap};
use data::joint::{self, JointSample, PadTo};
use data::photometric::PhotoMetricDistortion;
use data::segmentation::{SegPairs, IGNORE};
use data::transforms::{Interpolation, IMAGENET_MEAN, IMAGENET_STD};
use image::RgbImage;

use crate::config::PipelineConfig;

/// One training sample: a `3 × crop_h × crop_w` normalised image and its labels (255 = ignore).
pub struct TrainSample {
    pub image: Vec<f32>,
    pub labels: Vec<u8>,
}

/// Normalised CHW of `img` written into the top-left of a zero buffer of `width × height`.
fn normalised_padded(img: &RgbImage, width: usize, height: usize) -> Vec<f32> {
    let plane = width * height;
    let mut out = vec![0f32; 3 * plane];
    for (x, y, p) in img.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        for c in 0..3 {
            out[c * plane + y * width + x] =
                (p.0[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

pub fn train_sample(
    pairs: &SegPairs,
    index: usize,
    cfg: &PipelineConfig,
    rng: &mut data::augment::SampleRng,
) -> anyhow::Result<TrainSample> {
    let image = load_rgb(&pairs.pairs[index].0)?;
    let labels = pairs.load_labels(index)?;
    check_sizes(&image, &labels, pairs, index)?;
    let s = JointSample::new(image).with_seg(labels);
    let [long, short] = cfg.img_scale;
    let s = joint::random_rescale(
        &s,
        long,
        short,
        (cfg.ratio_range[0], cfg.ratio_range[1]),
        Interpolation::Bilinear,
        rng,
    );
    let [ch, cw] = cfg.crop_size;
    let s = joint::random_crop_seg(&s, cw, ch, cfg.cat_max_ratio, rng);
    let mut s = joint::random_hflip(&s, cfg.flip, rng);
    if cfg.photometric {
        s.image = PhotoMetricDistortion::default().apply(&s.image, rng);
    }
    let image = normalised_padded(&s.image, cw as usize, ch as usize);
    let padded = joint::pad(
        &s,
        PadTo::Size {
            width: cw,
            height: ch,
        },
    )?;
    let labels = padded.seg.expect("the sample has a label map").labels;
    Ok(TrainSample { image, labels })
}

/// One test image: the resized, normalised CHW image and its ground truth at the original size.
pub struct TestSample {
    pub image: Vec<f32>,
    /// (height, width) after the keep-ratio resize.
    pub size: (usize, usize),
    /// The ground truth (after `reduce_zero_label`) at the original size.
    pub labels: LabelMap,
    /// The original image, for drawings.
    pub original: RgbImage,
}

pub fn test_sample(
    pairs: &SegPairs,
    index: usize,
    cfg: &PipelineConfig,
) -> anyhow::Result<TestSample> {
    let image = load_rgb(&pairs.pairs[index].0)?;
    let labels = pairs.load_labels(index)?;
    check_sizes(&image, &labels, pairs, index)?;
    let [long, short] = cfg.test_scale;
    let resized = joint::resize_keep_ratio(
        &JointSample::new(image.clone()),
        long,
        short,
        Interpolation::Bilinear,
    );
    let (w, h) = (resized.width() as usize, resized.height() as usize);
    Ok(TestSample {
        image: normalised_padded(&resized.image, w, h),
        size: (h, w),
        labels,
        original: image,
    })
}

fn check_sizes(
    image: &RgbImage,
    labels: &LabelMap,
    pairs: &SegPairs,
    index: usize,
) -> anyhow::Result<()> {
    if (image.width(), image.height()) != (labels.width, labels.height) {
        anyhow::bail!(
            "{}: the image is {}×{} but its label map {} is {}×{}",
            pairs.pairs[index].0.display(),
            image.width(),
            image.height(),
            pairs.pairs[index].1.display(),
            labels.width,
            labels.height
        );
    }
    Ok(())
}

/// A label map of reduced-space predictions in the annotation's label space (ADE: +1, so 0 —
/// "other" — is never predicted), as ADE20K's submission PNGs hold them.
pub fn to_annotation_space(pred: &[u8], reduce_zero_label: bool) -> Vec<u8> {
    if reduce_zero_label {
        pred.iter()
            .map(|&p| if p == IGNORE { 0 } else { p + 1 })
            .collect()
    } else {
        pred.to_vec()
    }
}
