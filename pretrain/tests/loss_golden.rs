//! iBOTLoss parity with the torch transcription in tests/reference/pretrain_reference.py: loss,
//! CLS/MIM terms, centres after every step and d loss / d student logits, over consecutive
//! steps and epochs (temperature warm-up, held patch temperature, empty and full masks, G=2 with
//! and without local crops, separate patch prototypes).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var, D};
use common::{rel_err, values};
use pretrain::collective::SingleProcess;
use pretrain::loss::{IbotLoss, LossConfig};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("loss_goldens.safetensors"), &Device::Cpu).unwrap()
}

fn cases() -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(fixture("loss_cases.json")).unwrap()).unwrap()
}

fn config(case: &Value) -> LossConfig {
    let f = |k: &str| case[k].as_f64().unwrap();
    let u = |k: &str| case[k].as_u64().unwrap() as usize;
    LossConfig {
        out_dim: u("K"),
        patch_out_dim: u("Kp"),
        global_crops: u("G"),
        local_crops: u("L"),
        student_temp: 0.1,
        center_momentum: case
            .get("center_momentum")
            .and_then(Value::as_f64)
            .unwrap_or(0.9),
        center_momentum2: case
            .get("center_momentum2")
            .and_then(Value::as_f64)
            .unwrap_or(0.9),
        lambda1: f("lambda1"),
        lambda2: f("lambda2"),
        warmup_teacher_temp: f("warm"),
        teacher_temp: f("temp"),
        warmup_teacher_patch_temp: f("warm2"),
        teacher_patch_temp: f("temp2"),
        warmup_teacher_temp_epochs: u("warmup"),
        epochs: u("epochs"),
        pred_start_epoch: u("start"),
    }
}

#[test]
fn loss_centres_and_gradients_match_torch_over_consecutive_steps() {
    let g = goldens();
    let mut worst = [0f64; 4]; // loss terms, centres, grads, before-centres
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let cfg = config(&case);
        let mut loss = IbotLoss::new(&cfg, &Device::Cpu).unwrap();
        for (step, epoch) in case["step_epochs"].as_array().unwrap().iter().enumerate() {
            let epoch = epoch.as_u64().unwrap() as usize;
            let p = |k: &str| g[&format!("{name}.{step}.{k}")].clone();
            // The centres carried from the previous step are the reference's.
            let e = rel_err(loss.center(), &p("center_before"))
                .max(rel_err(loss.center2(), &p("center2_before")));
            worst[3] = worst[3].max(e);
            let s_cls = Var::from_tensor(&p("s_cls")).unwrap();
            let s_patch = Var::from_tensor(&p("s_patch")).unwrap();
            let s_local = (cfg.local_crops > 0).then(|| Var::from_tensor(&p("s_local")).unwrap());
            let out = loss
                .forward(
                    s_cls.as_tensor(),
                    s_patch.as_tensor(),
                    s_local.as_ref().map(|v| v.as_tensor()),
                    &p("t_cls"),
                    &p("t_patch"),
                    &p("masks"),
                    epoch,
                    &SingleProcess,
                )
                .unwrap();
            assert_eq!(out.loss.dtype(), DType::F32);
            assert_eq!(out.loss.dims(), &[] as &[usize]);
            let scalar = |k: &str| values(&p(k))[0];
            for (ours, theirs) in [
                (out.loss.to_scalar::<f32>().unwrap() as f64, scalar("loss")),
                (out.cls, scalar("cls")),
                (out.patch, scalar("patch")),
            ] {
                let e = (ours - theirs).abs() / theirs.abs();
                assert!(
                    e < 1e-6,
                    "{name} step {step}: {ours} vs {theirs} (rel {e:e})"
                );
                worst[0] = worst[0].max(e);
            }
            let e =
                rel_err(loss.center(), &p("center")).max(rel_err(loss.center2(), &p("center2")));
            assert!(e < 1e-6, "{name} step {step}: centres rel err {e:e}");
            worst[1] = worst[1].max(e);
            let grads = out.loss.backward().unwrap();
            let mut pairs = vec![(&s_cls, "grad_s_cls"), (&s_patch, "grad_s_patch")];
            if let Some(v) = &s_local {
                pairs.push((v, "grad_s_local"));
            }
            for (var, key) in pairs {
                let ours = grads
                    .get(var.as_tensor())
                    .expect("gradient reaches the student logits");
                let e = rel_err(ours, &p(key));
                assert!(e < 1e-6, "{name} step {step}: {key} rel err {e:e}");
                worst[2] = worst[2].max(e);
            }
        }
    }
    eprintln!(
        "worst relative errors: loss terms {:e}, centres {:e}, gradients {:e}, carried centres {:e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

/// Empty masks contribute 0 to the MIM term but still count in the batch mean: with every mask
/// empty the patch term is exactly 0 and the patch logits get no gradient.
#[test]
fn empty_masks_give_zero_patch_loss() {
    let g = goldens();
    let case = &cases()[0];
    let cfg = config(case);
    let mut loss = IbotLoss::new(&cfg, &Device::Cpu).unwrap();
    let p = |k: &str| g[&format!("gl.0.{k}")].clone();
    let s_patch = Var::from_tensor(&p("s_patch")).unwrap();
    let out = loss
        .forward(
            &p("s_cls"),
            s_patch.as_tensor(),
            Some(&p("s_local")),
            &p("t_cls"),
            &p("t_patch"),
            &p("masks").zeros_like().unwrap(),
            0,
            &SingleProcess,
        )
        .unwrap();
    assert_eq!(out.patch, 0.0);
    assert!((out.cls - values(&p("cls"))[0]).abs() < 1e-6 * out.cls);
    let grads = out.loss.backward().unwrap();
    let gp = grads.get(s_patch.as_tensor()).unwrap();
    assert_eq!(
        gp.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

/// bf16 student logits are lifted to f32 inside; the result stays an f32 scalar close to the
/// f32 reference (the logits themselves lose precision in bf16).
#[test]
fn reduced_precision_inputs_compute_in_f32() {
    let g = goldens();
    let case = &cases()[0];
    let mut loss = IbotLoss::new(&config(case), &Device::Cpu).unwrap();
    let p = |k: &str| g[&format!("gl.0.{k}")].clone();
    let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
    let out = loss
        .forward(
            &bf(p("s_cls")),
            &bf(p("s_patch")),
            Some(&bf(p("s_local"))),
            &bf(p("t_cls")),
            &bf(p("t_patch")),
            &bf(p("masks")),
            0,
            &SingleProcess,
        )
        .unwrap();
    assert_eq!(out.loss.dtype(), DType::F32);
    assert_eq!(loss.center().dtype(), DType::F32);
    let want = values(&p("loss"))[0];
    let got = out.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 2e-2 * want, "{got} vs {want}");
}

#[test]
fn teacher_statistics_follow_their_definition() {
    let g = goldens();
    let case = &cases()[0];
    let cfg = config(case);
    let mut loss = IbotLoss::new(&cfg, &Device::Cpu).unwrap();
    assert!(loss.last_stats().is_none());
    let p = |k: &str| g[&format!("gl.0.{k}")].clone();
    loss.forward(
        &p("s_cls"),
        &p("s_patch"),
        Some(&p("s_local")),
        &p("t_cls"),
        &p("t_patch"),
        &p("masks"),
        0,
        &SingleProcess,
    )
    .unwrap();
    let stats = loss.last_stats().unwrap();
    // Plain f64 recomputation: centre 0 at step 0, teacher temperature 0.04 at epoch 0.
    let b = case["B"].as_u64().unwrap() as usize;
    let k = cfg.out_dim;
    let t = values(&p("t_cls"));
    let s = values(&p("s_cls"));
    let rows = t.len() / k;
    let mut entropy = 0.0;
    let mut marginal = vec![0.0; k];
    for r in 0..rows {
        let row = &t[r * k..(r + 1) * k];
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = row.iter().map(|v| ((v - m) / 0.04).exp()).collect();
        let z: f64 = e.iter().sum();
        for (j, v) in e.iter().enumerate() {
            let q = v / z;
            entropy -= q * q.ln();
            marginal[j] += q / rows as f64;
        }
    }
    entropy /= rows as f64;
    let marginal_entropy: f64 = -marginal.iter().map(|q| q * q.ln()).sum::<f64>();
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold(
                (0, f64::MIN),
                |a, (i, x)| if *x > a.1 { (i, *x) } else { a },
            )
            .0
    };
    let agree = (0..b)
        .filter(|&i| argmax(&t[i * k..(i + 1) * k]) == argmax(&s[(b + i) * k..(b + i + 1) * k]))
        .count() as f64
        / b as f64;
    assert!(
        (stats.entropy - entropy).abs() < 1e-5,
        "{stats:?} vs {entropy}"
    );
    assert!((stats.marginal_entropy - marginal_entropy).abs() < 1e-5);
    assert_eq!(stats.agreement, Some(agree));
    assert!(stats.entropy >= 0.0 && stats.marginal_entropy >= stats.entropy - 1e-9);
}

#[test]
fn centres_resume_and_reject_wrong_shapes() {
    let case = &cases()[1];
    let cfg = config(case);
    let dev = Device::Cpu;
    let mut loss = IbotLoss::new(&cfg, &dev).unwrap();
    assert_eq!(loss.center().dims(), &[1, cfg.out_dim]);
    assert_eq!(loss.center2().dims(), &[1, 1, cfg.patch_out_dim]);
    let c = Tensor::ones((1, cfg.out_dim), DType::F64, &dev).unwrap();
    let c2 = Tensor::ones((1, 1, cfg.patch_out_dim), DType::F32, &dev).unwrap();
    loss.set_centers(c.clone(), c2.clone()).unwrap();
    assert_eq!(loss.center().dtype(), DType::F32);
    let err = loss
        .set_centers(
            Tensor::ones((1, cfg.out_dim + 1), DType::F32, &dev).unwrap(),
            c2.clone(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("center has shape [1, 21]"), "{err}");
    let err = loss
        .set_centers(
            c.clone(),
            Tensor::ones((1, cfg.patch_out_dim), DType::F32, &dev).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("center2"), "{err}");
    // A failed set leaves the previous centres in place.
    assert_eq!(values(loss.center()), vec![1.0; cfg.out_dim]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let g = goldens();
    let case = &cases()[1];
    let cfg = config(case);
    let mut loss = IbotLoss::new(&cfg, &Device::Cpu).unwrap();
    let p = |k: &str| g[&format!("g.0.{k}")].clone();
    let run = |loss: &mut IbotLoss, masks: &Tensor, local: Option<&Tensor>, epoch: usize| {
        loss.forward(
            &p("s_cls"),
            &p("s_patch"),
            local,
            &p("t_cls"),
            &p("t_patch"),
            masks,
            epoch,
            &SingleProcess,
        )
        .err()
        .map(|e| e.to_string())
    };
    assert_eq!(run(&mut loss, &p("masks"), None, 0), None);
    let err = run(&mut loss, &p("masks"), None, cfg.epochs).unwrap();
    assert!(err.contains("past the loss schedule"), "{err}");
    let err = run(
        &mut loss,
        &p("masks").narrow(D::Minus1, 0, 2).unwrap(),
        None,
        0,
    )
    .unwrap();
    assert!(err.contains("masks has shape"), "{err}");
    let err = run(&mut loss, &p("masks"), Some(&p("s_cls")), 0).unwrap();
    assert!(err.contains("local_crops is 0"), "{err}");
    let mut bad = cfg.clone();
    bad.global_crops = 1;
    bad.local_crops = 0;
    assert!(IbotLoss::new(&bad, &Device::Cpu).is_err());
    let mut bad = cfg.clone();
    bad.teacher_temp = 0.0;
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("teacher_temp"));
    let json = serde_json::to_value(&cfg).unwrap();
    let mut obj = json.as_object().unwrap().clone();
    obj.insert("typo".into(), Value::from(1));
    assert!(serde_json::from_value::<LossConfig>(Value::Object(obj)).is_err());
}
