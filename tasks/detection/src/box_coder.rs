//! The delta (dx, dy, dw, dh) box coder of mmdet 2.11.
//!
//! Transcribes `mmdet/core/bbox/coder/delta_xywh_bbox_coder.py` (`DeltaXYWHBBoxCoder`, `bbox2delta`,
//! `delta2bbox`). Widths are `x2 − x1` (no +1); decoding clamps dw/dh to ±|ln(16/1000)| and, when a
//! `max_shape` is given, clips x to [0, W] and y to [0, H]. Every step is f32 in torch's order
//! (`deltas * stds + means` is two roundings, never a fused multiply-add).

use crate::structures::Box4;

/// mmdet's `wh_ratio_clip` default.
pub const WH_RATIO_CLIP: f64 = 16.0 / 1000.0;

/// `np.abs(np.log(wh_ratio_clip))`, computed in double and rounded once to f32 as torch's clamp does.
pub fn max_ratio(wh_ratio_clip: f64) -> f32 {
    wh_ratio_clip.ln().abs() as f32
}

/// `DeltaXYWHBBoxCoder(target_means, target_stds, clip_border)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeltaXYWHBBoxCoder {
    pub means: [f32; 4],
    pub stds: [f32; 4],
    pub clip_border: bool,
    pub wh_ratio_clip: f64,
}

/// The cascade stages' `target_stds` in iBOT's Cascade Mask R-CNN config.
pub const CASCADE_STDS: [[f32; 4]; 3] = [
    [0.1, 0.1, 0.2, 0.2],
    [0.05, 0.05, 0.1, 0.1],
    [0.033, 0.033, 0.067, 0.067],
];

impl DeltaXYWHBBoxCoder {
    pub fn new(means: [f32; 4], stds: [f32; 4]) -> Self {
        Self {
            means,
            stds,
            clip_border: true,
            wh_ratio_clip: WH_RATIO_CLIP,
        }
    }

    /// The RPN coder: means 0, stds 1.
    pub fn rpn() -> Self {
        Self::new([0.0; 4], [1.0; 4])
    }

    /// The coder of cascade stage `stage` (0, 1, 2).
    pub fn cascade_stage(stage: usize) -> Self {
        Self::new([0.0; 4], CASCADE_STDS[stage])
    }

    /// `bbox2delta(proposal, gt)`.
    pub fn encode_one(&self, p: &Box4, g: &Box4) -> [f32; 4] {
        let px = (p[0] + p[2]) * 0.5;
        let py = (p[1] + p[3]) * 0.5;
        let pw = p[2] - p[0];
        let ph = p[3] - p[1];
        let gx = (g[0] + g[2]) * 0.5;
        let gy = (g[1] + g[3]) * 0.5;
        let gw = g[2] - g[0];
        let gh = g[3] - g[1];
        let d = [
            (gx - px) / pw,
            (gy - py) / ph,
            (gw / pw).ln(),
            (gh / ph).ln(),
        ];
        std::array::from_fn(|k| (d[k] - self.means[k]) / self.stds[k])
    }

    /// `encode(proposals, gts)`, one delta per pair.
    pub fn encode(&self, proposals: &[Box4], gts: &[Box4]) -> Vec<[f32; 4]> {
        assert_eq!(
            proposals.len(),
            gts.len(),
            "encode needs one gt per proposal"
        );
        proposals
            .iter()
            .zip(gts)
            .map(|(p, g)| self.encode_one(p, g))
            .collect()
    }

    /// `delta2bbox` for one box and one 4-vector of deltas; `max_shape` is (h, w).
    pub fn decode_one(&self, roi: &Box4, delta: &[f32], max_shape: Option<(usize, usize)>) -> Box4 {
        let mr = max_ratio(self.wh_ratio_clip);
        let dd: [f32; 4] = std::array::from_fn(|k| delta[k] * self.stds[k] + self.means[k]);
        let (dx, dy) = (dd[0], dd[1]);
        // torch's clamp keeps NaN, as `f32::clamp` does
        let dw = dd[2].clamp(-mr, mr);
        let dh = dd[3].clamp(-mr, mr);
        let px = (roi[0] + roi[2]) * 0.5;
        let py = (roi[1] + roi[3]) * 0.5;
        let pw = roi[2] - roi[0];
        let ph = roi[3] - roi[1];
        let gw = pw * dw.exp();
        let gh = ph * dh.exp();
        let gx = px + pw * dx;
        let gy = py + ph * dy;
        let b = [gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5];
        match (self.clip_border, max_shape) {
            (true, Some((h, w))) => clip_where(b, h as f32, w as f32),
            _ => b,
        }
    }

    /// `decode(rois, deltas, max_shape)` with one 4-vector per RoI.
    pub fn decode(
        &self,
        rois: &[Box4],
        deltas: &[[f32; 4]],
        max_shape: Option<(usize, usize)>,
    ) -> Vec<Box4> {
        assert_eq!(rois.len(), deltas.len(), "decode needs one delta per roi");
        rois.iter()
            .zip(deltas)
            .map(|(r, d)| self.decode_one(r, d, max_shape))
            .collect()
    }

    /// `decode` of class-specific deltas: `deltas` is row-major `[N, 4·K]` and so is the result
    /// (box of class k of RoI i at `[i·4K + 4k .. +4]`), as `delta2bbox` returns `view(deltas.size())`.
    pub fn decode_multiclass(
        &self,
        rois: &[Box4],
        deltas: &[f32],
        max_shape: Option<(usize, usize)>,
    ) -> Vec<f32> {
        let n = rois.len();
        if n == 0 {
            return Vec::new();
        }
        assert_eq!(deltas.len() % (4 * n), 0, "deltas must be [N, 4K]");
        let k = deltas.len() / (4 * n);
        let mut out = Vec::with_capacity(deltas.len());
        for (i, r) in rois.iter().enumerate() {
            for c in 0..k {
                let d = &deltas[(i * k + c) * 4..(i * k + c) * 4 + 4];
                out.extend_from_slice(&self.decode_one(r, d, max_shape));
            }
        }
        out
    }
}

// `torch.where(b < 0, 0, b)` then `torch.where(b > max, max, b)`: NaN passes through both.
#[inline]
fn clip_where(b: Box4, h: f32, w: f32) -> Box4 {
    let max = [w, h, w, h];
    std::array::from_fn(|k| {
        let v = if b[k] < 0.0 { 0.0 } else { b[k] };
        if v > max[k] {
            max[k]
        } else {
            v
        }
    })
}
