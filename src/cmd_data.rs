//! `ibot data …` subcommands and the data-side `ibot bench …` measurements.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use data::augment::Transform;
use data::bench;
use data::folder::{list_images, ImageFolder};
use data::loader::{FileList, ImageDataset, Loader, LoaderConfig};
use data::splits::{balanced_subset, write_file_list, SplitSize};
use data::synth::{self, SynthConfig};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the deterministic synthetic benchmark (classification, COCO, ADE20K layouts).
    Synth {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training images per task; validation gets a quarter (at least one per class).
        #[arg(long, default_value_t = 800)]
        images: usize,
        /// Classification image side in pixels (detection/segmentation scenes are twice this).
        #[arg(long, default_value_t = 96)]
        size: u32,
    },
    /// Write a deterministic class-balanced subset of an ImageFolder as a file list
    /// (`relative/path label` per line), e.g. the 1% / 10% semi-supervised splits.
    Split {
        /// ImageFolder root (`root/<class>/<image>`).
        #[arg(long)]
        root: PathBuf,
        /// `1%`, `10%`, a fraction such as `0.05`, or `N-per-class`.
        #[arg(long)]
        fraction: SplitSize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// File list to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum BenchData {
    /// Loader throughput: decode + RandomResizedCrop + flip + ColorJitter + normalize, batched.
    Loader {
        /// Image directory (ImageFolder or any folder of images). Without it, JPEGs of
        /// synthetic scenes are generated in a temporary directory.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Synthetic images to generate when no --root is given.
        #[arg(long, default_value_t = 256)]
        images: usize,
        /// Side of the generated source images.
        #[arg(long, default_value_t = 448)]
        source_size: u32,
        /// Output crop size.
        #[arg(long, default_value_t = 224)]
        size: u32,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Epochs to time (the first one included).
        #[arg(long, default_value_t = 2)]
        epochs: u64,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Synth {
            out,
            seed,
            images,
            size,
        } => {
            let config = SynthConfig { seed, images, size };
            // stderr, hidden when it is not a terminal; stdout carries only the JSON summary.
            let bar = indicatif::ProgressBar::new(config.total_images() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "synth {bar:40} {pos}/{len} images [{elapsed_precise}<{eta_precise}]",
                )
                .expect("static progress template"),
            );
            let result = synth::generate_with_progress(&out, &config, &|| bar.inc(1));
            bar.finish_and_clear();
            let summary = result
                .with_context(|| format!("generating synthetic scenes in {}", out.display()))?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        DataCommand::Split {
            root,
            fraction,
            seed,
            out,
        } => {
            let folder = ImageFolder::open(&root)?;
            let picked = balanced_subset(&folder.labels(), fraction, seed);
            let entries: Vec<(String, usize)> = picked
                .iter()
                .map(|&i| (folder.relative_path(i), folder.samples[i].label))
                .collect();
            write_file_list(&out, &entries)?;
            let report = serde_json::json!({
                "root": root,
                "out": out,
                "seed": seed,
                "classes": folder.classes.len(),
                "total": folder.len(),
                "selected": entries.len(),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

fn open_images(root: &Path) -> anyhow::Result<Arc<dyn ImageDataset>> {
    let has_class_dirs = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().is_dir());
    if has_class_dirs {
        Ok(Arc::new(ImageFolder::open(root)?))
    } else {
        let paths = list_images(root)?;
        anyhow::ensure!(!paths.is_empty(), "{}: no images", root.display());
        let labels = vec![0; paths.len()];
        Ok(Arc::new(FileList { paths, labels }))
    }
}

pub fn run_bench(cmd: BenchData) -> anyhow::Result<()> {
    match cmd {
        BenchData::Loader {
            root,
            images,
            source_size,
            size,
            batch_size,
            epochs,
            threads,
        } => {
            let tmp;
            let root = match root {
                Some(r) => r,
                None => {
                    tmp = tempfile::tempdir()?;
                    bench::write_jpeg_images(tmp.path(), images, source_size)?;
                    tmp.path().to_path_buf()
                }
            };
            let dataset = open_images(&root)?;
            let n = dataset.len();
            let loader = Loader::new(
                dataset,
                Transform::CropJitter {
                    size,
                    scale: (0.25, 1.0),
                },
                LoaderConfig {
                    batch_size,
                    shuffle: true,
                    seed: 0,
                    drop_last: false,
                    prefetch: 2,
                    skip_corrupt: false,
                    threads: threads.unwrap_or(0),
                },
            )?;
            let t = bench::time_loader(&loader, epochs)?;
            let report = serde_json::json!({
                "bench": "loader",
                "pipeline": format!("decode + RandomResizedCrop({size}, bicubic) + flip + ColorJitter(0.4,0.4,0.2,0.1) p=0.8 + normalize"),
                "root": root,
                "dataset_images": n,
                "images": t.images,
                "seconds": t.seconds,
                "images_per_s": t.images as f64 / t.seconds,
                "batch_size": batch_size,
                "threads": t.threads,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}
