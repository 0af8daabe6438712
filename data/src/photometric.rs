//! mmseg 0.12 `PhotoMetricDistortion(brightness_delta=32, contrast_range=(0.5, 1.5),
//! saturation_range=(0.5, 1.5), hue_delta=18)` for the ADE20K train pipeline, with OpenCV's uint8
//! HSV conversions.
//!
//! Transcribes mmseg 0.x `datasets/pipelines/transforms.py` `PhotoMetricDistortion`: brightness
//! (`randint(2)`, then `convert(beta=uniform(-32, 32))`), `mode = randint(2)`, contrast *first* when
//! `mode == 1` (the source comment says mode 0; the code does the opposite), saturation
//! (`convert(S, alpha=uniform(0.5, 1.5))` between `bgr2hsv` / `hsv2bgr`), hue
//! (`(H + randint(-18, 18)) % 180`, upper bound exclusive), contrast last when `mode == 0`; each of
//! the four steps applied when its `randint(2)` is 1. `convert(img, alpha, beta)` is
//! `clip(float32(img) · alpha + beta, 0, 255).astype(uint8)`: f32 arithmetic with the scalars rounded
//! to f32, truncation. mmcv's `bgr2hsv`/`hsv2bgr` are `cv2.cvtColor`; on our RGB images the RGB codes
//! give the same HSV, so no channel swap is needed.
//!
//! OpenCV's uint8 conversions (imgproc/src/color_hsv.simd.hpp, `RGB2HSV_b`, `HSV2RGB_b`): RGB→HSV is
//! integer arithmetic with 12-bit reciprocal tables (H in 0..180). HSV→RGB goes through f32 and
//! depends on the SIMD path the OpenCV build dispatches to: the vector loop handles blocks of
//! 4 × (f32 lanes) pixels per row and *truncates* `x · 255`, the scalar tail *rounds* (half to even);
//! builds that dispatch to AVX2 (x86-64 wheels on AVX2 machines) fuse `1 − s·h` into one
//! multiply-add in both paths. [`CvHsvBackend`] names the variant; its default is AVX2.

use image::RgbImage;
use rand::Rng;

/// Which OpenCV code path `cvtColor(…, COLOR_HSV2RGB)` on uint8 takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CvHsvBackend {
    /// Pixels per SIMD block (4 × f32 lanes); 0 runs every pixel through the scalar code.
    pub simd_block: usize,
    /// Whether `1 − s·h` and `1 − s·(1 − h)` are fused multiply-adds.
    pub fused: bool,
}

impl CvHsvBackend {
    /// x86-64 builds on AVX2 machines (the opencv-python wheels): 8 lanes, FMA contraction.
    pub const AVX2: CvHsvBackend = CvHsvBackend {
        simd_block: 32,
        fused: true,
    };
    /// 128-bit SIMD without FMA (SSE4 baseline builds).
    pub const SSE4: CvHsvBackend = CvHsvBackend {
        simd_block: 16,
        fused: false,
    };
    /// OpenCV's plain C++ path (no SIMD, no contraction).
    pub const SCALAR: CvHsvBackend = CvHsvBackend {
        simd_block: 0,
        fused: false,
    };
}

impl Default for CvHsvBackend {
    fn default() -> Self {
        CvHsvBackend::AVX2
    }
}

struct HsvTables {
    sdiv: [i32; 256],
    hdiv180: [i32; 256],
}

fn hsv_tables() -> &'static HsvTables {
    static TABLES: std::sync::OnceLock<HsvTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = HsvTables {
            sdiv: [0; 256],
            hdiv180: [0; 256],
        };
        for i in 1..256 {
            // saturate_cast<int>(double) rounds half to even.
            t.sdiv[i] = ((255i64 << 12) as f64 / i as f64).round_ties_even() as i32;
            t.hdiv180[i] = ((180i64 << 12) as f64 / (6.0 * i as f64)).round_ties_even() as i32;
        }
        t
    })
}

/// OpenCV `RGB2HSV_b` for one pixel, hue range 180.
pub fn rgb_to_hsv_cv(r: u8, g: u8, b: u8) -> [u8; 3] {
    const SHIFT: i32 = 12;
    let t = hsv_tables();
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let v = r.max(g).max(b);
    let vmin = r.min(g).min(b);
    let diff = v - vmin;
    let vr = if v == r { -1 } else { 0 };
    let vg = if v == g { -1 } else { 0 };
    let s = (diff * t.sdiv[v as usize] + (1 << (SHIFT - 1))) >> SHIFT;
    let h = (vr & (g - b)) + (!vr & ((vg & (b - r + 2 * diff)) + (!vg & (r - g + 4 * diff))));
    let mut h = (h * t.hdiv180[diff as usize] + (1 << (SHIFT - 1))) >> SHIFT;
    if h < 0 {
        h += 180;
    }
    [h.clamp(0, 255) as u8, s as u8, v as u8]
}

/// The four candidate channel values `HSV2RGB_native` / `HSV2RGB_simd` pick from.
#[inline]
fn hsv_tab(v: f32, s: f32, h: f32, fused: bool) -> [f32; 4] {
    let (a, b) = if fused {
        ((-s).mul_add(h, 1.0), (-s).mul_add(1.0 - h, 1.0))
    } else {
        (1.0 - s * h, 1.0 - s * (1.0 - h))
    };
    [v, v * (1.0 - s), v * a, v * b]
}

const SECTOR_DATA: [[usize; 3]; 6] = [
    [1, 3, 0],
    [1, 0, 2],
    [3, 0, 1],
    [0, 2, 1],
    [0, 1, 3],
    [2, 1, 0],
];

/// OpenCV `HSV2RGB_b` for one pixel (hue range 180) on the scalar or the SIMD path; returns RGB.
pub fn hsv_to_rgb_cv(h: u8, s: u8, v: u8, simd: bool, fused: bool) -> [u8; 3] {
    let hscale = 6.0f32 / 180.0;
    let hf = h as f32;
    let s = s as f32 * (1.0f32 / 255.0);
    let v = v as f32 * (1.0f32 / 255.0);
    let bgr: [f32; 3] = if simd {
        // HSV2RGB_simd: no s == 0 shortcut (all four entries equal v then), sector from truncation.
        let hh = hf * hscale;
        let pre = hh.trunc();
        let frac = hh - pre;
        let tab = hsv_tab(v, s, frac, fused);
        let sector = pre - (pre * (1.0f32 / 6.0)).trunc() * 6.0;
        let k = sector as usize;
        [
            tab[SECTOR_DATA[k][0]],
            tab[SECTOR_DATA[k][1]],
            tab[SECTOR_DATA[k][2]],
        ]
    } else if s == 0.0 {
        [v, v, v]
    } else {
        let hh = (hf * hscale) % 6.0;
        let mut sector = hh.floor() as i32;
        let mut frac = hh - sector as f32;
        if !(0..6).contains(&sector) {
            sector = 0;
            frac = 0.0;
        }
        let tab = hsv_tab(v, s, frac, fused);
        let k = sector as usize;
        [
            tab[SECTOR_DATA[k][0]],
            tab[SECTOR_DATA[k][1]],
            tab[SECTOR_DATA[k][2]],
        ]
    };
    let to_u8 = |x: f32| {
        let y = x * 255.0;
        let q = if simd { y.trunc() } else { y.round_ties_even() };
        q.clamp(0.0, 255.0) as u8
    };
    [to_u8(bgr[2]), to_u8(bgr[1]), to_u8(bgr[0])]
}

/// `cv2.cvtColor(img, COLOR_RGB2HSV)`: interleaved HSV bytes, H in 0..180.
pub fn rgb_to_hsv_image(img: &RgbImage) -> Vec<u8> {
    img.as_raw()
        .chunks_exact(3)
        .flat_map(|p| rgb_to_hsv_cv(p[0], p[1], p[2]))
        .collect()
}

/// `cv2.cvtColor(hsv, COLOR_HSV2RGB)` on an interleaved `width × height` HSV buffer. OpenCV calls
/// the converter once per row, so the SIMD blocks restart at every row.
pub fn hsv_to_rgb_image(hsv: &[u8], width: u32, height: u32, backend: CvHsvBackend) -> RgbImage {
    let w = width as usize;
    assert_eq!(hsv.len(), w * height as usize * 3, "HSV buffer size");
    let simd_end = if backend.simd_block > 0 && w >= backend.simd_block {
        w / backend.simd_block * backend.simd_block
    } else {
        0
    };
    let mut out = Vec::with_capacity(hsv.len());
    for row in hsv.chunks_exact(w * 3) {
        for (x, p) in row.chunks_exact(3).enumerate() {
            out.extend(hsv_to_rgb_cv(p[0], p[1], p[2], x < simd_end, backend.fused));
        }
    }
    RgbImage::from_raw(width, height, out).expect("sized from dimensions")
}

/// mmseg `PhotoMetricDistortion.convert` on one value: f32 `v · alpha + beta`, clipped, truncated.
#[inline]
pub fn convert(v: u8, alpha: f64, beta: f64) -> u8 {
    let x = v as f32 * alpha as f32 + beta as f32;
    x.clamp(0.0, 255.0) as u8
}

fn convert_image(img: &RgbImage, alpha: f64, beta: f64) -> RgbImage {
    let mut out = img.clone();
    out.iter_mut().for_each(|v| *v = convert(*v, alpha, beta));
    out
}

/// The draws of one image; `None` = that step's `randint(2)` came up 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhotoMetricDraws {
    /// Added to every value (uniform in ±brightness_delta).
    pub brightness: Option<f64>,
    /// `mode == 1`: contrast right after brightness; otherwise after the hue step.
    pub contrast_first: bool,
    /// Contrast factor.
    pub contrast: Option<f64>,
    /// Saturation factor.
    pub saturation: Option<f64>,
    /// Hue shift in OpenCV units (degrees / 2), in `-hue_delta..hue_delta`.
    pub hue: Option<i32>,
}

/// mmseg 0.12 `PhotoMetricDistortion`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoMetricDistortion {
    pub brightness_delta: f64,
    pub contrast_range: (f64, f64),
    pub saturation_range: (f64, f64),
    pub hue_delta: i32,
    pub backend: CvHsvBackend,
}

impl Default for PhotoMetricDistortion {
    fn default() -> Self {
        PhotoMetricDistortion {
            brightness_delta: 32.0,
            contrast_range: (0.5, 1.5),
            saturation_range: (0.5, 1.5),
            hue_delta: 18,
            backend: CvHsvBackend::default(),
        }
    }
}

impl PhotoMetricDistortion {
    /// Draws in mmseg's order: brightness, mode, contrast (mode 1), saturation, hue, contrast (mode 0).
    pub fn draw(&self, rng: &mut impl Rng) -> PhotoMetricDraws {
        let coin = |rng: &mut dyn rand::RngCore| rng.random_range(0..2) == 1;
        let uniform =
            |rng: &mut dyn rand::RngCore, lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
        let brightness =
            coin(rng).then(|| uniform(rng, -self.brightness_delta, self.brightness_delta));
        let contrast_first = rng.random_range(0..2) == 1;
        let (lo, hi) = self.contrast_range;
        let mut contrast = None;
        if contrast_first {
            contrast = coin(rng).then(|| uniform(rng, lo, hi));
        }
        let (slo, shi) = self.saturation_range;
        let saturation = coin(rng).then(|| uniform(rng, slo, shi));
        let hue = coin(rng).then(|| rng.random_range(-self.hue_delta..self.hue_delta));
        if !contrast_first {
            contrast = coin(rng).then(|| uniform(rng, lo, hi));
        }
        PhotoMetricDraws {
            brightness,
            contrast_first,
            contrast,
            saturation,
            hue,
        }
    }

    /// `PhotoMetricDistortion.__call__` for given draws.
    pub fn apply_draws(&self, img: &RgbImage, d: &PhotoMetricDraws) -> RgbImage {
        let (w, h) = (img.width(), img.height());
        let mut out = img.clone();
        if let Some(beta) = d.brightness {
            out = convert_image(&out, 1.0, beta);
        }
        if d.contrast_first {
            if let Some(alpha) = d.contrast {
                out = convert_image(&out, alpha, 0.0);
            }
        }
        if let Some(alpha) = d.saturation {
            let mut hsv = rgb_to_hsv_image(&out);
            hsv.chunks_exact_mut(3)
                .for_each(|p| p[1] = convert(p[1], alpha, 0.0));
            out = hsv_to_rgb_image(&hsv, w, h, self.backend);
        }
        if let Some(shift) = d.hue {
            let mut hsv = rgb_to_hsv_image(&out);
            hsv.chunks_exact_mut(3)
                .for_each(|p| p[0] = (p[0] as i32 + shift).rem_euclid(180) as u8);
            out = hsv_to_rgb_image(&hsv, w, h, self.backend);
        }
        if !d.contrast_first {
            if let Some(alpha) = d.contrast {
                out = convert_image(&out, alpha, 0.0);
            }
        }
        out
    }

    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let d = self.draw(rng);
        self.apply_draws(img, &d)
    }
}
