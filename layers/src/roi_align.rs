//! RoIAlign (average mode) and mmdet's multi-level RoI extractor.
//!
//! Semantics of mmcv 1.3 `mmcv/ops/csrc/pytorch/roi_align_cpu.cpp` and torchvision
//! `ops.roi_align(aligned=True, sampling_ratio=0)`, which both follow Detectron2: the RoI is scaled by
//! `spatial_scale` and shifted by −0.5 (`aligned`), each output bin averages a grid of
//! `ceil(roi_size / out_size)` × … bilinear samples (`sampling_ratio = 0`), a sample with y < −1, y > H,
//! x < −1 or x > W contributes 0, coordinates ≤ 0 are clamped to 0 and the upper neighbour is clamped
//! to H − 1 / W − 1; an empty grid (zero-size RoI) gives 0.
//!
//! Two forms:
//! - [`roi_align_host`] / [`roi_align_host_single`] / [`roi_align_host_backward`]: plain f32 loops in the
//!   kernel's order of operations (used for mask targets, and as the reference for the device form);
//! - [`roi_align`]: differentiable candle form. The sample weight is a product a(y)·b(x) and the
//!   "outside" rule is a product of indicators, so per RoI `out = A · F · Bᵀ` with A `[out_h, H]` and
//!   B `[out_w, W]` built on the host (1/grid folded in). Two matmuls apply them on the device; the
//!   backward comes from candle's autograd and runs the same on the CPU and CUDA.
//!
//! [`SingleRoIExtractor`] transcribes mmdet 2.11 `roi_extractors/single_level_roi_extractor.py`:
//! level = floor(log2(sqrt(w·h) / finest_scale + 1e-6)) clamped to [0, L − 1].

use candle_core::{DType, Device, Result, Tensor};

/// `RoIAlign(output_size, spatial_scale, sampling_ratio, pool_mode='avg', aligned)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiAlignConfig {
    pub out_h: usize,
    pub out_w: usize,
    pub spatial_scale: f32,
    /// samples per bin side; ≤ 0 means adaptive `ceil(roi_size / out_size)` (official 0)
    pub sampling_ratio: i32,
    /// shift by −0.5 px (mmcv's default, official); `false` is the legacy RoIAlign (size ≥ 1)
    pub aligned: bool,
}

impl RoiAlignConfig {
    /// mmcv's `RoIAlign(output_size=out, sampling_ratio=0)` on a map of the given stride.
    pub fn mmdet(out: usize, stride: u32) -> Self {
        Self {
            out_h: out,
            out_w: out,
            spatial_scale: (1.0 / stride as f64) as f32,
            sampling_ratio: 0,
            aligned: true,
        }
    }
}

// Per-RoI geometry, f32 in the kernel's order: start, bin size and grid count per axis.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    start_h: f32,
    start_w: f32,
    bin_h: f32,
    bin_w: f32,
    grid_h: usize,
    grid_w: usize,
}

fn geometry(roi: &[f32; 4], cfg: &RoiAlignConfig) -> Geometry {
    let offset = if cfg.aligned { 0.5f32 } else { 0.0 };
    let start_w = roi[0] * cfg.spatial_scale - offset;
    let start_h = roi[1] * cfg.spatial_scale - offset;
    let end_w = roi[2] * cfg.spatial_scale - offset;
    let end_h = roi[3] * cfg.spatial_scale - offset;
    let mut rw = end_w - start_w;
    let mut rh = end_h - start_h;
    if !cfg.aligned {
        rw = rw.max(1.0);
        rh = rh.max(1.0);
    }
    let bin_h = rh / cfg.out_h as f32;
    let bin_w = rw / cfg.out_w as f32;
    let (grid_h, grid_w) = if cfg.sampling_ratio > 0 {
        (cfg.sampling_ratio as usize, cfg.sampling_ratio as usize)
    } else {
        // ceil of an f32 division, then C++'s int conversion (negative sizes give an empty grid)
        let gh = (rh / cfg.out_h as f32).ceil();
        let gw = (rw / cfg.out_w as f32).ceil();
        (gh.max(0.0) as usize, gw.max(0.0) as usize)
    };
    Geometry {
        start_h,
        start_w,
        bin_h,
        bin_w,
        grid_h,
        grid_w,
    }
}

// Sample coordinate `start + p·bin + (i + .5)·bin / grid`, evaluated left to right in f32.
#[inline]
fn sample_coord(start: f32, p: usize, bin: f32, i: usize, grid: usize) -> f32 {
    start + p as f32 * bin + (i as f32 + 0.5) * bin / grid as f32
}

// One axis of `bilinear_interpolate`: None when the sample is outside, else (low, high, w_low, w_high).
#[inline]
fn axis_weights(v: f32, size: usize) -> Option<(usize, usize, f32, f32)> {
    if size == 0 || v < -1.0 || v > size as f32 {
        return None;
    }
    let mut v = if v <= 0.0 { 0.0 } else { v };
    let mut low = v as usize;
    let high;
    if low >= size - 1 {
        low = size - 1;
        high = size - 1;
        v = low as f32;
    } else {
        high = low + 1;
    }
    let l = v - low as f32;
    let h = 1.0 - l;
    Some((low, high, h, l))
}

/// Host RoIAlign of one RoI `[x1, y1, x2, y2]` on one `[C, H, W]` map → `[C, out_h, out_w]`.
/// Same operation order as the CPU kernels: per sample `w1·v1 + w2·v2 + w3·v3 + w4·v4`, summed over
/// the grid, divided by max(grid_h·grid_w, 1).
pub fn roi_align_host_single(
    input: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    roi: [f32; 4],
    cfg: &RoiAlignConfig,
) -> Vec<f32> {
    assert_eq!(
        input.len(),
        channels * height * width,
        "input must be [C, H, W]"
    );
    let g = geometry(&roi, cfg);
    let count = (g.grid_h * g.grid_w).max(1) as f32;
    // pre-calculated (positions, weights) per bin and sample, shared by all channels
    let mut pre = Vec::with_capacity(cfg.out_h * cfg.out_w * g.grid_h * g.grid_w);
    for ph in 0..cfg.out_h {
        for pw in 0..cfg.out_w {
            for iy in 0..g.grid_h {
                let y = sample_coord(g.start_h, ph, g.bin_h, iy, g.grid_h);
                for ix in 0..g.grid_w {
                    let x = sample_coord(g.start_w, pw, g.bin_w, ix, g.grid_w);
                    pre.push(match (axis_weights(y, height), axis_weights(x, width)) {
                        (Some((yl, yh, hy, ly)), Some((xl, xh, hx, lx))) => (
                            [
                                yl * width + xl,
                                yl * width + xh,
                                yh * width + xl,
                                yh * width + xh,
                            ],
                            [hy * hx, hy * lx, ly * hx, ly * lx],
                        ),
                        _ => ([0; 4], [0.0; 4]),
                    });
                }
            }
        }
    }
    let per_bin = g.grid_h * g.grid_w;
    let mut out = vec![0.0f32; channels * cfg.out_h * cfg.out_w];
    for c in 0..channels {
        let f = &input[c * height * width..(c + 1) * height * width];
        for b in 0..cfg.out_h * cfg.out_w {
            let mut acc = 0.0f32;
            for (pos, w) in &pre[b * per_bin..(b + 1) * per_bin] {
                acc += w[0] * f[pos[0]] + w[1] * f[pos[1]] + w[2] * f[pos[2]] + w[3] * f[pos[3]];
            }
            out[c * cfg.out_h * cfg.out_w + b] = acc / count;
        }
    }
    out
}

/// Host RoIAlign of a batch: `input` is `[B, C, H, W]`, `rois` are `[batch_index, x1, y1, x2, y2]`;
/// returns `[R, C, out_h, out_w]`.
pub fn roi_align_host(
    input: &[f32],
    dims: (usize, usize, usize, usize),
    rois: &[[f32; 5]],
    cfg: &RoiAlignConfig,
) -> Vec<f32> {
    let (b, c, h, w) = dims;
    assert_eq!(input.len(), b * c * h * w, "input must be [B, C, H, W]");
    let mut out = Vec::with_capacity(rois.len() * c * cfg.out_h * cfg.out_w);
    for r in rois {
        let bi = r[0] as usize;
        assert!(bi < b, "roi batch index {bi} out of range");
        let map = &input[bi * c * h * w..(bi + 1) * c * h * w];
        out.extend(roi_align_host_single(
            map,
            c,
            h,
            w,
            [r[1], r[2], r[3], r[4]],
            cfg,
        ));
    }
    out
}

/// Host backward: the gradient w.r.t. `input` (`[B, C, H, W]`) of Σ out·grad_out, accumulated as the
/// CPU kernel does (g·w / count at each of the four neighbours of every in-range sample).
pub fn roi_align_host_backward(
    grad_out: &[f32],
    dims: (usize, usize, usize, usize),
    rois: &[[f32; 5]],
    cfg: &RoiAlignConfig,
) -> Vec<f32> {
    let (b, c, h, w) = dims;
    let bins = cfg.out_h * cfg.out_w;
    assert_eq!(
        grad_out.len(),
        rois.len() * c * bins,
        "grad_out must be [R, C, out_h, out_w]"
    );
    let mut grad = vec![0.0f32; b * c * h * w];
    for (n, r) in rois.iter().enumerate() {
        let bi = r[0] as usize;
        let g = geometry(&[r[1], r[2], r[3], r[4]], cfg);
        let count = (g.grid_h * g.grid_w) as f32;
        for ch in 0..c {
            let gi = &mut grad[(bi * c + ch) * h * w..(bi * c + ch + 1) * h * w];
            for ph in 0..cfg.out_h {
                for pw in 0..cfg.out_w {
                    let go = grad_out[(n * c + ch) * bins + ph * cfg.out_w + pw];
                    for iy in 0..g.grid_h {
                        let y = sample_coord(g.start_h, ph, g.bin_h, iy, g.grid_h);
                        for ix in 0..g.grid_w {
                            let x = sample_coord(g.start_w, pw, g.bin_w, ix, g.grid_w);
                            if let (Some((yl, yh, hy, ly)), Some((xl, xh, hx, lx))) =
                                (axis_weights(y, h), axis_weights(x, w))
                            {
                                gi[yl * w + xl] += go * (hy * hx) / count;
                                gi[yl * w + xh] += go * (hy * lx) / count;
                                gi[yh * w + xl] += go * (ly * hx) / count;
                                gi[yh * w + xh] += go * (ly * lx) / count;
                            }
                        }
                    }
                }
            }
        }
    }
    grad
}

// One separable factor: `[out, size]`, row p = (1/grid)·Σ_i interpolation weights of sample (p, i).
fn axis_matrix(start: f32, bin: f32, grid: usize, out: usize, size: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; out * size];
    if grid == 0 {
        return m; // empty grid: the kernel outputs 0
    }
    let inv = 1.0 / grid as f32;
    for p in 0..out {
        let row = &mut m[p * size..(p + 1) * size];
        for i in 0..grid {
            if let Some((lo, hi, wl, wh)) = axis_weights(sample_coord(start, p, bin, i, grid), size)
            {
                row[lo] += wl * inv;
                row[hi] += wh * inv;
            }
        }
    }
    m
}

/// The separable factors of one RoI on an `height × width` map: `A` `[out_h, height]` and
/// `B` `[out_w, width]` with `out[c] = A · F[c] · Bᵀ` (the 1/count average folded into A and B).
pub fn roi_align_matrices(
    roi: [f32; 4],
    height: usize,
    width: usize,
    cfg: &RoiAlignConfig,
) -> (Vec<f32>, Vec<f32>) {
    let g = geometry(&roi, cfg);
    (
        axis_matrix(g.start_h, g.bin_h, g.grid_h, cfg.out_h, height),
        axis_matrix(g.start_w, g.bin_w, g.grid_w, cfg.out_w, width),
    )
}

/// Differentiable RoIAlign: `feat` `[B, C, H, W]`, `rois` `[batch_index, x1, y1, x2, y2]` →
/// `[R, C, out_h, out_w]` in the order of `rois`. Per image: `[C·H, W] × [W, R·out_w]`, then a batched
/// `[R, out_h, H] × [R, H, C·out_w]`. The intermediate is C·H·R·out_w values: chunk the RoIs of huge maps.
pub fn roi_align(feat: &Tensor, rois: &[[f32; 5]], cfg: &RoiAlignConfig) -> Result<Tensor> {
    let (nb, c, h, w) = feat.dims4()?;
    let dev = feat.device();
    let dtype = feat.dtype();
    let (oh, ow) = (cfg.out_h, cfg.out_w);
    if rois.is_empty() {
        return Tensor::zeros((0, c, oh, ow), dtype, dev);
    }
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); nb];
    for (i, r) in rois.iter().enumerate() {
        let b = r[0] as usize;
        if b >= nb {
            candle_core::bail!("roi {i} has batch index {b}, the features have {nb} images");
        }
        groups[b].push(i);
    }
    let mut outs = Vec::new();
    let mut order = Vec::with_capacity(rois.len());
    for (b, idx) in groups.iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let r = idx.len();
        let mut a_all = Vec::with_capacity(r * oh * h);
        let mut bt_all = vec![0.0f32; w * r * ow]; // Bᵀ of every RoI side by side: [W, R·out_w]
        for (k, &i) in idx.iter().enumerate() {
            let roi = rois[i];
            let (a, bm) = roi_align_matrices([roi[1], roi[2], roi[3], roi[4]], h, w, cfg);
            a_all.extend_from_slice(&a);
            for p in 0..ow {
                for x in 0..w {
                    bt_all[x * r * ow + k * ow + p] = bm[p * w + x];
                }
            }
        }
        let a_t = host_tensor(a_all, (r, oh, h), dtype, dev)?;
        let bt_t = host_tensor(bt_all, (w, r * ow), dtype, dev)?;
        let fb = feat.narrow(0, b, 1)?.reshape((c * h, w))?;
        let t = fb.matmul(&bt_t)?; // [C·H, R·out_w]
        let t = t
            .reshape((c, h, r, ow))?
            .permute((2, 1, 0, 3))?
            .contiguous()?
            .reshape((r, h, c * ow))?;
        let o = a_t.matmul(&t)?; // [R, out_h, C·out_w]
        let o = o
            .reshape((r, oh, c, ow))?
            .permute((0, 2, 1, 3))?
            .contiguous()?;
        outs.push(o);
        order.extend_from_slice(idx);
    }
    let cat = if outs.len() == 1 {
        outs.pop().expect("one group")
    } else {
        Tensor::cat(&outs, 0)?
    };
    reorder(cat, &order)
}

// Rows of `t` are in `order` (row k holds item order[k]); bring them back to item order.
fn reorder(t: Tensor, order: &[usize]) -> Result<Tensor> {
    if order.iter().enumerate().all(|(k, &i)| k == i) {
        return Ok(t);
    }
    let mut inv = vec![0u32; order.len()];
    for (k, &i) in order.iter().enumerate() {
        inv[i] = k as u32;
    }
    let idx = Tensor::from_vec(inv, order.len(), t.device())?;
    t.index_select(&idx, 0)
}

fn host_tensor<S: Into<candle_core::Shape>>(
    v: Vec<f32>,
    shape: S,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
}

/// mmdet's `SingleRoIExtractor` with `RoIAlign` layers (one per stride).
#[derive(Clone, Debug, PartialEq)]
pub struct SingleRoIExtractor {
    pub out_size: usize,
    pub featmap_strides: Vec<u32>,
    /// 56 in every official config
    pub finest_scale: f32,
    pub sampling_ratio: i32,
    pub aligned: bool,
}

impl SingleRoIExtractor {
    /// `bbox_roi_extractor` (out 7) or `mask_roi_extractor` (out 14) of the official config.
    pub fn mmdet(out_size: usize) -> Self {
        Self {
            out_size,
            featmap_strides: vec![4, 8, 16, 32],
            finest_scale: 56.0,
            sampling_ratio: 0,
            aligned: true,
        }
    }

    /// `map_roi_levels`: floor(log2(sqrt(w·h) / finest_scale + 1e-6)) clamped to [0, num_levels − 1],
    /// in f32 as torch computes it.
    pub fn map_roi_levels(&self, rois: &[[f32; 5]], num_levels: usize) -> Vec<usize> {
        rois.iter()
            .map(|r| {
                let scale = ((r[3] - r[1]) * (r[4] - r[2])).sqrt();
                let lv = (scale / self.finest_scale + 1e-6f32).log2().floor();
                // torch's clamp(0, L−1).long(); NaN (inverted boxes) would become 0 after the cast
                let lv = lv.clamp(0.0, (num_levels - 1) as f32);
                if lv.is_nan() {
                    0
                } else {
                    lv as usize
                }
            })
            .collect()
    }

    /// The RoIAlign configuration of level `l`.
    pub fn level_config(&self, l: usize) -> RoiAlignConfig {
        RoiAlignConfig {
            out_h: self.out_size,
            out_w: self.out_size,
            spatial_scale: (1.0 / self.featmap_strides[l] as f64) as f32,
            sampling_ratio: self.sampling_ratio,
            aligned: self.aligned,
        }
    }

    /// `forward(feats, rois)` → `[R, C, out, out]` in the order of `rois`. `feats[l]` is `[B, C, H_l, W_l]`;
    /// levels beyond `featmap_strides` are ignored. RoIs must have x2 ≥ x1 and y2 ≥ y1 (mmcv asserts it;
    /// decoded proposals always do).
    pub fn forward(&self, feats: &[Tensor], rois: &[[f32; 5]]) -> Result<Tensor> {
        // mmdet passes `x[:num_inputs]`: extra levels (P6) are ignored
        let feats = &feats[..feats.len().min(self.featmap_strides.len())];
        let nl = feats.len();
        if nl == 0 {
            candle_core::bail!("no feature levels");
        }
        let (_, c, _, _) = feats[0].dims4()?;
        if rois.is_empty() {
            return Tensor::zeros(
                (0, c, self.out_size, self.out_size),
                feats[0].dtype(),
                feats[0].device(),
            );
        }
        if nl == 1 {
            return roi_align(&feats[0], rois, &self.level_config(0));
        }
        let levels = self.map_roi_levels(rois, nl);
        let mut outs = Vec::new();
        let mut order = Vec::with_capacity(rois.len());
        for (l, f) in feats.iter().enumerate() {
            let idx: Vec<usize> = (0..rois.len()).filter(|&i| levels[i] == l).collect();
            if idx.is_empty() {
                continue;
            }
            let sub: Vec<[f32; 5]> = idx.iter().map(|&i| rois[i]).collect();
            outs.push(roi_align(f, &sub, &self.level_config(l))?);
            order.extend_from_slice(&idx);
        }
        let cat = if outs.len() == 1 {
            outs.pop().expect("one level")
        } else {
            Tensor::cat(&outs, 0)?
        };
        reorder(cat, &order)
    }
}
