//! COCO instances as mmdet 2.11 reads them for detection and instance segmentation:
//! `mmdet/datasets/coco.py` (`CocoDataset.load_annotations`, `_filter_imgs`, `_parse_ann_info`) and
//! `mmdet/datasets/pipelines/loading.py` (`LoadAnnotations(with_bbox=True, with_mask=True)`,
//! `_poly2mask`).
//!
//! - categories keep the file's declaration order and map to contiguous labels 0..K
//!   (`cat2label`); results are written back with the file's ids;
//! - an annotation is skipped when its box does not overlap the image, when `area <= 0`,
//!   `w < 1` or `h < 1`, or when its category is unknown; the box becomes `[x, y, x + w, y + h]`;
//! - crowd annotations (`iscrowd = 1`) become ignore boxes (`gt_bboxes_ignore`), not objects;
//! - masks: polygons of one object are rasterised and merged, RLEs decoded (pycocotools'
//!   rules, through [`crate::rle`]), one 0/1 map of the image's size per object;
//! - training filters images (`filter_empty_gt=True`, `min_size=32`): an image is kept when it has
//!   at least one annotation of a known category (crowd ones count, as in mmdet) and both sides are
//!   at least 32 px. Evaluation keeps every image (`test_mode=True`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::coco::{CocoDataset, CocoImage, OrphanPolicy};
use crate::error::{DataError, Result};
use crate::image_io::{load_rgb, LabelMap};
use crate::joint::{BoxXyxy, JointSample};
use crate::rle::Rle;

/// mmdet's `_filter_imgs(min_size=32)`.
pub const MIN_SIZE: u32 = 32;

/// The parsed ground truth of one image (`_parse_ann_info`).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceEntry {
    pub image: CocoImage,
    /// `[x1, y1, x2, y2]` of the non-crowd objects.
    pub boxes: Vec<BoxXyxy>,
    /// Contiguous labels 0..K, one per box.
    pub labels: Vec<u64>,
    /// Crowd boxes (`gt_bboxes_ignore`).
    pub ignore: Vec<BoxXyxy>,
    /// One mask per box (None when the annotation has no segmentation).
    pub masks: Vec<Option<Rle>>,
}

/// One split of a COCO instances set.
#[derive(Debug, Clone)]
pub struct CocoInstances {
    pub annotation_file: PathBuf,
    pub image_dir: PathBuf,
    /// Category ids in declaration order: label i is `cat_ids[i]`.
    pub cat_ids: Vec<u64>,
    pub cat_names: Vec<String>,
    pub entries: Vec<InstanceEntry>,
}

/// A loaded sample: the image with its objects (boxes, labels, masks) and the crowd boxes.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSample {
    pub joint: JointSample,
    pub ignore: Vec<BoxXyxy>,
    pub image_id: u64,
}

impl CocoInstances {
    /// Reads `annotation_file`; `train` applies mmdet's training filter (see the module docs).
    pub fn load(annotation_file: &Path, image_dir: &Path, train: bool) -> Result<Self> {
        let dataset = CocoDataset::load(annotation_file, OrphanPolicy::Error)?.dataset;
        Self::from_dataset(dataset, annotation_file, image_dir, train)
    }

    pub fn from_dataset(
        dataset: CocoDataset,
        annotation_file: &Path,
        image_dir: &Path,
        train: bool,
    ) -> Result<Self> {
        let cat2label = dataset.category_index();
        let mut by_image: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, a) in dataset.annotations.iter().enumerate() {
            by_image.entry(a.image_id).or_default().push(i);
        }
        let mut entries = Vec::with_capacity(dataset.images.len());
        for img in &dataset.images {
            let anns = by_image.get(&img.id).map(Vec::as_slice).unwrap_or(&[]);
            if train {
                // ids_with_ann ∩ ids_in_cat: any annotation of a known category, crowd included
                let has = anns
                    .iter()
                    .any(|&i| cat2label.contains_key(&dataset.annotations[i].category_id));
                if !has || img.width.min(img.height) < MIN_SIZE {
                    continue;
                }
            }
            let (w_img, h_img) = (img.width as f64, img.height as f64);
            let mut e = InstanceEntry {
                image: img.clone(),
                boxes: Vec::new(),
                labels: Vec::new(),
                ignore: Vec::new(),
                masks: Vec::new(),
            };
            for &i in anns {
                let a = &dataset.annotations[i];
                let [x1, y1, w, h] = a.bbox;
                let inter_w = ((x1 + w).min(w_img) - x1.max(0.0)).max(0.0);
                let inter_h = ((y1 + h).min(h_img) - y1.max(0.0)).max(0.0);
                if inter_w * inter_h == 0.0 || a.area <= 0.0 || w < 1.0 || h < 1.0 {
                    continue;
                }
                let Some(&label) = cat2label.get(&a.category_id) else {
                    continue;
                };
                // np.array(..., dtype=np.float32) of the Python floats
                let b = [x1 as f32, y1 as f32, (x1 + w) as f32, (y1 + h) as f32];
                if a.iscrowd == 1 {
                    e.ignore.push(b);
                    continue;
                }
                let mask = match &a.segmentation {
                    None => None,
                    Some(_) => Some(a.rle(img.height, img.width).map_err(|why| {
                        DataError::format(
                            annotation_file,
                            format!("annotation {} (image {}): {why}", a.id, img.id),
                        )
                    })?),
                };
                e.boxes.push(b);
                e.labels.push(label as u64);
                e.masks.push(mask);
            }
            entries.push(e);
        }
        Ok(CocoInstances {
            annotation_file: annotation_file.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            cat_ids: dataset.categories.iter().map(|c| c.id).collect(),
            cat_names: dataset.categories.iter().map(|c| c.name.clone()).collect(),
            entries,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.cat_ids.len()
    }

    pub fn image_path(&self, index: usize) -> PathBuf {
        self.image_dir.join(&self.entries[index].image.file_name)
    }

    /// The decoded image (checked against the declared size) with its targets; masks as 0/1 maps.
    pub fn sample(&self, index: usize) -> Result<InstanceSample> {
        let e = &self.entries[index];
        let path = self.image_path(index);
        let image = load_rgb(&path)?;
        if (image.width(), image.height()) != (e.image.width, e.image.height) {
            return Err(DataError::format(
                &path,
                format!(
                    "image is {}x{} but {} declares {}x{}",
                    image.width(),
                    image.height(),
                    self.annotation_file.display(),
                    e.image.width,
                    e.image.height
                ),
            ));
        }
        let (w, h) = (e.image.width, e.image.height);
        let masks = e
            .masks
            .iter()
            .map(|m| match m {
                // an object without segmentation gets an empty mask (mmdet would fail on it)
                None => Ok(LabelMap::new(w, h, 0)),
                Some(rle) => Ok(LabelMap {
                    width: w,
                    height: h,
                    labels: rle.to_mask().map_err(|why| DataError::format(&path, why))?,
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        let joint = JointSample::new(image)
            .with_boxes(e.boxes.clone(), e.labels.clone())
            .with_instance_masks(masks);
        Ok(InstanceSample {
            joint,
            ignore: e.ignore.clone(),
            image_id: e.image.id,
        })
    }

    /// mmdet's aspect-ratio group of each image (`flag = 1` when w / h > 1), used by the
    /// group sampler.
    pub fn aspect_groups(&self) -> Vec<u8> {
        self.entries
            .iter()
            .map(|e| (e.image.width as f64 / e.image.height as f64 > 1.0) as u8)
            .collect()
    }
}
