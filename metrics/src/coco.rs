//! COCO detection and instance-segmentation evaluation with pycocotools' numbers.
//!
//! `evaluate` and `accumulate` run on the `hotcoco` engine (a pycocotools-compatible port: IoU
//! thresholds .50:.05:.95, 101 recall points, inclusive area ranges, per-image per-category
//! detection caps, crowd matching, stable score ordering, categories without ground truth left
//! out). The 12-number **summary is computed here**, exactly as `COCOeval.summarize` does it,
//! because hotcoco's own summary departs from pycocotools for non-default `maxDets`:
//! pycocotools reads stat 0 at the literal `maxDets=100` (−1 when 100 is not among them),
//! stats 1–5 and 8–11 at `maxDets[2]`, and AR at `maxDets[0]`, `[1]`, `[2]` of the *sorted* list.
//! Means use numpy's pairwise summation, so every stat is `np.mean`'s to the last bit.
//!
//! Per-category AP is mmdetection's: the mean of valid precisions over IoU and recall thresholds
//! at area "all" and the largest maxDets, −1 when the category has no ground truth.
//!
//! Input checks go beyond pycocotools' assertions so that a wrong file fails loudly: detections
//! on unknown images or categories, without a score, without the geometry being evaluated, or with
//! masks of the wrong size are errors naming the record.

use std::path::Path;

use hotcoco::types::Segmentation;
use hotcoco::{COCOeval, COCO};
use serde::{Deserialize, Serialize};

use crate::numeric::pairwise_sum;
use crate::{Error, Result};

/// Which geometry is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IouType {
    Bbox,
    Segm,
}

impl IouType {
    pub fn as_str(self) -> &'static str {
        match self {
            IouType::Bbox => "bbox",
            IouType::Segm => "segm",
        }
    }

    fn engine(self) -> hotcoco::IouType {
        match self {
            IouType::Bbox => hotcoco::IouType::Bbox,
            IouType::Segm => hotcoco::IouType::Segm,
        }
    }
}

impl std::str::FromStr for IouType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bbox" => Ok(IouType::Bbox),
            "segm" => Ok(IouType::Segm),
            other => Err(format!("unknown IoU type {other:?}; expected bbox or segm")),
        }
    }
}

impl std::fmt::Display for IouType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names of the 12 summary numbers, in pycocotools' order.
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// pycocotools' default `maxDets`.
pub const DEFAULT_MAX_DETS: [usize; 3] = [1, 10, 100];

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CocoOptions {
    pub iou_type: IouType,
    /// At least three positive values; sorted before use, as `COCOeval.evaluate` does.
    pub max_dets: Vec<usize>,
}

impl CocoOptions {
    pub fn new(iou_type: IouType) -> Self {
        Self {
            iou_type,
            max_dets: DEFAULT_MAX_DETS.to_vec(),
        }
    }

    fn sorted_max_dets(&self) -> Result<Vec<usize>> {
        if self.max_dets.len() < 3 || self.max_dets.contains(&0) {
            return Err(Error::invalid(format!(
                "maxDets must hold at least three positive values (pycocotools' summary reads \
                 maxDets[0], [1] and [2]); got {:?}",
                self.max_dets
            )));
        }
        let mut sorted = self.max_dets.clone();
        sorted.sort_unstable();
        Ok(sorted)
    }
}

/// AP of one category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryAp {
    pub category_id: u64,
    pub name: String,
    #[serde(rename = "AP")]
    pub ap: f64,
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoSummary {
    pub iou_type: IouType,
    /// Sorted, as used.
    pub max_dets: Vec<usize>,
    /// pycocotools' `COCOeval.stats` (−1 where undefined), named by [`STAT_NAMES`].
    pub stats: [f64; 12],
    pub per_category: Vec<CategoryAp>,
}

impl CocoSummary {
    /// `(name, value)` for the 12 stats.
    pub fn named_stats(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        STAT_NAMES.iter().copied().zip(self.stats.iter().copied())
    }
}

/// Load a COCO ground-truth file.
pub fn load_ground_truth(path: &Path) -> Result<COCO> {
    COCO::new(path).map_err(|e| Error::file(path, format!("cannot load COCO ground truth: {e}")))
}

/// One entry of the standard COCO results JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub image_id: u64,
    pub category_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<CompressedRle>,
    pub score: f64,
}

/// A mask as the results JSON stores it: `{"size": [h, w], "counts": "<compressed string>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedRle {
    pub size: [u32; 2],
    pub counts: String,
}

impl From<&crate::mask::Rle> for CompressedRle {
    fn from(rle: &crate::mask::Rle) -> Self {
        Self {
            size: [rle.h, rle.w],
            counts: crate::mask::to_string(rle),
        }
    }
}

/// Load a results JSON (a list of detections) against its ground truth, checking every record.
pub fn load_detections(gt: &COCO, path: &Path, iou_type: IouType) -> Result<COCO> {
    check_is_json_list(path)?;
    let dt = gt
        .load_res(path)
        .map_err(|e| Error::file(path, format!("cannot load detections: {e}")))?;
    validate_detections(gt, &dt, iou_type).map_err(|e| Error::file(path, e))?;
    Ok(dt)
}

/// The results format is a JSON list (pycocotools asserts it); catch an object early.
fn check_is_json_list(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let n = file
        .take(head.len() as u64)
        .read(&mut head)
        .map_err(|e| Error::file(path, e))?;
    match head[..n].iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Ok(()),
        _ => Err(Error::file(
            path,
            "a results file must be a JSON list of {image_id, category_id, bbox|segmentation, score}",
        )),
    }
}

/// In-memory counterpart of [`load_detections`].
pub fn detections_from_results(
    gt: &COCO,
    results: &[Detection],
    iou_type: IouType,
) -> Result<COCO> {
    let anns = results
        .iter()
        .map(|d| hotcoco::Annotation {
            image_id: d.image_id,
            category_id: d.category_id,
            bbox: d.bbox,
            segmentation: d
                .segmentation
                .as_ref()
                .map(|s| Segmentation::CompressedRle {
                    size: s.size,
                    counts: s.counts.clone(),
                }),
            score: Some(d.score),
            ..Default::default()
        })
        .collect();
    let dt = gt
        .load_res_anns(anns)
        .map_err(|e| Error::invalid(format!("cannot load detections: {e}")))?;
    validate_detections(gt, &dt, iou_type).map_err(Error::invalid)?;
    Ok(dt)
}

fn check_rle_size(seg: &Segmentation, image_hw: (u32, u32)) -> std::result::Result<(), String> {
    let Some(rle) = seg.rle_ref() else {
        return Ok(());
    };
    let hw = match rle {
        hotcoco::mask::RleRef::Compressed { h, w, .. }
        | hotcoco::mask::RleRef::Runs { h, w, .. } => (h, w),
    };
    if hw != image_hw {
        return Err(format!(
            "mask size {}x{} differs from the image's {}x{} (height x width)",
            hw.0, hw.1, image_hw.0, image_hw.1
        ));
    }
    let rle = rle.to_rle().map_err(|e| format!("invalid RLE: {e}"))?;
    let total: u64 = rle.counts.iter().map(|&c| c as u64).sum();
    if total != hw.0 as u64 * hw.1 as u64 {
        return Err(format!(
            "RLE counts cover {total} pixels, not {}x{}",
            hw.0, hw.1
        ));
    }
    Ok(())
}

fn validate_detections(gt: &COCO, dt: &COCO, iou_type: IouType) -> std::result::Result<(), String> {
    // load_res numbers detections 1..N in file order, so index i is record i of the file.
    for (i, d) in dt.dataset.annotations.iter().enumerate() {
        let record = || {
            format!(
                "detection #{i} (image_id {}, category_id {})",
                d.image_id, d.category_id
            )
        };
        let Some(img) = gt.get_img(d.image_id) else {
            return Err(format!(
                "{}: image_id {} is not an image of the ground truth",
                record(),
                d.image_id
            ));
        };
        if gt.get_cat(d.category_id).is_none() {
            return Err(format!(
                "{}: category_id {} is not a category of the ground truth",
                record(),
                d.category_id
            ));
        }
        match d.score {
            Some(s) if s.is_finite() => {}
            Some(s) => return Err(format!("{}: score {s} is not a finite number", record())),
            None => return Err(format!("{}: has no score", record())),
        }
        if let Some(b) = d.bbox {
            if !b.iter().all(|v| v.is_finite()) {
                return Err(format!("{}: bbox {b:?} has non-finite values", record()));
            }
        }
        match iou_type {
            IouType::Bbox if d.bbox.is_none() => {
                return Err(format!("{}: bbox evaluation needs a bbox", record()));
            }
            IouType::Segm => match &d.segmentation {
                None => {
                    return Err(format!(
                        "{}: segm evaluation needs a segmentation",
                        record()
                    ))
                }
                Some(seg) => check_rle_size(seg, (img.height, img.width))
                    .map_err(|e| format!("{}: {e}", record()))?,
            },
            _ => {}
        }
    }
    Ok(())
}

fn validate_ground_truth(gt: &COCO, iou_type: IouType) -> Result<()> {
    if iou_type != IouType::Segm {
        return Ok(());
    }
    for ann in &gt.dataset.annotations {
        let (Some(img), Some(seg)) = (gt.get_img(ann.image_id), &ann.segmentation) else {
            continue;
        };
        check_rle_size(seg, (img.height, img.width)).map_err(|e| {
            Error::invalid(format!(
                "ground-truth annotation id {} (image_id {}): {e}",
                ann.id, ann.image_id
            ))
        })?;
    }
    Ok(())
}

/// Evaluate files: ground-truth JSON and results JSON.
pub fn evaluate_files(
    gt_path: &Path,
    dt_path: &Path,
    options: &CocoOptions,
) -> Result<CocoSummary> {
    options.sorted_max_dets()?;
    let gt = load_ground_truth(gt_path)?;
    let dt = load_detections(&gt, dt_path, options.iou_type)?;
    validate_ground_truth(&gt, options.iou_type).map_err(|e| Error::file(gt_path, e))?;
    evaluate(gt, dt, options)
}

/// Evaluate loaded datasets (`dt` from [`load_detections`] or [`detections_from_results`]).
pub fn evaluate(gt: COCO, dt: COCO, options: &CocoOptions) -> Result<CocoSummary> {
    let max_dets = options.sorted_max_dets()?;
    let names: Vec<(u64, String)> = gt
        .dataset
        .categories
        .iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    let mut ev = COCOeval::new(gt, dt, options.iou_type.engine());
    ev.params.max_dets = max_dets.clone();
    ev.evaluate()
        .map_err(|e| Error::invalid(format!("COCO evaluation failed: {e}")))?;
    ev.accumulate();
    let acc = ev
        .accumulated()
        .ok_or_else(|| Error::invalid("COCO accumulation produced no result"))?;
    let summary = Summarizer {
        acc,
        iou_thrs: &ev.params.iou_thrs,
        area_labels: ev
            .params
            .area_ranges
            .iter()
            .map(|a| a.label.as_str())
            .collect(),
        max_dets: &max_dets,
    };
    let stats = summary.stats();
    let per_category = acc
        .cat_ids
        .iter()
        .enumerate()
        .map(|(k, &id)| CategoryAp {
            category_id: id,
            name: names
                .iter()
                .find(|(cid, _)| *cid == id)
                .map(|(_, n)| n.clone())
                .unwrap_or_default(),
            ap: summary.category_ap(k),
        })
        .collect();
    Ok(CocoSummary {
        iou_type: options.iou_type,
        max_dets,
        stats,
        per_category,
    })
}

/// `COCOeval.summarize` over hotcoco's accumulated arrays.
struct Summarizer<'a> {
    acc: &'a hotcoco::AccumulatedEval,
    iou_thrs: &'a [f64],
    area_labels: Vec<&'a str>,
    max_dets: &'a [usize],
}

impl Summarizer<'_> {
    /// `np.mean(s[s > -1])`, or −1 when nothing is valid.
    fn mean_valid(values: impl Iterator<Item = f64>) -> f64 {
        let valid: Vec<f64> = values.filter(|&v| v > -1.0).collect();
        if valid.is_empty() {
            -1.0
        } else {
            pairwise_sum(&valid) / valid.len() as f64
        }
    }

    /// pycocotools' `_summarize(ap, iouThr, areaRng, maxDets)`.
    fn summarize(&self, ap: bool, iou_thr: Option<f64>, area: &str, max_det: usize) -> f64 {
        let shape = self.acc.shape;
        // Index lists, as pycocotools builds them (every match, in order).
        let a_idx: Vec<usize> = (0..self.area_labels.len())
            .filter(|&a| self.area_labels[a] == area)
            .collect();
        let m_idx: Vec<usize> = (0..self.max_dets.len())
            .filter(|&m| self.max_dets[m] == max_det)
            .collect();
        let t_idx: Vec<usize> = match iou_thr {
            // Exact comparison, as `np.where(iouThr == p.iouThrs)`.
            Some(thr) => (0..self.iou_thrs.len())
                .filter(|&t| self.iou_thrs[t] == thr)
                .collect(),
            None => (0..shape.t).collect(),
        };
        // `s[..., aind, mind]` pairs the two index lists elementwise (numpy advanced indexing,
        // length-1 `aind` broadcast); an empty `mind` selects nothing.
        let pairs: Vec<(usize, usize)> = match a_idx.len() {
            1 => m_idx.iter().map(|&m| (a_idx[0], m)).collect(),
            _ => a_idx.iter().zip(&m_idx).map(|(&a, &m)| (a, m)).collect(),
        };
        let acc = self.acc;
        let mut values = Vec::new();
        for &t in &t_idx {
            if ap {
                for r in 0..shape.r {
                    for k in 0..shape.k {
                        for &(a, m) in &pairs {
                            values.push(acc.precision[acc.precision_idx(t, r, k, a, m)]);
                        }
                    }
                }
            } else {
                for k in 0..shape.k {
                    for &(a, m) in &pairs {
                        values.push(acc.recall[acc.recall_idx(t, k, a, m)]);
                    }
                }
            }
        }
        Self::mean_valid(values.into_iter())
    }

    fn stats(&self) -> [f64; 12] {
        let md = self.max_dets;
        [
            self.summarize(true, None, "all", 100),
            self.summarize(true, Some(0.5), "all", md[2]),
            self.summarize(true, Some(0.75), "all", md[2]),
            self.summarize(true, None, "small", md[2]),
            self.summarize(true, None, "medium", md[2]),
            self.summarize(true, None, "large", md[2]),
            self.summarize(false, None, "all", md[0]),
            self.summarize(false, None, "all", md[1]),
            self.summarize(false, None, "all", md[2]),
            self.summarize(false, None, "small", md[2]),
            self.summarize(false, None, "medium", md[2]),
            self.summarize(false, None, "large", md[2]),
        ]
    }

    /// mmdetection's per-class AP: `precision[:, :, k, 0, -1]`, mean of values > −1.
    fn category_ap(&self, k: usize) -> f64 {
        let shape = self.acc.shape;
        let m = shape.m - 1;
        let acc = self.acc;
        Self::mean_valid((0..shape.t).flat_map(|t| {
            (0..shape.r).map(move |r| acc.precision[acc.precision_idx(t, r, k, 0, m)])
        }))
    }
}
