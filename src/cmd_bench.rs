//! `ibot bench …`: throughput measurements (never asserted by tests).
//!
//! `backbone`, `pretrain` and `finetune` time our CPU/GPU paths and, given the JSON that the
//! matching PyTorch script printed (`--torch-json FILE`, from tests/reference/bench_*.py run on
//! the same threads just before), print both side by side with the ratio ours / PyTorch. Each
//! JSON records the machine load (/proc/loadavg) before and after, since this kind of figure is
//! only comparable when both runs saw the same, ideally idle, machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use backbone::ops::{self, Activation};
use backbone::{TrainCtx, VitConfig};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cmd_pretrain::{device, DeviceChoice};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward throughput of a random-init ViT, with a per-op time breakdown; compare with
    /// tests/reference/bench_torch.py (`--torch-json`).
    Backbone(BenchBackboneArgs),
    #[command(flatten)]
    Data(crate::cmd_data::BenchData),
    #[command(flatten)]
    Metrics(crate::cmd_metrics::BenchMetrics),
    #[command(flatten)]
    Eval(crate::cmd_eval::BenchEval),
    /// Images/s of full iBOT training steps (teacher + student multi-crop forward, loss, backward,
    /// AdamW, EMA) on generated images; compare with tests/reference/bench_pretrain_torch.py.
    Pretrain(BenchPretrainArgs),
    /// Seconds per fine-tuning step (ViT + Linear head, drop path, soft-target cross-entropy,
    /// backward, AdamW with layer decay: `finetune::train::optimize_step`) on random images;
    /// compare with tests/reference/bench_finetune_torch.py.
    Finetune(BenchFinetuneArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    // The bench runs as `ibot` itself should: with the CPU runtime settings of the fused ops.
    ops::init_cpu_runtime();
    match cmd {
        BenchCommand::Backbone(a) => run_backbone(a),
        BenchCommand::Data(c) => crate::cmd_data::run_bench(c),
        BenchCommand::Metrics(c) => crate::cmd_metrics::run_bench(c),
        BenchCommand::Eval(c) => crate::cmd_eval::run_bench(c),
        BenchCommand::Pretrain(a) => run_pretrain(a),
        BenchCommand::Finetune(a) => run_finetune(a),
    }
}

/// PyTorch's step time from its bench JSON next to ours (`step` seconds) and the ratio.
fn add_torch_step(out: &mut Value, torch: Option<&Value>, step: f64) {
    let Some(t) = torch else { return };
    if let Some(theirs) = t["mean_step_seconds"].as_f64() {
        out["torch_mean_step_seconds"] = json!(theirs);
        out["torch_step_seconds"] = t["step_seconds"].clone();
        out["torch"] = t["torch"].clone();
        out["torch_precision"] = t.get("precision").cloned().unwrap_or(json!("f32"));
        out["ratio"] = json!(theirs / step);
        out["ratio_note"] = json!("PyTorch step time / ours: above 1 = ours faster");
    }
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| {
            let v: Vec<f64> = s
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            json!(v)
        })
        .unwrap_or(Value::Null)
}

/// The JSON objects a PyTorch bench script printed: one pretty-printed object, or one per line
/// (other lines, e.g. a banner, are skipped).
fn read_torch_json(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(vec![v]);
    }
    let mut out = Vec::new();
    let mut buf = String::new();
    for line in text.lines() {
        if buf.is_empty() && !line.trim_start().starts_with('{') {
            continue;
        }
        buf.push_str(line);
        buf.push('\n');
        if let Ok(v) = serde_json::from_str::<Value>(&buf) {
            out.push(v);
            buf.clear();
        }
    }
    if out.is_empty() {
        bail!("{}: no JSON object found", path.display());
    }
    Ok(out)
}

fn runtime_info(dev: &Device, precision: &str) -> Value {
    json!({
        "device": if dev.is_cuda() { "cuda" } else { "cpu" },
        "threads": rayon::current_num_threads(),
        "precision": precision,
        "amx": precision == "bf16" && dev.is_cpu() && ops::amx_available(),
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

// ------------------------------------------------------------------------------- backbone

#[derive(Args)]
pub struct BenchBackboneArgs {
    #[arg(long, default_value = "vit_small")]
    arch: String,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Minimum seconds measured per batch size.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// GEMM precision: f32, or bf16 (bf16 operands, f32 accumulation; AMX where available).
    #[arg(long, default_value = "f32")]
    precision: features::Precision,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Output of tests/reference/bench_torch.py (same arch, batches, threads), run just before:
    /// prints its images/s next to ours and the ratio.
    #[arg(long)]
    torch_json: Option<PathBuf>,
    /// Skip the per-op breakdown.
    #[arg(long)]
    no_breakdown: bool,
}

fn run_backbone(a: BenchBackboneArgs) -> Result<()> {
    let load_start = loadavg();
    let torch = a.torch_json.as_deref().map(read_torch_json).transpose()?;
    let mut cfg = VitConfig::preset(&a.arch)?;
    cfg.img_size = a.size;
    let dev = device(a.device)?;
    let compute = a.precision.compute_dtype();
    let model = backbone::build_model(
        &cfg,
        backbone::init::init_weights(&cfg, 0)?,
        DType::F32,
        &dev,
    )?
    .with_compute_dtype(compute);
    let info = runtime_info(&dev, a.precision.name());
    eprintln!("{} at {} px, {info}", a.arch, a.size);
    let mut rows = Vec::new();
    for &b in &a.batch {
        let x = Tensor::randn(0f32, 1.0, (b, 3, a.size, a.size), &dev)?;
        model.forward_cls(&x)?.to_device(&Device::Cpu)?; // warm-up
        let start = Instant::now();
        let mut iters = 0;
        while start.elapsed().as_secs_f64() < a.seconds || iters < 2 {
            model.forward_cls(&x)?.to_device(&Device::Cpu)?;
            iters += 1;
        }
        let ips = (iters * b) as f64 / start.elapsed().as_secs_f64();
        let mut row = json!({"batch": b, "iters": iters, "images_per_s": ips});
        if let Some(t) = &torch {
            let theirs = t
                .iter()
                .find(|v| v["batch"].as_u64() == Some(b as u64))
                .and_then(|v| v["images_per_s"].as_f64());
            if let Some(theirs) = theirs {
                row["torch_images_per_s"] = json!(theirs);
                row["ratio"] = json!(ips / theirs);
            }
        }
        println!("{}", merge(json!({"bench": "backbone"}), row.clone()));
        rows.push(row);
    }
    let summary = merge(
        json!({
            "bench": "backbone_summary",
            "arch": a.arch,
            "size": a.size,
            "results": rows,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
        }),
        info,
    );
    let summary = match &torch {
        Some(t) => merge(
            summary,
            json!({"torch": t.iter().find(|v| v["torch"].is_string()).map(|v| v["torch"].clone())}),
        ),
        None => summary,
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if !a.no_breakdown {
        op_breakdown(&cfg, *a.batch.iter().max().unwrap_or(&8), compute, &dev)?;
    }
    Ok(())
}

/// Time each op of one block at the model's shapes, ×depth, to show where forward time goes.
fn op_breakdown(cfg: &VitConfig, b: usize, compute: DType, dev: &Device) -> Result<()> {
    let t = cfg.grid() * cfg.grid() + 1;
    let d = cfg.embed_dim;
    let hidden = cfg.mlp_hidden;
    let c = Some(compute);
    let randn = |shape: &[usize], s: f64| Tensor::randn(0f32, s as f32, shape, dev);
    let x = randn(&[b * t, d], 1.0)?;
    let ln_w = Tensor::ones(d, DType::F32, dev)?;
    let ln_b = Tensor::zeros(d, DType::F32, dev)?;
    let wqkv = randn(&[3 * d, d], 0.02)?;
    let bqkv = randn(&[3 * d], 0.02)?;
    let wproj = randn(&[d, d], 0.02)?;
    let bd = randn(&[d], 0.02)?;
    let wfc1 = randn(&[hidden, d], 0.02)?;
    let bfc1 = randn(&[hidden], 0.02)?;
    let wfc2 = randn(&[d, hidden], 0.02)?;
    let qkv = randn(&[b, t, 3 * d], 1.0)?;
    let h = randn(&[b * t, hidden], 1.0)?;
    let scale = (cfg.head_dim() as f64).powf(-0.5);
    let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<f64> {
        f()?;
        let start = Instant::now();
        let n = 3;
        for _ in 0..n {
            f()?;
        }
        Ok(start.elapsed().as_secs_f64() / n as f64 * 1e3)
    };
    let attention = || match ops::fused_attention(&qkv, cfg.num_heads, scale, c)? {
        Some(o) => Ok(o),
        None => candle_core::bail!("no fused attention on this device"),
    };
    let rows = [
        (
            "layer_norm ×2",
            2.0 * time(&|| ops::layer_norm(&x, &ln_w, &ln_b, 1e-6))?,
        ),
        (
            "qkv linear",
            time(&|| ops::linear(&x, &wqkv, &bqkv, Activation::Identity, None, c))?,
        ),
        ("attention", time(&attention)?),
        (
            "proj linear",
            time(&|| ops::linear(&x, &wproj, &bd, Activation::Identity, None, c))?,
        ),
        (
            "fc1+gelu",
            time(&|| ops::linear(&x, &wfc1, &bfc1, Activation::Gelu, None, c))?,
        ),
        (
            "fc2 linear",
            time(&|| ops::linear(&h, &wfc2, &bd, Activation::Identity, None, c))?,
        ),
        ("residual ×2", 2.0 * time(&|| ops::residual_add(&x, &x))?),
    ];
    let total: f64 = rows.iter().map(|r| r.1).sum();
    println!(
        "per-block op time at batch {b} (ms; ×{} blocks = {:.0} ms):",
        cfg.depth,
        total * cfg.depth as f64
    );
    for (name, ms) in rows {
        println!("  {name:<14} {ms:8.2}  {:5.1}%", ms / total * 100.0);
    }
    Ok(())
}

// ------------------------------------------------------------------------------- pretrain

#[derive(Args)]
pub struct BenchPretrainArgs {
    #[arg(long, default_value = "vit_small")]
    arch: String,
    #[arg(long, default_value_t = 16)]
    patch_size: usize,
    #[arg(long, default_value_t = 224)]
    global_size: u32,
    #[arg(long, default_value_t = 96)]
    local_size: u32,
    #[arg(long, default_value_t = 10)]
    local_crops: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 8192)]
    out_dim: usize,
    /// Timed steps (one more untimed warm-up step runs first).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// `run.precision`: f32, bf16 (AMX on CPUs that have it) or auto.
    #[arg(long, default_value = "f32")]
    precision: String,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Output of tests/reference/bench_pretrain_torch.py (same sizes and threads), run just
    /// before: prints its step time next to ours and the ratio.
    #[arg(long)]
    torch_json: Option<PathBuf>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn run_pretrain(a: BenchPretrainArgs) -> Result<()> {
    use pretrain::config::PretrainConfig;
    use pretrain::trainer::{RunOptions, Trainer};
    let load_start = loadavg();
    let torch = a.torch_json.as_deref().map(read_torch_json).transpose()?;
    let recipe = format!(
        r#"
name = "bench"
[model]
arch = "{arch}"
patch_size = {patch}
drop_path = 0.1
[head]
out_dim = {out_dim}
shared_head = true
norm_last_layer = false
[data]
format = "synthetic"
images = {images}
size = {size}
[crops]
global_size = {gs}
local_size = {ls}
local_crops = {lc}
global_scale = [0.25, 1.0]
local_scale = [0.05, 0.25]
[mask]
shape = "block"
pred_ratio = [0.0, 0.3]
pred_ratio_var = [0.0, 0.2]
[loss]
teacher_temp = 0.07
[optim]
epochs = 100
batch_size = {bs}
[run]
precision = "{precision}"
"#,
        arch = a.arch,
        patch = a.patch_size,
        out_dim = a.out_dim,
        images = a.batch_size * (a.steps + 1),
        size = a.global_size.max(64),
        gs = a.global_size,
        ls = a.local_size,
        lc = a.local_crops,
        bs = a.batch_size,
        precision = a.precision,
    );
    let cfg: PretrainConfig = toml::from_str(&recipe)?;
    let dir = tempfile::tempdir()?;
    let dev = device(a.device)?;
    let mut trainer = Trainer::new(
        cfg,
        RunOptions {
            out: dir.path().to_path_buf(),
            resume: false,
            device: dev.clone(),
            max_steps: Some(a.steps + 1),
            progress: false,
        },
    )?;
    let summary = trainer.run()?;
    let timed = &summary.step_seconds[1..];
    let step = mean(timed);
    // Per-phase means and the loss per step, from the run's log.
    let log = std::fs::read_to_string(dir.path().join(pretrain::trainer::LOG)).unwrap_or_default();
    let steps: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("phase_seconds").is_some())
        .collect();
    let mut phases = serde_json::Map::new();
    if let Some(first) = steps.get(1) {
        for (name, _) in first["phase_seconds"].as_object().into_iter().flatten() {
            let v: Vec<f64> = steps[1..]
                .iter()
                .filter_map(|s| s["phase_seconds"][name].as_f64())
                .collect();
            phases.insert(name.clone(), json!(mean(&v)));
        }
    }
    let losses: Vec<Value> = steps.iter().map(|s| s["loss"].clone()).collect();
    let mut out = json!({
        "bench": "pretrain_step",
        "arch": format!("{}/{}", a.arch, a.patch_size),
        "global": format!("2x{}", a.global_size),
        "local": format!("{}x{}", a.local_crops, a.local_size),
        "batch_size": a.batch_size,
        "out_dim": a.out_dim,
        "step_seconds": timed,
        "mean_step_seconds": step,
        "images_per_s": a.batch_size as f64 / step,
        "phase_seconds": phases,
        "loss_per_step": losses,
        "note": "one untimed warm-up step; data preparation runs ahead in a background thread",
    });
    out = merge(out, runtime_info(&dev, &summary.precision));
    add_torch_step(&mut out, torch.as_ref().and_then(|t| t.first()), step);
    out["loadavg_start"] = load_start;
    out["loadavg_end"] = loadavg();
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

// ------------------------------------------------------------------------------- finetune

#[derive(Args)]
pub struct BenchFinetuneArgs {
    #[arg(long, default_value = "vit_small")]
    arch: String,
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Timed steps (one more untimed warm-up step runs first).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// GEMM precision: f32, or bf16 (AMX on CPUs that have it).
    #[arg(long, default_value = "f32")]
    precision: features::Precision,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Output of tests/reference/bench_finetune_torch.py, run just before: the ratio.
    #[arg(long)]
    torch_json: Option<PathBuf>,
}

fn run_finetune(a: BenchFinetuneArgs) -> Result<()> {
    use finetune::model::{init_head, Classifier, HeadKind};
    use finetune::train::{group_of, optimize_step, Targets};
    let load_start = loadavg();
    let torch = a.torch_json.as_deref().map(read_torch_json).transpose()?;
    // The BEiT ViT-S recipe's model and optimiser settings (drop path 0.1, layer decay 0.75).
    let cfg = finetune::FinetuneConfig::parse(
        include_str!("../configs/finetune/beit_vit_small_imagenet.toml"),
        "beit_vit_small_imagenet.toml",
    )?;
    let dev = device(a.device)?;
    let compute = a.precision.compute_dtype();
    let mut vit = VitConfig::preset(&a.arch)?;
    vit.img_size = a.size;
    vit.drop_path_rate = cfg.model.drop_path;
    vit.masked_im_modeling = false;
    let mut weights: Vec<(String, Tensor)> = backbone::init::init_weights(&vit, 0)?
        .into_iter()
        .filter(|(k, _)| k != "masked_embed")
        .chain(init_head(
            HeadKind::Linear,
            vit.embed_dim,
            a.classes,
            cfg.model.init_scale,
            0,
        )?)
        .collect();
    weights.sort_by(|x, y| x.0.cmp(&y.0));
    let vars = candle_nn::VarMap::new();
    train::vars::insert_vars(&vars, weights, &dev)?;
    let model = Classifier::new(
        &vit,
        HeadKind::Linear,
        a.classes,
        candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &dev),
        compute,
    )?;
    let mut optimizer = train::AdamW::with_rule(
        train::vars::sorted_vars(&vars),
        group_of(&cfg, vit.depth),
        train::AdamWConfig::default(),
    );
    let b = a.batch_size;
    let x = Tensor::randn(0f32, 1.0, (b, 3, a.size, a.size), &dev)?;
    // Mixup-like soft targets: rows of a softmax.
    let targets =
        candle_nn::ops::softmax_last_dim(&Tensor::randn(0f32, 1.0, (b, a.classes), &dev)?)?;
    let mut rng = backbone::vit::seeded_rng(0);
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for step in 0..=a.steps {
        let t0 = Instant::now();
        let loss = optimize_step(
            &model,
            &mut optimizer,
            &x,
            Targets::Soft(&targets),
            Some(&mut TrainCtx { rng: &mut rng }),
            1e-4,
            cfg.optim.weight_decay,
            train::Clip::None,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        losses.push(loss);
        if step > 0 {
            times.push(secs);
        }
    }
    let step = mean(&times);
    let mut out = json!({
        "bench": "finetune_step",
        "arch": a.arch,
        "size": a.size,
        "batch_size": b,
        "classes": a.classes,
        "step_seconds": times,
        "mean_step_seconds": step,
        "images_per_s": b as f64 / step,
        "loss_per_step": losses,
        "note": "one untimed warm-up step; random images and soft targets (no data loading)",
    });
    out = merge(out, runtime_info(&dev, a.precision.name()));
    add_torch_step(&mut out, torch.as_ref().and_then(|t| t.first()), step);
    out["loadavg_start"] = load_start;
    out["loadavg_end"] = loadavg();
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
