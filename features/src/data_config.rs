//! `configs/data/<name>.toml`: loading (paths resolved against the config file) and opening a
//! split as a labelled image dataset, with the content fingerprint the feature cache is keyed by.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use data::loader::{ImageDataset, InMemory};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{DataConfig, EvalTransform, Split, SplitSource};

impl DataConfig {
    /// Reads a TOML data config. Unknown fields are rejected, relative paths are resolved against
    /// the directory of `path`, and every referenced file or directory must exist.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read data config", path.display()))?;
        let mut config: DataConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid data config: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.train.resolve(base);
        config.val.resolve(base);
        config
            .validate()
            .with_context(|| format!("{}: invalid data config", path.display()))?;
        Ok(config)
    }

    /// A config for two ImageFolder directories (e.g. generated data), built in code.
    pub fn image_folder(
        name: impl Into<String>,
        train_root: impl Into<PathBuf>,
        val_root: impl Into<PathBuf>,
        transform: EvalTransform,
    ) -> Self {
        DataConfig {
            name: name.into(),
            train: SplitSource::ImageFolder {
                root: train_root.into(),
            },
            val: SplitSource::ImageFolder {
                root: val_root.into(),
            },
            transform,
        }
    }

    /// Makes relative split paths relative to `base` (what [`DataConfig::load`] does with the
    /// config file's directory), for configs written inline in another file.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.train.resolve(base);
        self.val.resolve(base);
    }

    pub fn split(&self, split: Split) -> &SplitSource {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Checks the transform and that every referenced path exists; errors name the field and path.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            bail!("name must not be empty");
        }
        let t = self.transform;
        if t.resize == 0 || t.crop == 0 {
            bail!(
                "transform.resize ({}) and transform.crop ({}) must be positive",
                t.resize,
                t.crop
            );
        }
        if t.crop > t.resize {
            bail!(
                "transform.crop {} is larger than transform.resize {} (the crop would pad)",
                t.crop,
                t.resize
            );
        }
        for (split, source) in [("train", &self.train), ("val", &self.val)] {
            for (field, path, want_dir) in source.paths() {
                let ok = if want_dir {
                    path.is_dir()
                } else {
                    path.is_file()
                };
                if !ok {
                    let what = if want_dir { "directory" } else { "file" };
                    bail!(
                        "{split}.{field}: {} is not an existing {what}",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }
}

impl SplitSource {
    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match self {
            SplitSource::ImageFolder { root } => fix(root),
            SplitSource::FileList { list, root } => {
                fix(list);
                fix(root);
            }
            SplitSource::Idx { images, labels } => {
                fix(images);
                fix(labels);
            }
        }
    }

    /// (field name, path, is a directory).
    fn paths(&self) -> Vec<(&'static str, &Path, bool)> {
        match self {
            SplitSource::ImageFolder { root } => vec![("root", root, true)],
            SplitSource::FileList { list, root } => {
                vec![("list", list, false), ("root", root, true)]
            }
            SplitSource::Idx { images, labels } => {
                vec![("images", images, false), ("labels", labels, false)]
            }
        }
    }

    fn format_name(&self) -> &'static str {
        match self {
            SplitSource::ImageFolder { .. } => "image_folder",
            SplitSource::FileList { .. } => "file_list",
            SplitSource::Idx { .. } => "idx",
        }
    }
}

/// One opened split: the images, their class names and a fingerprint of exactly which labelled
/// images it holds.
pub struct SplitData {
    pub dataset: Arc<dyn ImageDataset>,
    pub class_names: Vec<String>,
    /// sha256 over the format, class names and every (relative path, label, file size) — or, for
    /// IDX, over both files' bytes. Moving the data set keeps it; adding, removing, relabelling or
    /// resizing a file changes it.
    pub list_hash: String,
}

/// The labelled images of one split (IDX grey images are replicated to RGB).
pub fn open_split(data: &DataConfig, split: Split) -> Result<Arc<dyn ImageDataset>> {
    Ok(open_split_data(data, split)?.dataset)
}

/// Class names of one split, indexed by label (IDX files carry none: their labels' decimal strings).
pub fn class_names(data: &DataConfig, split: Split) -> Result<Vec<String>> {
    Ok(open_split_data(data, split)?.class_names)
}

/// [`open_split`] with class names and the content fingerprint.
pub fn open_split_data(data: &DataConfig, split: Split) -> Result<SplitData> {
    let source = data.split(split);
    let what = || format!("data set '{}', {} split", data.name, split_name(split));
    let opened = match source {
        SplitSource::ImageFolder { root } => {
            folder_split(data::folder::ImageFolder::open(root)?, source)
        }
        SplitSource::FileList { list, root } => folder_split(
            data::folder::ImageFolder::open_with_list(root, list)?,
            source,
        ),
        SplitSource::Idx { images, labels } => idx_split(images, labels),
    };
    let opened = opened.with_context(what)?;
    if opened.dataset.is_empty() {
        bail!("{}: no images", what());
    }
    Ok(opened)
}

pub(crate) fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Val => "val",
    }
}

fn folder_split(folder: data::folder::ImageFolder, source: &SplitSource) -> Result<SplitData> {
    let sizes: Vec<u64> = folder
        .samples
        .par_iter()
        .map(|s| {
            std::fs::metadata(&s.path)
                .map(|m| m.len())
                .with_context(|| format!("{}: cannot stat", s.path.display()))
        })
        .collect::<Result<_>>()?;
    let mut h = Sha256::new();
    h.update(source.format_name().as_bytes());
    h.update([0]);
    for c in &folder.classes {
        h.update(c.as_bytes());
        h.update([0]);
    }
    for (i, s) in folder.samples.iter().enumerate() {
        // Separators that cannot occur in the fields keep the encoding unambiguous.
        h.update(folder.relative_path(i).as_bytes());
        h.update([0]);
        h.update((s.label as u64).to_le_bytes());
        h.update(sizes[i].to_le_bytes());
    }
    Ok(SplitData {
        class_names: folder.classes.clone(),
        list_hash: format!("{:x}", h.finalize()),
        dataset: Arc::new(folder),
    })
}

fn idx_split(images: &Path, labels: &Path) -> Result<SplitData> {
    let mut h = Sha256::new();
    h.update(b"idx\0");
    for path in [images, labels] {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let (imgs, labs) = data::idx::read_idx_classification(images, labels)?;
    let classes = labs.iter().max().map_or(0, |m| m + 1);
    Ok(SplitData {
        dataset: Arc::new(InMemory {
            images: imgs,
            labels: labs,
        }),
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        list_hash: format!("{:x}", h.finalize()),
    })
}
