//! COCO evaluation as mmdet 2.11 runs it (`tools/test.py` → `CocoDataset.format_results` /
//! `_segm2json` → `evaluate`): the test pipeline on every val image (no filtering in test mode),
//! `simple_test(rescale=True)`, one results record per detection with the GT's category id,
//! `bbox = [x1, y1, x2 − x1, y2 − y1]` (f32 values widened to double, as `bbox.tolist()`), the box
//! score, and the mask as a compressed RLE with UTF-8 counts. Records are ordered by image, then
//! label, then score (mmdet's `bbox2result` grouping).
//!
//! mmdet writes `results.bbox.json` and `results.segm.json`; the segm file carries the same
//! records with `bbox` AND `segmentation`, so pycocotools' `loadRes` takes its bbox branch for both
//! and the segm evaluation uses box areas for the detections' area ranges. `detections.json` is
//! that segm file: evaluating it as bbox and as segm reproduces both of mmdet's numbers
//! (pycocotools on the same file gives the same stats). The summary uses pycocotools' default
//! `maxDets = [1, 10, 100]` (AR1/AR10/AR100); mmdet 2.11 sets `[100, 300, 1000]`, which changes only
//! the AR columns (AP reads maxDets = 100 either way, and at most 100 detections are kept per image).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use data::coco_instances::CocoInstances;
use data::detection_pipeline::DetTestPipeline;
use metrics::coco::{CocoOptions, CocoSummary, CompressedRle, Detection, IouType};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::detector::{Batch, Detector};
use crate::roi_heads::ImageDetections;

/// The 12 numbers of `COCOeval.summarize`, named as pycocotools prints them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CocoStats {
    #[serde(rename = "AP")]
    pub ap: f64,
    #[serde(rename = "AP50")]
    pub ap50: f64,
    #[serde(rename = "AP75")]
    pub ap75: f64,
    #[serde(rename = "APs")]
    pub aps: f64,
    #[serde(rename = "APm")]
    pub apm: f64,
    #[serde(rename = "APl")]
    pub apl: f64,
    #[serde(rename = "AR1")]
    pub ar1: f64,
    #[serde(rename = "AR10")]
    pub ar10: f64,
    #[serde(rename = "AR100")]
    pub ar100: f64,
    #[serde(rename = "ARs")]
    pub ars: f64,
    #[serde(rename = "ARm")]
    pub arm: f64,
    #[serde(rename = "ARl")]
    pub arl: f64,
}

impl CocoStats {
    pub fn from_stats(s: &[f64; 12]) -> Self {
        CocoStats {
            ap: s[0],
            ap50: s[1],
            ap75: s[2],
            aps: s[3],
            apm: s[4],
            apl: s[5],
            ar1: s[6],
            ar10: s[7],
            ar100: s[8],
            ars: s[9],
            arm: s[10],
            arl: s[11],
        }
    }

    pub fn from_summary(s: &CocoSummary) -> Self {
        Self::from_stats(&s.stats)
    }
}

/// The results records of one image (`cat_ids[label]` is the GT's category id).
pub fn image_results(
    image_id: u64,
    dets: &ImageDetections,
    cat_ids: &[u64],
) -> Result<Vec<Detection>> {
    let (h, w) = dets.ori_shape;
    let mut order: Vec<usize> = (0..dets.boxes.len()).collect();
    // bbox2result: grouped by label, in detection order within a label
    order.sort_by_key(|&i| dets.labels[i]);
    order
        .into_iter()
        .map(|i| {
            let b = dets.boxes[i];
            let (x1, y1, x2, y2) = (b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64);
            let segmentation = match dets.masks.get(i) {
                Some(m) => {
                    let bytes: Vec<u8> = m.iter().map(|&v| v as u8).collect();
                    let rle = metrics::mask::encode_row_major(&bytes, h as u32, w as u32)
                        .map_err(|e| anyhow::anyhow!("encoding a mask: {e}"))?;
                    Some(CompressedRle::from(&rle))
                }
                None => None,
            };
            Ok(Detection {
                image_id,
                category_id: cat_ids[dets.labels[i] as usize],
                bbox: Some([x1, y1, x2 - x1, y2 - y1]),
                segmentation,
                score: b[4] as f64,
            })
        })
        .collect()
}

/// What inference over a split produced.
pub struct Predictions {
    pub results: Vec<Detection>,
    pub images: usize,
    pub seconds: f64,
}

/// Runs the test pipeline and the detector on every image of `data`, `batch` images at a time.
pub fn predict_dataset(
    model: &Detector,
    data: &CocoInstances,
    pipeline: &DetTestPipeline,
    batch: usize,
    device: &Device,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Predictions> {
    let started = Instant::now();
    let mut results = Vec::new();
    let n = data.len();
    for start in (0..n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let inputs = idx
            .par_iter()
            .map(|&i| {
                let s = data.sample(i)?;
                Ok(pipeline.apply(&s.joint)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let b = Batch::collate(&inputs, device)?;
        let dets = model.predict(&b.images, &b.metas)?;
        for (&i, d) in idx.iter().zip(&dets) {
            results.extend(image_results(data.entries[i].image.id, d, &data.cat_ids)?);
        }
        if let Some(p) = progress {
            p.inc(idx.len() as u64);
        }
    }
    Ok(Predictions {
        results,
        images: n,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes the results list (compact JSON, atomically).
pub fn write_detections(path: &Path, results: &[Detection]) -> Result<()> {
    let bytes = serde_json::to_vec(results)?;
    train::io::write_atomic(path, &bytes)
}

/// Reads a results list.
pub fn read_detections(path: &Path) -> Result<Vec<Detection>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// bbox and segm stats of a results file against its ground truth. No detections at all gives
/// zeros (pycocotools' `loadRes` fails on an empty list; mmdet then reports nothing).
pub fn evaluate_file(gt: &Path, detections: &Path) -> Result<(CocoStats, CocoStats)> {
    let results = read_detections(detections)?;
    if results.is_empty() {
        return Ok((CocoStats::default(), CocoStats::default()));
    }
    let run = |iou: IouType| -> Result<CocoStats> {
        let s = metrics::coco::evaluate_files(gt, detections, &CocoOptions::new(iou))
            .with_context(|| format!("{iou} evaluation of {}", detections.display()))?;
        Ok(CocoStats::from_summary(&s))
    };
    Ok((run(IouType::Bbox)?, run(IouType::Segm)?))
}
