//! AdamW against PyTorch (tests/reference/optim_reference.py): two parameter groups, per-step lr
//! and weight decay, per-parameter clipping and the frozen last layer of epoch 0.

use candle_core::{DType, Device, Tensor, Var};
use pretrain::optim::AdamW;
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn adamw_matches_pytorch() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/optim.json"
    ))
    .unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    let dev = Device::Cpu;
    let shapes = golden["shapes"].as_object().unwrap();
    let mut vars = Vec::new();
    for (name, shape) in shapes {
        let shape: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let t = Tensor::from_vec(floats(&golden["initial"][name]), shape, &dev).unwrap();
        vars.push((name.clone(), Var::from_tensor(&t).unwrap()));
    }
    let mut opt = AdamW::new(vars.clone());
    let decays: Vec<(String, bool)> = opt.names().map(|(n, d)| (n.to_string(), d)).collect();
    for (name, decay) in &decays {
        let expect = !(name.ends_with(".bias") || name == "norm.weight");
        assert_eq!(*decay, expect, "{name}");
    }
    let clip = golden["clip"].as_f64().unwrap();
    for (i, step) in golden["steps"].as_array().unwrap().iter().enumerate() {
        // A GradStore holding exactly the reference gradients.
        let mut total = Tensor::zeros((), DType::F32, &dev).unwrap();
        for (_, v) in &vars {
            total = (total + v.as_tensor().sum_all().unwrap()).unwrap();
        }
        let mut grads = total.backward().unwrap();
        for (name, v) in &vars {
            let g = Tensor::from_vec(floats(&step["grads"][name]), v.shape(), &dev).unwrap();
            grads.insert(v.as_tensor(), g);
        }
        let frozen = step["frozen"].as_bool().unwrap();
        opt.step(
            &grads,
            step["lr"].as_f64().unwrap(),
            step["wd"].as_f64().unwrap(),
            clip,
            &|n: &str| frozen && n.contains("last_layer"),
        )
        .unwrap();
        for (name, v) in &vars {
            let got = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want = floats(&step["after"][name]);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 2e-6 * (1.0 + b.abs()),
                    "step {i} {name}: {a} vs {b}"
                );
            }
        }
    }
    // The frozen parameter took its first Adam step only after the freeze (per-parameter counts).
    let (_, steps) = opt.state();
    assert_eq!(steps["head.last_layer.weight_v"], 2);
    assert_eq!(steps["cls_token"], 4);
}
