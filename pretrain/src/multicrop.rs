//! Multi-crop batches (ibot-reference §5–§6): per image, G global crops with their masks and L local
//! crops, laid out crop-major as the official MultiCropWrapper concatenates them. Every random draw
//! comes from (seed, epoch, image index), so a resumed run sees exactly the same batches.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use data::augment::{sample_rng, IbotAugment};
use data::loader::{ImageDataset, InMemory};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::{CropsSection, DataSource};
use crate::mask::MaskGenerator;

/// One training batch. `globals` is [G·B, 3, S, S] with rows 0..B−1 = crop 0 of every image.
pub struct MultiCropBatch {
    pub batch: usize,
    pub globals: Vec<f32>,
    pub locals: Vec<f32>,
    /// [G·B, N] with 1.0 = masked.
    pub masks: Vec<f32>,
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
}

/// Opens the pretraining images.
pub fn open_dataset(src: &DataSource) -> Result<Arc<dyn ImageDataset>> {
    Ok(match src {
        DataSource::ImageFolder { root } => {
            let folder = data::folder::ImageFolder::open(root)
                .with_context(|| format!("opening image folder {}", root.display()))?;
            if folder.is_empty() {
                bail!("{}: no images found", root.display());
            }
            Arc::new(folder)
        }
        DataSource::Idx { images, labels } => {
            let (imgs, labs) = match labels {
                Some(l) => data::idx::read_idx_classification(images, l)?,
                None => {
                    let arr = data::idx::read_idx(images)?;
                    if arr.dims.len() != 3 {
                        bail!(
                            "{}: expected N x H x W images, found dims {:?}",
                            images.display(),
                            arr.dims
                        );
                    }
                    let (h, w) = (arr.dims[1], arr.dims[2]);
                    let imgs: Vec<_> = arr
                        .data
                        .chunks_exact(h * w)
                        .map(|px| {
                            let g = image::GrayImage::from_raw(w as u32, h as u32, px.to_vec())
                                .expect("IDX dims checked");
                            data::image_io::grey_to_rgb(&g)
                        })
                        .collect();
                    let n = imgs.len();
                    (imgs, vec![0; n])
                }
            };
            Arc::new(InMemory {
                images: imgs,
                labels: labs,
            })
        }
        DataSource::Synthetic { images, size, seed } => {
            if *images == 0 || *size == 0 {
                bail!("data.images and data.size must be positive for synthetic data");
            }
            let classes = data::synth::CLASSES.len();
            let imgs: Vec<_> = (0..*images)
                .into_par_iter()
                .map(|i| {
                    let mut rng = sample_rng(*seed, u64::MAX, i as u64);
                    data::synth::classification_image(i % classes, *size, &mut rng)
                })
                .collect();
            Arc::new(InMemory {
                images: imgs,
                labels: (0..*images).map(|i| i % classes).collect(),
            })
        }
    })
}

/// Produces the multi-crop batches of an epoch in the background.
pub struct MultiCropLoader {
    dataset: Arc<dyn ImageDataset>,
    augment: IbotAugment,
    masks: Arc<MaskGenerator>,
    batch_size: usize,
    seed: u64,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// (rank, world size): which DistributedSampler shard of each epoch this loader yields.
    shard: (usize, usize),
}

impl MultiCropLoader {
    pub fn new(
        dataset: Arc<dyn ImageDataset>,
        crops: &CropsSection,
        masks: MaskGenerator,
        batch_size: usize,
        seed: u64,
        threads: usize,
    ) -> Result<Self> {
        if dataset.len() < batch_size {
            bail!(
                "the data set has {} images, fewer than one batch of {batch_size} (batches drop the remainder, as the official loader does)",
                dataset.len()
            );
        }
        let pool = if threads > 0 {
            Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()?,
            ))
        } else {
            None
        };
        Ok(MultiCropLoader {
            dataset,
            augment: crops.augment(),
            masks: Arc::new(masks),
            batch_size,
            seed,
            pool,
            shard: (0, 1),
        })
    }

    /// Yield only rank `rank`'s share of every epoch, as `DistributedSampler(num_replicas=world,
    /// rank=rank)`: the epoch order padded by repeating its head to a multiple of `world`, then
    /// every `world`-th index from `rank` on. Batch i of all ranks together is then batch i of
    /// a one-process run with a batch `world` times larger (when `world` divides the data set).
    pub fn with_shard(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            bail!("rank {rank} is outside a world of {world}");
        }
        let per_rank = self.dataset.len().div_ceil(world);
        if per_rank < self.batch_size {
            bail!(
                "the data set has {} images: {per_rank} per rank over {world} ranks, fewer than one batch of {}",
                self.dataset.len(),
                self.batch_size
            );
        }
        self.shard = (rank, world);
        Ok(self)
    }

    /// drop_last, as DistributedSampler + DataLoader(drop_last=True): ⌊⌈N/world⌉/B⌋.
    pub fn batches_per_epoch(&self) -> usize {
        self.dataset.len().div_ceil(self.shard.1) / self.batch_size
    }

    pub fn dataset(&self) -> &Arc<dyn ImageDataset> {
        &self.dataset
    }

    /// Seeded shuffle of an epoch (the same on every rank).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, 0x5EED_0F0D, epoch as u64));
        order.shuffle(&mut rng);
        order
    }

    /// This rank's indices of an epoch, in order (all of `order` with one rank).
    pub fn shard_order(&self, epoch: usize) -> Vec<usize> {
        let (rank, world) = self.shard;
        let order = self.order(epoch);
        if world == 1 {
            return order;
        }
        let total = order.len().div_ceil(world) * world;
        (0..total)
            .skip(rank)
            .step_by(world)
            .map(|i| order[i % order.len()])
            .collect()
    }

    /// Batches `first..` of `epoch`, prepared `prefetch` ahead.
    pub fn epoch(
        &self,
        epoch: usize,
        first: usize,
        prefetch: usize,
    ) -> Receiver<Result<MultiCropBatch>> {
        let order = self.shard_order(epoch);
        let bs = self.batch_size;
        let chunks: Vec<Vec<usize>> = order
            .chunks_exact(bs)
            .skip(first)
            .map(|c| c.to_vec())
            .collect();
        let (tx, rx) = sync_channel(prefetch.max(1));
        let dataset = self.dataset.clone();
        let augment = self.augment.clone();
        let masks = self.masks.clone();
        let seed = self.seed;
        let pool = self.pool.clone();
        std::thread::spawn(move || {
            for chunk in chunks {
                let work = || make_batch(&*dataset, &augment, &masks, seed, epoch, &chunk);
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
        rx
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn mix(a: u64, b: u64, c: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(a) ^ b) ^ c)
}

fn make_batch(
    dataset: &dyn ImageDataset,
    augment: &IbotAugment,
    masks: &MaskGenerator,
    seed: u64,
    epoch: usize,
    indices: &[usize],
) -> Result<MultiCropBatch> {
    let g = augment.global_crops;
    let l = augment.local_crops;
    let per_image: Vec<(Vec<Vec<f32>>, Vec<Vec<bool>>)> = indices
        .par_iter()
        .map(|&i| {
            let img = dataset
                .load(i)
                .with_context(|| format!("loading image {i}"))?;
            let mut rng = sample_rng(seed, epoch as u64, i as u64);
            let crops = augment.apply(&img, &mut rng);
            // Masks draw from their own stream: one independent ratio and layout per global crop.
            let mut mask_rng =
                ChaCha8Rng::seed_from_u64(mix(seed ^ 0x4D41_534B, epoch as u64, i as u64));
            let m = (0..g).map(|_| masks.sample(epoch, &mut mask_rng)).collect();
            Ok((crops, m))
        })
        .collect::<Result<_>>()?;
    let b = indices.len();
    let gsz = per_image[0].0[0].len();
    let lsz = if l > 0 { per_image[0].0[g].len() } else { 0 };
    let n = per_image[0].1[0].len();
    let mut globals = Vec::with_capacity(g * b * gsz);
    let mut locals = Vec::with_capacity(l * b * lsz);
    let mut mask_rows = Vec::with_capacity(g * b * n);
    for c in 0..g {
        for (crops, m) in &per_image {
            globals.extend_from_slice(&crops[c]);
            mask_rows.extend(m[c].iter().map(|&v| if v { 1f32 } else { 0f32 }));
        }
    }
    for c in 0..l {
        for (crops, _) in &per_image {
            locals.extend_from_slice(&crops[g + c]);
        }
    }
    Ok(MultiCropBatch {
        batch: b,
        globals,
        locals,
        masks: mask_rows,
        labels: indices.iter().map(|&i| dataset.label(i)).collect(),
        indices: indices.to_vec(),
    })
}
