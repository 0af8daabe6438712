//! Joint geometric transforms for detection and segmentation: the image, its semantic label map,
//! its instance boxes and masks move together. Semantics follow mmdet 2.x / mmseg 0.x (the
//! toolboxes behind iBOT's COCO and ADE20K evaluations), with images resampled by PIL's kernels
//! (mmcv's `backend='pillow'`) and every label map (semantic or instance) by PIL NEAREST:
//!
//! - boxes are `[x1, y1, x2, y2]` f32 pixel-edge coordinates, as mmdet keeps them, so a box covering
//!   pixel columns 2..=5 is `x1 = 2, x2 = 6`;
//! - resize multiplies boxes by the f32 scale `new / old` per axis and clips them to the new image
//!   (`Resize(bbox_clip_border=True)`); boxes are never dropped by a resize;
//! - crop shifts boxes by the crop origin, clips them to the crop and drops the boxes (with their
//!   labels and instance masks) that keep no area: `x2 > x1 && y2 > y1` must hold
//!   (`RandomCrop(bbox_clip_border=True)`);
//! - horizontal flip maps `x1' = W − x2, x2' = W − x1` (mmdet's `bbox_flip`, no −1: edges, not
//!   pixel indices);
//! - padding adds rows/columns at the bottom and right: 0 in the image and instance masks,
//!   [`IGNORE`] (255) in the semantic map (`Pad(pad_val=0, seg_pad_val=255)`).
//!
//! Random variants draw from the caller's seeded RNG, so a (seed, epoch, index) sample is
//! reproducible; the draws mirror mmdet/mmseg's distributions, not numpy's exact streams.

use image::RgbImage;
use rand::Rng;

use crate::error::{DataError, Result};
use crate::image_io::LabelMap;
use crate::pil;
use crate::segmentation::IGNORE;
use crate::transforms::{self, Interpolation};

/// `[x1, y1, x2, y2]` in pixel-edge coordinates.
pub type BoxXyxy = [f32; 4];

/// An image with whatever targets travel with it.
#[derive(Debug, Clone, PartialEq)]
pub struct JointSample {
    pub image: RgbImage,
    /// Semantic label map of the image's size (255 = ignore).
    pub seg: Option<LabelMap>,
    pub boxes: Vec<BoxXyxy>,
    /// One category per box.
    pub labels: Vec<u64>,
    /// Either empty or one 0/1 mask of the image's size per box.
    pub instance_masks: Vec<LabelMap>,
}

impl JointSample {
    pub fn new(image: RgbImage) -> Self {
        JointSample {
            image,
            seg: None,
            boxes: Vec::new(),
            labels: Vec::new(),
            instance_masks: Vec::new(),
        }
    }

    pub fn with_seg(mut self, seg: LabelMap) -> Self {
        self.seg = Some(seg);
        self
    }

    pub fn with_boxes(mut self, boxes: Vec<BoxXyxy>, labels: Vec<u64>) -> Self {
        self.boxes = boxes;
        self.labels = labels;
        self
    }

    pub fn with_instance_masks(mut self, masks: Vec<LabelMap>) -> Self {
        self.instance_masks = masks;
        self
    }

    pub fn width(&self) -> u32 {
        self.image.width()
    }

    pub fn height(&self) -> u32 {
        self.image.height()
    }

    /// Checks that the targets agree with the image and with each other.
    pub fn validate(&self) -> Result<()> {
        let (w, h) = (self.width(), self.height());
        let same_size = |m: &LabelMap| m.width == w && m.height == h;
        if let Some(seg) = &self.seg {
            if !same_size(seg) {
                return Err(DataError::Invalid(format!(
                    "label map is {}x{} but the image is {w}x{h}",
                    seg.width, seg.height
                )));
            }
        }
        if self.labels.len() != self.boxes.len() {
            return Err(DataError::Invalid(format!(
                "{} boxes but {} labels",
                self.boxes.len(),
                self.labels.len()
            )));
        }
        if !self.instance_masks.is_empty() {
            if self.instance_masks.len() != self.boxes.len() {
                return Err(DataError::Invalid(format!(
                    "{} boxes but {} instance masks",
                    self.boxes.len(),
                    self.instance_masks.len()
                )));
            }
            if let Some(m) = self.instance_masks.iter().find(|m| !same_size(m)) {
                return Err(DataError::Invalid(format!(
                    "instance mask is {}x{} but the image is {w}x{h}",
                    m.width, m.height
                )));
            }
        }
        if let Some(b) = self
            .boxes
            .iter()
            .find(|b| b.iter().any(|v| !v.is_finite()) || b[2] < b[0] || b[3] < b[1])
        {
            return Err(DataError::Invalid(format!(
                "box {b:?} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2"
            )));
        }
        Ok(())
    }
}

/// mmcv `rescale_size` with a `(long, short)` scale: the largest factor that keeps the long side
/// within `long_edge` and the short side within `short_edge`; sizes are `int(x * f + 0.5)`.
pub fn rescale_size(width: u32, height: u32, long_edge: u32, short_edge: u32) -> (u32, u32) {
    let (long_edge, short_edge) = (long_edge.max(short_edge), long_edge.min(short_edge));
    let factor = (long_edge as f64 / width.max(height) as f64)
        .min(short_edge as f64 / width.min(height) as f64);
    (
        (width as f64 * factor + 0.5) as u32,
        (height as f64 * factor + 0.5) as u32,
    )
}

fn resize_labels(map: &LabelMap, width: u32, height: u32) -> LabelMap {
    LabelMap {
        width,
        height,
        labels: pil::scale_nearest(
            &map.labels,
            map.width as usize,
            map.height as usize,
            1,
            width as usize,
            height as usize,
        ),
    }
}

/// Resizes to exactly `width` x `height`: the image with `filter`, label maps with NEAREST,
/// boxes scaled by the f32 factors and clipped to the new image.
pub fn resize(s: &JointSample, width: u32, height: u32, filter: Interpolation) -> JointSample {
    let w_scale = (width as f64 / s.width() as f64) as f32;
    let h_scale = (height as f64 / s.height() as f64) as f32;
    let (wf, hf) = (width as f32, height as f32);
    JointSample {
        image: transforms::resize(&s.image, width, height, filter),
        seg: s.seg.as_ref().map(|m| resize_labels(m, width, height)),
        boxes: s
            .boxes
            .iter()
            .map(|b| {
                [
                    (b[0] * w_scale).clamp(0.0, wf),
                    (b[1] * h_scale).clamp(0.0, hf),
                    (b[2] * w_scale).clamp(0.0, wf),
                    (b[3] * h_scale).clamp(0.0, hf),
                ]
            })
            .collect(),
        labels: s.labels.clone(),
        instance_masks: s
            .instance_masks
            .iter()
            .map(|m| resize_labels(m, width, height))
            .collect(),
    }
}

/// `Resize(img_scale=(long, short), keep_ratio=True)`: see [`rescale_size`].
pub fn resize_keep_ratio(
    s: &JointSample,
    long_edge: u32,
    short_edge: u32,
    filter: Interpolation,
) -> JointSample {
    let (w, h) = rescale_size(s.width(), s.height(), long_edge, short_edge);
    resize(s, w, h, filter)
}

fn crop_labels(map: &LabelMap, x: u32, y: u32, width: u32, height: u32) -> LabelMap {
    let mut labels = Vec::with_capacity((width * height) as usize);
    for row in y..y + height {
        let start = (row * map.width + x) as usize;
        labels.extend_from_slice(&map.labels[start..start + width as usize]);
    }
    LabelMap {
        width,
        height,
        labels,
    }
}

/// Crops the window with top-left `(x, y)` and size `width` x `height`, cut to the image as numpy
/// slicing does (a window reaching past the image gives a smaller crop). Boxes are shifted,
/// clipped to the crop and dropped when no area is left, with their labels and instance masks.
pub fn crop(s: &JointSample, x: u32, y: u32, width: u32, height: u32) -> JointSample {
    let x = x.min(s.width());
    let y = y.min(s.height());
    let width = width.min(s.width() - x);
    let height = height.min(s.height() - y);
    let (wf, hf, xf, yf) = (width as f32, height as f32, x as f32, y as f32);
    let mut boxes = Vec::new();
    let mut labels = Vec::new();
    let mut instance_masks = Vec::new();
    for (i, b) in s.boxes.iter().enumerate() {
        let c = [
            (b[0] - xf).clamp(0.0, wf),
            (b[1] - yf).clamp(0.0, hf),
            (b[2] - xf).clamp(0.0, wf),
            (b[3] - yf).clamp(0.0, hf),
        ];
        if c[2] > c[0] && c[3] > c[1] {
            boxes.push(c);
            labels.push(s.labels[i]);
            if let Some(m) = s.instance_masks.get(i) {
                instance_masks.push(crop_labels(m, x, y, width, height));
            }
        }
    }
    JointSample {
        image: transforms::crop(&s.image, y as i64, x as i64, height, width),
        seg: s.seg.as_ref().map(|m| crop_labels(m, x, y, width, height)),
        boxes,
        labels,
        instance_masks,
    }
}

fn flip_labels(map: &LabelMap) -> LabelMap {
    let mut labels = map.labels.clone();
    for row in labels.chunks_exact_mut(map.width as usize) {
        row.reverse();
    }
    LabelMap {
        width: map.width,
        height: map.height,
        labels,
    }
}

/// Mirrors left-right; boxes become `[W − x2, y1, W − x1, y2]`.
pub fn hflip(s: &JointSample) -> JointSample {
    let w = s.width() as f32;
    JointSample {
        image: transforms::hflip(&s.image),
        seg: s.seg.as_ref().map(flip_labels),
        boxes: s
            .boxes
            .iter()
            .map(|b| [w - b[2], b[1], w - b[0], b[3]])
            .collect(),
        labels: s.labels.clone(),
        instance_masks: s.instance_masks.iter().map(flip_labels).collect(),
    }
}

/// Target of [`pad`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadTo {
    /// Exactly this size (must not be smaller than the image).
    Size { width: u32, height: u32 },
    /// The next multiples of this divisor (mmdet's `size_divisor`, e.g. 32).
    Divisor(u32),
}

fn pad_labels(map: &LabelMap, width: u32, height: u32, fill: u8) -> LabelMap {
    let mut out = LabelMap::new(width, height, fill);
    for (src, dst) in map
        .labels
        .chunks_exact(map.width as usize)
        .zip(out.labels.chunks_exact_mut(width as usize))
    {
        dst[..src.len()].copy_from_slice(src);
    }
    out
}

/// Pads at the bottom and right: image with 0, semantic map with [`IGNORE`], instance masks
/// with 0. Boxes do not move.
pub fn pad(s: &JointSample, to: PadTo) -> Result<JointSample> {
    let (w, h) = (s.width(), s.height());
    let (width, height) = match to {
        PadTo::Size { width, height } => {
            if width < w || height < h {
                return Err(DataError::Invalid(format!(
                    "cannot pad a {w}x{h} image to the smaller {width}x{height}"
                )));
            }
            (width, height)
        }
        PadTo::Divisor(0) => return Err(DataError::Invalid("pad divisor must be positive".into())),
        PadTo::Divisor(d) => (w.div_ceil(d) * d, h.div_ceil(d) * d),
    };
    Ok(JointSample {
        // A window reaching past the image reads zeros.
        image: transforms::crop(&s.image, 0, 0, height, width),
        seg: s.seg.as_ref().map(|m| pad_labels(m, width, height, IGNORE)),
        boxes: s.boxes.clone(),
        labels: s.labels.clone(),
        instance_masks: s
            .instance_masks
            .iter()
            .map(|m| pad_labels(m, width, height, 0))
            .collect(),
    })
}

/// `RandomFlip(prob=p, direction='horizontal')`.
pub fn random_hflip(s: &JointSample, p: f64, rng: &mut impl Rng) -> JointSample {
    if rng.random::<f64>() < p {
        hflip(s)
    } else {
        s.clone()
    }
}

/// A uniformly placed `width` x `height` window (offsets `0..=max(W − width, 0)`), as
/// mmdet/mmseg `RandomCrop` draw it. Returns `(x, y)`.
fn crop_origin(s: &JointSample, width: u32, height: u32, rng: &mut impl Rng) -> (u32, u32) {
    let margin_w = s.width().saturating_sub(width);
    let margin_h = s.height().saturating_sub(height);
    let y = rng.random_range(0..=margin_h);
    let x = rng.random_range(0..=margin_w);
    (x, y)
}

/// mmdet `RandomCrop(crop_size=(height, width), crop_type='absolute')`: `None` when no box keeps
/// any area and `allow_negative_crop` is false (mmdet then draws another image).
pub fn random_crop_boxes(
    s: &JointSample,
    width: u32,
    height: u32,
    allow_negative_crop: bool,
    rng: &mut impl Rng,
) -> Option<JointSample> {
    let (x, y) = crop_origin(s, width, height, rng);
    let out = crop(s, x, y, width, height);
    if out.boxes.is_empty() && !allow_negative_crop {
        return None;
    }
    Some(out)
}

/// Whether no single class covers `cat_max_ratio` or more of the non-ignored pixels, and at
/// least two classes are present (mmseg's acceptance test).
fn crop_is_varied(seg: &LabelMap, x: u32, y: u32, width: u32, height: u32, ratio: f64) -> bool {
    let mut counts = [0u64; 256];
    let width = width.min(seg.width - x.min(seg.width));
    let height = height.min(seg.height - y.min(seg.height));
    for row in y..y + height {
        let start = (row * seg.width + x) as usize;
        for &l in &seg.labels[start..start + width as usize] {
            counts[l as usize] += 1;
        }
    }
    counts[IGNORE as usize] = 0;
    let present = counts.iter().filter(|&&c| c > 0).count();
    let total: u64 = counts.iter().sum();
    let max = counts.iter().copied().max().unwrap_or(0);
    present > 1 && (max as f64) / (total as f64) < ratio
}

/// mmseg `RandomCrop(crop_size=(height, width), cat_max_ratio)`: with `cat_max_ratio < 1`, up to
/// ten windows are rejected while one class dominates the crop's labels (ignored pixels aside);
/// the eleventh draw is kept unchecked, as in mmseg. Without a label map no window is checked.
pub fn random_crop_seg(
    s: &JointSample,
    width: u32,
    height: u32,
    cat_max_ratio: f64,
    rng: &mut impl Rng,
) -> JointSample {
    let (mut x, mut y) = crop_origin(s, width, height, rng);
    if let (Some(seg), true) = (&s.seg, cat_max_ratio < 1.0) {
        for _ in 0..10 {
            if crop_is_varied(seg, x, y, width, height, cat_max_ratio) {
                break;
            }
            (x, y) = crop_origin(s, width, height, rng);
        }
    }
    crop(s, x, y, width, height)
}

/// mmseg `Resize(img_scale=(long, short), ratio_range=(lo, hi), keep_ratio=True)`: the scale is
/// multiplied by a uniform ratio (`int(edge * ratio)`), then [`resize_keep_ratio`].
pub fn random_rescale(
    s: &JointSample,
    long_edge: u32,
    short_edge: u32,
    ratio_range: (f64, f64),
    filter: Interpolation,
    rng: &mut impl Rng,
) -> JointSample {
    let ratio = rng.random::<f64>() * (ratio_range.1 - ratio_range.0) + ratio_range.0;
    let long = (long_edge as f64 * ratio) as u32;
    let short = (short_edge as f64 * ratio) as u32;
    resize_keep_ratio(s, long.max(1), short.max(1), filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::sample_rng;

    /// 8x6 image whose red channel is x*10 and green y*10; labels are `x + 10 * y`.
    fn sample() -> JointSample {
        let image = RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 7]));
        let mut seg = LabelMap::new(8, 6, 0);
        for y in 0..6 {
            for x in 0..8 {
                seg.labels[(y * 8 + x) as usize] = (x + 10 * y) as u8;
            }
        }
        // Instance 0 covers columns 1..=2, rows 1..=3; instance 1 columns 5..=7, rows 0..=1.
        let mut m0 = LabelMap::new(8, 6, 0);
        let mut m1 = LabelMap::new(8, 6, 0);
        for y in 1..4 {
            for x in 1..3 {
                m0.labels[y * 8 + x] = 1;
            }
        }
        for y in 0..2 {
            for x in 5..8 {
                m1.labels[y * 8 + x] = 1;
            }
        }
        JointSample::new(image)
            .with_seg(seg)
            .with_boxes(vec![[1.0, 1.0, 3.0, 4.0], [5.0, 0.0, 8.0, 2.0]], vec![3, 9])
            .with_instance_masks(vec![m0, m1])
    }

    #[test]
    fn hflip_mirrors_boxes_as_mmdet_does() {
        let s = sample();
        let f = hflip(&s);
        // W = 8: [1, 1, 3, 4] -> [8-3, 1, 8-1, 4]; [5, 0, 8, 2] -> [0, 0, 3, 2].
        assert_eq!(f.boxes, vec![[5.0, 1.0, 7.0, 4.0], [0.0, 0.0, 3.0, 2.0]]);
        assert_eq!(f.image.get_pixel(0, 2).0, [70, 20, 7]);
        assert_eq!(f.seg.as_ref().unwrap().get(0, 2), 27);
        // The flipped instance mask still lies exactly inside the flipped box: columns 5..=6.
        let m0 = &f.instance_masks[0];
        let cols: Vec<u32> = (0..8).filter(|&x| m0.get(x, 2) == 1).collect();
        assert_eq!(cols, vec![5, 6]);
        assert_eq!(hflip(&f), s);
        f.validate().unwrap();
    }

    #[test]
    fn crop_clips_boxes_and_drops_the_ones_left_empty() {
        let s = sample();
        // Window x 2..6, y 1..5: box 0 [1,1,3,4] -> [0,0,1,3]; box 1 [5,0,8,2] -> [3,0,4,1].
        let c = crop(&s, 2, 1, 4, 4);
        assert_eq!(c.boxes, vec![[0.0, 0.0, 1.0, 3.0], [3.0, 0.0, 4.0, 1.0]]);
        assert_eq!(c.labels, vec![3, 9]);
        assert_eq!((c.width(), c.height()), (4, 4));
        assert_eq!(c.image.get_pixel(0, 0).0, [20, 10, 7]);
        assert_eq!(c.seg.as_ref().unwrap().get(3, 3), 45);
        assert_eq!(c.instance_masks[1].get(3, 0), 1);
        // Window x 3..8, y 2..6: box 1 ends at y = 2 -> height 0, dropped with its mask;
        // box 0 ends at x = 3 -> width 0, dropped too.
        let c = crop(&s, 3, 2, 5, 4);
        assert!(c.boxes.is_empty() && c.labels.is_empty() && c.instance_masks.is_empty());
        // Window x 0..2, y 2..6: only box 0 survives, clipped to [1, 0, 2, 2].
        let c = crop(&s, 0, 2, 2, 10);
        assert_eq!(
            (c.width(), c.height()),
            (2, 4),
            "cut to the image like numpy slicing"
        );
        assert_eq!(c.boxes, vec![[1.0, 0.0, 2.0, 2.0]]);
        assert_eq!(c.labels, vec![3]);
        c.validate().unwrap();
    }

    #[test]
    fn resize_scales_boxes_and_uses_nearest_for_labels() {
        let s = sample();
        let r = resize(&s, 16, 3, Interpolation::Bilinear);
        // x scale 2, y scale 0.5.
        assert_eq!(r.boxes, vec![[2.0, 0.5, 6.0, 2.0], [10.0, 0.0, 16.0, 1.0]]);
        let seg = r.seg.as_ref().unwrap();
        // NEAREST: output (x, y) samples source (floor((x + 0.5) / 2), floor((y + 0.5) * 2)).
        assert_eq!(seg.get(0, 0), 10);
        assert_eq!(seg.get(15, 2), 7 + 50);
        assert_eq!(seg.get(5, 1), 2 + 30);
        // Labels stay labels: nothing outside the source set appears.
        assert!(seg.labels.iter().all(|&l| l % 10 < 8 && l < 60));
        assert!(r
            .instance_masks
            .iter()
            .all(|m| m.labels.iter().all(|&v| v <= 1)));
        // Upscaled boxes are clipped to the new image.
        let mut big = s.clone();
        big.boxes[1] = [5.0, 0.0, 9.5, 2.0];
        assert_eq!(
            resize(&big, 16, 12, Interpolation::Bicubic).boxes[1][2],
            16.0
        );
    }

    #[test]
    fn rescale_size_follows_mmcv() {
        // COCO: (1333, 800) on 640x480 -> factor min(1333/640, 800/480) = 1.6667 -> 1067x800.
        assert_eq!(rescale_size(640, 480, 1333, 800), (1067, 800));
        // A long thin image is limited by the long edge: 2000x500 -> 1333x333 (333.25 + 0.5).
        assert_eq!(rescale_size(2000, 500, 1333, 800), (1333, 333));
        // Order of the edges does not matter (mmcv takes max/min).
        assert_eq!(rescale_size(512, 683, 512, 2048), (512, 683));
        let r = resize_keep_ratio(&sample(), 16, 12, Interpolation::Bilinear);
        assert_eq!((r.width(), r.height()), (16, 12));
        assert_eq!(r.boxes[0], [2.0, 2.0, 6.0, 8.0]);
    }

    #[test]
    fn pad_fills_ignore_in_labels_and_zero_elsewhere() {
        let s = sample();
        let p = pad(&s, PadTo::Divisor(5)).unwrap();
        assert_eq!((p.width(), p.height()), (10, 10));
        assert_eq!(p.boxes, s.boxes);
        let seg = p.seg.as_ref().unwrap();
        assert_eq!(seg.get(7, 5), 57);
        assert_eq!(seg.get(8, 0), IGNORE);
        assert_eq!(seg.get(0, 6), IGNORE);
        assert_eq!(p.image.get_pixel(9, 9).0, [0, 0, 0]);
        assert_eq!(p.image.get_pixel(7, 5).0, [70, 50, 7]);
        assert_eq!(p.instance_masks[1].get(9, 0), 0);
        assert_eq!(p.instance_masks[1].get(7, 0), 1);
        let q = pad(
            &s,
            PadTo::Size {
                width: 8,
                height: 7,
            },
        )
        .unwrap();
        assert_eq!(q.seg.as_ref().unwrap().labels[48..56], [IGNORE; 8]);
        assert!(pad(
            &s,
            PadTo::Size {
                width: 7,
                height: 7
            }
        )
        .is_err());
        assert!(pad(&s, PadTo::Divisor(0)).is_err());
        // A divisor the size already meets changes nothing.
        assert_eq!(pad(&s, PadTo::Divisor(2)).unwrap(), s);
    }

    #[test]
    fn random_variants_are_seeded_and_respect_their_rules() {
        let s = sample();
        let a = random_crop_boxes(&s, 4, 4, false, &mut sample_rng(1, 0, 0));
        let b = random_crop_boxes(&s, 4, 4, false, &mut sample_rng(1, 0, 0));
        assert_eq!(a, b);
        let mut rng = sample_rng(2, 0, 0);
        let (mut kept, mut rejected) = (0, 0);
        for _ in 0..200 {
            // A 1x1 window often misses both boxes.
            match random_crop_boxes(&s, 1, 1, false, &mut rng) {
                Some(c) => {
                    assert!(!c.boxes.is_empty());
                    kept += 1;
                }
                None => rejected += 1,
            }
            let c = random_crop_boxes(&s, 1, 1, true, &mut rng).unwrap();
            assert_eq!((c.width(), c.height()), (1, 1));
        }
        assert!(kept > 0 && rejected > 0, "{kept} kept, {rejected} rejected");
        // Windows larger than the image keep it whole.
        assert_eq!(random_crop_boxes(&s, 20, 20, false, &mut rng).unwrap(), s);

        // cat_max_ratio: one class except a 3x3 patch of class 1 at columns 5..8, rows 3..6.
        // Of the 24 positions of a 3x3 window, 5 overlap the patch by 3, 4 or 6 pixels and so
        // pass (no class reaches 0.75 of 9); the others hold one class or 7+ of one.
        let mut seg = LabelMap::new(8, 6, 0);
        for y in 3..6 {
            for x in 5..8 {
                seg.labels[y * 8 + x] = 1;
            }
        }
        let only_seg = JointSample::new(s.image.clone()).with_seg(seg);
        let passing = |c: &JointSample| {
            let ones = c
                .seg
                .as_ref()
                .unwrap()
                .labels
                .iter()
                .filter(|&&l| l == 1)
                .count();
            (3..=6).contains(&ones)
        };
        let checked = (0..200)
            .filter(|&i| {
                passing(&random_crop_seg(
                    &only_seg,
                    3,
                    3,
                    0.75,
                    &mut sample_rng(3, 0, i),
                ))
            })
            .count();
        // Ten checked draws and an unchecked eleventh pass with 1 - (19/24)^10 (1 - 5/24) ≈ 0.92;
        // an unchecked single draw with 5/24 ≈ 0.21.
        assert!(checked > 160, "{checked} of 200 checked crops passed");
        let unchecked = (0..200)
            .filter(|&i| {
                passing(&random_crop_seg(
                    &only_seg,
                    3,
                    3,
                    1.0,
                    &mut sample_rng(3, 0, i),
                ))
            })
            .count();
        assert!(unchecked < 70, "{unchecked} of 200 unchecked crops passed");

        let f: usize = (0..1000)
            .filter(|&i| random_hflip(&s, 0.5, &mut sample_rng(4, 0, i)) != s)
            .count();
        assert!((400..600).contains(&f), "{f} flips of 1000");
        let r = random_rescale(
            &s,
            16,
            12,
            (0.5, 2.0),
            Interpolation::Bilinear,
            &mut sample_rng(5, 0, 0),
        );
        assert!(r.width() >= 4 && r.width() <= 32, "{}", r.width());
    }
}
