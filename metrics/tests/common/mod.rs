//! Shared helpers for the golden tests (goldens written by tests/reference/metrics_goldens.py).

#![allow(dead_code)]

use serde_json::Value;

pub fn golden(name: &str) -> Value {
    let path = format!("{}/tests/goldens/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn cases(golden: &Value) -> &Vec<Value> {
    golden["cases"].as_array().expect("cases array")
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

pub fn i64s(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}

pub fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("uint"))
        .collect()
}

/// Golden floats (JSON null = NaN) equal within `rel` relative difference; NaN matches NaN.
pub fn assert_close(what: &str, got: f64, want: f64, rel: f64) {
    if want.is_nan() || got.is_nan() {
        assert!(
            want.is_nan() && got.is_nan(),
            "{what}: got {got}, want {want}"
        );
        return;
    }
    let tol = rel * want.abs().max(f64::MIN_POSITIVE);
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:?}, want {want:?}"
    );
}

pub fn opt_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}
