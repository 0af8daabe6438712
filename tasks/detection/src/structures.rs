//! Boxes, overlaps and per-image metadata, as mmdet 2.11 uses them.
//!
//! Transcribes `mmdet/core/bbox/iou_calculators/iou2d_calculator.py` (`bbox_overlaps`, `BboxOverlaps2D`)
//! and `mmdet/core/bbox/transforms.py` (`bbox2roi`). Boxes are `[x1, y1, x2, y2]` in f32 pixel-edge
//! coordinates: width = x2 − x1, with no "+1" (mmdet ≥ 2.0, mmcv ops with `offset=0`).

/// One box, `[x1, y1, x2, y2]`.
pub type Box4 = [f32; 4];

/// One RoI as mmdet's `bbox2roi` builds it: `[batch_index, x1, y1, x2, y2]`.
pub type Roi = [f32; 5];

/// Box area `(x2 − x1)·(y2 − y1)` (negative for inverted boxes, as in mmdet).
pub fn area(b: &Box4) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Clip a box to `[0, w] × [0, h]` (mmdet clips to the image size, not size − 1).
pub fn clip_box(b: &Box4, img_h: f32, img_w: f32) -> Box4 {
    [
        b[0].clamp(0.0, img_w),
        b[1].clamp(0.0, img_h),
        b[2].clamp(0.0, img_w),
        b[3].clamp(0.0, img_h),
    ]
}

/// `bbox2roi` for a batch: image index in column 0.
pub fn bbox2roi(per_image: &[Vec<Box4>]) -> Vec<Roi> {
    let mut out = Vec::new();
    for (i, boxes) in per_image.iter().enumerate() {
        for b in boxes {
            out.push([i as f32, b[0], b[1], b[2], b[3]]);
        }
    }
    out
}

/// What `bbox_overlaps` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlapMode {
    /// intersection / union
    Iou,
    /// intersection / area of the first box ("foreground")
    Iof,
    /// generalised IoU: IoU − (enclosing area − union) / enclosing area
    Giou,
}

/// A dense row-major `rows × cols` matrix of overlaps.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlaps {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Overlaps {
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.cols + j]
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// mmdet's `eps`: the union (and the enclosing area) is clamped from below by it.
pub const OVERLAP_EPS: f32 = 1e-6;

// One pair, in the operation order of the torch code so that results agree to the last bit.
#[inline]
fn overlap_pair(a: &Box4, b: &Box4, area_a: f32, area_b: f32, mode: OverlapMode) -> f32 {
    let lt_x = a[0].max(b[0]);
    let lt_y = a[1].max(b[1]);
    let rb_x = a[2].min(b[2]);
    let rb_y = a[3].min(b[3]);
    let w = (rb_x - lt_x).max(0.0);
    let h = (rb_y - lt_y).max(0.0);
    let overlap = w * h;
    let union = match mode {
        OverlapMode::Iou | OverlapMode::Giou => area_a + area_b - overlap,
        OverlapMode::Iof => area_a,
    };
    let union = union.max(OVERLAP_EPS);
    let iou = overlap / union;
    if mode != OverlapMode::Giou {
        return iou;
    }
    let ew = (a[2].max(b[2]) - a[0].min(b[0])).max(0.0);
    let eh = (a[3].max(b[3]) - a[1].min(b[1])).max(0.0);
    let enclose = (ew * eh).max(OVERLAP_EPS);
    iou - (enclose - union) / enclose
}

/// Pairwise `bbox_overlaps(a, b, mode, is_aligned=False)`: `[a.len(), b.len()]`.
pub fn bbox_overlaps(a: &[Box4], b: &[Box4], mode: OverlapMode) -> Overlaps {
    let area_b: Vec<f32> = b.iter().map(area).collect();
    let mut data = Vec::with_capacity(a.len() * b.len());
    for bx in a {
        let aa = area(bx);
        for (j, by) in b.iter().enumerate() {
            data.push(overlap_pair(bx, by, aa, area_b[j], mode));
        }
    }
    Overlaps {
        rows: a.len(),
        cols: b.len(),
        data,
    }
}

/// Aligned `bbox_overlaps(a, b, mode, is_aligned=True)`: one value per pair `(a[i], b[i])`.
pub fn bbox_overlaps_aligned(a: &[Box4], b: &[Box4], mode: OverlapMode) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "aligned overlaps need equal lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| overlap_pair(x, y, area(x), area(y), mode))
        .collect()
}

/// The per-image metadata mmdet's pipeline attaches (`img_metas`), in (h, w) order.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageMeta {
    /// size of the resized image before padding (`img_shape`)
    pub img_shape: (usize, usize),
    /// size after `Pad` to the size divisor (`pad_shape`)
    pub pad_shape: (usize, usize),
    /// size of the original image (`ori_shape`)
    pub ori_shape: (usize, usize),
    /// `(w_scale, h_scale, w_scale, h_scale)` of the resize (`scale_factor`)
    pub scale_factor: [f32; 4],
}

/// A binary mask (one instance), row-major `h × w`, values 0/1.
#[derive(Clone, Debug, PartialEq)]
pub struct BitMask {
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
}

/// Ground truth of one image: boxes, 0-based labels, crowd boxes (`gt_bboxes_ignore`) and masks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageTargets {
    pub boxes: Vec<Box4>,
    pub labels: Vec<i64>,
    pub ignore: Vec<Box4>,
    pub masks: Vec<BitMask>,
}
