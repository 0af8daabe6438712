//! Deterministic synthetic scenes: procedural shapes with class-specific colour and texture on
//! textured backgrounds, written as an ImageFolder classification set, COCO instances (boxes,
//! polygons, RLE, crowd regions) and ADE20K-style label maps. The same seed gives byte-identical
//! files; every image has its own RNG stream, so generation parallelises without changing output.

use std::f64::consts::PI;
use std::path::Path;

use image::RgbImage;
use rand::Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::augment::{sample_rng, SampleRng};
use crate::coco::{
    CocoAnnotation, CocoCategory, CocoDataset, CocoImage, RleCounts, RleJson, Segmentation,
};
use crate::error::{DataError, Result};
use crate::image_io::{save_label_png, save_png, LabelMap};
use crate::rle::Rle;

/// Object classes: each has its own outline, hue and texture.
pub const CLASSES: [&str; 8] = [
    "disc", "square", "triangle", "diamond", "hexagon", "star", "cross", "arrow",
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthConfig {
    pub seed: u64,
    /// Training images per task (validation gets a quarter, at least one per class).
    pub images: usize,
    /// Classification image side; detection/segmentation scenes use twice this so that COCO's
    /// large-object range (> 96² px) is reachable.
    pub size: u32,
}

impl SynthConfig {
    pub fn val_images(&self) -> usize {
        (self.images / 4).max(CLASSES.len())
    }
    pub fn scene_size(&self) -> u32 {
        self.size * 2
    }
    /// Images [`generate`] writes: both splits of the three tasks.
    pub fn total_images(&self) -> usize {
        3 * (self.images + self.val_images())
    }
}

/// Counts of what was written (also saved as `synth.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthSummary {
    pub config: SynthConfig,
    pub classes: Vec<String>,
    pub classification: [usize; 2],
    pub coco_images: [usize; 2],
    pub coco_annotations: [usize; 2],
    pub coco_crowd: [usize; 2],
    pub coco_area_ranges: [usize; 3],
    pub ade_images: [usize; 2],
}

fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Outline of class `class` centred at (cx, cy) with circumradius r and rotation theta.
fn outline(class: usize, cx: f64, cy: f64, r: f64, theta: f64) -> Vec<f64> {
    let polar = |pts: &[(f64, f64)]| -> Vec<f64> {
        pts.iter()
            .flat_map(|&(a, rad)| {
                let a = a + theta;
                [cx + rad * r * a.cos(), cy + rad * r * a.sin()]
            })
            .collect()
    };
    let regular = |n: usize, phase: f64| -> Vec<(f64, f64)> {
        (0..n)
            .map(|k| (phase + 2.0 * PI * k as f64 / n as f64, 1.0))
            .collect()
    };
    let pts: Vec<(f64, f64)> = match class {
        0 => regular(24, 0.0),
        1 => regular(4, PI / 4.0),
        2 => regular(3, -PI / 2.0),
        3 => (0..4)
            .map(|k| (PI / 2.0 * k as f64, if k % 2 == 0 { 1.0 } else { 0.55 }))
            .collect(),
        4 => regular(6, 0.0),
        5 => (0..10)
            .map(|k| {
                (
                    -PI / 2.0 + PI / 5.0 * k as f64,
                    if k % 2 == 0 { 1.0 } else { 0.45 },
                )
            })
            .collect(),
        6 => {
            // A plus sign: arm half-width 0.33.
            let (a, b) = (0.33, 1.0);
            let xy = [
                (-a, -b),
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
            ];
            xy.iter()
                .map(|&(x, y)| (f64::atan2(y, x), f64::hypot(x, y) / 1.05))
                .collect()
        }
        _ => {
            let xy = [
                (1.0, 0.0),
                (0.1, 0.75),
                (0.1, 0.3),
                (-0.95, 0.3),
                (-0.95, -0.3),
                (0.1, -0.3),
                (0.1, -0.75),
            ];
            xy.iter()
                .map(|&(x, y)| (f64::atan2(y, x), f64::hypot(x, y)))
                .collect()
        }
    };
    polar(&pts)
}

/// Class-specific fill: hue from the class, texture (solid / stripes / checker / dots) from
/// the class, brightness and saturation jittered per object.
struct Fill {
    class: usize,
    base: [f64; 3],
    dark: [f64; 3],
    angle: f64,
}

impl Fill {
    fn new(class: usize, rng: &mut SampleRng) -> Fill {
        let hue = class as f64 / CLASSES.len() as f64 + rng.random_range(-0.02..0.02);
        let s = rng.random_range(0.65..1.0);
        let v = rng.random_range(0.7..1.0);
        Fill {
            class,
            base: hsv(hue, s, v),
            dark: hsv(hue, s, v * 0.45),
            angle: rng.random_range(0.0..PI),
        }
    }

    fn at(&self, x: f64, y: f64) -> [f64; 3] {
        let (c, s) = (self.angle.cos(), self.angle.sin());
        let u = x * c + y * s;
        let v = -x * s + y * c;
        let alt = match self.class % 4 {
            0 => false,
            1 => (u / 3.0).floor() as i64 % 2 == 0,
            2 => ((u / 4.0).floor() as i64 + (v / 4.0).floor() as i64) % 2 == 0,
            _ => (u.rem_euclid(6.0) - 3.0).hypot(v.rem_euclid(6.0) - 3.0) < 1.6,
        };
        if alt {
            self.dark
        } else {
            self.base
        }
    }
}

fn background(size: u32, rng: &mut SampleRng) -> Vec<[f64; 3]> {
    let base: [f64; 3] = [
        rng.random_range(0.25..0.75),
        rng.random_range(0.25..0.75),
        rng.random_range(0.25..0.75),
    ];
    let grad_dir = rng.random_range(0.0..2.0 * PI);
    let grad = rng.random_range(0.0..0.25);
    let freq = rng.random_range(0.05..0.3);
    let wave_dir = rng.random_range(0.0..PI);
    let wave = rng.random_range(0.0..0.08);
    let n = size as f64;
    let mut px = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        for x in 0..size {
            let (xf, yf) = (x as f64 / n - 0.5, y as f64 / n - 0.5);
            let g = grad * (xf * grad_dir.cos() + yf * grad_dir.sin());
            let w = wave * ((x as f64 * wave_dir.cos() + y as f64 * wave_dir.sin()) * freq).sin();
            let noise: f64 = rng.random_range(-0.03..0.03);
            px.push(base.map(|b| b + g + w + noise));
        }
    }
    px
}

fn to_image(px: &[[f64; 3]], size: u32) -> RgbImage {
    let raw: Vec<u8> = px
        .iter()
        .flat_map(|c| c.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
        .collect();
    RgbImage::from_raw(size, size, raw).expect("canvas sized from size")
}

struct Placed {
    class: usize,
    polygon: Vec<f64>,
    mask: Vec<u8>,
    crowd_group: Option<usize>,
}

fn paint(
    canvas: &mut [[f64; 3]],
    size: u32,
    class: usize,
    polygon: &[f64],
    rng: &mut SampleRng,
) -> Vec<u8> {
    let mask = Rle::from_polygon(polygon, size, size)
        .to_mask()
        .expect("polygon RLE covers the canvas");
    let fill = Fill::new(class, rng);
    for (i, &m) in mask.iter().enumerate() {
        if m != 0 {
            let (x, y) = ((i as u32 % size) as f64, (i as u32 / size) as f64);
            canvas[i] = fill.at(x, y);
        }
    }
    mask
}

/// A classification image: one dominant object of `class` and up to two small distractors.
pub fn classification_image(class: usize, size: u32, rng: &mut SampleRng) -> RgbImage {
    let mut canvas = background(size, rng);
    let n = size as f64;
    let distractors = rng.random_range(0..=2);
    for _ in 0..distractors {
        let other = (class + rng.random_range(1..CLASSES.len())) % CLASSES.len();
        let r = n * rng.random_range(0.06..0.1);
        let poly = outline(
            other,
            rng.random_range(r..n - r),
            rng.random_range(r..n - r),
            r,
            rng.random_range(0.0..2.0 * PI),
        );
        paint(&mut canvas, size, other, &poly, rng);
    }
    let r = n * rng.random_range(0.25..0.4);
    let c = (
        rng.random_range(0.4..0.6) * n,
        rng.random_range(0.4..0.6) * n,
    );
    let poly = outline(class, c.0, c.1, r, rng.random_range(0.0..2.0 * PI));
    paint(&mut canvas, size, class, &poly, rng);
    to_image(&canvas, size)
}

/// A scene with 1–5 objects of mixed sizes (and, sometimes, a crowd of tiny objects).
fn scene(size: u32, rng: &mut SampleRng) -> (RgbImage, Vec<Placed>) {
    let mut canvas = background(size, rng);
    let n = size as f64;
    let mut placed = Vec::new();
    let count = rng.random_range(1..=5);
    for _ in 0..count {
        let class = rng.random_range(0..CLASSES.len());
        let r = match rng.random_range(0..3) {
            0 => rng.random_range(4.0..14.0),
            1 => rng.random_range((n * 0.15).min(22.0)..n * 0.25),
            _ => rng.random_range(n * 0.38..n * 0.5),
        };
        let cx = rng.random_range(r * 0.5..n - r * 0.5);
        let cy = rng.random_range(r * 0.5..n - r * 0.5);
        let poly = outline(class, cx, cy, r, rng.random_range(0.0..2.0 * PI));
        let mask = paint(&mut canvas, size, class, &poly, rng);
        placed.push(Placed {
            class,
            polygon: poly,
            mask,
            crowd_group: None,
        });
    }
    if rng.random::<f64>() < 0.25 {
        let class = rng.random_range(0..CLASSES.len());
        let (gx, gy) = (
            rng.random_range(0.2..0.8) * n,
            rng.random_range(0.2..0.8) * n,
        );
        for _ in 0..rng.random_range(4..8) {
            let r = rng.random_range(2.5..5.0);
            let cx = (gx + rng.random_range(-14.0..14.0)).clamp(r, n - r);
            let cy = (gy + rng.random_range(-14.0..14.0)).clamp(r, n - r);
            let poly = outline(class, cx, cy, r, rng.random_range(0.0..2.0 * PI));
            let mask = paint(&mut canvas, size, class, &poly, rng);
            placed.push(Placed {
                class,
                polygon: poly,
                mask,
                crowd_group: Some(0),
            });
        }
    }
    (to_image(&canvas, size), placed)
}

/// Visible part of each object (later objects occlude earlier ones).
fn visible_masks(placed: &[Placed]) -> Vec<Vec<u8>> {
    let mut covered = vec![0u8; placed.first().map_or(0, |p| p.mask.len())];
    let mut out = vec![Vec::new(); placed.len()];
    for (i, p) in placed.iter().enumerate().rev() {
        out[i] = p
            .mask
            .iter()
            .zip(&covered)
            .map(|(&m, &c)| m & (1 - c))
            .collect();
        for (c, &m) in covered.iter_mut().zip(&p.mask) {
            *c |= m;
        }
    }
    out
}

fn annotations_for(
    placed: &[Placed],
    size: u32,
    image_id: u64,
    next_id: &mut u64,
) -> Vec<CocoAnnotation> {
    let visible = visible_masks(placed);
    let mut anns = Vec::new();
    let mut crowd: Option<(usize, Vec<u8>)> = None;
    for (p, vis) in placed.iter().zip(&visible) {
        if p.crowd_group.is_some() {
            let entry = crowd.get_or_insert_with(|| (p.class, vec![0u8; vis.len()]));
            for (c, &v) in entry.1.iter_mut().zip(vis) {
                *c |= v;
            }
            continue;
        }
        let rle = Rle::from_mask(vis, size, size);
        let area = rle.area();
        if area < 4 {
            continue;
        }
        let full = vis == &p.mask;
        let segmentation = if full {
            Segmentation::Polygons(vec![p
                .polygon
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect()])
        } else {
            Segmentation::Rle(RleJson {
                size: [size, size],
                counts: RleCounts::Compressed(rle.to_compressed()),
            })
        };
        // Polygon coordinates are rounded for the JSON: area and bbox come from the rounded
        // polygon's rasterisation, exactly what a reader (pycocotools) recomputes.
        let rle = match &segmentation {
            Segmentation::Polygons(polys) => Rle::from_polygon(&polys[0], size, size),
            _ => rle,
        };
        anns.push(CocoAnnotation {
            id: *next_id,
            image_id,
            category_id: p.class as u64 + 1,
            bbox: rle.bbox(),
            area: rle.area() as f64,
            iscrowd: 0,
            segmentation: Some(segmentation),
        });
        *next_id += 1;
    }
    if let Some((class, mask)) = crowd {
        let rle = Rle::from_mask(&mask, size, size);
        if rle.area() > 0 {
            anns.push(CocoAnnotation {
                id: *next_id,
                image_id,
                category_id: class as u64 + 1,
                bbox: rle.bbox(),
                area: rle.area() as f64,
                iscrowd: 1,
                segmentation: Some(Segmentation::Rle(RleJson {
                    size: [size, size],
                    counts: RleCounts::Uncompressed(rle.counts.clone()),
                })),
            });
            *next_id += 1;
        }
    }
    anns
}

/// The label map of a scene: 0 = other (background), class + 1 where an object is visible.
fn label_map(placed: &[Placed], size: u32) -> LabelMap {
    let mut map = LabelMap::new(size, size, 0);
    for p in placed {
        for (l, &m) in map.labels.iter_mut().zip(&p.mask) {
            if m != 0 {
                *l = p.class as u8 + 1;
            }
        }
    }
    map
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| DataError::io(path, e))
}

fn save_jpeg(img: &RgbImage, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 95)
        .encode_image(img)
        .map_err(|e| DataError::format(path, format!("cannot write JPEG: {e}")))
}

// Independent RNG streams per (task, split) so tasks do not shift each other's images.
const STREAM_CLS: u64 = 1;
const STREAM_COCO: u64 = 3;
const STREAM_ADE: u64 = 5;

/// Writes the whole benchmark under `out`.
pub fn generate(out: &Path, config: &SynthConfig) -> Result<SynthSummary> {
    generate_with_progress(out, config, &|| {})
}

/// [`generate`], calling `written` once per image saved ([`SynthConfig::total_images`] in all),
/// from the worker threads.
pub fn generate_with_progress(
    out: &Path,
    config: &SynthConfig,
    written: &(dyn Fn() + Sync),
) -> Result<SynthSummary> {
    if config.size < 32 {
        return Err(DataError::Invalid(format!(
            "--size {} is too small (minimum 32)",
            config.size
        )));
    }
    if config.images == 0 {
        return Err(DataError::Invalid("--images must be positive".into()));
    }
    let splits = [
        ("train", "training", config.images),
        ("val", "validation", config.val_images()),
    ];
    let mut summary = SynthSummary {
        config: config.clone(),
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        classification: [0; 2],
        coco_images: [0; 2],
        coco_annotations: [0; 2],
        coco_crowd: [0; 2],
        coco_area_ranges: [0; 3],
        ade_images: [0; 2],
    };

    for (s, &(split, _, count)) in splits.iter().enumerate() {
        let dir = out.join("classification").join(split);
        for class in CLASSES {
            mkdir(&dir.join(class))?;
        }
        (0..count).into_par_iter().try_for_each(|i| {
            let class = i % CLASSES.len();
            let mut rng = sample_rng(config.seed, STREAM_CLS + s as u64, i as u64);
            let img = classification_image(class, config.size, &mut rng);
            save_png(&img, &dir.join(CLASSES[class]).join(format!("{i:06}.png")))?;
            written();
            Ok::<_, DataError>(())
        })?;
        summary.classification[s] = count;
    }

    let scene_size = config.scene_size();
    mkdir(&out.join("coco").join("annotations"))?;
    let categories: Vec<CocoCategory> = CLASSES
        .iter()
        .enumerate()
        .map(|(i, name)| CocoCategory {
            id: i as u64 + 1,
            name: name.to_string(),
            supercategory: "shape".into(),
        })
        .collect();
    for (s, &(split, _, count)) in splits.iter().enumerate() {
        let dir = out.join("coco").join(split);
        mkdir(&dir)?;
        let scenes: Vec<(CocoImage, Vec<Placed>)> = (0..count)
            .into_par_iter()
            .map(|i| {
                let mut rng = sample_rng(config.seed, STREAM_COCO + s as u64, i as u64);
                let (img, placed) = scene(scene_size, &mut rng);
                let file_name = format!("{:012}.jpg", i + 1);
                save_jpeg(&img, &dir.join(&file_name))?;
                written();
                let meta = CocoImage {
                    id: i as u64 + 1,
                    width: scene_size,
                    height: scene_size,
                    file_name,
                };
                Ok((meta, placed))
            })
            .collect::<Result<_>>()?;
        let mut next_id = 1u64;
        let mut images = Vec::with_capacity(count);
        let mut annotations = Vec::new();
        for (meta, placed) in scenes {
            annotations.extend(annotations_for(&placed, scene_size, meta.id, &mut next_id));
            images.push(meta);
        }
        summary.coco_images[s] = images.len();
        summary.coco_annotations[s] = annotations.len();
        summary.coco_crowd[s] = annotations.iter().filter(|a| a.iscrowd == 1).count();
        for a in annotations.iter().filter(|a| a.iscrowd == 0) {
            let r = if a.area < 1024.0 {
                0
            } else if a.area < 9216.0 {
                1
            } else {
                2
            };
            summary.coco_area_ranges[r] += 1;
        }
        let dataset = CocoDataset {
            info: Some(
                serde_json::json!({"description": "ibot synthetic scenes", "seed": config.seed}),
            ),
            licenses: Some(serde_json::json!([])),
            images,
            annotations,
            categories: categories.clone(),
        };
        dataset.save(
            &out.join("coco")
                .join("annotations")
                .join(format!("instances_{split}.json")),
        )?;
    }

    for (s, &(_, ade_split, count)) in splits.iter().enumerate() {
        let img_dir = out.join("ade").join("images").join(ade_split);
        let ann_dir = out.join("ade").join("annotations").join(ade_split);
        mkdir(&img_dir)?;
        mkdir(&ann_dir)?;
        let prefix = if s == 0 { "ADE_train" } else { "ADE_val" };
        (0..count).into_par_iter().try_for_each(|i| {
            let mut rng = sample_rng(config.seed, STREAM_ADE + s as u64, i as u64);
            let (img, placed) = scene(scene_size, &mut rng);
            let stem = format!("{prefix}_{:08}", i + 1);
            save_jpeg(&img, &img_dir.join(format!("{stem}.jpg")))?;
            save_label_png(
                &label_map(&placed, scene_size),
                &ann_dir.join(format!("{stem}.png")),
            )?;
            written();
            Ok::<_, DataError>(())
        })?;
        summary.ade_images[s] = count;
    }

    let manifest = out.join("synth.json");
    let text = serde_json::to_string_pretty(&summary).expect("summary serialises");
    std::fs::write(&manifest, text).map_err(|e| DataError::io(&manifest, e))?;
    Ok(summary)
}
