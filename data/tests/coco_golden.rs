//! COCO masks against pycocotools: RLE encode/decode (compressed and uncompressed), polygon
//! rasterisation, area and bbox, and the synthetic COCO set's annotations as `COCO.annToRLE`
//! reads them. Goldens come from tests/reference/data_coco.py; every comparison is exact.

use std::path::PathBuf;

use data::coco::{CocoDataset, OrphanPolicy};
use data::rle::Rle;
use data::synth::{generate, SynthConfig};
use serde_json::Value;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/coco_masks.json");
    serde_json::from_slice(&std::fs::read(&path).expect("read coco_masks.json")).unwrap()
}

fn u32_of(v: &Value) -> u32 {
    v.as_u64().unwrap() as u32
}

fn bbox_of(v: &Value) -> [f64; 4] {
    let b: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    [b[0], b[1], b[2], b[3]]
}

fn assert_stats(name: &str, rle: &Rle, case: &Value) {
    assert_eq!(
        rle.to_compressed(),
        case["compressed"].as_str().unwrap(),
        "{name}: compressed string"
    );
    assert_eq!(rle.area(), case["area"].as_u64().unwrap(), "{name}: area");
    assert_eq!(rle.bbox(), bbox_of(&case["bbox"]), "{name}: bbox");
}

#[test]
fn rle_codec_and_polygons_match_pycocotools() {
    let g = golden();
    let cases = g["cases"].as_array().unwrap();
    let (mut masks, mut polygons) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (h, w) = (u32_of(&case["height"]), u32_of(&case["width"]));
        let compressed = case["compressed"].as_str().unwrap();
        match case["kind"].as_str().unwrap() {
            "mask" => {
                masks += 1;
                let counts: Vec<u32> = case["counts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(u32_of)
                    .collect();
                let uncompressed = Rle {
                    height: h,
                    width: w,
                    counts,
                };
                let decoded = Rle::from_compressed(compressed, h, w).unwrap();
                assert_eq!(decoded, uncompressed, "{name}: decoded counts");
                assert_stats(name, &uncompressed, case);
                let mask = decoded.to_mask().unwrap();
                assert_eq!(
                    Rle::from_mask(&mask, h, w),
                    uncompressed,
                    "{name}: re-encode"
                );
            }
            "polygon" => {
                polygons += 1;
                let parts: Vec<Rle> = case["polygons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        let xy: Vec<f64> = p
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_f64().unwrap())
                            .collect();
                        Rle::from_polygon(&xy, h, w)
                    })
                    .collect();
                assert_stats(name, &Rle::union(&parts).unwrap(), case);
            }
            other => panic!("unknown case kind {other}"),
        }
    }
    assert!(
        masks >= 20 && polygons >= 10,
        "{masks} masks, {polygons} polygons"
    );
}

#[test]
fn synthetic_coco_annotations_match_pycocotools() {
    let g = golden();
    let cfg = &g["synth_config"];
    let config = SynthConfig {
        seed: cfg["seed"].as_u64().unwrap(),
        images: cfg["images"].as_u64().unwrap() as usize,
        size: u32_of(&cfg["size"]),
    };
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &config).unwrap();
    let split = cfg["split"].as_str().unwrap();
    let json = dir
        .path()
        .join(format!("coco/annotations/instances_{split}.json"));
    let coco = CocoDataset::load(&json, OrphanPolicy::Error)
        .unwrap()
        .dataset;
    let expected = g["synth"].as_array().unwrap();
    assert_eq!(
        coco.annotations.len(),
        expected.len(),
        "the generator's output changed; if on purpose, rerun tests/reference/data_coco.py"
    );
    for (ann, case) in coco.annotations.iter().zip(expected) {
        let name = format!("annotation {}", ann.id);
        assert_eq!(ann.id, case["id"].as_u64().unwrap(), "{name}: id order");
        assert_eq!(ann.iscrowd as u64, case["iscrowd"].as_u64().unwrap());
        let image = coco.images.iter().find(|i| i.id == ann.image_id).unwrap();
        let rle = ann.rle(image.height, image.width).unwrap();
        // pycocotools' string is of the decoded mask re-encoded: a canonical form.
        let canonical = Rle::from_mask(&rle.to_mask().unwrap(), image.height, image.width);
        assert_stats(&name, &canonical, case);
        assert_eq!(
            rle.area(),
            canonical.area(),
            "{name}: area before re-encoding"
        );
        // What the generator stored is what pycocotools recomputes.
        assert_eq!(
            ann.area,
            case["area"].as_f64().unwrap(),
            "{name}: stored area"
        );
        assert_eq!(ann.bbox, bbox_of(&case["bbox"]), "{name}: stored bbox");
    }
    let forms: std::collections::BTreeSet<&str> = expected
        .iter()
        .map(|c| c["form"].as_str().unwrap())
        .collect();
    assert_eq!(
        forms.len(),
        3,
        "polygon, compressed and uncompressed RLE all covered"
    );
}
