//! Parallel batch loader: rayon decodes and transforms each batch's images while a bounded
//! channel keeps `prefetch` batches ready ahead of the consumer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::{sample_rng, Transform};
use crate::error::{DataError, Result};
use crate::folder::ImageFolder;
use crate::image_io;

/// Anything that yields labelled RGB images by index.
pub trait ImageDataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn label(&self, index: usize) -> usize;
    fn load(&self, index: usize) -> Result<RgbImage>;
}

impl ImageDataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn label(&self, index: usize) -> usize {
        self.samples[index].label
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        image_io::load_rgb(&self.samples[index].path)
    }
}

/// Image files with labels (e.g. a flat listing with label 0).
pub struct FileList {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<usize>,
}

impl ImageDataset for FileList {
    fn len(&self) -> usize {
        self.paths.len()
    }
    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        image_io::load_rgb(&self.paths[index])
    }
}

/// Decoded images held in memory (IDX, CIFAR).
pub struct InMemory {
    pub images: Vec<RgbImage>,
    pub labels: Vec<usize>,
}

impl ImageDataset for InMemory {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        Ok(self.images[index].clone())
    }
}

/// Some rows of another dataset (a label split, a hold-out), in the given order.
pub struct Subset {
    pub inner: Arc<dyn ImageDataset>,
    pub rows: Vec<usize>,
}

impl ImageDataset for Subset {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(self.rows[index])
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        self.inner.load(self.rows[index])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Seeded shuffle per epoch; `false` keeps dataset order (evaluation).
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Skip unreadable images (counted in [`EpochIter::skipped`]) instead of failing.
    pub skip_corrupt: bool,
    /// Decode/transform worker threads; 0 uses rayon's global pool (all cores).
    pub threads: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: false,
            seed: 0,
            drop_last: false,
            prefetch: 2,
            skip_corrupt: false,
            threads: 0,
        }
    }
}

/// One batch: NCHW f32 images with their labels and dataset indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    /// [n, c, h, w]
    pub shape: [usize; 4],
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
}

pub struct Loader {
    dataset: Arc<dyn ImageDataset>,
    transform: Transform,
    config: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Loader {
    pub fn new(
        dataset: Arc<dyn ImageDataset>,
        transform: Transform,
        config: LoaderConfig,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::Invalid("batch size must be positive".into()));
        }
        let pool = if config.threads > 0 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(config.threads)
                .build()
                .map_err(|e| DataError::Invalid(format!("cannot start worker threads: {e}")))?;
            Some(Arc::new(pool))
        } else {
            None
        };
        Ok(Loader {
            dataset,
            transform,
            config,
            pool,
        })
    }

    /// Worker threads decoding and transforming.
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    pub fn len(&self) -> usize {
        self.dataset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dataset.is_empty()
    }

    /// Visiting order of an epoch.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.config.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            order.shuffle(&mut rng);
        }
        order
    }

    /// Number of batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// Starts producing the batches of `epoch` in the background.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        let order = self.order(epoch);
        let keys = order.iter().map(|&i| i as u64).collect();
        self.spawn(epoch, order, keys, 0)
    }

    /// The batches of `epoch` in a sampler's visiting `order`, from batch `skip` on (resuming
    /// mid-epoch). Each visit's augmentation is drawn from (seed, epoch, position in the order),
    /// so an index visited twice (repeated augmentation) gets two different views.
    pub fn epoch_in_order(&self, epoch: u64, order: Vec<usize>, skip: usize) -> EpochIter {
        let keys = (0..order.len() as u64).collect();
        self.spawn(epoch, order, keys, skip)
    }

    fn spawn(&self, epoch: u64, order: Vec<usize>, keys: Vec<u64>, skip: usize) -> EpochIter {
        let bs = self.config.batch_size;
        let mut chunks: Vec<(Vec<usize>, Vec<u64>)> = order
            .chunks(bs)
            .zip(keys.chunks(bs))
            .map(|(c, k)| (c.to_vec(), k.to_vec()))
            .collect();
        if self.config.drop_last && chunks.last().is_some_and(|c| c.0.len() < bs) {
            chunks.pop();
        }
        let remaining = chunks.len().saturating_sub(skip);
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let skipped = Arc::new(AtomicUsize::new(0));
        let dataset = self.dataset.clone();
        let transform = self.transform.clone();
        let config = self.config.clone();
        let skipped_w = skipped.clone();
        let pool = self.pool.clone();
        std::thread::spawn(move || {
            for (chunk, keys) in chunks.into_iter().skip(skip) {
                let work = || {
                    make_batch(
                        &*dataset, &transform, &config, epoch, &chunk, &keys, &skipped_w,
                    )
                };
                let batch = match &pool {
                    Some(p) => p.install(work),
                    None => work(),
                };
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        EpochIter {
            rx,
            skipped,
            remaining,
        }
    }
}

fn make_batch(
    dataset: &dyn ImageDataset,
    transform: &Transform,
    config: &LoaderConfig,
    epoch: u64,
    indices: &[usize],
    keys: &[u64],
    skipped: &AtomicUsize,
) -> Result<Batch> {
    let (c, h, w) = transform.output_shape();
    let per = c * h * w;
    let results: Vec<Result<Vec<f32>>> = indices
        .par_iter()
        .zip(keys.par_iter())
        .map(|(&i, &key)| {
            let img = dataset.load(i)?;
            let mut rng = sample_rng(config.seed, epoch, key);
            let mut out = vec![0f32; per];
            transform
                .check_input(&img)
                .map_err(|e| DataError::Invalid(format!("image {i} of the dataset: {e}")))?;
            transform.apply_into(&img, &mut rng, &mut out);
            Ok(out)
        })
        .collect();
    let mut images = Vec::with_capacity(per * indices.len());
    let mut labels = Vec::with_capacity(indices.len());
    let mut kept = Vec::with_capacity(indices.len());
    for (&i, r) in indices.iter().zip(results) {
        match r {
            Ok(v) => {
                images.extend_from_slice(&v);
                labels.push(dataset.label(i));
                kept.push(i);
            }
            Err(e) if config.skip_corrupt => {
                skipped.fetch_add(1, Ordering::Relaxed);
                eprintln!("warning: skipping unreadable image: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    if kept.is_empty() {
        return Err(DataError::Invalid(format!(
            "every image of a batch was unreadable (indices {indices:?})"
        )));
    }
    Ok(Batch {
        shape: [kept.len(), c, h, w],
        images,
        labels,
        indices: kept,
    })
}

/// Batches of one epoch, in order; stops after the first error.
pub struct EpochIter {
    rx: Receiver<Result<Batch>>,
    skipped: Arc<AtomicUsize>,
    /// Batches still owed; a producer that dies early (a panic) is an error, not a short epoch.
    remaining: usize,
}

impl EpochIter {
    /// Images skipped so far because they could not be read (only with `skip_corrupt`).
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(batch) => {
                self.remaining = self.remaining.saturating_sub(1);
                Some(batch)
            }
            Err(_) if self.remaining > 0 => {
                let owed = std::mem::take(&mut self.remaining);
                Some(Err(DataError::Invalid(format!(
                    "the loader stopped with {owed} batches of the epoch left (a worker panicked; see above)"
                ))))
            }
            Err(_) => None,
        }
    }
}
