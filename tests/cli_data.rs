//! End-to-end tests of `ibot data …` and `ibot bench loader` through the real binary.

mod common;

use std::path::Path;

use common::ibot;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "ibot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn synth(dir: &Path, seed: &str) -> serde_json::Value {
    let d = dir.to_str().unwrap();
    json(&ibot(&[
        "data", "synth", "--out", d, "--seed", seed, "--images", "16", "--size", "64",
    ]))
}

#[test]
fn synth_writes_the_documented_layout_deterministically() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let summary = synth(a.path(), "5");
    synth(b.path(), "5");
    assert_eq!(summary["classification"][0], 16);
    for rel in [
        "classification/train/disc",
        "classification/val/star",
        "coco/train",
        "coco/val",
        "ade/images/training",
        "ade/annotations/validation",
    ] {
        assert!(a.path().join(rel).is_dir(), "missing {rel}");
    }
    for rel in [
        "coco/annotations/instances_train.json",
        "coco/annotations/instances_val.json",
        "ade/annotations/training/ADE_train_00000001.png",
        "classification/train/disc/000000.png",
    ] {
        let (x, y) = (a.path().join(rel), b.path().join(rel));
        assert_eq!(
            std::fs::read(&x).unwrap(),
            std::fs::read(&y).unwrap(),
            "{rel} differs between runs"
        );
    }
    let coco: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.path().join("coco/annotations/instances_train.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(coco["images"].as_array().unwrap().len(), 16);
    assert_eq!(coco["categories"].as_array().unwrap().len(), 8);
    assert!(!coco["annotations"].as_array().unwrap().is_empty());
}

#[test]
fn split_writes_a_reproducible_balanced_file_list() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), "1");
    let root = dir.path().join("classification/train");
    let list = dir.path().join("two.txt");
    let args = [
        "data",
        "split",
        "--root",
        root.to_str().unwrap(),
        "--fraction",
        "2-per-class",
        "--seed",
        "3",
        "--out",
        list.to_str().unwrap(),
    ];
    let report = json(&ibot(&args));
    assert_eq!(report["selected"], 16);
    let first = std::fs::read_to_string(&list).unwrap();
    json(&ibot(&args));
    assert_eq!(first, std::fs::read_to_string(&list).unwrap());
    assert_eq!(first.lines().count(), 16);
    let line = first.lines().next().unwrap();
    let (path, label) = line.rsplit_once(' ').unwrap();
    assert!(root.join(path).is_file(), "{line}");
    assert!(label.parse::<usize>().unwrap() < 8);
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = ibot(&[
        "data",
        "split",
        "--root",
        dir.path().join("nope").to_str().unwrap(),
        "--fraction",
        "1%",
        "--out",
        dir.path().join("x.txt").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("not a directory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = ibot(&[
        "data",
        "split",
        "--root",
        ".",
        "--fraction",
        "0%",
        "--out",
        "x",
    ]);
    assert!(!out.status.success());
}

#[test]
fn bench_loader_reports_throughput_as_json() {
    let report = json(&ibot(&[
        "bench",
        "loader",
        "--images",
        "8",
        "--source-size",
        "96",
        "--size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "1",
    ]));
    assert_eq!(report["images"], 8);
    assert!(report["images_per_s"].as_f64().unwrap() > 0.0);
}
