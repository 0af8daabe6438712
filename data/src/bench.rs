//! Throughput measurement helpers for `ibot bench loader` (numbers are reported, never asserted).

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::augment::sample_rng;
use crate::error::{DataError, Result};
use crate::loader::Loader;
use crate::synth;

/// Writes `count` JPEG images of synthetic objects (`size` x `size`) into `dir`.
pub fn write_jpeg_images(dir: &Path, count: usize, size: u32) -> Result<()> {
    (0..count).into_par_iter().try_for_each(|i| {
        let mut rng = sample_rng(7, 0, i as u64);
        let img = synth::classification_image(i % synth::CLASSES.len(), size, &mut rng);
        let path = dir.join(format!("{i:05}.jpg"));
        img.save_with_format(&path, image::ImageFormat::Jpeg)
            .map_err(|e| DataError::format(&path, format!("cannot write JPEG: {e}")))
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    pub images: usize,
    pub seconds: f64,
    pub threads: usize,
}

/// Runs `epochs` epochs of `loader`, counting the images delivered.
pub fn time_loader(loader: &Loader, epochs: u64) -> Result<Throughput> {
    let start = Instant::now();
    let mut images = 0;
    for epoch in 0..epochs {
        for batch in loader.epoch(epoch) {
            images += batch?.shape[0];
        }
    }
    Ok(Throughput {
        images,
        seconds: start.elapsed().as_secs_f64(),
        threads: loader.threads(),
    })
}
