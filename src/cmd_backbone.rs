//! `ibot inspect | convert | extract | attention` and `ibot bench backbone`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backbone::checkpoint::{config_metadata, save_safetensors};
use backbone::{Checkpoint, LoadOptions, LoadSpec, Pool, VitConfig};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use data::transforms::{self, Interpolation, IMAGENET_MEAN, IMAGENET_STD};
use rayon::prelude::*;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Sub-dict holding the weights (teacher, student, state_dict, model); default: teacher if
    /// present, then state_dict, model, module, else the whole file.
    #[arg(long)]
    key: Option<String>,
    /// Architecture preset (vit_tiny|vit_small|vit_base|vit_large, optionally /8 or /16);
    /// inferred from the shapes when omitted.
    #[arg(long)]
    arch: Option<String>,
    /// Number of attention heads, for widths that are not an official preset.
    #[arg(long)]
    heads: Option<usize>,
    /// Keep initial values for backbone keys the checkpoint lacks (each is listed).
    #[arg(long)]
    allow_missing: bool,
    /// Ignore checkpoint keys the model does not have (each is listed).
    #[arg(long)]
    allow_unexpected: bool,
}

impl ModelArgs {
    fn spec(&self) -> LoadSpec<'_> {
        LoadSpec {
            key: self.key.as_deref(),
            arch: self.arch.as_deref(),
            heads: self.heads,
            options: LoadOptions {
                allow_missing: self.allow_missing,
                allow_unexpected: self.allow_unexpected,
            },
        }
    }
}

#[derive(Subcommand)]
pub enum BackboneCommand {
    /// Describe a checkpoint: format, selected key, architecture, parameters, key report.
    Inspect {
        /// Checkpoint (.pth or .safetensors).
        checkpoint: Option<PathBuf>,
        /// Build a random-init ViT instead and run one forward pass.
        #[arg(long, conflicts_with = "checkpoint")]
        demo: bool,
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Convert a checkpoint to safetensors (shared head tensors written once).
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Sub-dict to export (default: teacher, state_dict, model, module, or everything).
        #[arg(long)]
        key: Option<String>,
        /// Write only the backbone, with un-prefixed keys.
        #[arg(long)]
        backbone_only: bool,
        #[arg(long)]
        heads: Option<usize>,
    },
    /// Extract one feature row per image (sorted file names) to .npy (features only) or
    /// .safetensors (the feature-store format: `features`, `labels`, `manifest` + `files` metadata).
    Extract {
        #[arg(long)]
        checkpoint: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Folder of images (searched recursively).
        #[arg(long)]
        images: PathBuf,
        /// Output file: FEATURES.npy or FEATURES.safetensors.
        #[arg(long)]
        out: PathBuf,
        /// Concatenate the last N blocks (each through the final norm, oldest first).
        #[arg(long, default_value_t = 1)]
        layers: usize,
        /// cls | avg | cls+avg
        #[arg(long, default_value = "cls")]
        pool: Pool,
        /// Resize the shorter side to this (bicubic, as PIL); 0 keeps the size.
        #[arg(long, default_value_t = 256)]
        resize: u32,
        /// Center crop to this square; 0 keeps the whole image.
        #[arg(long, default_value_t = 224)]
        crop: u32,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// GEMM precision: f32, or bf16 (bf16 operands, f32 accumulation; AMX tiles on CPUs that
        /// have them). Weights, LayerNorm, softmax and GELU stay f32.
        #[arg(long, default_value = "f32")]
        precision: features::Precision,
    },
    /// Last-block self-attention of the CLS token, per head, as PNGs (DINO's visualisation).
    Attention {
        #[arg(long)]
        checkpoint: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Resize the shorter side to this first (0 keeps the size); the image is then cropped to
        /// a multiple of the patch size.
        #[arg(long, default_value_t = 480)]
        resize: u32,
        /// Keep the patches holding this fraction of each head's attention mass.
        #[arg(long, default_value_t = 0.6)]
        threshold: f32,
    },
}

pub fn run(cmd: BackboneCommand) -> Result<()> {
    match cmd {
        BackboneCommand::Inspect {
            checkpoint,
            demo,
            model,
            json,
        } => match (checkpoint, demo) {
            (_, true) => inspect_demo(model.arch.as_deref().unwrap_or("vit_small")),
            (Some(path), false) => inspect(&path, &model, json),
            (None, false) => bail!("give a checkpoint to inspect, or --demo"),
        },
        BackboneCommand::Convert {
            input,
            output,
            key,
            backbone_only,
            heads,
        } => convert(&input, &output, key.as_deref(), backbone_only, heads),
        BackboneCommand::Extract {
            checkpoint,
            model,
            images,
            out,
            layers,
            pool,
            resize,
            crop,
            batch_size,
            precision,
        } => extract(
            &checkpoint,
            &model,
            &images,
            &out,
            layers,
            pool,
            resize,
            crop,
            batch_size,
            precision,
        ),
        BackboneCommand::Attention {
            checkpoint,
            model,
            image,
            out,
            resize,
            threshold,
        } => attention(&checkpoint, &model, &image, &out, resize, threshold),
    }
}

fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        return Ok(Device::cuda_if_available(0)?);
    }
    #[allow(unreachable_code)]
    Ok(Device::Cpu)
}

fn inspect(path: &Path, args: &ModelArgs, json: bool) -> Result<()> {
    let ckpt = Checkpoint::open(path)?;
    let sel = ckpt.select(args.key.as_deref())?;
    let cfg = ckpt.infer_config(&sel, args.arch.as_deref(), args.heads)?;
    let init = backbone::init::init_weights(&cfg, 0)?;
    let load = ckpt.load_backbone(&sel, &cfg, args.spec().options, init);
    let (report, error) = match load {
        Ok((_, report)) => (Some(report), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let summary = serde_json::json!({
        "path": path.display().to_string(),
        "format": ckpt.format(),
        "num_tensors": ckpt.num_tensors(),
        "top_level_keys": ckpt.top_level_groups(),
        "selected_key": sel.key,
        "preset": cfg.preset_name(),
        "config": cfg,
        "parameters": cfg.num_params(),
        "backbone_keys": sel.backbone.len(),
        "non_backbone_keys": sel.other,
        "unselected_keys": sel.unselected_groups,
        "load": report,
        "error": error,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("checkpoint     {}", path.display());
        println!(
            "format         {:?} ({} tensors)",
            ckpt.format(),
            ckpt.num_tensors()
        );
        println!("top-level keys {}", ckpt.top_level_groups().join(", "));
        println!(
            "selected key   {}",
            sel.key.as_deref().unwrap_or("(root state dict)")
        );
        println!(
            "architecture   {} — dim {}, depth {}, heads {}, mlp {}, patch {}, trained at {} px{}",
            cfg.preset_name().unwrap_or_else(|| "custom".into()),
            cfg.embed_dim,
            cfg.depth,
            cfg.num_heads,
            cfg.mlp_hidden,
            cfg.patch_size,
            cfg.img_size,
            if cfg.masked_im_modeling {
                ", with masked_embed"
            } else {
                ""
            }
        );
        println!(
            "parameters     {} ({:.1} M)",
            cfg.num_params(),
            cfg.num_params() as f64 / 1e6
        );
        println!("backbone keys  {}", sel.backbone.len());
        if !sel.other.is_empty() {
            println!(
                "not backbone   {} keys (e.g. {})",
                sel.other.len(),
                sel.other[0]
            );
        }
        match &summary["load"] {
            serde_json::Value::Null => {}
            _ => {
                let r = summary["load"].clone();
                println!(
                    "strict load    OK: {} loaded",
                    r["loaded"].as_array().map_or(0, |a| a.len())
                );
                print_list("missing", &r["missing"]);
                print_list("unexpected", &r["unexpected"]);
            }
        }
        if let Some(e) = summary["error"].as_str() {
            println!("strict load    FAILED\n{e}");
        }
    }
    if summary["error"].is_string() {
        std::process::exit(2);
    }
    Ok(())
}

fn print_list(label: &str, v: &serde_json::Value) {
    if let Some(items) = v.as_array() {
        if !items.is_empty() {
            let names: Vec<&str> = items.iter().filter_map(|x| x.as_str()).collect();
            println!("  {label}: {}", names.join(", "));
        }
    }
}

fn inspect_demo(arch: &str) -> Result<()> {
    let cfg = VitConfig::preset(arch)?;
    let weights = backbone::init::init_weights(&cfg, 0)?;
    let dev = device()?;
    let model = backbone::build_model(&cfg, weights, DType::F32, &dev)?;
    println!(
        "{} (random init): dim {}, depth {}, heads {}, patch {}, {:.1} M parameters",
        cfg.preset_name().unwrap_or_default(),
        cfg.embed_dim,
        cfg.depth,
        cfg.num_heads,
        cfg.patch_size,
        cfg.num_params() as f64 / 1e6
    );
    for (h, w) in [(cfg.img_size, cfg.img_size), (96, 96), (160, 96)] {
        let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?;
        let t = Instant::now();
        let tokens = model.forward_tokens(&x, None, None)?;
        println!(
            "  input [2, 3, {h}, {w}] → tokens {:?} in {:.0} ms",
            tokens.dims(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let attn = model.get_last_selfattention(&Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &dev)?)?;
    println!("  last-block attention {:?}", attn.dims());
    Ok(())
}

fn convert(
    input: &Path,
    output: &Path,
    key: Option<&str>,
    backbone_only: bool,
    heads: Option<usize>,
) -> Result<()> {
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("{}: the output must end in .safetensors", output.display());
    }
    let ckpt = Checkpoint::open(input)?;
    let sel = ckpt.select(key)?;
    let cfg = ckpt.infer_config(&sel, None, heads)?;
    let mut meta = config_metadata(&cfg);
    meta.insert("source".into(), input.display().to_string());
    if let Some(k) = &sel.key {
        meta.insert("source_key".into(), k.clone());
    }
    let tensors: Vec<(String, Tensor)> = if backbone_only {
        let (full, short): (Vec<String>, Vec<String>) = sel
            .backbone
            .iter()
            .map(|(k, f)| (f.clone(), k.clone()))
            .unzip();
        let read = ckpt.read_all(&full)?;
        short
            .into_iter()
            .zip(read)
            .map(|(k, (_, t))| (k, t))
            .collect()
    } else {
        let prefix = sel.key.as_ref().map(|k| format!("{k}."));
        let names: Vec<String> = ckpt
            .names()
            .into_iter()
            .filter(|n| prefix.as_ref().is_none_or(|p| n.starts_with(p.as_str())))
            .collect();
        let aliases = ckpt.aliases(&names);
        let strip = |n: &str| -> String {
            let rel = prefix.as_ref().map_or(n, |p| &n[p.len()..]);
            rel.strip_prefix("module.").unwrap_or(rel).to_string()
        };
        if !aliases.is_empty() {
            let map: HashMap<String, String> =
                aliases.iter().map(|(a, b)| (strip(a), strip(b))).collect();
            meta.insert("aliases".into(), serde_json::to_string(&map)?);
        }
        let kept: Vec<String> = names
            .into_iter()
            .filter(|n| !aliases.contains_key(n))
            .collect();
        ckpt.read_all(&kept)?
            .into_iter()
            .map(|(n, t)| (strip(&n), t))
            .collect()
    };
    save_safetensors(output, &tensors, meta)?;
    println!(
        "wrote {} tensors ({}) to {}",
        tensors.len(),
        cfg.preset_name().unwrap_or_else(|| "custom".into()),
        output.display()
    );
    Ok(())
}

/// Load, resize and crop one image into a normalised CHW buffer.
fn preprocess(path: &Path, resize: u32, crop: u32) -> Result<(Vec<f32>, u32, u32)> {
    let mut img = data::image_io::load_rgb(path)?;
    if resize > 0 {
        img = transforms::resize_shorter(&img, resize, Interpolation::Bicubic);
    }
    if crop > 0 {
        img = transforms::center_crop(&img, crop);
    }
    let (w, h) = img.dimensions();
    Ok((
        transforms::to_normalized_chw(&img, IMAGENET_MEAN, IMAGENET_STD),
        h,
        w,
    ))
}

#[allow(clippy::too_many_arguments)]
fn extract(
    checkpoint: &Path,
    args: &ModelArgs,
    images: &Path,
    out: &Path,
    layers: usize,
    pool: Pool,
    resize: u32,
    crop: u32,
    batch_size: usize,
    precision: features::Precision,
) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "npy" && ext != "safetensors" {
        bail!(
            "{}: the output must end in .npy or .safetensors",
            out.display()
        );
    }
    if layers == 0 || batch_size == 0 {
        bail!("--layers and --batch-size must be at least 1");
    }
    let dev = device()?;
    let loaded = backbone::load(checkpoint, &args.spec(), DType::F32, &dev)?;
    report_relaxed(&loaded.report);
    let vit = precision.apply(loaded.model);
    if layers > loaded.config.depth {
        bail!(
            "--layers {layers} exceeds the model depth {}",
            loaded.config.depth
        );
    }
    let files = data::folder::list_images(images)?;
    if files.is_empty() {
        bail!("{}: no images found", images.display());
    }
    let start = Instant::now();
    let bar = features::Progress::standalone().bar_with_template(
        files.len() as u64,
        features::progress::RATE_TEMPLATE,
        "extract",
    );
    let mut rows: Vec<f32> = Vec::new();
    let mut dim = 0;
    for chunk in files.chunks(batch_size) {
        let decoded = chunk
            .par_iter()
            .map(|p| preprocess(p, resize, crop))
            .collect::<Result<Vec<_>>>()?;
        // Images of different sizes (no crop) run in runs of equal size.
        let mut start = 0;
        while start < decoded.len() {
            let (h, w) = (decoded[start].1, decoded[start].2);
            let end = (start..decoded.len())
                .find(|&i| (decoded[i].1, decoded[i].2) != (h, w))
                .unwrap_or(decoded.len());
            let p = loaded.config.patch_size as u32;
            if h % p != 0 || w % p != 0 {
                bail!(
                    "{}: preprocessed size {w}×{h} is not a multiple of the patch size {p} (use --crop or --resize)",
                    chunk[start].display()
                );
            }
            let mut buf = Vec::with_capacity((end - start) * decoded[start].0.len());
            for d in &decoded[start..end] {
                buf.extend_from_slice(&d.0);
            }
            let x = Tensor::from_vec(buf, (end - start, 3, h as usize, w as usize), &dev)?;
            let f = vit.features(&x, layers, pool)?;
            dim = f.dim(1)?;
            rows.extend(f.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?);
            start = end;
        }
        bar.inc(chunk.len() as u64);
    }
    drop(bar);
    let seconds = start.elapsed().as_secs_f64();
    let n = files.len();
    match ext {
        "npy" => write_npy_atomic(out, &rows, n, dim)?,
        _ => {
            let names: Vec<String> = files.iter().map(|f| relative_name(images, f)).collect();
            let (labels, class_names) = folder_labels(&names);
            let manifest = serde_json::json!({
                "checkpoint": {
                    "path": checkpoint.display().to_string(),
                    "sha256": features::sha256_file(checkpoint)?,
                    "bytes": std::fs::metadata(checkpoint)?.len(),
                    "key": loaded.selection.key,
                    "requested_key": args.key,
                    "arch": loaded.config.preset_name().unwrap_or_else(|| "custom".into()),
                    "config": loaded.config,
                },
                "data": {
                    "images": images.display().to_string(),
                    "num_images": n,
                    "num_classes": class_names.len(),
                    "labels": "index of the image's top-level folder (sorted names); -1 for images directly in the folder",
                },
                "transform": {
                    "resize": resize,
                    "crop": crop,
                    "resize_interpolation": "bicubic (PIL), shorter side; 0 = unchanged",
                    "crop_kind": "center; 0 = whole image",
                    "normalize_mean": IMAGENET_MEAN,
                    "normalize_std": IMAGENET_STD,
                },
                "features": {
                    "layers": layers,
                    "pool": pool,
                    "dim": dim,
                },
                "extraction": {
                    "seconds": seconds,
                    "images_per_second": n as f64 / seconds.max(1e-9),
                    "device": format!("{dev:?}"),
                    "dtype": "f32",
                    "precision": precision.name(),
                    "batch_size": batch_size,
                },
            });
            let x = ndarray::Array2::from_shape_vec((n, dim), rows)?;
            let extra = HashMap::from([("files".to_string(), serde_json::to_string(&names)?)]);
            features::write_feature_file(out, &x, &labels, &class_names, &manifest, extra)?;
        }
    }
    eprintln!("wrote {n} × {dim} features to {}", out.display());
    Ok(())
}

/// `/`-separated path of an image relative to the listed folder.
fn relative_name(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// ImageFolder-style labels for a listing: the top-level folder of each image, classes sorted by
/// name; images directly in the listed folder are unlabelled (−1).
fn folder_labels(names: &[String]) -> (Vec<i64>, Vec<String>) {
    let class_of = |name: &str| name.split_once('/').map(|(c, _)| c.to_string());
    let mut classes: Vec<String> = names.iter().filter_map(|n| class_of(n)).collect();
    classes.sort();
    classes.dedup();
    let labels = names
        .iter()
        .map(|n| match class_of(n) {
            Some(c) => classes.binary_search(&c).expect("listed class") as i64,
            None => -1,
        })
        .collect();
    (labels, classes)
}

fn write_npy_atomic(out: &Path, rows: &[f32], n: usize, dim: usize) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    let arr = ndarray::Array2::from_shape_vec((n, dim), rows.to_vec())?;
    ndarray_npy::write_npy(tmp.path(), &arr)
        .with_context(|| format!("{}: writing .npy", out.display()))?;
    tmp.persist(out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(())
}

fn report_relaxed(report: &backbone::LoadReport) {
    if !report.missing.is_empty() {
        eprintln!(
            "not in checkpoint, left at initial values: {}",
            report.missing.join(", ")
        );
    }
    if !report.unexpected.is_empty() {
        eprintln!(
            "ignored (not in the model): {}",
            report.unexpected.join(", ")
        );
    }
}

fn attention(
    checkpoint: &Path,
    args: &ModelArgs,
    image: &Path,
    out: &Path,
    resize: u32,
    threshold: f32,
) -> Result<()> {
    let dev = device()?;
    let loaded = backbone::load(checkpoint, &args.spec(), DType::F32, &dev)?;
    report_relaxed(&loaded.report);
    let p = loaded.config.patch_size as u32;
    let mut img = data::image_io::load_rgb(image)?;
    if resize > 0 {
        img = transforms::resize_shorter(&img, resize, Interpolation::Bicubic);
    }
    // DINO crops the bottom/right remainder so both sides are multiples of the patch.
    let (w, h) = (img.width() / p * p, img.height() / p * p);
    if w == 0 || h == 0 {
        bail!("{}: image smaller than one {p}-px patch", image.display());
    }
    let img = transforms::crop(&img, 0, 0, h, w);
    let x = Tensor::from_vec(
        transforms::to_normalized_chw(&img, IMAGENET_MEAN, IMAGENET_STD),
        (1, 3, h as usize, w as usize),
        &dev,
    )?;
    let attn = loaded.model.get_last_selfattention(&x)?; // [1, heads, 1+N, 1+N]
    let heads = attn.dim(1)?;
    let (rows, cols) = ((h / p) as usize, (w / p) as usize);
    // CLS query over the patch keys.
    let cls_attn = attn
        .get(0)?
        .narrow(1, 0, 1)?
        .squeeze(1)?
        .narrow(1, 1, rows * cols)?;
    let cls_attn: Vec<Vec<f32>> = cls_attn.to_device(&Device::Cpu)?.to_vec2()?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    img.save(out.join("img.png"))
        .with_context(|| format!("{}: cannot write img.png", out.display()))?;
    let mut summary = Vec::new();
    for (head, a) in cls_attn.iter().enumerate() {
        let mask = mass_threshold_mask(a, threshold);
        let max = a.iter().cloned().fold(f32::MIN, f32::max).max(1e-12);
        let heat = image::GrayImage::from_fn(w, h, |x, y| {
            let i = (y / p) as usize * cols + (x / p) as usize;
            image::Luma([(a[i] / max * 255.0).round() as u8])
        });
        let masked = image::GrayImage::from_fn(w, h, |x, y| {
            let i = (y / p) as usize * cols + (x / p) as usize;
            image::Luma([if mask[i] { 255 } else { 0 }])
        });
        let heat_path = out.join(format!("attn-head{head}.png"));
        let mask_path = out.join(format!("attn-head{head}-th{threshold}.png"));
        heat.save(&heat_path)
            .with_context(|| format!("{}: cannot write", heat_path.display()))?;
        masked
            .save(&mask_path)
            .with_context(|| format!("{}: cannot write", mask_path.display()))?;
        summary.push(serde_json::json!({
            "head": head,
            "max": max,
            "kept_patches": mask.iter().filter(|m| **m).count(),
        }));
    }
    let json = serde_json::json!({"image": image.display().to_string(), "grid": [rows, cols], "threshold": threshold, "heads": summary});
    std::fs::write(
        out.join("attention.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!(
        "wrote {heads} attention maps ({rows}×{cols} patches) to {}",
        out.display()
    );
    Ok(())
}

/// DINO's mask: keep the highest-attention patches whose cumulated mass reaches `threshold`.
pub fn mass_threshold_mask(attn: &[f32], threshold: f32) -> Vec<bool> {
    let total: f32 = attn.iter().sum();
    let mut order: Vec<usize> = (0..attn.len()).collect();
    order.sort_by(|&a, &b| attn[a].total_cmp(&attn[b]));
    let mut keep = vec![false; attn.len()];
    let mut cum = 0f32;
    for &i in &order {
        cum += attn[i];
        // Ascending cumulative mass above 1 − threshold = the top `threshold` of the mass.
        keep[i] = cum / total > 1.0 - threshold;
    }
    keep
}
