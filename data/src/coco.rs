//! COCO instances JSON: reading with validation that names what is wrong, and writing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rle::Rle;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    pub width: u32,
    pub height: u32,
    pub file_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub supercategory: String,
}

/// RLE counts: a list (uncompressed, used for crowd regions) or pycocotools' string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    Uncompressed(Vec<u32>),
    Compressed(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RleJson {
    /// [height, width]
    pub size: [u32; 2],
    pub counts: RleCounts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    Polygons(Vec<Vec<f64>>),
    Rle(RleJson),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub area: f64,
    pub iscrowd: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoDataset {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licenses: Option<serde_json::Value>,
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
}

/// What to do with annotations whose image or category is not declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrphanPolicy {
    #[default]
    Error,
    /// Drop them and count them in [`CocoLoad::dropped`].
    Drop,
}

#[derive(Debug, Clone)]
pub struct CocoLoad {
    pub dataset: CocoDataset,
    /// Annotations dropped under [`OrphanPolicy::Drop`].
    pub dropped: usize,
}

impl CocoAnnotation {
    /// The annotation's mask as an RLE on its image's grid (polygons are rasterised and merged).
    pub fn rle(&self, height: u32, width: u32) -> std::result::Result<Rle, String> {
        match &self.segmentation {
            None => Err("annotation has no segmentation".into()),
            Some(Segmentation::Polygons(polys)) => {
                let parts: Vec<Rle> = polys
                    .iter()
                    .map(|p| Rle::from_polygon(p, height, width))
                    .collect();
                Rle::union(&parts).ok_or_else(|| "empty polygon list".to_string())
            }
            Some(Segmentation::Rle(r)) => {
                let [h, w] = r.size;
                if (h, w) != (height, width) {
                    return Err(format!(
                        "RLE size {h}x{w} differs from the image's {height}x{width}"
                    ));
                }
                match &r.counts {
                    RleCounts::Uncompressed(c) => Ok(Rle {
                        height: h,
                        width: w,
                        counts: c.clone(),
                    }),
                    RleCounts::Compressed(s) => Rle::from_compressed(s, h, w),
                }
            }
        }
    }
}

/// When the JSON parses but a record does not fit the schema, names that record:
/// `annotations[3] (id 17): missing field `bbox``. Only run after a failed typed parse.
fn bad_record(text: &str) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(
        root: &serde_json::Value,
        key: &str,
    ) -> Option<String> {
        let items = root.get(key)?.as_array()?;
        items.iter().enumerate().find_map(|(i, item)| {
            let err = serde_json::from_value::<T>(item.clone()).err()?;
            let id = item
                .get("id")
                .map(|v| format!(" (id {v})"))
                .unwrap_or_default();
            Some(format!("{key}[{i}]{id}: {err}"))
        })
    }
    let root: serde_json::Value = serde_json::from_str(text).ok()?;
    check::<CocoImage>(&root, "images")
        .or_else(|| check::<CocoCategory>(&root, "categories"))
        .or_else(|| check::<CocoAnnotation>(&root, "annotations"))
}

impl CocoDataset {
    /// Reads and validates an instances JSON.
    pub fn load(path: &Path, orphans: OrphanPolicy) -> Result<CocoLoad> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut dataset: CocoDataset = match serde_json::from_str(&text) {
            Ok(d) => d,
            Err(source) => {
                return Err(match bad_record(&text) {
                    Some(reason) => DataError::format(path, reason),
                    None => DataError::Json {
                        path: path.to_path_buf(),
                        source,
                    },
                })
            }
        };
        let dropped = dataset.validate(path, orphans)?;
        Ok(CocoLoad { dataset, dropped })
    }

    fn validate(&mut self, path: &Path, orphans: OrphanPolicy) -> Result<usize> {
        let mut image_ids = HashSet::new();
        for img in &self.images {
            if !image_ids.insert(img.id) {
                return Err(DataError::format(
                    path,
                    format!("duplicate image id {}", img.id),
                ));
            }
            if img.width == 0 || img.height == 0 {
                return Err(DataError::format(
                    path,
                    format!("image {} ('{}') has zero size", img.id, img.file_name),
                ));
            }
        }
        let mut cat_ids = HashSet::new();
        for c in &self.categories {
            if !cat_ids.insert(c.id) {
                return Err(DataError::format(
                    path,
                    format!("duplicate category id {}", c.id),
                ));
            }
        }
        let mut ann_ids = HashSet::new();
        let before = self.annotations.len();
        let mut kept = Vec::with_capacity(before);
        for a in std::mem::take(&mut self.annotations) {
            let orphan = if !image_ids.contains(&a.image_id) {
                Some(format!(
                    "annotation {} refers to missing image {}",
                    a.id, a.image_id
                ))
            } else if !cat_ids.contains(&a.category_id) {
                Some(format!(
                    "annotation {} refers to undeclared category {}",
                    a.id, a.category_id
                ))
            } else {
                None
            };
            if let Some(why) = orphan {
                match orphans {
                    OrphanPolicy::Error => return Err(DataError::format(path, why)),
                    OrphanPolicy::Drop => continue,
                }
            }
            if !ann_ids.insert(a.id) {
                return Err(DataError::format(
                    path,
                    format!("duplicate annotation id {}", a.id),
                ));
            }
            if a.iscrowd > 1 {
                return Err(DataError::format(
                    path,
                    format!(
                        "annotation {}: iscrowd must be 0 or 1, got {}",
                        a.id, a.iscrowd
                    ),
                ));
            }
            if a.bbox[2] < 0.0 || a.bbox[3] < 0.0 {
                return Err(DataError::format(
                    path,
                    format!("annotation {}: negative bbox size {:?}", a.id, a.bbox),
                ));
            }
            kept.push(a);
        }
        self.annotations = kept;
        Ok(before - self.annotations.len())
    }

    /// Category ids in declaration order → contiguous indices 0..K (COCO ids are sparse).
    pub fn category_index(&self) -> HashMap<u64, usize> {
        self.categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect()
    }

    /// Image path under `image_dir` (`file_name` may contain sub-folders).
    pub fn image_path(&self, image_dir: &Path, image: &CocoImage) -> PathBuf {
        image_dir.join(&image.file_name)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(|e| DataError::io(path, e))
    }
}
