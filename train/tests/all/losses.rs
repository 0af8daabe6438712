//! Classification losses against timm/torch (values and gradients, float64 references).

use candle_core::{Device, Tensor, Var};
use train::loss::{label_smoothing_cross_entropy, soft_target_cross_entropy};

use crate::common::{f64s, golden};

fn matrix(v: &serde_json::Value) -> (Vec<f32>, usize, usize) {
    let rows = v.as_array().unwrap();
    let cols = rows[0].as_array().unwrap().len();
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| f64s(r))
        .map(|x| x as f32)
        .collect();
    (flat, rows.len(), cols)
}

fn check(loss: &Tensor, x: &Var, case: &serde_json::Value) {
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    let want = case["loss"].as_f64().unwrap();
    assert!(
        (got - want).abs() <= 2e-6 * want.abs(),
        "loss {got} vs {want}"
    );
    let grads = loss.backward().unwrap();
    let g: Vec<f32> = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (want, _, _) = matrix(&case["grad"]);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in g.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * scale, "grad {a} vs {b}");
    }
}

#[test]
fn soft_target_and_label_smoothing_match_timm() {
    let g = golden("losses.json");
    let dev = Device::Cpu;
    let c = &g["soft_target"];
    let (x, r, k) = matrix(&c["logits"]);
    let (t, _, _) = matrix(&c["targets"]);
    let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (r, k), &dev).unwrap()).unwrap();
    let tt = Tensor::from_vec(t, (r, k), &dev).unwrap();
    check(
        &soft_target_cross_entropy(xv.as_tensor(), &tt).unwrap(),
        &xv,
        c,
    );
    for key in ["label_smoothing_0.0", "label_smoothing_0.1"] {
        let c = &g[key];
        let labels: Vec<u32> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (r, k), &dev).unwrap()).unwrap();
        let loss = label_smoothing_cross_entropy(
            xv.as_tensor(),
            &labels,
            c["smoothing"].as_f64().unwrap(),
        )
        .unwrap();
        check(&loss, &xv, c);
    }
}
