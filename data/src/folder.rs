//! Image directories: plain listings and torchvision's `ImageFolder` (`root/<class>/<image>`),
//! optionally restricted by a file list (`relative/path label` per line, the SimCLR split style).

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// torchvision's `IMG_EXTENSIONS`, matched case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            let e = e.to_ascii_lowercase();
            IMAGE_EXTENSIONS.contains(&e.as_str())
        })
        .unwrap_or(false)
}

/// Every image file under `dir` (recursively, following symlinks), sorted by path relative to
/// `dir` (byte order of the `/`-joined relative path).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(DataError::format(dir, "not a directory"));
    }
    let mut found = Vec::new();
    for (_, files) in walk(dir)? {
        found.extend(files.into_iter().filter(|p| is_image_file(p)));
    }
    let key = |p: &PathBuf| relative_key(dir, p);
    found.sort_by_key(key);
    Ok(found)
}

fn relative_key(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// `(directory, files directly in it)` for `dir` and every sub-directory, in Python
/// `sorted(os.walk(dir))` order (directories by full path string), files sorted by name.
fn walk(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(&d, e))?;
            let path = entry.path();
            // metadata() follows symlinks, as os.walk(followlinks=True) does.
            let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        out.push((d.to_string_lossy().into_owned(), files));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// A classification dataset: classes sorted by name, samples in torchvision's order.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

impl ImageFolder {
    /// torchvision `ImageFolder(root)`: class = sub-directory (sorted by name → index), images in
    /// `sorted(os.walk(class_dir))` order. A class directory without images is an error, as in
    /// torchvision.
    pub fn open(root: &Path) -> Result<Self> {
        let classes = class_names(root)?;
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let class_dir = root.join(class);
            let before = samples.len();
            for (_, files) in walk(&class_dir)? {
                for path in files.into_iter().filter(|p| is_image_file(p)) {
                    samples.push(Sample { path, label });
                }
            }
            if samples.len() == before {
                return Err(DataError::format(
                    &class_dir,
                    format!(
                        "class folder has no image files (extensions: {})",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }

    /// The classes of `root` with only the samples named in `list` (lines `relative/path label`;
    /// blank lines and `#` comments ignored). Labels in the list must agree with the class
    /// folder the file sits in, so a list written for another class order is caught.
    pub fn open_with_list(root: &Path, list: &Path) -> Result<Self> {
        let classes = class_names(root)?;
        let text = std::fs::read_to_string(list).map_err(|e| DataError::io(list, e))?;
        let mut samples = Vec::new();
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| DataError::format(list, format!("line {}: {why}", lineno + 1));
            let (rel, label) = line
                .rsplit_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("expected 'relative/path label', got '{line}'")))?;
            let rel = rel.trim();
            let label: usize = label
                .parse()
                .map_err(|_| bad(format!("label '{label}' is not a non-negative integer")))?;
            if label >= classes.len() {
                return Err(bad(format!(
                    "label {label} out of range: {} has {} classes",
                    root.display(),
                    classes.len()
                )));
            }
            let path = root.join(rel);
            if !path.is_file() {
                return Err(bad(format!("{} does not exist", path.display())));
            }
            let folder_class = Path::new(rel)
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            if folder_class.as_deref() != Some(classes[label].as_str()) {
                return Err(bad(format!(
                    "label {label} is class '{}' but the file is in '{}'",
                    classes[label],
                    folder_class.unwrap_or_default()
                )));
            }
            samples.push(Sample { path, label });
        }
        if samples.is_empty() {
            return Err(DataError::format(list, "file list names no images"));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn labels(&self) -> Vec<usize> {
        self.samples.iter().map(|s| s.label).collect()
    }

    /// Path of a sample relative to the root, `/`-separated (the file-list spelling).
    pub fn relative_path(&self, index: usize) -> String {
        relative_key(&self.root, &self.samples[index].path)
    }
}

fn class_names(root: &Path) -> Result<Vec<String>> {
    if !root.is_dir() {
        return Err(DataError::format(root, "dataset root is not a directory"));
    }
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DataError::io(root, e))? {
        let entry = entry.map_err(|e| DataError::io(root, e))?;
        let path = entry.path();
        if path.is_dir() {
            classes.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if classes.is_empty() {
        return Err(DataError::format(
            root,
            "no class sub-directories (expected root/<class>/<image>)",
        ));
    }
    classes.sort();
    Ok(classes)
}
