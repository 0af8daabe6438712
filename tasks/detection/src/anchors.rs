//! Anchor grids, as mmdet 2.11 generates them for the RPN.
//!
//! Transcribes `mmdet/core/anchor/anchor_generator.py` (`AnchorGenerator`: `gen_single_level_base_anchors`,
//! `single_level_grid_anchors`, `valid_flags`) and `mmdet/core/anchor/utils.py` (`anchor_inside_flags`).
//! The official config is `AnchorGenerator(scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])`
//! with base sizes = strides and `center_offset = 0`: the anchor centre of cell (x, y) sits at
//! `(x·stride, y·stride)`, the top-left corner of the cell, not its centre.
//!
//! All arithmetic is f32 in torch's operation order (ratios and scales are `torch.Tensor`s, i.e. f32).

use crate::structures::Box4;

/// mmdet's `AnchorGenerator` (square strides only, as every config in this project uses).
#[derive(Clone, Debug)]
pub struct AnchorGenerator {
    pub strides: Vec<u32>,
    pub ratios: Vec<f32>,
    pub scales: Vec<f32>,
    pub base_sizes: Vec<f32>,
    /// multiply scales first (`scale_major=True`, mmdet's default): anchors of one ratio are adjacent
    pub scale_major: bool,
    pub center_offset: f32,
    /// per level, the `ratios.len()·scales.len()` anchors of the cell at the origin
    pub base_anchors: Vec<Vec<Box4>>,
}

impl AnchorGenerator {
    /// `base_sizes = None` means base size = stride (mmdet: the shorter side of the stride).
    pub fn new(
        strides: &[u32],
        ratios: &[f32],
        scales: &[f32],
        base_sizes: Option<&[f32]>,
        scale_major: bool,
        center_offset: f32,
    ) -> Self {
        assert!(
            (0.0..=1.0).contains(&center_offset),
            "center_offset must be in [0, 1]"
        );
        let base_sizes: Vec<f32> = match base_sizes {
            Some(b) => {
                assert_eq!(b.len(), strides.len(), "one base size per stride");
                b.to_vec()
            }
            None => strides.iter().map(|&s| s as f32).collect(),
        };
        let mut g = AnchorGenerator {
            strides: strides.to_vec(),
            ratios: ratios.to_vec(),
            scales: scales.to_vec(),
            base_sizes,
            scale_major,
            center_offset,
            base_anchors: Vec::new(),
        };
        g.base_anchors = g
            .base_sizes
            .iter()
            .map(|&b| g.single_level_base_anchors(b))
            .collect();
        g
    }

    /// The official RPN generator of iBOT's Cascade Mask R-CNN (and of every mmdet FPN two-stage config).
    pub fn mmdet_rpn() -> Self {
        Self::new(
            &[4, 8, 16, 32, 64],
            &[0.5, 1.0, 2.0],
            &[8.0],
            None,
            true,
            0.0,
        )
    }

    pub fn num_levels(&self) -> usize {
        self.strides.len()
    }

    pub fn num_base_anchors(&self, level: usize) -> usize {
        self.base_anchors[level].len()
    }

    /// `gen_single_level_base_anchors`: h_ratio = √r, w_ratio = 1/h_ratio, ws = base·w_ratio·scale,
    /// boxes `c ± 0.5·ws` with no rounding.
    fn single_level_base_anchors(&self, base_size: f32) -> Vec<Box4> {
        // x_center = center_offset * w is computed by Python in double, then meets an f32 tensor
        let center = (self.center_offset as f64 * base_size as f64) as f32;
        let h_ratios: Vec<f32> = self.ratios.iter().map(|r| r.sqrt()).collect();
        let w_ratios: Vec<f32> = h_ratios.iter().map(|h| 1.0 / h).collect();
        let mut out = Vec::with_capacity(self.ratios.len() * self.scales.len());
        let mut push = |wr: f32, hr: f32, s: f32| {
            let ws = base_size * wr * s;
            let hs = base_size * hr * s;
            out.push([
                center - 0.5 * ws,
                center - 0.5 * hs,
                center + 0.5 * ws,
                center + 0.5 * hs,
            ]);
        };
        if self.scale_major {
            for (wr, hr) in w_ratios.iter().zip(&h_ratios) {
                for &s in &self.scales {
                    push(*wr, *hr, s);
                }
            }
        } else {
            for &s in &self.scales {
                for (wr, hr) in w_ratios.iter().zip(&h_ratios) {
                    push(*wr, *hr, s);
                }
            }
        }
        out
    }

    /// `single_level_grid_anchors`: y outer, x inner, the level's base anchors innermost.
    pub fn single_level_grid_anchors(&self, level: usize, featmap: (usize, usize)) -> Vec<Box4> {
        let (fh, fw) = featmap;
        let base = &self.base_anchors[level];
        let mut out = Vec::with_capacity(fh * fw * base.len());
        for y in 0..fh {
            // torch: arange(int64) * stride, then `type_as` f32: exact for any realistic size
            let sy = (y as u64 * self.strides[level] as u64) as f32;
            for x in 0..fw {
                let sx = (x as u64 * self.strides[level] as u64) as f32;
                for b in base {
                    out.push([b[0] + sx, b[1] + sy, b[2] + sx, b[3] + sy]);
                }
            }
        }
        out
    }

    /// `grid_anchors`: one anchor list per level; `featmap_sizes` are (h, w).
    pub fn grid_anchors(&self, featmap_sizes: &[(usize, usize)]) -> Vec<Vec<Box4>> {
        assert_eq!(featmap_sizes.len(), self.num_levels(), "one size per level");
        featmap_sizes
            .iter()
            .enumerate()
            .map(|(l, &s)| self.single_level_grid_anchors(l, s))
            .collect()
    }

    /// `valid_flags(featmap_sizes, pad_shape)`: cells beyond `ceil(pad / stride)` (the part of the
    /// batch-padded feature map that lies outside this image's own padded size) are invalid.
    pub fn valid_flags(
        &self,
        featmap_sizes: &[(usize, usize)],
        pad_shape: (usize, usize),
    ) -> Vec<Vec<bool>> {
        assert_eq!(featmap_sizes.len(), self.num_levels(), "one size per level");
        let (h, w) = pad_shape;
        featmap_sizes
            .iter()
            .enumerate()
            .map(|(l, &(fh, fw))| {
                let s = self.strides[l] as usize;
                let vh = h.div_ceil(s).min(fh);
                let vw = w.div_ceil(s).min(fw);
                let a = self.num_base_anchors(l);
                let mut flags = Vec::with_capacity(fh * fw * a);
                for y in 0..fh {
                    for x in 0..fw {
                        let v = y < vh && x < vw;
                        flags.extend(std::iter::repeat_n(v, a));
                    }
                }
                flags
            })
            .collect()
    }
}

/// `anchor_inside_flags`: valid and fully inside the image (`img_shape`, before padding), with
/// `allowed_border` pixels of slack; a negative `allowed_border` keeps every valid anchor.
/// The right/bottom tests are strict (`x2 < w + border`), the left/top ones are not.
pub fn anchor_inside_flags(
    anchors: &[Box4],
    valid: &[bool],
    img_shape: (usize, usize),
    allowed_border: f32,
) -> Vec<bool> {
    assert_eq!(anchors.len(), valid.len(), "one flag per anchor");
    let (h, w) = (img_shape.0 as f32, img_shape.1 as f32);
    if allowed_border < 0.0 {
        return valid.to_vec();
    }
    anchors
        .iter()
        .zip(valid)
        .map(|(a, &v)| {
            v && a[0] >= -allowed_border
                && a[1] >= -allowed_border
                && a[2] < w + allowed_border
                && a[3] < h + allowed_border
        })
        .collect()
}

/// The FPN feature-map sizes for a batch padded to `batch_pad` (a multiple of 32): P2–P5 are
/// `pad / stride`, P6 = `max_pool2d(P5, 1, stride 2)` has `ceil(P5 / 2)` cells.
pub fn fpn_featmap_sizes(batch_pad: (usize, usize)) -> Vec<(usize, usize)> {
    let (h, w) = batch_pad;
    let mut v: Vec<(usize, usize)> = [4usize, 8, 16, 32].iter().map(|s| (h / s, w / s)).collect();
    let (h5, w5) = v[3];
    v.push((h5.div_ceil(2), w5.div_ceil(2)));
    v
}
