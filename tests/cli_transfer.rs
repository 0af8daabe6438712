//! `ibot eval finetune` and `ibot eval segment` end to end on tiny generated data: the JSON they
//! promise, the files they write, resuming, clear errors, and segmentation predictions that
//! `ibot metrics segmentation` scores to the same numbers.

mod common;

use common::*;

const TINY_FINETUNE: &str = r#"name = "tiny"
mode = "full"
[model]
input_size = 40
drop_path = 0.1
[optim]
epochs = 3
batch_size = 4
lr = 1e-3
warmup_epochs = 1
layer_decay = 0.75
[run]
eval_batch_size = 16
"#;

fn finetune_setup(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ckpt = dir.join("vit.safetensors");
    save_random_vit(&ckpt, &tiny_vit(32, 64), 1);
    write_image_folder(&dir.join("train"), 4, 1);
    write_image_folder(&dir.join("val"), 2, 2);
    let data = dir.join("data.toml");
    write_data_config(&data, "train", "val");
    let recipe = dir.join("tiny.toml");
    std::fs::write(&recipe, TINY_FINETUNE).unwrap();
    (ckpt, data, recipe)
}

#[test]
fn finetune_dry_run_prints_beit_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, data, recipe) = finetune_setup(dir.path());
    let out = ok_stdout(&[
        "eval",
        "finetune",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--recipe",
        s(&recipe),
        "--dry-run",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    let get = |n: &str| {
        rows.iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    // Depth 2, decay 0.75: layer ids 0 (embeddings), 1..=2 (blocks), 3 (norm, head).
    assert_eq!(get("pos_embed")["lr_scale"], 0.75f64.powi(3));
    assert_eq!(get("pos_embed")["weight_decay"], 0.0);
    assert_eq!(get("blocks.1.mlp.fc1.weight")["lr_scale"], 0.75);
    assert_eq!(get("blocks.1.mlp.fc1.weight")["weight_decay"], 0.05);
    assert_eq!(get("blocks.1.mlp.fc1.bias")["weight_decay"], 0.0);
    assert_eq!(get("head.weight")["lr_scale"], 1.0);
    assert_eq!(rows.len(), 4 + 12 * 2 + 2 + 2);
}

#[test]
fn finetune_writes_results_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, data, recipe) = finetune_setup(dir.path());
    let args = |out: &std::path::Path, extra: &[&str]| -> Vec<String> {
        let mut a = strings(&[
            "eval",
            "finetune",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--recipe",
            s(&recipe),
            "--quiet",
            "--out",
            s(out),
        ]);
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    };
    let whole = dir.path().join("whole");
    run_ok(&args(&whole, &[]));
    let r = result(&whole);
    for key in ["top1", "top5", "max_top1", "best_epoch", "epochs"] {
        assert!(
            r["finetune"].get(key).is_some(),
            "finetune.{key} missing: {r}"
        );
    }
    assert_eq!(r["finetune"]["epochs"], 3);
    let preds = std::fs::read_to_string(whole.join("predictions.txt")).unwrap();
    assert_eq!(preds.lines().count(), 6, "{r}");
    assert!(whole.join("model.safetensors").is_file() && whole.join("log.jsonl").is_file());

    // Stopped after 2 steps, then the same command again: it continues to the same model.
    let parts = dir.path().join("parts");
    run_ok(&args(&parts, &["--max-steps", "2"]));
    run_ok(&args(&parts, &[]));
    assert_eq!(
        std::fs::read_to_string(parts.join("predictions.txt")).unwrap(),
        preds
    );
    assert_eq!(
        std::fs::read(parts.join("model.safetensors")).unwrap(),
        std::fs::read(whole.join("model.safetensors")).unwrap()
    );
}

#[test]
fn small_inputs_follow_the_official_no_resize_path() {
    // At ≤ 32 px the official eval transform does not resize: 40×36 images are an error that names
    // the size, not an empty evaluation.
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, data, recipe) = finetune_setup(dir.path());
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("input_size = 40", "input_size = 32");
    std::fs::write(&recipe, text).unwrap();
    let err = failure(&[
        "eval",
        "finetune",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--recipe",
        s(&recipe),
        "--quiet",
        "--out",
        s(&dir.path().join("o")),
    ]);
    assert!(err.contains("needs 32x32 images, got 40x36"), "{err}");
}

#[test]
fn semisup_needs_the_projection_head() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, data, recipe) = finetune_setup(dir.path());
    let err = failure(&[
        "eval",
        "finetune",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--recipe",
        s(&recipe),
        "--mode",
        "semisup",
        "--percent",
        "50",
        "--out",
        s(&dir.path().join("o")),
    ]);
    assert!(
        err.contains("head") && err.contains("vit.safetensors"),
        "{err}"
    );
}

#[test]
fn segment_predictions_reproduce_the_scores() {
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("synth");
    run_ok(&[
        "data",
        "synth",
        "--out",
        s(&synth),
        "--images",
        "12",
        "--size",
        "32",
        "--seed",
        "4",
    ]);
    let ckpt = dir.path().join("vit.safetensors");
    save_random_vit(&ckpt, &common::tiny_vit(32, 64), 2);
    let data = dir.path().join("ade.toml");
    std::fs::write(
        &data,
        format!(
            "name = \"synth\"\nformat = \"ade20k\"\nroot = \"{}\"\nnum_classes = 8\n",
            s(&synth.join("ade"))
        ),
    )
    .unwrap();
    let recipe = dir.path().join("seg.toml");
    std::fs::write(
        &recipe,
        "name = \"tiny\"\nhead = \"linear\"\n[model]\nout_indices = [0, 1]\n[optim]\niters = 6\nbatch_size = 2\nlr = 1e-3\nwarmup_iters = 2\n\
         [pipeline]\nimg_scale = [256, 64]\ncrop_size = [32, 32]\ntest_scale = [256, 64]\nslide_crop = [32, 32]\nslide_stride = [21, 21]\n",
    )
    .unwrap();
    let out = dir.path().join("seg");
    run_ok(&[
        "eval",
        "segment",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--head",
        "linear",
        "--recipe",
        s(&recipe),
        "--quiet",
        "--images",
        "2",
        "--out",
        s(&out),
    ]);
    let r = result(&out);
    let seg = &r["segmentation"];
    assert_eq!(seg["per_class"].as_array().unwrap().len(), 8);
    for key in ["mIoU", "mAcc", "aAcc"] {
        assert!(seg[key].is_number(), "{key}: {r}");
    }
    let m = ok_json(&[
        "metrics",
        "segmentation",
        "--gt-dir",
        s(&synth.join("ade/annotations/validation")),
        "--pred-dir",
        s(&out.join("pred")),
        "--num-classes",
        "8",
        "--reduce-zero-label",
        "--json",
    ]);
    assert_eq!(m["mIoU"], seg["mIoU"]);
    assert_eq!(m["aAcc"], seg["aAcc"]);
    assert_eq!(r["images"].as_array().unwrap().len(), 2);
    // A head the recipe is not for is refused.
    let err = failure(&[
        "eval",
        "segment",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--head",
        "upernet",
        "--recipe",
        s(&recipe),
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(err.contains("linear"), "{err}");
}

/// Generated COCO scenes (16 train, 4 val, 64 px), a depth-4 random ViT and their data config.
fn detection_setup(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    run_ok(&[
        "data",
        "synth",
        "--out",
        s(&dir.join("scenes")),
        "--images",
        "16",
        "--size",
        "32",
    ]);
    let data = dir.join("coco.toml");
    std::fs::write(
        &data,
        "name = \"scenes\"\nformat = \"coco\"\nroot = \"scenes/coco\"\ntrain_split = \"train\"\nval_split = \"val\"\n",
    )
    .unwrap();
    let ckpt = dir.join("vit4.safetensors");
    let mut vit = tiny_vit(32, 64);
    vit.depth = 4;
    save_random_vit(&ckpt, &vit, 2);
    (ckpt, data)
}

#[test]
fn detect_writes_coco_results_that_pycocotools_semantics_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, data) = detection_setup(dir.path());
    let args = |out: &std::path::Path, iters: &str| -> Vec<String> {
        strings(&[
            "eval",
            "detect",
            "--checkpoint",
            s(&ckpt),
            "--data",
            s(&data),
            "--recipe",
            "demo",
            "--iters",
            iters,
            "--images",
            "2",
            "--quiet",
            "--out",
            s(out),
        ])
    };
    let whole = dir.path().join("whole");
    run_ok(&args(&whole, "3"));
    let r = result(&whole);
    for kind in ["bbox", "segm"] {
        for stat in [
            "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
        ] {
            assert!(
                r["detection"][kind][stat].is_number(),
                "detection.{kind}.{stat}: {r}"
            );
        }
    }
    assert_eq!(r["training"]["steps"], 3);
    assert!(r["config"].is_object() && r["manifest"].is_object());
    assert_eq!(r["images"].as_array().unwrap().len(), 2);
    assert!(whole
        .join(r["images"][0]["file"].as_str().unwrap())
        .is_file());

    // detections.json: COCO results with the GT's category ids, and the metrics CLI on it gives
    // result.json's numbers.
    let dets: serde_json::Value = read_json(&whole.join("detections.json"));
    let gt = dir
        .path()
        .join("scenes/coco/annotations/instances_val.json");
    let gt_json = read_json(&gt);
    let cat_ids: Vec<u64> = gt_json["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    for d in dets.as_array().unwrap() {
        assert!(cat_ids.contains(&d["category_id"].as_u64().unwrap()), "{d}");
        assert_eq!(d["bbox"].as_array().unwrap().len(), 4);
        assert!(d["segmentation"]["counts"].is_string() && d["score"].is_number());
    }
    for kind in ["bbox", "segm"] {
        let m = ok_json(&[
            "metrics",
            "coco",
            "--gt",
            s(&gt),
            "--dt",
            s(&whole.join("detections.json")),
            "--iou-type",
            kind,
            "--json",
        ]);
        for stat in ["AP", "AP50", "AR100"] {
            let (a, b) = (
                m[stat].as_f64().unwrap_or(f64::NAN),
                r["detection"][kind][stat].as_f64().unwrap(),
            );
            assert!(
                (a - b).abs() < 1e-12,
                "{kind} {stat}: metrics {a} vs result {b}: {m}"
            );
        }
    }

    // Stopped after 1 step, then continued to 3: the same detections as the straight run.
    let parts = dir.path().join("parts");
    run_ok(&args(&parts, "1"));
    run_ok(&args(&parts, "3"));
    assert_eq!(
        std::fs::read(parts.join("detections.json")).unwrap(),
        std::fs::read(whole.join("detections.json")).unwrap()
    );
}

#[test]
fn detect_rejects_a_bad_data_config() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, data) = detection_setup(dir.path());
    let text = std::fs::read_to_string(&data).unwrap() + "shuffle = true\n";
    std::fs::write(&data, text).unwrap();
    let err = failure(&[
        "eval",
        "detect",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data),
        "--recipe",
        "demo",
        "--out",
        s(&dir.path().join("o")),
    ]);
    assert!(
        err.contains("coco.toml") && err.contains("shuffle"),
        "{err}"
    );
}
