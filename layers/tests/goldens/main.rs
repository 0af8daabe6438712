//! Goldens for every op of `layers` against PyTorch (`tests/reference/layers_reference.py`):
//! forward outputs and gradients (inputs and parameters, fixed random upstream gradient), relative
//! error max|Δ|/max|ref| ≤ 1e-5 in f32. One module per source file. With `--features cuda` the
//! same checks run on GPU 0.

mod conv;
mod conv_module;
mod deconv;
mod dropout;
mod losses;
mod norm;
mod pool;
mod resize;

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{DType, Device, Result, Tensor, Var};
use serde_json::Value;

/// The relative-error bound of every golden comparison.
pub const TOL: f64 = 1e-5;

pub struct Goldens {
    tensors: HashMap<String, Tensor>,
    index: Value,
}

pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::new_cuda(0).expect("cuda device 0")
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::Cpu
    }
}

pub fn goldens() -> &'static Goldens {
    static G: OnceLock<Goldens> = OnceLock::new();
    G.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens");
        let tensors =
            candle_core::safetensors::load(format!("{dir}/layers.safetensors"), &Device::Cpu)
                .expect("layers.safetensors (run tests/reference/layers_reference.py)");
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/index.json")).unwrap())
                .unwrap();
        Goldens { tensors, index }
    })
}

/// Golden tensor `<case>.<name>` on the test device.
pub fn t(case: &str, name: &str) -> Tensor {
    goldens()
        .tensors
        .get(&format!("{case}.{name}"))
        .unwrap_or_else(|| panic!("golden {case}.{name} missing"))
        .to_device(&device())
        .unwrap()
}

/// A trainable copy of golden `<case>.<name>`.
pub fn v(case: &str, name: &str) -> Var {
    Var::from_tensor(&t(case, name)).unwrap()
}

/// The JSON description of a case.
pub fn params(case: &str) -> &'static Value {
    &goldens().index["cases"][case]
}

/// Names of all cases of `op`, sorted.
pub fn cases(op: &str) -> Vec<String> {
    let mut v: Vec<String> = goldens().index["cases"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c["op"] == op)
        .map(|(k, _)| k.clone())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no golden cases for op {op}");
    v
}

pub fn usize_param(case: &str, key: &str) -> usize {
    params(case)[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{case}: {key}")) as usize
}

pub fn pair_param(case: &str, key: &str) -> (usize, usize) {
    let a = params(case)[key].as_array().unwrap();
    (
        a[0].as_u64().unwrap() as usize,
        a[1].as_u64().unwrap() as usize,
    )
}

/// Asserts rel_err(got, golden `<case>.<name>`) ≤ TOL and prints it (`--nocapture` shows the
/// measured values).
pub fn check(case: &str, name: &str, got: &Tensor) -> f64 {
    let want = t(case, name);
    let got = got.to_dtype(want.dtype()).unwrap();
    let err = layers::testing::rel_err(&got, &want).unwrap();
    println!("rel_err {case:<32} {name:<22} {err:.2e}");
    assert!(
        err <= TOL,
        "{case}.{name}: relative error {err:.3e} > {TOL:e}"
    );
    err
}

/// `Σ y·g` for the golden upstream gradient `g`.
pub fn weighted_sum(case: &str, y: &Tensor) -> Result<Tensor> {
    (y * t(case, "g").reshape(y.shape())?)?.sum_all()
}

pub fn grad(grads: &candle_core::backprop::GradStore, v: &Var) -> Tensor {
    grads.get(v.as_tensor()).expect("gradient missing").clone()
}

#[allow(dead_code)]
pub fn scalar_f64(x: &Tensor) -> f64 {
    x.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}
