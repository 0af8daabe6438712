//! COCO evaluation against pycocotools goldens, and bad-input errors.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use metrics::coco::{evaluate_files, CocoOptions, IouType};
use serde_json::{json, Value};

fn write_json(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
    path
}

#[test]
fn stats_and_per_category_ap_match_pycocotools() {
    let g = golden("coco.json");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in cases(&g) {
        let name = case["name"].as_str().unwrap();
        let gt = write_json(dir.path(), "gt.json", &case["gt"]);
        for result in case["results"].as_array().unwrap() {
            let iou_type: IouType = result["iou_type"].as_str().unwrap().parse().unwrap();
            let dt = write_json(
                dir.path(),
                "dt.json",
                &case[format!("dt_{iou_type}").as_str()],
            );
            let options = CocoOptions {
                iou_type,
                max_dets: u64s(&result["max_dets"])
                    .iter()
                    .map(|&v| v as usize)
                    .collect(),
            };
            let what = format!("{name} {iou_type} maxDets {:?}", options.max_dets);
            let summary =
                evaluate_files(&gt, &dt, &options).unwrap_or_else(|e| panic!("{what}: {e}"));
            // Bit-identical to pycocotools.
            assert_eq!(summary.stats.to_vec(), f64s(&result["stats"]), "{what}");
            let want: Vec<(u64, f64)> = result["per_category"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                .collect();
            let got: Vec<(u64, f64)> = summary
                .per_category
                .iter()
                .map(|c| (c.category_id, c.ap))
                .collect();
            assert_eq!(got, want, "{what}: per-category AP");
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} golden evaluations");
}

#[test]
fn reference_hand_checked_case() {
    // evaluation-reference.md B.7: inclusive area bound, crowd-absorbed detection ignored,
    // false positive in a category without ground truth not penalised, AR@1 = 0.
    let dir = tempfile::tempdir().unwrap();
    let g = golden("coco.json");
    let case = cases(&g)
        .iter()
        .find(|c| c["name"] == "b7_hand_checked")
        .unwrap();
    let gt = write_json(dir.path(), "gt.json", &case["gt"]);
    let dt = write_json(dir.path(), "dt.json", &case["dt_bbox"]);
    let s = evaluate_files(&gt, &dt, &CocoOptions::new(IouType::Bbox)).unwrap();
    let rounded: Vec<f64> = s.stats.iter().map(|v| (v * 1e6).round() / 1e6).collect();
    assert_eq!(
        rounded,
        vec![0.851485, 1.0, 1.0, 1.0, 0.851485, -1.0, 0.0, 0.85, 0.85, 1.0, 0.85, -1.0]
    );
}

fn tiny_gt() -> Value {
    json!({
        "images": [{"id": 1, "height": 20, "width": 30}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
                          "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}]
    })
}

fn error_for(dt: Value, iou_type: IouType) -> String {
    let dir = tempfile::tempdir().unwrap();
    let gt = write_json(dir.path(), "gt.json", &tiny_gt());
    let dt = write_json(dir.path(), "dt.json", &dt);
    match evaluate_files(&gt, &dt, &CocoOptions::new(iou_type)) {
        Ok(s) => panic!("no error for {dt:?}: {:?}", s.stats),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_detections_are_errors_naming_the_record() {
    let ok = json!({"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5});
    let e = error_for(
        json!([ok, {"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}]),
        IouType::Bbox,
    );
    assert!(
        e.contains("detection #1") && e.contains("image_id 9"),
        "{e}"
    );
    let e = error_for(
        json!([ok, ok, {"image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5], "score": 0.5}]),
        IouType::Bbox,
    );
    assert!(
        e.contains("detection #2") && e.contains("category_id 4"),
        "{e}"
    );
    let e = error_for(
        json!([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]),
        IouType::Bbox,
    );
    assert!(e.contains("detection #0") && e.contains("no score"), "{e}");
    let e = error_for(
        json!([{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": {"size": [20, 31], "counts": "0`9"}}]),
        IouType::Segm,
    );
    assert!(e.contains("detection #0") && e.contains("20x31"), "{e}");
    let e = error_for(
        json!([{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": {"size": [20, 30], "counts": "05"}}]),
        IouType::Segm,
    );
    assert!(e.contains("detection #0") && e.contains("RLE"), "{e}");
    let e = error_for(json!({"not": "a list"}), IouType::Bbox);
    assert!(e.contains("dt.json"), "{e}");
}

#[test]
fn malformed_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("gt.json");
    std::fs::write(&gt, b"{\"images\": [").unwrap();
    let dt = write_json(dir.path(), "dt.json", &json!([]));
    let e = evaluate_files(&gt, &dt, &CocoOptions::new(IouType::Bbox))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gt.json"), "{e}");
    let gt = write_json(dir.path(), "gt.json", &tiny_gt());
    std::fs::write(&dt, b"[{\"image_id\": 1,").unwrap();
    let e = evaluate_files(&gt, &dt, &CocoOptions::new(IouType::Bbox))
        .unwrap_err()
        .to_string();
    assert!(e.contains("dt.json"), "{e}");
    let options = CocoOptions {
        iou_type: IouType::Bbox,
        max_dets: vec![10, 100],
    };
    let dt = write_json(dir.path(), "dt.json", &json!([]));
    assert!(evaluate_files(&gt, &dt, &options).is_err());
}
