//! The on-disk feature cache: `<root>/<key>.safetensors`, where the key is a hash of everything
//! the features depend on — the checkpoint's bytes (sha256), the selected sub-dict and resolved
//! architecture, the split's content fingerprint, the transform and the feature layout. Anything
//! else (data-set name, split name, checkpoint path) is not in the key: the same images through the
//! same weights share one entry, and a changed checkpoint, image list or transform can never
//! reuse a stale one (the iBOT `--load_features .` trap, evaluation-reference note 5).
//!
//! Extraction is resumable: completed chunks of `chunk_size` images are written to
//! `<root>/<key>.partial/chunk-NNNNNN.safetensors` and skipped by the next run; the final file is
//! written atomically and the partial directory removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use backbone::head::{load_head, IbotHead};
use backbone::{Checkpoint, LoadSpec, VisionTransformer, VitConfig};
use candle_core::{DType, Device, Tensor};
use data::augment::Transform;
use data::loader::{ImageDataset, Loader, LoaderConfig};
use data::transforms::{IMAGENET_MEAN, IMAGENET_STD};
use ndarray::{s, Array2};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::data_config::{open_split_data, split_name, SplitData};
use crate::file::{read_feature_file, write_feature_file};
use crate::pixels::PixelSource;
use crate::progress::Progress;
use crate::{DataConfig, FeatureSpec, Features, ModelSource, Split};

/// Bumped whenever extraction changes the numbers it produces, so old cache entries are not reused.
const STORE_VERSION: u32 = 1;

/// CUDA device 0 when built with the `cuda` feature and a GPU is present, else the CPU.
pub fn default_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        return Ok(Device::cuda_if_available(0)?);
    }
    #[allow(unreachable_code)]
    Ok(Device::Cpu)
}

/// (path, size, modification time): a file not rewritten since it was last hashed.
type FileIdentity = (PathBuf, u64, Option<SystemTime>);

pub struct FeatureStore {
    root: PathBuf,
    batch_size: usize,
    chunk_size: usize,
    /// sha256 of checkpoints already hashed by this store, by (path, size, mtime).
    checkpoint_hashes: Mutex<HashMap<FileIdentity, String>>,
    progress: Progress,
}

/// A checkpoint resolved to exactly what will be loaded.
struct ResolvedModel {
    sha256: String,
    bytes: u64,
    selected_key: Option<String>,
    config: VitConfig,
    precision: crate::Precision,
}

impl FeatureStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FeatureStore {
            root: root.into(),
            batch_size: 64,
            chunk_size: 1024,
            checkpoint_hashes: Mutex::new(HashMap::new()),
            progress: Progress::standalone(),
        }
    }

    /// Where the extraction bar and the store's log lines go (default: their own bar on stderr).
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Images per forward pass (default 64). Does not change the cache key.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Images per resumable chunk (default 1024), rounded up to a multiple of the batch size so a
    /// resumed run feeds the model exactly the batches an uninterrupted run would.
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size.max(1);
        self
    }

    fn effective_chunk(&self) -> usize {
        self.chunk_size.div_ceil(self.batch_size) * self.batch_size
    }

    /// Final cache file of a key.
    pub fn cache_path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.safetensors"))
    }

    /// Where the chunks of an unfinished extraction live.
    pub fn partial_dir(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.partial"))
    }

    /// The cache key of a request (hashes the checkpoint and lists the split).
    pub fn cache_key(
        &self,
        model: &ModelSource,
        data: &DataConfig,
        split: Split,
        spec: &FeatureSpec,
    ) -> Result<String> {
        if let Some(px) = model.pixels()? {
            let split_data = open_split_data(data, split)?;
            return Ok(pixel_key_of(&px, &split_data, data));
        }
        let resolved = self.resolve_model(model)?;
        let split_data = open_split_data(data, split)?;
        Ok(key_of(&resolved, &split_data, data, spec))
    }

    /// Cached features, or extract them (progress bar, resumable) and cache them.
    pub fn get(
        &self,
        model: &ModelSource,
        data: &DataConfig,
        split: Split,
        spec: &FeatureSpec,
    ) -> Result<Features> {
        if let Some(px) = model.pixels()? {
            return self.get_pixels(&px, data, split, spec);
        }
        let begun = Instant::now();
        let resolved = self.resolve_model(model)?;
        spec.validate(&resolved.config)
            .with_context(|| model.checkpoint.display().to_string())?;
        check_transform(data, &resolved.config)?;
        let split_data = open_split_data(data, split)?;
        let key = key_of(&resolved, &split_data, data, spec);
        let mut manifest = request_manifest(
            model,
            &resolved,
            data,
            split,
            &split_data,
            spec,
            &key,
            &self.root,
        );
        let path = self.cache_path(&key);
        if path.exists() {
            match self.read_cached(&path, &key, &split_data) {
                Ok((x, stored)) => {
                    self.progress.println(format!(
                        "features: {} {} ({} × {}) from cache {}",
                        data.name,
                        split_name(split),
                        x.nrows(),
                        x.ncols(),
                        path.display()
                    ));
                    manifest["features"]["dim"] = json!(x.ncols());
                    manifest["cache"]["from_cache"] = json!(true);
                    // Hashing the checkpoint, listing the split and reading the entry.
                    manifest["cache"]["lookup_seconds"] = json!(begun.elapsed().as_secs_f64());
                    manifest["extraction"] = stored["extraction"].clone();
                    return Ok(self.features(x, &split_data, manifest));
                }
                Err(e) => {
                    self.progress
                        .println(format!("warning: ignoring unreadable cache entry: {e:#}"));
                    std::fs::remove_file(&path).with_context(|| {
                        format!("{}: cannot remove the broken cache entry", path.display())
                    })?;
                }
            }
        }
        let start = Instant::now();
        let (x, resumed, device) =
            self.extract(model, &resolved, &split_data, data, split, spec, &key)?;
        let seconds = start.elapsed().as_secs_f64();
        let extracted = x.nrows() - resumed;
        manifest["features"]["dim"] = json!(x.ncols());
        manifest["cache"]["from_cache"] = json!(false);
        manifest["cache"]["resumed_images"] = json!(resumed);
        manifest["extraction"] = json!({
            "seconds": seconds,
            "images": extracted,
            "images_per_second": extracted as f64 / seconds.max(1e-9),
            "device": device,
            "dtype": "f32",
            "batch_size": self.batch_size,
            "finished_unix": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        });
        let labels: Vec<i64> = (0..split_data.dataset.len())
            .map(|i| split_data.dataset.label(i) as i64)
            .collect();
        write_feature_file(
            &path,
            &x,
            &labels,
            &split_data.class_names,
            &manifest,
            HashMap::from([("cache_key".to_string(), key.clone())]),
        )?;
        let partial = self.partial_dir(&key);
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("{}: cannot remove", partial.display()))?;
        }
        self.progress.println(format!(
            "features: {} {} ({} × {}) extracted in {:.1} s, cached in {}",
            data.name,
            split_name(split),
            x.nrows(),
            x.ncols(),
            seconds,
            path.display()
        ));
        Ok(self.features(x, &split_data, manifest))
    }

    /// The pixel baseline's features ([`crate::pixels`]): cached like a model's, computed in one
    /// parallel pass (no model, no chunks).
    fn get_pixels(
        &self,
        px: &PixelSource,
        data: &DataConfig,
        split: Split,
        spec: &FeatureSpec,
    ) -> Result<Features> {
        use rayon::prelude::*;
        if *spec == FeatureSpec::HeadLogits {
            bail!(
                "{}: the pixel baseline has no projection head (head logits)",
                px.name()
            );
        }
        let begun = Instant::now();
        let split_data = open_split_data(data, split)?;
        let key = pixel_key_of(px, &split_data, data);
        let t = data.transform;
        let mut manifest = json!({
            "checkpoint": {
                "path": px.name(),
                "kind": "pixels",
                "thumbnail": px.size,
                "note": "raw pixels of the eval crop in [0, 1] (x / 255, CHW), no model",
            },
            "data": {
                "name": data.name,
                "split": split_name(split),
                "source": data.split(split),
                "list_hash": split_data.list_hash,
                "num_images": split_data.dataset.len(),
                "num_classes": split_data.class_names.len(),
            },
            "transform": transform_json(data),
            "features": {
                "spec": px.name(),
                "requested_spec": spec.to_string(),
                "layout": "pixels",
                "dim": px.dim(t.crop),
            },
            "cache": {
                "key": key,
                "dir": self.root.display().to_string(),
                "file": format!("{key}.safetensors"),
                "from_cache": Value::Null,
            },
            "extraction": Value::Null,
            "features_version": env!("CARGO_PKG_VERSION"),
        });
        let path = self.cache_path(&key);
        if path.exists() {
            match self.read_cached(&path, &key, &split_data) {
                Ok((x, stored)) => {
                    manifest["cache"]["from_cache"] = json!(true);
                    manifest["cache"]["lookup_seconds"] = json!(begun.elapsed().as_secs_f64());
                    manifest["extraction"] = stored["extraction"].clone();
                    return Ok(self.features(x, &split_data, manifest));
                }
                Err(e) => {
                    self.progress
                        .println(format!("warning: ignoring unreadable cache entry: {e:#}"));
                    std::fs::remove_file(&path).with_context(|| {
                        format!("{}: cannot remove the broken cache entry", path.display())
                    })?;
                }
            }
        }
        let start = Instant::now();
        let n = split_data.dataset.len();
        let dim = px.dim(t.crop);
        let rows: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|i| -> Result<Vec<f32>> {
                let img = split_data
                    .dataset
                    .load(i)
                    .with_context(|| format!("{} {}: image {i}", data.name, split_name(split)))?;
                Ok(px.row(&img, t.resize, t.crop))
            })
            .collect::<Result<_>>()?;
        let mut x = Array2::<f32>::zeros((n, dim));
        for (i, r) in rows.iter().enumerate() {
            if r.len() != dim {
                bail!(
                    "{} {}: image {i} gave {} pixel values, expected {dim}",
                    data.name,
                    split_name(split),
                    r.len()
                );
            }
            x.row_mut(i)
                .assign(&ndarray::ArrayView1::from(r.as_slice()));
        }
        let seconds = start.elapsed().as_secs_f64();
        manifest["cache"]["from_cache"] = json!(false);
        manifest["extraction"] = json!({
            "seconds": seconds,
            "images": n,
            "images_per_second": n as f64 / seconds.max(1e-9),
            "device": "cpu (no model)",
            "dtype": "f32",
            "finished_unix": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        });
        let labels: Vec<i64> = (0..n).map(|i| split_data.dataset.label(i) as i64).collect();
        write_feature_file(
            &path,
            &x,
            &labels,
            &split_data.class_names,
            &manifest,
            HashMap::from([("cache_key".to_string(), key.clone())]),
        )?;
        self.progress.println(format!(
            "features: {} {} ({} × {}) {} in {:.1} s, cached in {}",
            data.name,
            split_name(split),
            n,
            dim,
            px.name(),
            seconds,
            path.display()
        ));
        Ok(self.features(x, &split_data, manifest))
    }

    fn features(&self, x: Array2<f32>, split: &SplitData, manifest: Value) -> Features {
        Features {
            x,
            labels: (0..split.dataset.len())
                .map(|i| split.dataset.label(i))
                .collect(),
            class_names: split.class_names.clone(),
            manifest,
        }
    }

    /// A cache entry, checked against the request: its key and its labels must match.
    fn read_cached(
        &self,
        path: &Path,
        key: &str,
        split: &SplitData,
    ) -> Result<(Array2<f32>, Value)> {
        let file = read_feature_file(path)?;
        if file.metadata.get("cache_key").map(String::as_str) != Some(key) {
            bail!("{}: written for another cache key", path.display());
        }
        let want: Vec<i64> = (0..split.dataset.len())
            .map(|i| split.dataset.label(i) as i64)
            .collect();
        if file.labels != want {
            bail!("{}: labels differ from the data set", path.display());
        }
        Ok((file.x, file.manifest))
    }

    fn resolve_model(&self, model: &ModelSource) -> Result<ResolvedModel> {
        let path = &model.checkpoint;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{}: cannot open checkpoint", path.display()))?;
        let memo_key = (path.clone(), meta.len(), meta.modified().ok());
        let cached = self
            .checkpoint_hashes
            .lock()
            .expect("hash memo")
            .get(&memo_key)
            .cloned();
        let sha256 = match cached {
            Some(h) => h,
            None => {
                let h = sha256_file(path)?;
                self.checkpoint_hashes
                    .lock()
                    .expect("hash memo")
                    .insert(memo_key, h.clone());
                h
            }
        };
        let ckpt = Checkpoint::open(path)?;
        let selection = ckpt.select(model.key.as_deref())?;
        let config = ckpt.infer_config(&selection, model.arch.as_deref(), None)?;
        Ok(ResolvedModel {
            sha256,
            bytes: meta.len(),
            selected_key: selection.key,
            config,
            precision: model.precision,
        })
    }

    /// Extracts the features of every image not already in a finished chunk. Returns the
    /// features, the number of images taken from earlier chunks, and the device used.
    #[allow(clippy::too_many_arguments)]
    fn extract(
        &self,
        model: &ModelSource,
        resolved: &ResolvedModel,
        split: &SplitData,
        data: &DataConfig,
        split_kind: Split,
        spec: &FeatureSpec,
        key: &str,
    ) -> Result<(Array2<f32>, usize, String)> {
        let n = split.dataset.len();
        let chunk = self.effective_chunk();
        let chunks = n.div_ceil(chunk);
        let range = |c: usize| (c * chunk, ((c + 1) * chunk).min(n));
        let partial = self.partial_dir(key);
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("{}: cannot create", partial.display()))?;
        let chunk_path = |c: usize| partial.join(format!("chunk-{c:06}.safetensors"));

        let mut done: Vec<Option<Array2<f32>>> = Vec::with_capacity(chunks);
        for c in 0..chunks {
            let path = chunk_path(c);
            let found = if path.exists() {
                match read_chunk(&path, key, range(c), split) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        self.progress
                            .println(format!("warning: re-extracting chunk {c}: {e:#}"));
                        None
                    }
                }
            } else {
                None
            };
            done.push(found);
        }
        if let Some(dims) = inconsistent_widths(&done) {
            bail!(
                "{}: finished chunks disagree on the feature width ({dims}); delete the directory",
                partial.display()
            );
        }
        let missing: Vec<usize> = (0..chunks).filter(|&c| done[c].is_none()).collect();
        let resumed: usize = done.iter().flatten().map(|x| x.nrows()).sum();
        let device = default_device()?;
        let device_name = format!("{device:?}");

        if !missing.is_empty() {
            let loaded = backbone::load(
                &model.checkpoint,
                &LoadSpec {
                    key: model.key.as_deref(),
                    arch: model.arch.as_deref(),
                    ..LoadSpec::default()
                },
                DType::F32,
                &device,
            )?;
            if loaded.config != resolved.config {
                bail!(
                    "{}: the checkpoint changed while it was being read",
                    model.checkpoint.display()
                );
            }
            let vit = model.precision.apply(loaded.model);
            let extractor = Extractor::new(vit, spec, model, &device)?;
            let indices: Vec<usize> = missing
                .iter()
                .flat_map(|&c| {
                    let (a, b) = range(c);
                    a..b
                })
                .collect();
            let subset: Arc<dyn ImageDataset> = Arc::new(Subset {
                inner: split.dataset.clone(),
                indices,
            });
            let t = data.transform;
            let loader = Loader::new(
                subset,
                Transform::Eval {
                    resize: t.resize,
                    crop: t.crop,
                },
                LoaderConfig {
                    batch_size: self.batch_size,
                    ..LoaderConfig::default()
                },
            )?;
            let bar = self.progress.bar_with_template(
                n as u64,
                crate::progress::RATE_TEMPLATE,
                format!("features {} {}", data.name, split_name(split_kind)),
            );
            bar.set_position(resumed as u64);

            let mut queue = missing.iter().copied();
            let mut current = queue.next();
            let mut rows: Vec<f32> = Vec::new();
            for batch in loader.epoch(0) {
                let batch = batch.with_context(|| {
                    format!("extracting {} {}", data.name, split_name(split_kind))
                })?;
                let [b, c, h, w] = batch.shape;
                let x = Tensor::from_vec(batch.images, (b, c, h, w), &device)?;
                let f = extractor.features(&x)?;
                let width = f.dim(1)?;
                rows.extend(f.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?);
                bar.inc(batch.shape[0] as u64);
                // Flush every chunk the buffer now completes.
                while let Some(c) = current {
                    let (a, b) = range(c);
                    let need = (b - a) * width;
                    if rows.len() < need {
                        break;
                    }
                    let rest = rows.split_off(need);
                    let x =
                        Array2::from_shape_vec((b - a, width), std::mem::replace(&mut rows, rest))?;
                    write_chunk(&chunk_path(c), &x, key, (a, b), split)?;
                    done[c] = Some(x);
                    current = queue.next();
                }
            }
            drop(bar);
            if current.is_some() {
                bail!(
                    "extraction of {} {} stopped early",
                    data.name,
                    split_name(split_kind)
                );
            }
        }
        if let Some(dims) = inconsistent_widths(&done) {
            bail!(
                "{}: finished chunks disagree on the feature width ({dims}); delete the directory",
                partial.display()
            );
        }
        let width = done.iter().flatten().map(|x| x.ncols()).next().unwrap_or(0);
        let mut x = Array2::<f32>::zeros((n, width));
        for (c, part) in done.into_iter().enumerate() {
            let (a, b) = range(c);
            x.slice_mut(s![a..b, ..])
                .assign(&part.expect("every chunk is finished"));
        }
        Ok((x, resumed, device_name))
    }
}

/// The model part that turns a batch into feature rows.
struct Extractor {
    model: VisionTransformer,
    spec: FeatureSpec,
    /// iBOT's projection head, for head logits (unsupervised classification, ibot-reference §8.5).
    head: Option<IbotHead>,
}

impl Extractor {
    fn new(
        model: VisionTransformer,
        spec: &FeatureSpec,
        source: &ModelSource,
        device: &Device,
    ) -> Result<Self> {
        let head = if *spec == FeatureSpec::HeadLogits {
            // The head of the same sub-dict as the backbone (teacher by default), fed the
            // final-norm CLS token: the CLS output of iBOT's MultiCropWrapper.
            let (_, head) = load_head(
                &source.checkpoint,
                source.key.as_deref(),
                DType::F32,
                device,
            )?;
            Some(head)
        } else {
            None
        };
        Ok(Extractor {
            model,
            spec: spec.clone(),
            head,
        })
    }

    fn features(&self, x: &Tensor) -> Result<Tensor> {
        match &self.head {
            Some(head) => Ok(head.forward_cls(&self.model.forward_cls(x)?)?),
            None => self.spec.compute(&self.model, x),
        }
    }
}

/// Some images of a dataset, in the given order.
struct Subset {
    inner: Arc<dyn ImageDataset>,
    indices: Vec<usize>,
}

impl ImageDataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(self.indices[index])
    }
    fn load(&self, index: usize) -> data::Result<image::RgbImage> {
        self.inner.load(self.indices[index])
    }
}

/// `Some(description)` when the finished chunks do not all have the same width.
fn inconsistent_widths(done: &[Option<Array2<f32>>]) -> Option<String> {
    let mut dims: Vec<usize> = done.iter().flatten().map(|x| x.ncols()).collect();
    dims.sort_unstable();
    dims.dedup();
    (dims.len() > 1).then(|| format!("{dims:?}"))
}

fn chunk_manifest(key: &str, (a, b): (usize, usize)) -> Value {
    json!({"cache_key": key, "start": a, "end": b})
}

fn split_labels(split: &SplitData, (a, b): (usize, usize)) -> Vec<i64> {
    (a..b).map(|i| split.dataset.label(i) as i64).collect()
}

fn write_chunk(
    path: &Path,
    x: &Array2<f32>,
    key: &str,
    range: (usize, usize),
    split: &SplitData,
) -> Result<()> {
    write_feature_file(
        path,
        x,
        &split_labels(split, range),
        &[],
        &chunk_manifest(key, range),
        HashMap::new(),
    )
}

/// A finished chunk, if it belongs to this key and image range.
fn read_chunk(
    path: &Path,
    key: &str,
    range: (usize, usize),
    split: &SplitData,
) -> Result<Array2<f32>> {
    let file = read_feature_file(path)?;
    if file.manifest != chunk_manifest(key, range) {
        bail!(
            "{}: written for another extraction ({})",
            path.display(),
            file.manifest
        );
    }
    if file.labels != split_labels(split, range) {
        bail!("{}: labels differ from the data set", path.display());
    }
    Ok(file.x)
}

// `%` rather than `is_multiple_of`: the workspace's rust-version is 1.85.
#[allow(clippy::manual_is_multiple_of)]
fn check_transform(data: &DataConfig, cfg: &VitConfig) -> Result<()> {
    let crop = data.transform.crop as usize;
    if crop % cfg.patch_size != 0 {
        bail!(
            "data set '{}': transform.crop {crop} is not a multiple of the model's patch size {}",
            data.name,
            cfg.patch_size
        );
    }
    Ok(())
}

fn transform_json(data: &DataConfig) -> Value {
    json!({
        "resize": data.transform.resize,
        "crop": data.transform.crop,
        "resize_interpolation": "bicubic (PIL), shorter side",
        "crop_kind": "center",
        "normalize_mean": IMAGENET_MEAN,
        "normalize_std": IMAGENET_STD,
    })
}

fn key_of(
    model: &ResolvedModel,
    split: &SplitData,
    data: &DataConfig,
    spec: &FeatureSpec,
) -> String {
    let description = json!({
        "store_version": STORE_VERSION,
        "checkpoint_sha256": model.sha256,
        "checkpoint_key": model.selected_key,
        "vit": model.config,
        "list_hash": split.list_hash,
        "transform": transform_json(data),
        "features": spec.canonical(),
    });
    let mut description = description;
    // f32 keys stay as they were before the precision option existed.
    if model.precision != crate::Precision::F32 {
        description["precision"] = json!(model.precision.name());
    }
    let digest = Sha256::digest(description.to_string().as_bytes());
    format!("{digest:x}")[..32].to_string()
}

/// The cache key of the pixel baseline: the pixels request, the split's content and the
/// transform (no checkpoint, and every feature layout shares it).
fn pixel_key_of(px: &PixelSource, split: &SplitData, data: &DataConfig) -> String {
    let description = json!({
        "store_version": STORE_VERSION,
        "pixels": {"thumbnail": px.size, "scale": "x / 255", "layout": "chw"},
        "list_hash": split.list_hash,
        "transform": transform_json(data),
    });
    let digest = Sha256::digest(description.to_string().as_bytes());
    format!("{digest:x}")[..32].to_string()
}

#[allow(clippy::too_many_arguments)]
fn request_manifest(
    model: &ModelSource,
    resolved: &ResolvedModel,
    data: &DataConfig,
    split: Split,
    split_data: &SplitData,
    spec: &FeatureSpec,
    key: &str,
    root: &Path,
) -> Value {
    json!({
        "checkpoint": {
            "path": model.checkpoint.display().to_string(),
            "sha256": resolved.sha256,
            "bytes": resolved.bytes,
            "requested_key": model.key,
            "key": resolved.selected_key,
            "requested_arch": model.arch,
            "arch": resolved.config.preset_name().unwrap_or_else(|| "custom".into()),
            "config": resolved.config,
        },
        "data": {
            "name": data.name,
            "split": split_name(split),
            "source": data.split(split),
            "list_hash": split_data.list_hash,
            "num_images": split_data.dataset.len(),
            "num_classes": split_data.class_names.len(),
        },
        "transform": transform_json(data),
        "features": {
            "spec": spec.to_string(),
            "layout": spec,
            "dim": Value::Null,
            "precision": model.precision.name(),
        },
        "cache": {
            "key": key,
            "dir": root.display().to_string(),
            "file": format!("{key}.safetensors"),
            "from_cache": Value::Null,
        },
        "extraction": Value::Null,
        "features_version": env!("CARGO_PKG_VERSION"),
    })
}

/// sha256 of a file's bytes, streamed (checkpoints can be gigabytes).
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open checkpoint", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}
