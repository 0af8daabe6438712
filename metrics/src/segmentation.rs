//! Semantic-segmentation scores as mmsegmentation computes them (`intersect_and_union` +
//! `total_area_to_metrics`, 0.x and 1.x alike).
//!
//! * Pixels whose ground truth equals `ignore_index` are dropped; predictions are not masked.
//! * Per class, over the **whole dataset**: intersection (pred == gt), predicted area, label area,
//!   union = pred + label − intersection. Values outside `0..num_classes` fall out of the
//!   histograms (a ground-truth pixel of such a value still counts in the prediction histogram).
//! * `reduce_zero_label` (ADE20K): ground truth 0 → 255, every other value − 1, and 254 → 255.
//! * aAcc = ΣI / ΣLabel; per class IoU = I / U and Acc = I / Label, NaN when 0/0; mIoU and mAcc
//!   are `np.nanmean` of those.
//!
//! Counts are exact integers (u64); 8-bit maps take a 256×256 joint histogram per pixel, from which
//! the ignore index and `reduce_zero_label` are applied per *value* rather than per pixel.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::numeric::nanmean;
use crate::{Error, Result};

/// What to evaluate: class count, ignored ground-truth value, ADE20K-style label shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentationConfig {
    pub num_classes: usize,
    pub ignore_index: u32,
    pub reduce_zero_label: bool,
}

impl SegmentationConfig {
    /// mmseg's defaults: ignore index 255, no label shift.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            ignore_index: 255,
            reduce_zero_label: false,
        }
    }

    /// The ground-truth value a stored value becomes (mmseg's in-dtype arithmetic).
    fn map_gt(&self, raw: u32) -> u32 {
        if !self.reduce_zero_label {
            return raw;
        }
        let v = if raw == 0 { 255 } else { raw };
        let v = v - 1;
        if v == 254 {
            255
        } else {
            v
        }
    }
}

/// Per-class areas summed over every image added so far.
#[derive(Debug, Clone)]
pub struct SegmentationAccumulator {
    config: SegmentationConfig,
    intersect: Vec<u64>,
    pred: Vec<u64>,
    label: Vec<u64>,
    /// Joint (gt, pred) histogram of 8-bit maps not yet folded into the per-class areas.
    joint: Vec<u32>,
    joint_pixels: u64,
}

impl SegmentationAccumulator {
    pub fn new(config: SegmentationConfig) -> Self {
        let c = config.num_classes;
        Self {
            config,
            intersect: vec![0; c],
            pred: vec![0; c],
            label: vec![0; c],
            joint: Vec::new(),
            joint_pixels: 0,
        }
    }

    pub fn config(&self) -> &SegmentationConfig {
        &self.config
    }

    fn check_len(pred: usize, gt: usize) -> Result<()> {
        if pred != gt {
            return Err(Error::invalid(format!(
                "prediction has {pred} pixels but ground truth has {gt}"
            )));
        }
        Ok(())
    }

    /// Add one image of 8-bit maps (same pixel order in both).
    pub fn add_u8(&mut self, pred: &[u8], gt: &[u8]) -> Result<()> {
        Self::check_len(pred.len(), gt.len())?;
        if self.joint_pixels + pred.len() as u64 > u32::MAX as u64 {
            self.flush();
        }
        if self.joint.is_empty() {
            self.joint = vec![0; 256 * 256];
        }
        let joint = &mut self.joint[..];
        for (&p, &g) in pred.iter().zip(gt) {
            joint[(g as usize) << 8 | p as usize] += 1;
        }
        self.joint_pixels += pred.len() as u64;
        Ok(())
    }

    /// Add one image of 16-bit maps (same pixel order in both).
    pub fn add_u16(&mut self, pred: &[u16], gt: &[u16]) -> Result<()> {
        Self::check_len(pred.len(), gt.len())?;
        let c = self.config.num_classes;
        let ignore = self.config.ignore_index;
        for (&p, &g) in pred.iter().zip(gt) {
            let g = self.config.map_gt(g as u32);
            if g == ignore {
                continue;
            }
            let p = p as usize;
            if (g as usize) < c {
                self.label[g as usize] += 1;
            }
            if p < c {
                self.pred[p] += 1;
                if p == g as usize {
                    self.intersect[p] += 1;
                }
            }
        }
        Ok(())
    }

    /// Add one image; the two maps must have the same size.
    pub fn add(&mut self, pred: &LabelMap, gt: &LabelMap) -> Result<()> {
        if (pred.width, pred.height) != (gt.width, gt.height) {
            return Err(Error::invalid(format!(
                "prediction is {}x{} but ground truth is {}x{}",
                pred.width, pred.height, gt.width, gt.height
            )));
        }
        match (&pred.values, &gt.values) {
            (LabelValues::U8(p), LabelValues::U8(g)) => self.add_u8(p, g),
            (p, g) => self.add_u16(&p.to_u16(), &g.to_u16()),
        }
    }

    /// Fold another accumulator (same configuration) into this one.
    pub fn merge(&mut self, mut other: SegmentationAccumulator) -> Result<()> {
        if other.config != self.config {
            return Err(Error::invalid(
                "cannot merge accumulators with different settings",
            ));
        }
        other.flush();
        for (a, b) in [
            (&mut self.intersect, &other.intersect),
            (&mut self.pred, &other.pred),
            (&mut self.label, &other.label),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        Ok(())
    }

    fn flush(&mut self) {
        if self.joint_pixels == 0 {
            return;
        }
        let c = self.config.num_classes;
        for g_raw in 0..256u32 {
            let g = self.config.map_gt(g_raw);
            if g == self.config.ignore_index {
                continue;
            }
            let row = &self.joint[(g_raw as usize) << 8..((g_raw as usize) + 1) << 8];
            for (p, &count) in row.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let count = count as u64;
                if (g as usize) < c {
                    self.label[g as usize] += count;
                }
                if p < c {
                    self.pred[p] += count;
                    if p == g as usize {
                        self.intersect[p] += count;
                    }
                }
            }
        }
        self.joint.iter_mut().for_each(|v| *v = 0);
        self.joint_pixels = 0;
    }

    /// The dataset-level scores of everything added so far.
    pub fn scores(&self) -> SegmentationScores {
        let mut acc = self.clone();
        acc.flush();
        SegmentationScores::from_areas(acc.intersect, acc.pred, acc.label)
    }
}

/// mmseg's summary: fractions (not percentages), NaN where mmseg has NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationScores {
    pub a_acc: f64,
    pub m_iou: f64,
    pub m_acc: f64,
    pub iou: Vec<f64>,
    pub acc: Vec<f64>,
    pub area_intersect: Vec<u64>,
    pub area_union: Vec<u64>,
    pub area_pred: Vec<u64>,
    pub area_label: Vec<u64>,
}

impl SegmentationScores {
    /// From dataset-level per-class areas.
    pub fn from_areas(intersect: Vec<u64>, pred: Vec<u64>, label: Vec<u64>) -> Self {
        let union: Vec<u64> = (0..intersect.len())
            .map(|c| pred[c] + label[c] - intersect[c])
            .collect();
        let iou: Vec<f64> = (0..intersect.len())
            .map(|c| intersect[c] as f64 / union[c] as f64)
            .collect();
        let acc: Vec<f64> = (0..intersect.len())
            .map(|c| intersect[c] as f64 / label[c] as f64)
            .collect();
        let total_intersect: u64 = intersect.iter().sum();
        let total_label: u64 = label.iter().sum();
        Self {
            a_acc: total_intersect as f64 / total_label as f64,
            m_iou: nanmean(&iou),
            m_acc: nanmean(&acc),
            iou,
            acc,
            area_intersect: intersect,
            area_union: union,
            area_pred: pred,
            area_label: label,
        }
    }
}

/// Stored label values of one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelValues {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

impl LabelValues {
    fn to_u16(&self) -> Vec<u16> {
        match self {
            LabelValues::U8(v) => v.iter().map(|&x| x as u16).collect(),
            LabelValues::U16(v) => v.clone(),
        }
    }
}

/// A decoded label map, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    pub width: u32,
    pub height: u32,
    pub values: LabelValues,
}

impl LabelMap {
    /// ADE20K's annotation space → class indices, mmseg's `reduce_zero_label` rule applied to the
    /// stored values (0 → 255, v → v − 1, 254 → 255): for predictions saved the way ADE20K's
    /// submission PNGs (and `ibot eval segment`) store them, 1..=N for N classes.
    pub fn reduce_zero_label(&mut self) {
        let cfg = SegmentationConfig {
            num_classes: 0,
            ignore_index: 255,
            reduce_zero_label: true,
        };
        match &mut self.values {
            LabelValues::U8(v) => v.iter_mut().for_each(|x| *x = cfg.map_gt(*x as u32) as u8),
            LabelValues::U16(v) => v.iter_mut().for_each(|x| *x = cfg.map_gt(*x as u32) as u16),
        }
    }
}

/// Which label space prediction PNGs are in when `reduce_zero_label` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PredSpace {
    /// Class indices 0..N, as mmseg's in-memory predictions (only the ground truth is reduced).
    Reduced,
    /// The annotations' space (ADE20K: 1..=N, 0 = "other"), reduced like the ground truth.
    #[default]
    Annotation,
}

/// Read a label PNG as PIL (and so mmseg) sees it: greyscale values (8- or 16-bit) or palette
/// *indices*, never palette colours. Colour and alpha PNGs are rejected: their classes are ambiguous.
pub fn read_label_png(path: &Path) -> Result<LabelMap> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    let mut decoder = png::Decoder::new(Cursor::new(&bytes[..]));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| Error::file(path, format!("not a readable PNG: {e}")))?;
    let (color, depth) = reader.output_color_type();
    let (width, height) = (reader.info().width, reader.info().height);
    let bits = match (color, depth) {
        (png::ColorType::Grayscale, png::BitDepth::Eight | png::BitDepth::Sixteen) => {
            depth as usize
        }
        (png::ColorType::Indexed, d) => d as usize,
        (other, d) => {
            return Err(Error::file(
                path,
                format!(
                    "a label PNG must be 8/16-bit greyscale or a palette image, found {other:?} \
                     at {d:?} bits"
                ),
            ));
        }
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::file(path, "image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| Error::file(path, format!("truncated or corrupt PNG: {e}")))?;
    let (w, h) = (width as usize, height as usize);
    let rows = buf.chunks(frame.line_size).take(h);
    let values = match bits {
        8 => LabelValues::U8(rows.flat_map(|r| r[..w].iter().copied()).collect()),
        16 => LabelValues::U16(
            rows.flat_map(|r| {
                r[..2 * w]
                    .chunks_exact(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
            })
            .collect(),
        ),
        low => {
            // Packed palette indices, most significant bits first.
            let per_byte = 8 / low;
            let mask = (1u8 << low) - 1;
            LabelValues::U8(
                rows.flat_map(|r| {
                    (0..w).map(move |x| {
                        let shift = 8 - low * (x % per_byte + 1);
                        (r[x / per_byte] >> shift) & mask
                    })
                })
                .collect(),
            )
        }
    };
    Ok(LabelMap {
        width,
        height,
        values,
    })
}

/// The `.png` files of a directory, keyed by file stem.
fn pngs_by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, e))?;
    let mut out = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::file(dir, e))?.path();
        let is_png = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if let (true, Some(stem)) = (is_png, path.file_stem().and_then(|s| s.to_str())) {
            out.insert(stem.to_string(), path.clone());
        }
    }
    Ok(out)
}

/// Ground-truth and prediction PNGs paired by file stem; every ground truth needs a prediction
/// and every prediction a ground truth.
pub fn pair_label_pngs(gt_dir: &Path, pred_dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let gts = pngs_by_stem(gt_dir)?;
    let mut preds = pngs_by_stem(pred_dir)?;
    if gts.is_empty() {
        return Err(Error::file(
            gt_dir,
            "no .png ground-truth maps in this directory",
        ));
    }
    let mut pairs = Vec::with_capacity(gts.len());
    for (stem, gt) in gts {
        let pred = preds.remove(&stem).ok_or_else(|| {
            Error::file(
                &gt,
                format!("no prediction {stem}.png in {}", pred_dir.display()),
            )
        })?;
        pairs.push((gt, pred));
    }
    if let Some((stem, pred)) = preds.into_iter().next() {
        return Err(Error::file(
            pred,
            format!(
                "prediction has no ground truth {stem}.png in {}",
                gt_dir.display()
            ),
        ));
    }
    Ok(pairs)
}

/// Accumulate `count` images in parallel: `add(i, acc)` adds image `i` to a per-thread accumulator.
pub fn accumulate_par<F>(
    count: usize,
    config: SegmentationConfig,
    add: F,
) -> Result<SegmentationScores>
where
    F: Fn(usize, &mut SegmentationAccumulator) -> Result<()> + Sync,
{
    let acc = (0..count)
        .into_par_iter()
        .try_fold(
            || SegmentationAccumulator::new(config),
            |mut acc, i| {
                add(i, &mut acc)?;
                Ok::<_, Error>(acc)
            },
        )
        .try_reduce(
            || SegmentationAccumulator::new(config),
            |mut a, b| {
                a.merge(b)?;
                Ok(a)
            },
        )?;
    Ok(acc.scores())
}

/// Evaluate label PNG pairs `(ground truth, prediction)` in parallel, predictions as class
/// indices (mmseg's semantics: `reduce_zero_label` applies to the ground truth only).
pub fn evaluate_pngs(
    pairs: &[(PathBuf, PathBuf)],
    config: SegmentationConfig,
) -> Result<SegmentationScores> {
    evaluate_pngs_in(pairs, config, PredSpace::Reduced)
}

/// [`evaluate_pngs`] with predictions in `space`: in the annotation space and with
/// `reduce_zero_label`, predictions are reduced like the ground truth.
pub fn evaluate_pngs_in(
    pairs: &[(PathBuf, PathBuf)],
    config: SegmentationConfig,
    space: PredSpace,
) -> Result<SegmentationScores> {
    accumulate_par(pairs.len(), config, |i, acc| {
        let (gt_path, pred_path) = &pairs[i];
        let gt = read_label_png(gt_path)?;
        let mut pred = read_label_png(pred_path)?;
        if config.reduce_zero_label && space == PredSpace::Annotation {
            pred.reduce_zero_label();
        }
        acc.add(&pred, &gt)
            .map_err(|e| Error::file(pred_path, format!("{e} ({})", gt_path.display())))
    })
}

/// Evaluate a directory of prediction PNGs against a directory of ground-truth PNGs (same stems).
pub fn evaluate_dirs(
    gt_dir: &Path,
    pred_dir: &Path,
    config: SegmentationConfig,
) -> Result<SegmentationScores> {
    if config.num_classes == 0 {
        return Err(Error::invalid("num_classes must be at least 1"));
    }
    evaluate_pngs(&pair_label_pngs(gt_dir, pred_dir)?, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_and_u16_paths_agree() {
        let gt: Vec<u8> = (0..500u32)
            .map(|i| (i * 7 % 13) as u8)
            .chain([255, 0])
            .collect();
        let pred: Vec<u8> = (0..502u32).map(|i| (i * 5 % 11) as u8).collect();
        for reduce in [false, true] {
            let cfg = SegmentationConfig {
                num_classes: 10,
                ignore_index: 255,
                reduce_zero_label: reduce,
            };
            let mut a = SegmentationAccumulator::new(cfg);
            a.add_u8(&pred, &gt).unwrap();
            let mut b = SegmentationAccumulator::new(cfg);
            let widen = |v: &[u8]| v.iter().map(|&x| x as u16).collect::<Vec<_>>();
            b.add_u16(&widen(&pred), &widen(&gt)).unwrap();
            assert_eq!(a.scores().area_label, b.scores().area_label);
            assert_eq!(a.scores().area_intersect, b.scores().area_intersect);
            assert_eq!(a.scores().area_pred, b.scores().area_pred);
        }
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let mut a = SegmentationAccumulator::new(SegmentationConfig::new(3));
        assert!(a.add_u8(&[0, 1], &[0]).is_err());
    }
}
