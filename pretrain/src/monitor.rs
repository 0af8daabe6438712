//! The `[eval]` monitor: DINO's weighted k-NN of the teacher on a labelled train/val pair during
//! pretraining. The features are what `ibot eval knn` extracts from `teacher.safetensors` (the
//! data config's Resize → CenterCrop → ImageNet normalisation, final-norm CLS, L2-normalised
//! rows), computed in memory from the live teacher, so the curve in log.jsonl ends at the number
//! the evaluation suite reports. Monitoring only: it reads the teacher and changes nothing.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backbone::VisionTransformer;
use candle_core::{DType, Device, Tensor};
use data::augment::Transform;
use data::loader::{ImageDataset, Loader, LoaderConfig};
use ndarray::Array2;
use serde_json::{json, Value};

use crate::config::EvalSection;

pub struct KnnMonitor {
    section: EvalSection,
    name: String,
    transform: Transform,
    train: Arc<dyn ImageDataset>,
    train_labels: Vec<usize>,
    val: Arc<dyn ImageDataset>,
    val_labels: Vec<usize>,
}

impl KnnMonitor {
    /// Opens both splits once (IDX sets stay in memory; image folders are read per evaluation).
    pub fn new(section: &EvalSection, patch_size: usize) -> Result<Self> {
        let data = section.data.config().context("[eval].data")?;
        let crop = data.transform.crop as usize;
        if crop % patch_size != 0 {
            bail!(
                "[eval]: the data set's transform.crop {crop} is not a multiple of the patch size {patch_size}"
            );
        }
        let open = |split| -> Result<(Arc<dyn ImageDataset>, Vec<usize>)> {
            let ds = features::open_split(&data, split)?;
            let labels = (0..ds.len()).map(|i| ds.label(i)).collect();
            Ok((ds, labels))
        };
        let (train, train_labels) = open(features::Split::Train)?;
        let (val, val_labels) = open(features::Split::Val)?;
        let kmax = section.k.iter().copied().max().unwrap_or(1);
        if kmax > train.len() {
            bail!(
                "[eval]: k = {kmax} is more than the {} train images of '{}'",
                train.len(),
                data.name
            );
        }
        Ok(KnnMonitor {
            section: section.clone(),
            name: data.name.clone(),
            transform: Transform::Eval {
                resize: data.transform.resize,
                crop: data.transform.crop,
            },
            train,
            train_labels,
            val,
            val_labels,
        })
    }

    /// Final-norm CLS rows of every image of `dataset`, in dataset order.
    fn features(
        &self,
        model: &VisionTransformer,
        dataset: &Arc<dyn ImageDataset>,
        device: &Device,
    ) -> Result<Array2<f32>> {
        let loader = Loader::new(
            dataset.clone(),
            self.transform.clone(),
            LoaderConfig {
                batch_size: self.section.batch_size,
                ..LoaderConfig::default()
            },
        )?;
        let mut rows = Vec::new();
        let mut width = 0;
        for batch in loader.epoch(0) {
            let batch = batch.context("[eval]: reading an image")?;
            let [b, c, h, w] = batch.shape;
            let x = Tensor::from_vec(batch.images, (b, c, h, w), device)?;
            let f = model.forward_cls(&x)?.to_dtype(DType::F32)?;
            width = f.dim(1)?;
            rows.extend(f.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(Array2::from_shape_vec((dataset.len(), width), rows)?)
    }

    /// k-NN top-1/top-5 per k of the model, as one `log.jsonl` event body (without the position).
    pub fn evaluate(&self, model: &VisionTransformer, device: &Device) -> Result<Value> {
        let started = Instant::now();
        let train = self.features(model, &self.train, device)?;
        let val = self.features(model, &self.val, device)?;
        let extracted = started.elapsed().as_secs_f64();
        let params = knn::Params {
            ks: self.section.k.clone(),
            temperature: self.section.temperature,
            ..knn::Params::default()
        };
        let scores = knn::classify(
            train,
            &self.train_labels,
            val,
            &self.val_labels,
            &params,
            &|_| {},
        )
        .with_context(|| format!("[eval]: k-NN on '{}'", self.name))?;
        let per_k: serde_json::Map<String, Value> = scores
            .iter()
            .map(|s| (s.k.to_string(), json!({"top1": s.top1(), "top5": s.top5()})))
            .collect();
        Ok(json!({
            "event": "knn",
            "data": self.name,
            "temperature": self.section.temperature,
            "train_images": self.train_labels.len(),
            "val_images": self.val_labels.len(),
            "knn": per_k,
            "extract_seconds": extracted,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }

    /// Whether the end of `epoch` (0-based) is an evaluation point of a run of `epochs`.
    pub fn due(&self, epoch: usize, epochs: usize) -> bool {
        (epoch + 1) % self.section.every == 0 || epoch + 1 == epochs
    }

    pub fn at_start(&self) -> bool {
        self.section.at_start
    }
}
