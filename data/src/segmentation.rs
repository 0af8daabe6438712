//! Semantic-segmentation pairs: the ADE20K layout and generic image + label-PNG folders.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::folder::list_images;
use crate::image_io::{load_label_png, LabelMap};

/// The ignore label (VOC borders, padding, and ADE's "other" after `reduce_zero_label`).
pub const IGNORE: u8 = 255;

#[derive(Debug, Clone)]
pub struct SegPairs {
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// Number of classes after label reduction (labels must be < this or IGNORE).
    pub num_classes: usize,
    pub reduce_zero_label: bool,
}

impl SegPairs {
    /// ADE20K: `root/images/<split>/*.jpg` with `root/annotations/<split>/*.png` of the same
    /// stem; label 0 = other. With `reduce_zero_label` (the mmseg default for ADE) labels shift
    /// down by one and 0 becomes IGNORE.
    pub fn ade(
        root: &Path,
        split: &str,
        num_classes: usize,
        reduce_zero_label: bool,
    ) -> Result<Self> {
        Self::pairs(
            &root.join("images").join(split),
            &root.join("annotations").join(split),
            num_classes,
            reduce_zero_label,
        )
    }

    /// Generic pairs: every image in `image_dir` must have `<stem>.png` in `label_dir`.
    pub fn pairs(
        image_dir: &Path,
        label_dir: &Path,
        num_classes: usize,
        reduce_zero_label: bool,
    ) -> Result<Self> {
        let images = list_images(image_dir)?;
        if images.is_empty() {
            return Err(DataError::format(image_dir, "no images"));
        }
        let mut pairs = Vec::with_capacity(images.len());
        for img in images {
            let rel = img
                .strip_prefix(image_dir)
                .unwrap_or(&img)
                .with_extension("png");
            let label = label_dir.join(rel);
            if !label.is_file() {
                return Err(DataError::format(
                    &img,
                    format!("no label PNG (expected {})", label.display()),
                ));
            }
            pairs.push((img, label));
        }
        Ok(SegPairs {
            pairs,
            num_classes,
            reduce_zero_label,
        })
    }

    /// Loads label `index`, applies `reduce_zero_label`, and checks every label is a class or
    /// IGNORE.
    pub fn load_labels(&self, index: usize) -> Result<LabelMap> {
        let path = &self.pairs[index].1;
        let mut map = load_label_png(path)?;
        if self.reduce_zero_label {
            for l in map.labels.iter_mut() {
                *l = match *l {
                    0 => IGNORE,
                    IGNORE => IGNORE,
                    v => v - 1,
                };
            }
        }
        if let Some(bad) = map
            .labels
            .iter()
            .find(|&&l| l != IGNORE && l as usize >= self.num_classes)
        {
            return Err(DataError::format(
                path,
                format!(
                    "label {bad} beyond the {} classes (after reduce_zero_label={})",
                    self.num_classes, self.reduce_zero_label
                ),
            ));
        }
        Ok(map)
    }
}
