//! A seconds-long synthetic recipe and helpers shared by the trainer tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pretrain::config::PretrainConfig;
use pretrain::trainer::RunOptions;
use serde_json::Value;

/// The seconds-long test recipe (`configs/pretrain/synthetic-tiny.toml`: 2-block 32-d ViT, 32
/// generated 32-px scenes) with no drop-path, so that runs differing only in how the batch is
/// split over ranks see exactly the same computation, and a larger lr and faster teacher so
/// that a few steps move the teacher measurably.
pub fn recipe(batch_size: usize, precision: &str) -> PretrainConfig {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/pretrain/synthetic-tiny.toml");
    let mut cfg = PretrainConfig::load(&path).expect("the synthetic-tiny recipe loads");
    cfg.model.drop_path = 0.0;
    cfg.optim.batch_size = batch_size;
    cfg.optim.lr = 5e-2;
    cfg.optim.momentum_teacher = 0.9;
    cfg.run.precision = precision.into();
    cfg.run.loader_threads = 1;
    cfg.validate().expect("test recipe is valid");
    cfg
}

pub fn options(out: &Path, max_steps: usize, resume: bool) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        device: Device::Cpu,
        max_steps: Some(max_steps),
        progress: false,
    }
}

pub fn log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Per-step log lines (no events).
pub fn step_lines(dir: &Path) -> Vec<Value> {
    log(dir)
        .into_iter()
        .filter(|v| v.get("event").is_none())
        .collect()
}

pub fn field(lines: &[Value], key: &str) -> Vec<f64> {
    lines.iter().map(|v| v[key].as_f64().unwrap()).collect()
}

pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

/// max |a − b| over two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Every element as f64, row-major.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a − b| / max |b| (relative to the tensor's scale, so tiny entries do not dominate).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}
