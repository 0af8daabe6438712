//! The `pixels` pseudo-checkpoint: the raw-pixel baseline every report carries next to random init
//! and the pretrained checkpoints. `--checkpoint pixels` (or `NAME=pixels`) gives each image the
//! flattened crop of the data config's eval transform (Resize(shorter side, bicubic) →
//! CenterCrop) as its feature, in [0, 1] (x / 255, channel-major RGB, no ImageNet normalisation —
//! the plain pixel vector whose cosine k-NN is the usual "raw pixels" number: 84.6 % on
//! Fashion-MNIST); `pixels:SIZE` first resizes that crop to SIZE × SIZE (bicubic), a thumbnail
//! baseline. Features go through the same cache as a model's; every feature layout of a model
//! (cls, cls-last-4, …) means the same vector here, except head logits, which do not exist.
//! A file really called `pixels` is read as a checkpoint when written as `./pixels`.

use std::path::Path;

use anyhow::{bail, Result};
use data::transforms::{self, Interpolation};
use image::RgbImage;

/// The reserved checkpoint name.
pub const PIXELS: &str = "pixels";

/// A `pixels[:SIZE]` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelSource {
    /// Side of the thumbnail the crop is resized to; `None` keeps the crop.
    pub size: Option<u32>,
}

impl PixelSource {
    /// `Some` for `pixels` and `pixels:SIZE`, `None` for anything else (a checkpoint path);
    /// an error for `pixels:` followed by something that is not a positive integer.
    pub fn parse(spec: &str) -> Result<Option<PixelSource>> {
        if spec == PIXELS {
            return Ok(Some(PixelSource { size: None }));
        }
        let Some(size) = spec.strip_prefix("pixels:") else {
            return Ok(None);
        };
        match size.parse::<u32>() {
            Ok(s) if s > 0 => Ok(Some(PixelSource { size: Some(s) })),
            _ => bail!(
                "{spec}: the pixel baseline is `pixels` or `pixels:SIZE` with SIZE a positive integer (the thumbnail side)"
            ),
        }
    }

    /// [`PixelSource::parse`] of a checkpoint path (non-UTF-8 paths are files).
    pub fn from_path(path: &Path) -> Result<Option<PixelSource>> {
        match path.to_str() {
            Some(s) => Self::parse(s),
            None => Ok(None),
        }
    }

    /// How it is written on the command line.
    pub fn name(&self) -> String {
        match self.size {
            Some(s) => format!("{PIXELS}:{s}"),
            None => PIXELS.to_string(),
        }
    }

    /// Feature width for an eval crop of side `crop`.
    pub fn dim(&self, crop: u32) -> usize {
        let side = self.size.unwrap_or(crop) as usize;
        3 * side * side
    }

    /// One image's feature row: the eval transform's crop (thumbnail), x / 255, CHW.
    pub fn row(&self, img: &RgbImage, resize: u32, crop: u32) -> Vec<f32> {
        let r = transforms::resize_shorter(img, resize, Interpolation::Bicubic);
        let mut c = transforms::center_crop(&r, crop);
        if let Some(s) = self.size {
            c = transforms::resize(&c, s, s, Interpolation::Bicubic);
        }
        transforms::to_normalized_chw(&c, [0.0; 3], [1.0; 3])
    }
}

impl crate::ModelSource {
    /// The pixel baseline this source names, if it names one.
    pub fn pixels(&self) -> Result<Option<PixelSource>> {
        PixelSource::from_path(&self.checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            PixelSource::parse("pixels").unwrap(),
            Some(PixelSource { size: None })
        );
        assert_eq!(
            PixelSource::parse("pixels:7").unwrap(),
            Some(PixelSource { size: Some(7) })
        );
        assert_eq!(PixelSource::parse("./pixels").unwrap(), None);
        assert_eq!(
            PixelSource::parse("runs/teacher.safetensors").unwrap(),
            None
        );
        assert!(PixelSource::parse("pixels:0").is_err());
        assert!(PixelSource::parse("pixels:x").is_err());
        assert_eq!(PixelSource { size: Some(7) }.name(), "pixels:7");
        assert_eq!(PixelSource { size: None }.dim(28), 3 * 28 * 28);
    }

    #[test]
    fn rows_are_raw_pixels_of_the_crop() {
        let img = RgbImage::from_fn(4, 4, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 60) as u8, 255])
        });
        let row = PixelSource { size: None }.row(&img, 4, 2);
        // Centre 2×2 crop of a 4×4 image: columns/rows 1..3.
        assert_eq!(row.len(), 12);
        assert_eq!(
            &row[..4],
            &[60.0 / 255.0, 120.0 / 255.0, 60.0 / 255.0, 120.0 / 255.0]
        );
        assert_eq!(
            &row[4..8],
            &[60.0 / 255.0, 60.0 / 255.0, 120.0 / 255.0, 120.0 / 255.0]
        );
        assert!(row[8..].iter().all(|&v| v == 1.0));
        assert_eq!(PixelSource { size: Some(1) }.row(&img, 4, 4).len(), 3);
    }
}
