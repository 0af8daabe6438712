//! The feature file format, shared by the cache and `ibot extract`: a safetensors file with
//! `features` [N, D] f32 and `labels` [N] i64 (−1 = unlabelled), and in its metadata `manifest`
//! (JSON: where the features came from) and `class_names` (JSON list, indexed by label).
//! Readable from Python with `safetensors.numpy.load_file` / `safe_open(...).metadata()`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::Array2;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A feature file's contents.
#[derive(Debug, Clone)]
pub struct FeatureFile {
    pub x: Array2<f32>,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
    pub manifest: serde_json::Value,
    /// Every metadata entry, including `manifest` and `class_names` as JSON strings.
    pub metadata: HashMap<String, String>,
}

/// Writes a feature file atomically (temporary file in the same directory, then rename).
/// `extra` metadata entries are added next to `manifest` and `class_names`.
pub fn write_feature_file(
    path: &Path,
    x: &Array2<f32>,
    labels: &[i64],
    class_names: &[String],
    manifest: &serde_json::Value,
    extra: HashMap<String, String>,
) -> Result<()> {
    if labels.len() != x.nrows() {
        bail!(
            "{}: {} labels for {} feature rows",
            path.display(),
            labels.len(),
            x.nrows()
        );
    }
    let feature_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let label_bytes: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = [
        (
            "features",
            TensorView::new(Dtype::F32, vec![x.nrows(), x.ncols()], &feature_bytes)?,
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![labels.len()], &label_bytes)?,
        ),
    ];
    let mut metadata = extra;
    metadata.insert("manifest".into(), serde_json::to_string(manifest)?);
    metadata.insert("class_names".into(), serde_json::to_string(class_names)?);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    safetensors::tensor::serialize_to_file(tensors, Some(metadata), tmp.path())
        .map_err(|e| anyhow::anyhow!("{}: writing features: {e}", path.display()))?;
    // NamedTempFile is private (0600); a cache is meant to be shared like any written file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("{}: cannot set permissions", tmp.path().display()))?;
    }
    tmp.persist(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot move the finished file into place: {e}",
            path.display()
        )
    })?;
    Ok(())
}

/// Reads and checks a feature file (shapes agree, features finite, metadata is valid JSON).
pub fn read_feature_file(path: &Path) -> Result<FeatureFile> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse(&bytes).with_context(|| format!("{}: not a valid feature file", path.display()))
}

fn parse(bytes: &[u8]) -> Result<FeatureFile> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes)?;
    let features = st.tensor("features")?;
    let labels = st.tensor("labels")?;
    if features.dtype() != Dtype::F32 || features.shape().len() != 2 {
        bail!(
            "`features` must be 2-D f32, found {:?} {:?}",
            features.dtype(),
            features.shape()
        );
    }
    if labels.dtype() != Dtype::I64 || labels.shape() != [features.shape()[0]] {
        bail!(
            "`labels` must be i64 [{}], found {:?} {:?}",
            features.shape()[0],
            labels.dtype(),
            labels.shape()
        );
    }
    let values: Vec<f32> = features
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "row {} contains NaN or infinity",
            i / features.shape()[1].max(1)
        );
    }
    let x = Array2::from_shape_vec((features.shape()[0], features.shape()[1]), values)?;
    let labels: Vec<i64> = labels
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let json = |key: &str| -> Result<Option<serde_json::Value>> {
        metadata
            .get(key)
            .map(|s| {
                serde_json::from_str(s).with_context(|| format!("metadata `{key}` is not JSON"))
            })
            .transpose()
    };
    let manifest = json("manifest")?.unwrap_or(serde_json::Value::Null);
    let class_names = match json("class_names")? {
        Some(v) => {
            serde_json::from_value(v).context("metadata `class_names` is not a string list")?
        }
        None => Vec::new(),
    };
    Ok(FeatureFile {
        x,
        labels,
        class_names,
        manifest,
        metadata,
    })
}
