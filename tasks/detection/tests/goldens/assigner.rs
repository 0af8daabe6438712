//! `MaxIoUAssigner` (thresholds, low-quality matches, `gt_max_assign_all`, ties, ignore regions,
//! empty inputs) vs mmdet 2.11.

use detection::assigner::{MaxIoUAssigner, NegThr};
use serde_json::Value;

use crate::util::{check, Golden};

fn assigner_of(c: &Value) -> MaxIoUAssigner {
    let f = |k: &str, d: f64| c.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
    let neg = match &c["neg_iou_thr"] {
        Value::Array(v) => {
            NegThr::Range(v[0].as_f64().unwrap() as f32, v[1].as_f64().unwrap() as f32)
        }
        v => NegThr::Below(v.as_f64().unwrap() as f32),
    };
    MaxIoUAssigner {
        pos_iou_thr: f("pos_iou_thr", 0.0),
        neg_iou_thr: neg,
        min_pos_iou: f("min_pos_iou", 0.0),
        gt_max_assign_all: c
            .get("gt_max_assign_all")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        ignore_iof_thr: f("ignore_iof_thr", -1.0),
        ignore_wrt_candidates: c
            .get("ignore_wrt_candidates")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        match_low_quality: c
            .get("match_low_quality")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    }
}

#[test]
fn every_case_matches_exactly() {
    let g = Golden::load("assigner");
    for c in g.meta["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let a = assigner_of(c);
        let bboxes = g.boxes(c["bboxes"].as_str().unwrap());
        let gts = g.boxes(c["gts"].as_str().unwrap());
        let labels = c["labels"].as_str().map(|k| g.i64s(k));
        let ignore = c["ignore"].as_str().map(|k| g.boxes(k)).unwrap_or_default();
        let r = a.assign(&bboxes, &gts, &ignore, labels.as_deref());
        assert_eq!(
            r.gt_inds,
            g.i64s(&format!("{name}.gt_inds")),
            "{name}: gt_inds"
        );
        check(
            &format!("assigner {name} max_overlaps"),
            &r.max_overlaps,
            &g.f32s(&format!("{name}.max_overlaps")),
            0.0,
        );
        if labels.is_some() {
            assert_eq!(
                r.labels.unwrap(),
                g.i64s(&format!("{name}.assigned_labels")),
                "{name}: labels"
            );
        }
        println!(
            "assigner {name}: {} positives, {} negatives, {} ignored",
            r.gt_inds.iter().filter(|&&v| v > 0).count(),
            r.gt_inds.iter().filter(|&&v| v == 0).count(),
            r.gt_inds.iter().filter(|&&v| v < 0).count()
        );
    }
}
