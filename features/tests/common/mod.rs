//! Tiny random ViTs and image folders made at test time.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use backbone::checkpoint::{config_metadata, save_safetensors};
use backbone::head::{init_head_weights, HeadConfig};
use backbone::VitConfig;
use candle_core::Tensor;
use features::{DataConfig, EvalTransform, ModelSource};

pub fn tiny_config() -> VitConfig {
    VitConfig {
        embed_dim: 16,
        depth: 3,
        num_heads: 2,
        mlp_hidden: 32,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    }
}

pub fn tiny_head() -> HeadConfig {
    HeadConfig {
        hidden_dim: 24,
        bottleneck_dim: 8,
        ..HeadConfig::ibot(16, 5)
    }
}

fn sorted(weights: std::collections::HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = weights.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A random-init tiny ViT saved as safetensors (seed picks the weights).
pub fn save_tiny_vit(path: &Path, seed: u64) {
    let cfg = tiny_config();
    let weights = backbone::init::init_weights(&cfg, seed).unwrap();
    save_safetensors(path, &sorted(weights), config_metadata(&cfg)).unwrap();
}

/// A tiny ViT with an iBOT head (`head.*` next to the backbone keys).
pub fn save_tiny_vit_with_head(path: &Path, seed: u64) {
    let cfg = tiny_config();
    let mut all = sorted(backbone::init::init_weights(&cfg, seed).unwrap());
    for (k, t) in sorted(init_head_weights(&tiny_head(), seed + 1).unwrap()) {
        all.push((format!("head.{k}"), t));
    }
    save_safetensors(path, &all, config_metadata(&cfg)).unwrap();
}

pub fn model(path: &Path) -> ModelSource {
    ModelSource {
        checkpoint: path.to_path_buf(),
        key: None,
        arch: None,
        precision: Default::default(),
    }
}

/// Deterministic noise image with a class-dependent tint, so classes differ.
pub fn write_image(path: &Path, seed: u64, class: usize, w: u32, h: u32) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for (c, p) in px.iter_mut().enumerate() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = (state >> 58) as u8; // 0..63
            *p = noise + if c == class % 3 { 150 } else { 40 };
        }
        image::Rgb(px)
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `root/{a,b}/NN.png` with `per_class` images per class of varied sizes.
pub fn write_folder(root: &Path, per_class: &[usize], seed: u64) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (class, &n) in per_class.iter().enumerate() {
        let name = ["a", "b", "c"][class];
        for i in 0..n {
            let path = root.join(name).join(format!("{i:02}.png"));
            write_image(
                &path,
                seed * 1000 + (class * 100 + i) as u64,
                class,
                36 + (i as u32 % 3) * 4,
                34 + (i as u32 % 2) * 6,
            );
            files.push(path);
        }
    }
    files
}

/// A train/val ImageFolder pair under `dir`, resized/cropped to 32 px.
pub fn tiny_data(dir: &Path, train: &[usize], val: &[usize]) -> DataConfig {
    write_folder(&dir.join("train"), train, 1);
    write_folder(&dir.join("val"), val, 2);
    DataConfig::image_folder(
        "tiny",
        dir.join("train"),
        dir.join("val"),
        EvalTransform {
            resize: 32,
            crop: 32,
        },
    )
}

/// Overwrites a file with garbage of the same length (its size, hence the list hash, is unchanged).
pub fn corrupt_same_size(path: &Path) {
    let n = std::fs::metadata(path).unwrap().len() as usize;
    std::fs::write(path, vec![0x5au8; n]).unwrap();
}
