//! `configs/data/<coco-like>.toml`: a COCO-layout instances set — `annotations/instances_<split>.json`
//! with the images of each split in `<split>/` (COCO 2017: `train2017`, `val2017`; the generated
//! scenes of `ibot data synth`: `train`, `val`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use data::coco_instances::CocoInstances;
use serde::{Deserialize, Serialize};

use crate::train::DetectionData;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetDataConfig {
    pub name: String,
    /// `coco` (the only layout).
    pub format: String,
    /// The directory holding `annotations/` and the split directories.
    pub root: PathBuf,
    #[serde(default = "train2017")]
    pub train_split: String,
    #[serde(default = "val2017")]
    pub val_split: String,
}

fn train2017() -> String {
    "train2017".into()
}
fn val2017() -> String {
    "val2017".into()
}

impl DetDataConfig {
    /// Reads a data config; `root` resolves against the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read data config", path.display()))?;
        let mut cfg: DetDataConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{}: invalid detection data config: {e}", path.display())
        })?;
        if cfg.root.is_relative() {
            cfg.root = path.parent().unwrap_or(Path::new("")).join(&cfg.root);
        }
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.format != "coco" {
            bail!("format must be \"coco\", got {:?}", self.format);
        }
        for split in [&self.train_split, &self.val_split] {
            let ann = self.annotation_file(split);
            if !ann.is_file() {
                bail!(
                    "{} is not a file (expected the COCO layout under root: annotations/instances_<split>.json)",
                    ann.display()
                );
            }
            let dir = self.root.join(split);
            if !dir.is_dir() {
                bail!(
                    "{} is not a directory (the images of split {split:?})",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    pub fn annotation_file(&self, split: &str) -> PathBuf {
        self.root
            .join("annotations")
            .join(format!("instances_{split}.json"))
    }

    /// The ground truth the evaluation scores against.
    pub fn val_annotations(&self) -> PathBuf {
        self.annotation_file(&self.val_split)
    }

    /// Both splits, the train split with mmdet's training filter.
    pub fn open(&self) -> Result<DetectionData> {
        let load = |split: &str, train: bool| -> Result<CocoInstances> {
            Ok(CocoInstances::load(
                &self.annotation_file(split),
                &self.root.join(split),
                train,
            )?)
        };
        Ok(DetectionData {
            train: Arc::new(load(&self.train_split, true)?),
            val: Arc::new(load(&self.val_split, false)?),
        })
    }
}
