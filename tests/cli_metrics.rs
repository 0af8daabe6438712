//! End-to-end tests of `ibot metrics …` and `ibot bench` metrics commands against the reference
//! goldens in metrics/tests/goldens (written by tests/reference/metrics_goldens.py).

mod common;

use std::path::{Path, PathBuf};

use common::{failure, ibot, ok_json, s};

use serde_json::{json, Value};

/// `ibot metrics coco --gt GT --dt DT --iou-type bbox`, then `extra`.
fn coco_bbox(gt: &Path, dt: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = common::strings(&[
        "metrics",
        "coco",
        "--gt",
        s(gt),
        "--dt",
        s(dt),
        "--iou-type",
        "bbox",
    ]);
    args.extend(extra.iter().map(|e| e.to_string()));
    args
}

fn golden(name: &str) -> Value {
    let path = format!(
        "{}/metrics/tests/goldens/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn write_json(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
    path
}

fn nan_or(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

#[test]
fn coco_json_matches_pycocotools_goldens() {
    let g = golden("coco.json");
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    ];
    let mut checked = 0;
    for case in g["cases"].as_array().unwrap() {
        let gt = write_json(dir.path(), "gt.json", &case["gt"]);
        for result in case["results"].as_array().unwrap() {
            let iou_type = result["iou_type"].as_str().unwrap();
            let dt = write_json(
                dir.path(),
                "dt.json",
                &case[format!("dt_{iou_type}").as_str()],
            );
            let max_dets: Vec<String> = result["max_dets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect();
            let max_dets = max_dets.join(",");
            let out = ok_json(&[
                "metrics",
                "coco",
                "--gt",
                s(&gt),
                "--dt",
                s(&dt),
                "--iou-type",
                iou_type,
                "--max-dets",
                &max_dets,
                "--json",
            ]);
            let what = format!("{} {iou_type} {max_dets}", case["name"]);
            assert_eq!(out["stats"], result["stats"], "{what}");
            for (i, name) in names.iter().enumerate() {
                assert_eq!(out[*name], result["stats"][i], "{what} {name}");
            }
            let per_cat: Vec<Value> = out["per_category"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| json!([c["category_id"], c["AP"]]))
                .collect();
            assert_eq!(Value::from(per_cat), result["per_category"], "{what}");
            checked += 1;
        }
    }
    assert!(checked >= 60);
}

#[test]
fn coco_table_prints_percentages_and_bad_input_names_the_record() {
    let g = golden("coco.json");
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "b7_hand_checked")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gt = write_json(dir.path(), "gt.json", &case["gt"]);
    let dt = write_json(dir.path(), "dt.json", &case["dt_bbox"]);
    let out = ibot(&coco_bbox(&gt, &dt, &[]));
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("85.15"), "{table}"); // AP 0.851485 as a percentage
    assert!(!table.contains("0.851"), "{table}");

    let mut bad = case["dt_bbox"].clone();
    bad.as_array_mut()
        .unwrap()
        .push(json!({"image_id": 77, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.1}));
    let dt = write_json(dir.path(), "bad.json", &bad);
    let err = failure(&coco_bbox(&gt, &dt, &[]));
    assert!(
        err.contains("bad.json") && err.contains("detection #4") && err.contains("image_id 77"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("broken.json"),
        b"[{\"image_id\": 1, \"bbox\": ",
    )
    .unwrap();
    let err = failure(&coco_bbox(&gt, &dir.path().join("broken.json"), &[]));
    assert!(err.contains("broken.json"), "{err}");
    let err = failure(&coco_bbox(&gt, &dt, &["--max-dets", "10,100"]));
    assert!(err.contains("maxDets"), "{err}");
}

fn write_labels(dir: &Path, name: &str, labels: &Value) -> PathBuf {
    let text: String = labels
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{v}\n"))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn cluster_json_matches_scikit_learn_goldens() {
    let g = golden("cluster.json");
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in g["cases"].as_array().unwrap().iter().enumerate() {
        if case["acc"].is_null() {
            continue; // no samples
        }
        let truth = write_labels(dir.path(), "truth.txt", &case["truth"]);
        let pred = write_labels(dir.path(), "pred.txt", &case["pred"]);
        let out = ok_json(&[
            "metrics",
            "cluster",
            "--truth",
            s(&truth),
            "--pred",
            s(&pred),
            "--json",
        ]);
        assert_eq!(out["acc"], case["acc"], "case {i}");
        assert_eq!(out["ari"], case["ari"], "case {i}");
        assert_eq!(out["fmi"], case["fmi"], "case {i}");
        let (got, want) = (out["nmi"].as_f64().unwrap(), case["nmi"].as_f64().unwrap());
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "case {i}: nmi {got} vs {want}"
        );
    }
}

#[test]
fn cluster_table_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let truth = write_labels(dir.path(), "truth.txt", &json!([0, 0, 1, 2]));
    let pred = write_labels(dir.path(), "pred.txt", &json!([0, 0, 1, 1]));
    let out = ibot(&[
        "metrics",
        "cluster",
        "--truth",
        s(&truth),
        "--pred",
        s(&pred),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("75.00") && table.contains("80.00"),
        "{table}"
    );

    std::fs::write(dir.path().join("bad.txt"), "0\n1\nx\n1\n").unwrap();
    let err = failure(&[
        "metrics",
        "cluster",
        "--truth",
        s(&dir.path().join("bad.txt")),
        "--pred",
        s(&pred),
    ]);
    assert!(err.contains("bad.txt:3"), "{err}");
    let short = write_labels(dir.path(), "short.txt", &json!([0, 1]));
    let err = failure(&[
        "metrics",
        "cluster",
        "--truth",
        s(&truth),
        "--pred",
        s(&short),
    ]);
    assert!(err.contains("short.txt"), "{err}");
}

fn save_png(path: &Path, w: u32, h: u32, values: &[u64], bit_depth: u64) {
    if bit_depth == 16 {
        let buf: Vec<u16> = values.iter().map(|&v| v as u16).collect();
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, buf)
            .unwrap()
            .save(path)
            .unwrap();
    } else {
        let buf: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        image::GrayImage::from_raw(w, h, buf)
            .unwrap()
            .save(path)
            .unwrap();
    }
}

#[test]
fn segmentation_json_matches_mmseg_goldens() {
    let g = golden("segmentation.json");
    for (i, case) in g["cases"].as_array().unwrap().iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (gt_dir, pred_dir) = (dir.path().join("gt"), dir.path().join("pred"));
        std::fs::create_dir_all(&gt_dir).unwrap();
        std::fs::create_dir_all(&pred_dir).unwrap();
        let depth = case["bit_depth"].as_u64().unwrap();
        for (j, img) in case["images"].as_array().unwrap().iter().enumerate() {
            let (h, w) = (
                img["shape"][0].as_u64().unwrap() as u32,
                img["shape"][1].as_u64().unwrap() as u32,
            );
            let vals = |v: &Value| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect::<Vec<_>>()
            };
            save_png(
                &gt_dir.join(format!("img_{j}.png")),
                w,
                h,
                &vals(&img["gt"]),
                depth,
            );
            save_png(
                &pred_dir.join(format!("img_{j}.png")),
                w,
                h,
                &vals(&img["pred"]),
                depth,
            );
        }
        let classes = case["num_classes"].to_string();
        let mut args = vec![
            "metrics",
            "segmentation",
            "--gt-dir",
            s(&gt_dir),
            "--pred-dir",
            s(&pred_dir),
            "--num-classes",
            &classes,
            "--json",
        ];
        if case["reduce_zero_label"].as_bool().unwrap() {
            args.push("--reduce-zero-label");
            // The goldens' predictions are class indices (mmseg's in-memory convention).
            args.push("--pred-space");
            args.push("reduced");
        }
        let out = ok_json(&args);
        for key in ["aAcc", "mAcc", "mIoU"] {
            assert!(
                same(nan_or(&out[key]), nan_or(&case[key])),
                "case {i} {key}: {} vs {}",
                out[key],
                case[key]
            );
        }
        let per_class = out["per_class"].as_array().unwrap();
        assert_eq!(per_class.len(), case["iou"].as_array().unwrap().len());
        for (c, pc) in per_class.iter().enumerate() {
            assert!(
                same(nan_or(&pc["IoU"]), nan_or(&case["iou"][c])),
                "case {i} IoU[{c}]"
            );
            assert!(
                same(nan_or(&pc["Acc"]), nan_or(&case["acc"][c])),
                "case {i} Acc[{c}]"
            );
        }
    }
}

#[test]
fn segmentation_table_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (gt_dir, pred_dir) = (dir.path().join("gt"), dir.path().join("pred"));
    std::fs::create_dir_all(&gt_dir).unwrap();
    std::fs::create_dir_all(&pred_dir).unwrap();
    save_png(&gt_dir.join("a.png"), 2, 2, &[0, 0, 1, 1], 8);
    save_png(&pred_dir.join("a.png"), 2, 2, &[0, 1, 1, 1], 8);
    let args = [
        "metrics",
        "segmentation",
        "--gt-dir",
        s(&gt_dir),
        "--pred-dir",
        s(&pred_dir),
        "--num-classes",
        "2",
    ];
    let out = ibot(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("75.00") && table.contains("58.33"),
        "{table}"
    ); // aAcc, mIoU = (1/2 + 2/3) / 2

    save_png(&gt_dir.join("b.png"), 3, 2, &[0; 6], 8);
    let err = failure(&args);
    assert!(
        err.contains("b.png") && err.contains("no prediction"),
        "{err}"
    );
    save_png(&pred_dir.join("b.png"), 2, 3, &[0; 6], 8);
    let err = failure(&args);
    assert!(
        err.contains("b.png") && err.contains("2x3") && err.contains("3x2"),
        "{err}"
    );
    std::fs::write(pred_dir.join("b.png"), b"not a png").unwrap();
    let err = failure(&args);
    assert!(err.contains("b.png") && err.contains("PNG"), "{err}");
}

#[test]
fn bench_commands_run_on_small_cases() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok_json(&[
        "bench",
        "coco",
        "--images",
        "12",
        "--dets-per-image",
        "20",
        "--out-dir",
        s(dir.path()),
    ]);
    assert_eq!(out["case"]["images"], 12);
    assert_eq!(out["case"]["detections"], 240);
    for iou_type in ["bbox", "segm"] {
        assert!(out["results"][iou_type]["seconds"].as_f64().unwrap() > 0.0);
        let ap = out["results"][iou_type]["stats"][0].as_f64().unwrap();
        assert!(ap > 0.0 && ap < 1.0, "{iou_type} AP {ap}");
        assert!(dir.path().join(format!("dt_{iou_type}.json")).exists());
    }
    // The files it wrote are valid input for `ibot metrics coco`, with the same numbers.
    let again = ok_json(&[
        "metrics",
        "coco",
        "--gt",
        s(&dir.path().join("gt.json")),
        "--dt",
        s(&dir.path().join("dt_segm.json")),
        "--iou-type",
        "segm",
        "--json",
    ]);
    assert_eq!(again["stats"], out["results"]["segm"]["stats"]);

    let out = ok_json(&[
        "bench",
        "cluster",
        "--samples",
        "5000",
        "--classes",
        "20",
        "--clusters",
        "25",
        "--repeat",
        "1",
    ]);
    assert!(out["acc"].as_f64().unwrap() > 0.5);
    let out = ok_json(&[
        "bench",
        "segmentation",
        "--images",
        "4",
        "--height",
        "32",
        "--width",
        "40",
        "--repeat",
        "1",
    ]);
    assert!(out["mIoU"].as_f64().unwrap() >= 0.0);
}
