//! The suite's `[attention]` task: a few validation images with the last block's CLS attention
//! (mean over heads) overlaid, written as PNGs under `<out>/attention/<checkpoint>/`.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Tensor};
use data::transforms::{self, Interpolation, IMAGENET_MEAN, IMAGENET_STD};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Protocol, UnitContext};
use crate::cmd_eval::EvalContext;
use crate::report::safe_file_name;
use crate::report::tables::Spec;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionOptions {
    /// Validation images to draw, evenly spaced through the split.
    pub images: usize,
    /// Shorter side before the centre crop; default: the data config's transform.
    pub resize: Option<u32>,
    pub crop: Option<u32>,
    /// Overlay opacity of the heat map.
    pub alpha: f32,
}

impl Default for AttentionOptions {
    fn default() -> Self {
        AttentionOptions {
            images: 4,
            resize: None,
            crop: None,
            alpha: 0.6,
        }
    }
}

pub fn evaluate(
    ctx: &EvalContext,
    opts: &AttentionOptions,
    checkpoint_name: &str,
    out: &Path,
) -> anyhow::Result<Value> {
    if opts.images == 0 {
        anyhow::bail!("[attention] images must be at least 1");
    }
    if !(0.0..=1.0).contains(&opts.alpha) {
        anyhow::bail!("[attention] alpha must lie in [0, 1], got {}", opts.alpha);
    }
    let device = features::default_device()?;
    let spec = backbone::LoadSpec {
        key: ctx.model.key.as_deref(),
        arch: ctx.model.arch.as_deref(),
        ..Default::default()
    };
    let loaded = backbone::load(&ctx.model.checkpoint, &spec, DType::F32, &device)
        .with_context(|| format!("loading {}", ctx.model.checkpoint.display()))?;
    let patch = loaded.config.patch_size as u32;
    let dataset = features::open_split(ctx.data, features::Split::Val)?;
    if dataset.is_empty() {
        anyhow::bail!("the validation split has no images");
    }
    let resize = opts.resize.unwrap_or(ctx.data.transform.resize);
    let crop = opts.crop.unwrap_or(ctx.data.transform.crop);
    // DINO drops the remainder so the crop holds whole patches.
    let side = crop / patch * patch;
    if side == 0 {
        anyhow::bail!("crop {crop} is smaller than one {patch}-px patch");
    }
    let rel_dir = Path::new("attention").join(safe_file_name(checkpoint_name));
    std::fs::create_dir_all(out.join(&rel_dir))
        .with_context(|| format!("creating {}", out.join(&rel_dir).display()))?;
    let count = opts.images.min(dataset.len());
    let mut images = Vec::new();
    for i in 0..count {
        let index = i * dataset.len() / count;
        let img = dataset.load(index)?;
        let img = transforms::resize_shorter(&img, resize, Interpolation::Bicubic);
        let img = transforms::center_crop(&img, crop);
        let img = transforms::center_crop(&img, side);
        let x = Tensor::from_vec(
            transforms::to_normalized_chw(&img, IMAGENET_MEAN, IMAGENET_STD),
            (1, 3, side as usize, side as usize),
            &device,
        )?;
        let attn = loaded.model.get_last_selfattention(&x)?; // [1, heads, 1+N, 1+N]
        let grid = (side / patch) as usize;
        // CLS query row over the patch keys, averaged over heads.
        let cls = attn
            .get(0)?
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .narrow(1, 1, grid * grid)?
            .mean(0)?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1::<f32>()?;
        let overlay = overlay(&img, &cls, grid, opts.alpha);
        let file = rel_dir.join(format!("{i}.png"));
        overlay
            .save(out.join(&file))
            .with_context(|| format!("writing {}", out.join(&file).display()))?;
        let label = dataset.label(index);
        images.push(json!({
            "file": file.to_string_lossy().replace('\\', "/"),
            "index": index,
            "label": label,
            "caption": format!("val #{index} (class {label})"),
        }));
    }
    Ok(json!({
        "images": images,
        "config": {
            "protocol": "attention",
            "what": "last block, CLS query, mean over heads, min-max scaled per image",
            "resize": resize, "crop": side, "patch": patch, "alpha": opts.alpha,
        },
        "manifest": {"arch": loaded.config.preset_name(), "heads": loaded.config.num_heads},
    }))
}

/// The image with the attention map (bilinearly upsampled, min-max scaled) blended in as a heat map.
fn overlay(img: &RgbImage, attn: &[f32], grid: usize, alpha: f32) -> RgbImage {
    let (lo, hi) = attn
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(1e-12);
    let small = image::GrayImage::from_fn(grid as u32, grid as u32, |x, y| {
        let v = (attn[y as usize * grid + x as usize] - lo) / span;
        image::Luma([(v * 255.0).round() as u8])
    });
    let heat = image::imageops::resize(
        &small,
        img.width(),
        img.height(),
        image::imageops::FilterType::Triangle,
    );
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let h = heat.get_pixel(x, y).0[0] as f32 / 255.0;
        let c = heat_color(h);
        let p = img.get_pixel(x, y).0;
        let mix = |a: u8, b: f32| {
            ((1.0 - alpha) * a as f32 + alpha * b)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        Rgb([mix(p[0], c[0]), mix(p[1], c[1]), mix(p[2], c[2])])
    })
}

/// Blue → cyan → yellow → red, for a value in [0, 1].
fn heat_color(v: f32) -> [f32; 3] {
    let stops = [
        [0.0, 0.0, 128.0],
        [0.0, 200.0, 255.0],
        [255.0, 230.0, 0.0],
        [220.0, 0.0, 0.0],
    ];
    let t = v.clamp(0.0, 1.0) * (stops.len() - 1) as f32;
    let i = (t.floor() as usize).min(stops.len() - 2);
    let f = t - i as f32;
    let (a, b) = (stops[i], stops[i + 1]);
    [
        a[0] + f * (b[0] - a[0]),
        a[1] + f * (b[1] - a[1]),
        a[2] + f * (b[2] - a[2]),
    ]
}

pub struct Attention;

impl Protocol for Attention {
    const NAME: &'static str = "attention";
    const TITLE: &'static str = "Attention maps";
    const NOTE: &'static str = "Last-block CLS attention (mean over heads) on a few val images.";
    const TABLE: bool = false;
    type Options = AttentionOptions;

    fn evaluate(ctx: &UnitContext, opts: &AttentionOptions) -> anyhow::Result<Value> {
        evaluate(ctx.eval, opts, ctx.checkpoint_name, ctx.report_dir)
    }

    fn columns(_bodies: &[&Value]) -> Vec<Spec> {
        Vec::new()
    }
}
