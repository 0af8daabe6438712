//! The RLE mask API against pycocotools.mask goldens.

mod common;

use common::*;
use metrics::mask;
use serde_json::Value;

fn dims(case: &Value) -> (u32, u32) {
    (
        case["h"].as_u64().unwrap() as u32,
        case["w"].as_u64().unwrap() as u32,
    )
}

fn rle(s: &Value, h: u32, w: u32) -> mask::Rle {
    mask::from_string(s.as_str().unwrap(), h, w).unwrap()
}

fn polygon(v: &Value) -> Vec<f64> {
    f64s(v)
}

#[test]
fn mask_api_matches_pycocotools() {
    let g = golden("rle.json");
    let mut kinds = std::collections::BTreeMap::new();
    for (i, case) in cases(&g).iter().enumerate() {
        let (h, w) = dims(case);
        let kind = case["kind"].as_str().unwrap();
        *kinds.entry(kind).or_insert(0) += 1;
        match kind {
            "encode" => {
                let counts: Vec<u32> = u64s(&case["counts"]).iter().map(|&c| c as u32).collect();
                let from_runs = mask::from_counts(counts.clone(), h, w).unwrap();
                let pixels = mask::decode(&from_runs);
                let encoded = mask::encode(&pixels, h, w).unwrap();
                assert_eq!(encoded, from_runs, "case {i}: encode(decode(runs))");
                assert_eq!(
                    mask::to_string(&encoded),
                    case["string"].as_str().unwrap(),
                    "case {i}"
                );
                let parsed = rle(&case["string"], h, w);
                assert_eq!(parsed.counts, counts, "case {i}: string round trip");
                assert_eq!(
                    mask::area(&parsed),
                    case["area"].as_u64().unwrap(),
                    "case {i}"
                );
                assert_eq!(
                    mask::to_bbox(&parsed).to_vec(),
                    f64s(&case["bbox"]),
                    "case {i}"
                );
            }
            "merge" => {
                let inputs: Vec<mask::Rle> = case["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| rle(s, h, w))
                    .collect();
                let merged = mask::merge(&inputs, case["intersect"].as_bool().unwrap()).unwrap();
                assert_eq!(
                    mask::to_string(&merged),
                    case["string"].as_str().unwrap(),
                    "case {i}"
                );
            }
            "polygons" => {
                let polys: Vec<Vec<f64>> = case["polygons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(polygon)
                    .collect();
                for (p, want) in polys.iter().zip(case["each"].as_array().unwrap()) {
                    let got = mask::from_polygon(p, h, w).unwrap();
                    assert_eq!(
                        mask::to_string(&got),
                        want.as_str().unwrap(),
                        "case {i}: frPoly"
                    );
                }
                let merged = mask::from_polygons(&polys, h, w).unwrap();
                assert_eq!(
                    mask::to_string(&merged),
                    case["string"].as_str().unwrap(),
                    "case {i}"
                );
                assert_eq!(
                    mask::area(&merged),
                    case["area"].as_u64().unwrap(),
                    "case {i}"
                );
            }
            "bbox" => {
                let b = f64s(&case["bbox"]);
                let got = mask::from_bbox(&[b[0], b[1], b[2], b[3]], h, w).unwrap();
                assert_eq!(
                    mask::to_string(&got),
                    case["string"].as_str().unwrap(),
                    "case {i}"
                );
            }
            "iou" => {
                let boxes = |v: &Value| -> Vec<[f64; 4]> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|b| {
                            let b = f64s(b);
                            [b[0], b[1], b[2], b[3]]
                        })
                        .collect()
                };
                let crowd: Vec<bool> = u64s(&case["iscrowd"]).iter().map(|&c| c == 1).collect();
                let (dt, gt) = (boxes(&case["dt_boxes"]), boxes(&case["gt_boxes"]));
                let want_box: Vec<Vec<f64>> = case["box_iou"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(f64s)
                    .collect();
                let want_mask: Vec<Vec<f64>> = case["mask_iou"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(f64s)
                    .collect();
                if dt.is_empty() || gt.is_empty() {
                    continue;
                }
                assert_eq!(
                    mask::box_iou(&dt, &gt, &crowd).unwrap(),
                    want_box,
                    "case {i}: box IoU"
                );
                let masks = |v: &Value| -> Vec<mask::Rle> {
                    v.as_array().unwrap().iter().map(|s| rle(s, h, w)).collect()
                };
                let got =
                    mask::mask_iou(&masks(&case["dt_masks"]), &masks(&case["gt_masks"]), &crowd)
                        .unwrap();
                assert_eq!(got, want_mask, "case {i}: mask IoU");
            }
            other => panic!("unknown golden kind {other}"),
        }
    }
    assert!(
        kinds.values().all(|&n| n >= 10),
        "too few cases per kind: {kinds:?}"
    );
}

#[test]
fn size_mismatch_is_an_error() {
    let a = mask::encode(&[1, 0, 0, 1], 2, 2).unwrap();
    let b = mask::encode(&[1, 0, 0, 1, 1, 1], 2, 3).unwrap();
    assert!(mask::mask_iou(&[a.clone()], &[b.clone()], &[false]).is_err());
    assert!(mask::merge(&[a, b], false).is_err());
}
