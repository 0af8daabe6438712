//! Loading the safetensors goldens and comparing arrays.

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub struct Golden {
    st: SafeTensors<'static>,
    pub meta: Value,
    pub name: String,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/goldens")
            .join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run tests/reference/detection_reference.py)",
                path.display()
            )
        });
        // the goldens live for the whole test run
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let (_, md) = SafeTensors::read_metadata(bytes).expect("safetensors header");
        let meta = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get("meta"))
            .map(|s| serde_json::from_str(s).expect("meta json"))
            .unwrap_or(Value::Null);
        let st = SafeTensors::deserialize(bytes).expect("safetensors");
        Golden {
            st,
            meta,
            name: name.to_string(),
        }
    }

    /// Every tensor name, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.st.names().into_iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.view(key).shape().to_vec()
    }

    fn view(&self, key: &str) -> safetensors::tensor::TensorView<'_> {
        self.st
            .tensor(key)
            .unwrap_or_else(|_| panic!("{}: no tensor {key}", self.name))
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        let v = self.view(key);
        assert_eq!(v.dtype(), Dtype::F32, "{key} is not f32");
        v.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    pub fn i64s(&self, key: &str) -> Vec<i64> {
        let v = self.view(key);
        match v.dtype() {
            Dtype::I64 => v
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I32 => v
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U8 => v.data().iter().map(|&b| b as i64).collect(),
            d => panic!("{key}: unexpected dtype {d:?}"),
        }
    }

    pub fn usizes(&self, key: &str) -> Vec<usize> {
        self.i64s(key).into_iter().map(|v| v as usize).collect()
    }

    pub fn bools(&self, key: &str) -> Vec<bool> {
        let v = self.view(key);
        assert_eq!(v.dtype(), Dtype::U8, "{key} is not u8");
        v.data().iter().map(|&b| b != 0).collect()
    }

    pub fn u8s(&self, key: &str) -> Vec<u8> {
        let v = self.view(key);
        assert_eq!(v.dtype(), Dtype::U8, "{key} is not u8");
        v.data().to_vec()
    }

    pub fn boxes(&self, key: &str) -> Vec<[f32; 4]> {
        self.f32s(key)
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect()
    }

    pub fn rows5(&self, key: &str) -> Vec<[f32; 5]> {
        self.f32s(key)
            .chunks_exact(5)
            .map(|c| [c[0], c[1], c[2], c[3], c[4]])
            .collect()
    }
}

/// `max |a − b| / max |b|` (0 when both are all zero); panics on a length mismatch or NaN mismatch.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        assert_eq!(x.is_nan(), y.is_nan(), "NaN mismatch: {x} vs {y}");
        if x.is_nan() {
            continue;
        }
        num = num.max((x as f64 - y as f64).abs());
        den = den.max((y as f64).abs());
    }
    if num == 0.0 {
        0.0
    } else {
        num / den.max(f64::MIN_POSITIVE)
    }
}

/// Asserts and reports `rel_err(a, b) <= tol`.
pub fn check(what: &str, a: &[f32], b: &[f32], tol: f64) -> f64 {
    let e = rel_err(a, b);
    println!("{what}: rel err {e:.3e} (n = {})", b.len());
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
    e
}

pub fn flat4(v: &[[f32; 4]]) -> Vec<f32> {
    v.iter().flat_map(|b| b.iter().copied()).collect()
}

pub fn flat5(v: &[[f32; 5]]) -> Vec<f32> {
    v.iter().flat_map(|b| b.iter().copied()).collect()
}

pub fn meta_usize(v: &Value) -> usize {
    v.as_u64().expect("unsigned integer") as usize
}

pub fn meta_pair(v: &Value) -> (usize, usize) {
    (meta_usize(&v[0]), meta_usize(&v[1]))
}

/// The relative tolerance for floats (log/exp/sqrt may differ by an ulp between libm and torch).
pub const TOL: f64 = 1e-5;
