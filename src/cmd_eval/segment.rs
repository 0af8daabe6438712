//! `ibot eval segment`: semantic segmentation of a checkpoint on an ADE20K-layout data config
//! (frozen linear probe or UperNet), resumable in --out; result.json, pred/*.png, drawings.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use segmentation::HeadKind;
use serde_json::Value;

use crate::protocols::segmentation::{run, SegmentationOptions};

#[derive(Args)]
pub struct SegmentArgs {
    /// The pretrained model (.pth or .safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Segmentation data config (configs/data/ade20k.toml, configs/data/synth-ade.toml).
    #[arg(long)]
    data: PathBuf,
    /// `linear` (frozen backbone, 1×1 conv) or `upernet`.
    #[arg(long)]
    head: HeadKind,
    /// Recipe (configs/segmentation/*.toml); default: the official recipe of the head.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Overrides the recipe's training iterations.
    #[arg(long)]
    iters: Option<usize>,
    /// Overrides the recipe's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Val images drawn (image | ground truth | prediction) into DIR/segmentation/.
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Checkpoint sub-dict (teacher, student, state_dict …); default: auto.
    #[arg(long)]
    key: Option<String>,
    /// Architecture preset; default: inferred from the shapes.
    #[arg(long)]
    arch: Option<String>,
    /// Run directory: result.json, pred/<annotation name>.png, model.safetensors, log.jsonl,
    /// checkpoint. Re-running the same command there continues a stopped run.
    #[arg(long)]
    out: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run_segment(args: SegmentArgs) -> anyhow::Result<()> {
    let model = features::ModelSource {
        checkpoint: args.checkpoint.clone(),
        key: args.key.clone(),
        arch: args.arch.clone(),
        precision: features::Precision::F32,
    };
    let opts = SegmentationOptions {
        data: Some(args.data.clone()),
        head: Some(args.head),
        recipe: args.recipe.clone(),
        iters: args.iters,
        seed: args.seed,
        images: Some(args.images),
    };
    let progress = if args.quiet {
        features::Progress::hidden()
    } else {
        features::Progress::standalone()
    };
    let cwd = std::env::current_dir()?;
    let mut result = run(
        &model,
        &args.data,
        &opts,
        &cwd,
        &args.out,
        &args.out,
        std::path::Path::new("segmentation"),
        &progress,
    )
    .with_context(|| {
        format!(
            "segmentation of {} on {}",
            args.checkpoint.display(),
            args.data.display()
        )
    })?;
    result["manifest"]["data_config"] = Value::String(args.data.display().to_string());
    super::finish(&args.out, &result, &table(&result))
}

fn table(result: &Value) -> String {
    let s = &result["segmentation"];
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("–".to_string(), |x| format!("{:.2}", 100.0 * x))
    };
    let mut out = format!(
        "segmentation  {} iterations\n  mIoU {} %  mAcc {} %  aAcc {} %\n",
        result["training"]["iters"],
        pct(&s["mIoU"]),
        pct(&s["mAcc"]),
        pct(&s["aAcc"])
    );
    for c in s["per_class"].as_array().into_iter().flatten().take(20) {
        out += &format!(
            "  {:>16}  IoU {:>6}  Acc {:>6}\n",
            c["name"].as_str().unwrap_or("?"),
            pct(&c["IoU"]),
            pct(&c["Acc"])
        );
    }
    out
}

/// `ibot bench segment`: UperNet training steps (forward, mmseg losses, backward, AdamW with mmcv
/// layer decay) on random images, the demo recipe's model by default; compare with
/// tests/reference/bench_segmentation_torch.py (same flags).
#[derive(Args)]
pub struct BenchSegmentArgs {
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 8)]
    patch: usize,
    #[arg(long, default_value_t = 96)]
    dim: usize,
    #[arg(long, default_value_t = 4)]
    depth: usize,
    #[arg(long, default_value_t = 3)]
    heads: usize,
    #[arg(long, default_value_t = 64)]
    channels: usize,
    #[arg(long, default_value_t = 32)]
    aux: usize,
    #[arg(long, default_value_t = 8)]
    classes: usize,
    /// PyTorch's JSON (bench_segmentation_torch.py) to print the ratio against.
    #[arg(long)]
    torch_json: Option<PathBuf>,
}

pub fn run_bench(a: BenchSegmentArgs) -> anyhow::Result<()> {
    use candle_core::{Device, Tensor};
    let vit = backbone::VitConfig {
        embed_dim: a.dim,
        depth: a.depth,
        num_heads: a.heads,
        mlp_hidden: 4 * a.dim,
        patch_size: a.patch,
        img_size: a.size,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    };
    let text = format!(
        "name = \"bench\"\nhead = \"upernet\"\n[model]\nout_indices = {:?}\nchannels = {}\naux_channels = {}\n[optim]\nlayer_decay = 0.9\n[pipeline]\ncrop_size = [{s}, {s}]\n",
        (a.depth.saturating_sub(4)..a.depth).collect::<Vec<_>>(),
        a.channels,
        a.aux,
        s = a.size
    );
    let cfg = segmentation::SegConfig::parse(&text, "bench recipe")?;
    let dense = segmentation::segmentor::dense_config(&cfg, &vit);
    let dev = Device::Cpu;
    let vars = candle_nn::VarMap::new();
    let weights = backbone::dense::init_dense_weights(&vit, &dense, 0)?;
    train::vars::insert_vars(&vars, weights.into_iter().collect(), &dev)?;
    let buffers = layers::norm::Buffers::new();
    let vb = train::vars::SeededInit::var_builder(&vars, 0, &dev);
    let model = segmentation::segmentor::Segmentor::new(&vit, &cfg, a.classes, vb, &buffers)?;
    let params = train::vars::sorted_vars(&vars);
    let mut opt = train::AdamW::with_rule(
        params,
        |n, r| train::param_groups::mmcv_layer_decay(n, r, a.depth, 0.9),
        train::AdamWConfig::default(),
    );
    let x = Tensor::randn(0f32, 1.0, (a.batch, 3, a.size, a.size), &dev)?;
    let labels: Vec<u8> = (0..a.batch * a.size * a.size)
        .map(|i| (i * 7 % a.classes) as u8)
        .collect();
    let y = Tensor::from_vec(labels, (a.batch, a.size, a.size), &dev)?;
    let mut times = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t0 = std::time::Instant::now();
        let losses = model.losses(&x, &y, None, None)?;
        let grads = losses.total.backward()?;
        opt.step(&grads, 1e-4, 0.05, train::Clip::None, &|_| false)?;
        if i >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|p, q| p.total_cmp(q));
    let step = times[times.len() / 2];
    let mut out = serde_json::json!({
        "bench": "segment", "framework": "ibot-rs", "threads": rayon::current_num_threads(),
        "batch": a.batch, "size": a.size, "step_seconds_median": step,
        "images_per_s": a.batch as f64 / step, "steps": a.steps,
    });
    if let Some(p) = &a.torch_json {
        let theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{}: not JSON", p.display()))?;
        let t = theirs["images_per_s"]
            .as_f64()
            .context("the PyTorch JSON has no images_per_s")?;
        out["pytorch"] = theirs.clone();
        out["ratio_vs_pytorch"] = serde_json::json!(a.batch as f64 / step / t);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
