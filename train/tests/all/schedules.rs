//! Schedules against BEiT's numpy `cosine_scheduler`, timm's `CosineLRScheduler` as the DeiT loop
//! steps it, and mmcv's poly / step hooks with linear warm-up (tests/reference/train_reference.py).

use train::schedule::{cosine_scheduler, mmcv_poly, mmcv_step, timm_cosine_epochs, LinearWarmup};

use crate::common::{f64s, golden, usize_of};

fn assert_close(ours: &[f64], theirs: &[f64], rel: f64, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= rel * b.abs().max(1e-300),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

fn warmup(c: &serde_json::Value) -> Option<LinearWarmup> {
    let iters = usize_of(&c["warmup_iters"]);
    (iters > 0).then(|| LinearWarmup {
        iters,
        ratio: c["ratio"].as_f64().unwrap(),
    })
}

#[test]
fn beit_cosine_matches_numpy() {
    let g = golden("schedules.json");
    for c in g["beit_cosine"].as_array().unwrap() {
        let f = |k: &str| c[k].as_f64().unwrap();
        let u = |k: &str| usize_of(&c[k]);
        let ours = cosine_scheduler(
            f("base"),
            f("final"),
            u("epochs"),
            u("iters"),
            u("warmup"),
            f("start"),
        );
        assert_close(&ours, &f64s(&c["values"]), 1e-12, "beit cosine");
    }
}

#[test]
fn timm_cosine_per_epoch_matches_timm() {
    let g = golden("schedules.json");
    for c in g["timm_epochs"].as_array().unwrap() {
        let f = |k: &str| c[k].as_f64().unwrap();
        let ours = timm_cosine_epochs(
            f("base"),
            f("min"),
            usize_of(&c["epochs"]),
            usize_of(&c["warmup"]),
            f("warmup_lr"),
        );
        assert_close(&ours, &f64s(&c["values"]), 1e-12, "timm cosine");
    }
}

#[test]
fn mmcv_poly_and_step_match_the_hooks() {
    let g = golden("schedules.json");
    for c in g["mmcv_poly"].as_array().unwrap() {
        let f = |k: &str| c[k].as_f64().unwrap();
        let ours = mmcv_poly(
            f("base"),
            f("min"),
            f("power"),
            usize_of(&c["max_iters"]),
            warmup(c),
        );
        assert_close(&ours, &f64s(&c["values"]), 1e-12, "mmcv poly");
    }
    for c in g["mmcv_step"].as_array().unwrap() {
        let f = |k: &str| c[k].as_f64().unwrap();
        let steps: Vec<usize> = c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .collect();
        let ours = mmcv_step(
            f("base"),
            f("gamma"),
            &steps,
            usize_of(&c["epochs"]),
            usize_of(&c["iters"]),
            warmup(c),
        );
        assert_close(&ours, &f64s(&c["values"]), 1e-12, "mmcv step");
    }
}
