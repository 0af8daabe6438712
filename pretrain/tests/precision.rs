//! Mixed precision (bf16 GEMMs, f32 master weights and f32 LayerNorm/softmax/loss): a bf16 step
//! stays close to the f32 step on the same batch and weights, every trainable parameter receives
//! a finite, non-zero f32 gradient through the bf16 casts, and the run records what it used.

mod common;

use std::collections::HashMap;

use backbone::head::{init_head_weights, IbotHead};
use backbone::{TrainCtx, VisionTransformer};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use pretrain::trainer::Trainer;
use rand::SeedableRng;
use train::device::compute_dtype;

#[test]
fn precision_resolves_per_device() {
    assert_eq!(compute_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
    assert_eq!(compute_dtype("f32", &Device::Cpu).unwrap(), DType::F32);
    assert_eq!(compute_dtype("bf16", &Device::Cpu).unwrap(), DType::BF16);
    assert!(compute_dtype("fp16", &Device::Cpu).is_err());
}

#[test]
fn bf16_steps_track_f32_steps_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 3;
    let mut losses = HashMap::new();
    for precision in ["f32", "bf16", "auto"] {
        let out = dir.path().join(precision);
        let summary = Trainer::new(recipe(8, precision), options(&out, steps, false))
            .unwrap()
            .run()
            .unwrap();
        let used = if precision == "bf16" { "bf16" } else { "f32" };
        assert_eq!(summary.precision, used);
        let on_disk: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(on_disk["precision"], used);
        let start = log(&out)
            .into_iter()
            .find(|v| v["event"] == "run_start")
            .expect("a run_start event");
        assert_eq!(start["precision"], used);
        assert_eq!(start["world_size"], 1);
        let lines = step_lines(&out);
        assert_eq!(lines.len(), steps);
        losses.insert(precision, field(&lines, "loss"));
    }
    // `auto` on the CPU is the f32 run, bit for bit.
    assert_eq!(losses["auto"], losses["f32"]);
    let (f32_losses, bf16_losses) = (&losses["f32"], &losses["bf16"]);
    // Step 0 has the same weights and batch: only the GEMM rounding differs. bf16 keeps 8
    // significant bits and the teacher's 0.04 temperature magnifies logit errors (measured: 4e-4).
    let d0 = rel_diff(f32_losses[0], bf16_losses[0]);
    assert!(bf16_losses.iter().all(|l| l.is_finite()));
    assert!(
        d0 < 5e-3,
        "step 0: f32 {} vs bf16 {}",
        f32_losses[0],
        bf16_losses[0]
    );
    assert!(
        d0 > 0.0,
        "bf16 run gave the f32 loss exactly: bf16 GEMMs were not used"
    );
    for (a, b) in f32_losses.iter().zip(bf16_losses) {
        assert!(rel_diff(*a, *b) < 2e-2, "f32 {a} vs bf16 {b}");
    }
    eprintln!("f32 {f32_losses:?}\nbf16 {bf16_losses:?}");
}

/// Student network with f32 Vars built the way the trainer builds it.
fn student(compute: DType) -> (VarMap, VisionTransformer, IbotHead) {
    let cfg = recipe(4, "f32");
    let vit = cfg.student_vit().unwrap();
    let head = cfg.student_head().unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (k, v) in backbone::init::init_weights(&vit, 3).unwrap() {
            data.insert(format!("backbone.{k}"), Var::from_tensor(&v).unwrap());
        }
        for (k, v) in init_head_weights(&head, 4).unwrap() {
            data.insert(format!("head.{k}"), Var::from_tensor(&v).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let backbone = VisionTransformer::new(&vit, vb.pp("backbone"))
        .unwrap()
        .with_compute_dtype(compute);
    let head = IbotHead::new(&head, vb.pp("head"))
        .unwrap()
        .with_compute_dtype(compute);
    (varmap, backbone, head)
}

/// A loss that depends on every parameter: CE of CLS and patch logits against fixed targets.
fn grads(compute: DType) -> HashMap<String, Tensor> {
    let (varmap, backbone, head) = student(compute);
    let dev = Device::Cpu;
    // The same inputs for both precisions (candle's own randn is not seeded).
    let mut data_rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut uniform = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rand::Rng::gen_range(&mut data_rng, -1.0..1.0))
            .collect()
    };
    let images = Tensor::from_vec(uniform(2 * 3 * 32 * 32), (2, 3, 32, 32), &dev).unwrap();
    let target = (Tensor::from_vec(uniform(64), (1, 64), &dev).unwrap() + 1.0).unwrap();
    let mut mask = vec![0f32; 2 * 16];
    mask[3] = 1.0;
    mask[20] = 1.0;
    let mask = Tensor::from_vec(mask, (2, 16), &dev).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut ctx = TrainCtx { rng: &mut rng };
    let tokens = backbone
        .forward_tokens(&images, Some(&mask), Some(&mut ctx))
        .unwrap();
    let (cls, patch) = head.forward(&tokens).unwrap();
    assert_eq!(cls.dtype(), DType::F32, "logits come back in f32");
    let log_p = |x: &Tensor| candle_nn::ops::log_softmax(&(x * 10.0).unwrap(), D::Minus1).unwrap();
    let loss = (log_p(&cls)
        .broadcast_mul(&target)
        .unwrap()
        .mean_all()
        .unwrap()
        + log_p(&patch)
            .broadcast_mul(&target.unsqueeze(0).unwrap())
            .unwrap()
            .mean_all()
            .unwrap())
    .unwrap()
    .neg()
    .unwrap();
    let store = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            let g = store
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{k} received no gradient"))
                .clone();
            (k.clone(), g)
        })
        .collect()
}

fn sum(t: &Tensor) -> f64 {
    t.sum_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn norm(t: &Tensor) -> f64 {
    sum(&t.sqr().unwrap()).sqrt()
}

#[test]
fn bf16_gradients_are_f32_finite_nonzero_and_close_to_f32() {
    let reference = grads(DType::F32);
    let mixed = grads(DType::BF16);
    assert_eq!(reference.len(), mixed.len());
    let mut worst = (String::new(), 1.0f64);
    for (name, g) in &mixed {
        assert_eq!(
            g.dtype(),
            DType::F32,
            "{name}: gradient of an f32 Var must be f32"
        );
        let n = norm(g);
        assert!(n.is_finite() && n > 0.0, "{name}: gradient norm {n}");
        let r = &reference[name];
        let cos = sum(&(g * r).unwrap()) / (n * norm(r));
        if cos < worst.1 {
            worst = (name.clone(), cos);
        }
    }
    eprintln!(
        "lowest gradient cosine bf16 vs f32: {} ({})",
        worst.1, worst.0
    );
    assert!(
        worst.1 > 0.98,
        "bf16 gradient of {} points elsewhere than f32 (cosine {})",
        worst.0,
        worst.1
    );
}
