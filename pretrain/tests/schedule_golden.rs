//! Schedules equal numpy's `utils.cosine_scheduler` and iBOTLoss's temperature arrays
//! (tests/reference/pretrain_reference.py) to 1e-12.

use pretrain::schedule::{cosine_scheduler, teacher_temp_schedule};
use serde_json::Value;

fn goldens() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedules.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Returns the largest absolute difference (printed by the tests; 0 means bit-identical).
fn assert_close(ours: &[f64], theirs: &[f64], what: &str) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!((a - b).abs() <= 1e-12, "{what}[{i}]: {a} vs {b}");
        worst = worst.max((a - b).abs());
    }
    worst
}

#[test]
fn cosine_scheduler_matches_numpy() {
    let g = goldens();
    let cases = g["cosine"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let mut worst = 0f64;
    for c in cases {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let f = |k: &str| c[k].as_f64().unwrap();
        let ours = cosine_scheduler(
            f("base"),
            f("final"),
            u("epochs"),
            u("iters"),
            u("warmup"),
            f("start"),
        );
        worst = worst.max(assert_close(
            &ours,
            &floats(&c["values"]),
            &format!("cosine {c}"),
        ));
    }
    eprintln!("cosine_scheduler: largest difference {worst:e}");
}

#[test]
fn teacher_temperatures_match_ibot_loss() {
    let g = goldens();
    let mut worst = 0f64;
    for c in g["teacher_temp"].as_array().unwrap() {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let f = |k: &str| c[k].as_f64().unwrap();
        let cls = teacher_temp_schedule(f("warm"), f("temp"), u("warmup"), u("epochs"), 0);
        worst = worst.max(assert_close(&cls, &floats(&c["cls"]), "cls temperature"));
        let patch =
            teacher_temp_schedule(f("warm2"), f("temp2"), u("warmup"), u("epochs"), u("start"));
        worst = worst.max(assert_close(
            &patch,
            &floats(&c["patch"]),
            "patch temperature",
        ));
    }
    eprintln!("teacher temperatures: largest difference {worst:e}");
}
