//! Seeded synthetic inputs at realistic scale, for the metrics benchmarks (`ibot bench …`).
//!
//! The COCO case is shaped like COCO val2017: 5,000 images of 480–640 px sides, ~7.3 ground-truth
//! objects per image over 80 categories (polygons, some crowd RLE), and a fixed number of
//! detections per image — jittered copies of the objects plus background boxes — with masks as
//! compressed RLE, so bbox and segm evaluation read the same files the Python tools read.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};

use crate::coco::{CompressedRle, Detection};
use crate::{mask, Result};

/// A generated COCO evaluation case.
pub struct CocoCase {
    /// Ground-truth dataset JSON (images, categories, annotations with polygons).
    pub ground_truth: Value,
    pub bbox_detections: Vec<Detection>,
    pub segm_detections: Vec<Detection>,
}

/// Summary counts of a case.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CocoCaseSize {
    pub images: usize,
    pub ground_truth: usize,
    pub detections: usize,
}

impl CocoCase {
    pub fn size(&self) -> CocoCaseSize {
        CocoCaseSize {
            images: self.ground_truth["images"].as_array().map_or(0, Vec::len),
            ground_truth: self.ground_truth["annotations"]
                .as_array()
                .map_or(0, Vec::len),
            detections: self.bbox_detections.len(),
        }
    }
}

fn polygon_in_box(rng: &mut ChaCha8Rng, b: [f64; 4]) -> Vec<f64> {
    let (cx, cy) = (b[0] + b[2] / 2.0, b[1] + b[3] / 2.0);
    let k = rng.gen_range(5..12);
    let mut angles: Vec<f64> = (0..k)
        .map(|_| rng.gen_range(0.0..std::f64::consts::TAU))
        .collect();
    angles.sort_by(f64::total_cmp);
    angles
        .iter()
        .flat_map(|&a| {
            let s = rng.gen_range(0.6..1.0);
            [
                round2(cx + s * b[2] / 2.0 * a.cos()),
                round2(cy + s * b[3] / 2.0 * a.sin()),
            ]
        })
        .collect()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn random_box(rng: &mut ChaCha8Rng, h: f64, w: f64) -> [f64; 4] {
    // Log-uniform side lengths: plenty of small, medium and large objects.
    let bw = (rng.gen_range(2.0f64.ln()..(w * 0.9).ln())).exp();
    let bh = (bw * rng.gen_range(0.5..2.0)).min(h * 0.95);
    [
        round2(rng.gen_range(0.0..w - bw)),
        round2(rng.gen_range(0.0..(h - bh).max(0.5))),
        round2(bw),
        round2(bh),
    ]
}

/// A COCO-val-shaped case: `images` images, `dets_per_image` detections each.
pub fn coco_case(images: usize, dets_per_image: usize, seed: u64) -> Result<CocoCase> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let categories: Vec<Value> = (1..=80)
        .map(|id| json!({"id": id, "name": format!("category_{id}"), "supercategory": "thing"}))
        .collect();
    let mut image_records = Vec::with_capacity(images);
    let mut annotations = Vec::new();
    let mut bbox_detections = Vec::with_capacity(images * dets_per_image);
    let mut segm_detections = Vec::with_capacity(images * dets_per_image);
    let mut ann_id = 1u64;
    for i in 0..images {
        let image_id = i as u64 + 1;
        let (h, w) = if rng.gen_bool(0.5) {
            (480u32, 640u32)
        } else {
            (rng.gen_range(400..=640), rng.gen_range(400..=640))
        };
        image_records.push(json!({"id": image_id, "height": h, "width": w, "file_name": format!("{image_id:012}.jpg")}));
        let n_gt = rng.gen_range(0..=14usize);
        let mut objects = Vec::with_capacity(n_gt);
        for _ in 0..n_gt {
            let category = rng.gen_range(1..=80u64);
            let b = random_box(&mut rng, h as f64, w as f64);
            let poly = polygon_in_box(&mut rng, b);
            let rle = mask::from_polygon(&poly, h, w)?;
            let crowd = rng.gen_bool(0.01);
            let segmentation = if crowd {
                json!({"size": [h, w], "counts": rle.counts})
            } else {
                json!([poly])
            };
            annotations.push(json!({
                "id": ann_id, "image_id": image_id, "category_id": category, "bbox": b,
                "area": mask::area(&rle) as f64, "iscrowd": crowd as u8, "segmentation": segmentation,
            }));
            ann_id += 1;
            objects.push((category, b, poly));
        }
        for d in 0..dets_per_image {
            let (category, b, poly) = if !objects.is_empty() && d < objects.len() * 3 {
                // Near an object: jittered box and mask, sometimes the wrong class.
                let (c, b, poly) = &objects[d % objects.len()];
                let s = rng.gen_range(0.0..0.2);
                let jb = [
                    round2(b[0] + rng.gen_range(-s..=s) * b[2]),
                    round2(b[1] + rng.gen_range(-s..=s) * b[3]),
                    round2(b[2] * rng.gen_range(1.0 - s..=1.0 + s)),
                    round2(b[3] * rng.gen_range(1.0 - s..=1.0 + s)),
                ];
                let moved: Vec<f64> = poly
                    .chunks_exact(2)
                    .flat_map(|p| {
                        [
                            round2(jb[0] + (p[0] - b[0]) * jb[2] / b[2]),
                            round2(jb[1] + (p[1] - b[1]) * jb[3] / b[3]),
                        ]
                    })
                    .collect();
                let c = if rng.gen_bool(0.9) {
                    *c
                } else {
                    rng.gen_range(1..=80)
                };
                (c, jb, moved)
            } else {
                let b = random_box(&mut rng, h as f64, w as f64);
                (rng.gen_range(1..=80), b, polygon_in_box(&mut rng, b))
            };
            // Three-decimal scores: realistic, and full of exact ties.
            let score = (rng.gen_range(0.0..1.0f64) * 1000.0).round() / 1000.0;
            let rle = mask::from_polygon(&poly, h, w)?;
            bbox_detections.push(Detection {
                image_id,
                category_id: category,
                bbox: Some(b),
                segmentation: None,
                score,
            });
            segm_detections.push(Detection {
                image_id,
                category_id: category,
                bbox: None,
                segmentation: Some(CompressedRle::from(&rle)),
                score,
            });
        }
    }
    Ok(CocoCase {
        ground_truth: json!({
            "info": {"description": "synthetic COCO-val-sized benchmark case"},
            "images": image_records,
            "annotations": annotations,
            "categories": categories,
        }),
        bbox_detections,
        segm_detections,
    })
}

/// Blocky label maps (rectangles of classes over a background), `u8`, row-major.
pub fn label_maps(
    count: usize,
    height: usize,
    width: usize,
    num_classes: u8,
    seed: u64,
) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut m = vec![rng.gen_range(0..num_classes); height * width];
            for _ in 0..rng.gen_range(5..30) {
                let (y0, x0) = (rng.gen_range(0..height), rng.gen_range(0..width));
                let (y1, x1) = (rng.gen_range(y0..height) + 1, rng.gen_range(x0..width) + 1);
                let class = if rng.gen_bool(0.05) {
                    255
                } else {
                    rng.gen_range(0..num_classes)
                };
                for y in y0..y1 {
                    m[y * width + x0..y * width + x1].fill(class);
                }
            }
            m
        })
        .collect()
}

/// A noisy clustering of `n` samples over `classes` classes into `clusters` clusters.
pub fn cluster_labels(n: usize, classes: i64, clusters: i64, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let truth: Vec<i64> = (0..n).map(|_| rng.gen_range(0..classes)).collect();
    let pred = truth
        .iter()
        .map(|&t| {
            if rng.gen_bool(0.7) {
                (t * 7919 + 13) % clusters
            } else {
                rng.gen_range(0..clusters)
            }
        })
        .collect();
    (truth, pred)
}
