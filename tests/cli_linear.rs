//! End-to-end tests of `ibot eval linear`: precomputed features written at test time, a tiny
//! checkpoint through the feature store, and the augmented (official) training mode.

mod common;

use std::path::Path;

use common::{failure, result, run_ok, s, write_labels, write_npy, FeatureFiles, TempCase};
use ndarray::Array2;

/// 300 train and 100 test rows of 5 clustered classes, dimension 12.
fn features_case() -> (TempCase, FeatureFiles) {
    let c = TempCase::new();
    let files = FeatureFiles::clustered(&c.dir, 1, (300, 100), 5, 12, 0.8);
    (c, files)
}

fn precomputed_args(files: &FeatureFiles, out: &Path) -> Vec<String> {
    files.args(
        "linear",
        &["--epochs", "4", "--batch-size", "64", "--out", s(out)],
    )
}

#[test]
fn precomputed_features_give_a_complete_result() {
    let (c, files) = features_case();
    let out = c.p("out");
    let stdout = common::ok_stdout(&precomputed_args(&files, &out));
    assert!(stdout.contains("val, selected head"), "{stdout}");
    assert!(stdout.contains("best on val"), "{stdout}");
    let r = result(&out);
    let l = &r["linear"];
    let top1 = l["top1"].as_f64().unwrap();
    assert!(top1 > 0.9 && top1 <= 1.0, "clustered features: {top1}");
    assert!(l["top5"].as_f64().unwrap() >= top1);
    assert_eq!(l["selected_on"], "holdout");
    for key in ["optimizer", "lr", "weight_decay", "epoch", "holdout_top1"] {
        assert!(!l["selected"][key].is_null(), "selected.{key}");
    }
    for key in [
        "top1",
        "top5",
        "optimizer",
        "lr",
        "weight_decay",
        "epoch",
        "note",
    ] {
        assert!(!l["best_on_val"][key].is_null(), "best_on_val.{key}");
    }
    assert!(l["best_on_val"]["note"]
        .as_str()
        .unwrap()
        .contains("selected on the evaluation set"));
    assert_eq!(l["sweep"].as_array().unwrap().len(), 180);
    assert_eq!(l["curves"]["epoch"].as_array().unwrap().len(), 4);
    assert_eq!(r["config"]["holdout_rows"], 30);
    assert_eq!(r["config"]["train_rows"], 270);
    assert_eq!(r["config"]["batch_size"], 64);
    assert_eq!(
        r["manifest"]["train_features"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    // The lr-only sweep, without a hold-out: 45 heads, selection labelled as made on val.
    let out2 = c.p("out2");
    let mut args2 = precomputed_args(&files, &out2);
    args2.extend(["--sweep", "lr-only", "--holdout", "0"].map(String::from));
    run_ok(&args2);
    let r2 = result(&out2);
    assert_eq!(r2["linear"]["sweep"].as_array().unwrap().len(), 45);
    assert_eq!(r2["linear"]["selected_on"], "val");
    assert_eq!(r2["linear"]["top1"], r2["linear"]["best_on_val"]["top1"]);
    assert!(r2["linear"]["selected"]["holdout_top1"].is_null());
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_file() {
    let (c, files) = features_case();
    let out = c.p("out");
    // Label count mismatch.
    write_labels(&c.p("short.txt"), &[0; 299]);
    let mut args = precomputed_args(&files, &out);
    args[5] = s(&c.p("short.txt")).to_string();
    let err = failure(&args);
    assert!(err.contains("short.txt has 299 labels"), "{err}");
    assert!(err.contains("train.npy has 300 rows"), "{err}");

    // NaN in the test features.
    let mut bad = knn::synthetic::clustered(1, 0, 5, &[0; 100], 12, 0.8);
    bad[[17, 3]] = f32::NAN;
    write_npy(&c.p("nan.npy"), &bad);
    let mut args = precomputed_args(&files, &out);
    args[7] = s(&c.p("nan.npy")).to_string();
    let err = failure(&args);
    assert!(err.contains("nan.npy: row 17 contains NaN"), "{err}");

    // Dimension mismatch.
    write_npy(&c.p("wide.npy"), &Array2::<f32>::ones((100, 13)));
    let mut args = precomputed_args(&files, &out);
    args[7] = s(&c.p("wide.npy")).to_string();
    let err = failure(&args);
    assert!(err.contains("wide.npy has feature dimension 13"), "{err}");

    // A hold-out fraction out of range.
    let mut args = precomputed_args(&files, &out);
    args.extend(["--holdout", "1.5"].map(String::from));
    let err = failure(&args);
    assert!(err.contains("hold-out fraction 1.5"), "{err}");
    assert!(!out.join("result.json").exists());
}

// ---- checkpoint modes (tiny random ViT, image folder written at test time) ----

fn checkpoint_case() -> TempCase {
    let c = TempCase::new();
    common::save_random_vit(&c.p("vit.safetensors"), &common::tiny_vit(16, 32), 5);
    common::write_image_folder(&c.p("images/train"), 8, 1);
    common::write_image_folder(&c.p("images/val"), 3, 2);
    common::write_data_config(&c.p("tiny.toml"), "images/train", "images/val");
    c
}

fn checkpoint_args(c: &TempCase, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = common::strings(&[
        "eval",
        "linear",
        "--checkpoint",
        s(&c.p("vit.safetensors")),
        "--data",
        s(&c.p("tiny.toml")),
        "--cache",
        s(&c.p("cache")),
        "--sweep",
        "lr-only",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--out",
        s(out),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn checkpoint_mode_cached_and_augmented() {
    let c = checkpoint_case();
    let cached = c.p("cached");
    run_ok(&checkpoint_args(&c, &cached, &[]));
    let r = result(&cached);
    // Embed dim 16 ≤ 384: iBOT's ViT-S layout, CLS of the last 4 blocks, here all 2 blocks.
    assert_eq!(r["config"]["dim"], 32);
    assert_eq!(r["config"]["train_rows"], 21);
    assert_eq!(r["config"]["holdout_rows"], 3);
    assert_eq!(r["config"]["val_rows"], 9);
    assert!(r["linear"]["top1"].as_f64().is_some());
    assert!(r["manifest"]["train"].is_object());

    let augmented = c.p("augmented");
    run_ok(&checkpoint_args(
        &c,
        &augmented,
        &["--augment", "--features", "cls"],
    ));
    let r = result(&augmented);
    assert_eq!(r["config"]["augment"], true);
    assert_eq!(r["config"]["dim"], 16);
    assert!(r["config"]["features"]
        .as_str()
        .unwrap()
        .contains("augmented"));
    assert_eq!(r["linear"]["curves"]["epoch"], serde_json::json!([1, 2]));
    let top1 = r["linear"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
}
