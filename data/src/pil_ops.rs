//! Pillow's ImageOps point operations and `ImageEnhance.Sharpness`, byte-exact for RGB images.
//!
//! Transcribes PIL/ImageOps.py (Pillow 13: `autocontrast` with cutoff 0 and no mask, `equalize`,
//! `invert`, `posterize`, `solarize`), the LUT clipping of `Image.point` (`CLIP8` in _imaging.c),
//! `ImageFilter.SMOOTH` as libImaging/Filter.c `ImagingFilter3x3` runs it (f32 kernel 1/13, 5/13,
//! +0.5 then truncation, border pixels copied) and `ImageEnhance.Sharpness`, which blends the image
//! with that smoothed copy. Brightness, Contrast and Color live in [`crate::color`].

use image::RgbImage;

use crate::pil;

/// One 256-entry table per band, as `Image.point` takes a 768-entry list for RGB.
pub type BandLuts = [[u8; 256]; 3];

/// `Image.point(lut)` with one table per band.
pub fn point(img: &RgbImage, luts: &BandLuts) -> RgbImage {
    let mut out = img.clone();
    for px in out.pixels_mut() {
        for (v, lut) in px.0.iter_mut().zip(luts) {
            *v = lut[*v as usize];
        }
    }
    out
}

/// A table from integer values, clipped to 0..=255 as `Image.point` does (`CLIP8`).
fn clip_lut(f: impl Fn(i64) -> i64) -> [u8; 256] {
    std::array::from_fn(|i| f(i as i64).clamp(0, 255) as u8)
}

/// `Image.histogram()` split by band.
pub fn histogram(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for px in img.pixels() {
        for (band, &v) in h.iter_mut().zip(&px.0) {
            band[v as usize] += 1;
        }
    }
    h
}

/// `ImageOps.autocontrast(img)`: per band, stretch [lowest, highest] present value to [0, 255]
/// (`int(ix * scale + offset)` in Python floats, then clipped).
pub fn autocontrast(img: &RgbImage) -> RgbImage {
    let hist = histogram(img);
    let luts = hist.map(|h| {
        let lo = (0..256).find(|&i| h[i] != 0).unwrap_or(255);
        let hi = (0..256).rev().find(|&i| h[i] != 0).unwrap_or(0);
        if hi <= lo {
            return std::array::from_fn(|i| i as u8);
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        clip_lut(|ix| (ix as f64 * scale + offset) as i64)
    });
    point(img, &luts)
}

/// `ImageOps.equalize(img)`: per band, `lut[i] = (step // 2 + sum(h[:i])) // step` with
/// `step = (count - count of the highest present value) // 255`; bands with one value or a zero
/// step are left alone.
pub fn equalize(img: &RgbImage) -> RgbImage {
    let hist = histogram(img);
    let luts = hist.map(|h| {
        let present: Vec<u64> = h.iter().copied().filter(|&c| c != 0).collect();
        let identity = std::array::from_fn(|i| i as u8);
        if present.len() <= 1 {
            return identity;
        }
        let step = (present.iter().sum::<u64>() - present[present.len() - 1]) / 255;
        if step == 0 {
            return identity;
        }
        let mut n = step / 2;
        let mut lut = [0u8; 256];
        for (i, entry) in lut.iter_mut().enumerate() {
            *entry = (n / step).min(255) as u8;
            n += h[i];
        }
        lut
    });
    point(img, &luts)
}

/// `ImageOps.invert(img)`.
pub fn invert(img: &RgbImage) -> RgbImage {
    let lut = clip_lut(|i| 255 - i);
    point(img, &[lut; 3])
}

/// `ImageOps.posterize(img, bits)`: keep the `bits` most significant bits. `bits = 0` gives black,
/// as every Pillow before the 1..=8 range check did (Pillow 13.0 raises ValueError instead, which
/// makes timm's PosterizeIncreasing fail at magnitude 10).
pub fn posterize(img: &RgbImage, bits: u32) -> RgbImage {
    if bits >= 8 {
        return img.clone();
    }
    let mask = !((1i64 << (8 - bits)) - 1);
    let lut = clip_lut(|i| i & mask);
    point(img, &[lut; 3])
}

/// `ImageOps.solarize(img, threshold)`: invert values at or above the threshold (256 = none).
pub fn solarize(img: &RgbImage, threshold: i64) -> RgbImage {
    let lut = clip_lut(|i| if i < threshold { i } else { 255 - i });
    point(img, &[lut; 3])
}

/// timm's `solarize_add`: add `add` (saturating at 255) to values below the threshold.
pub fn solarize_add(img: &RgbImage, add: i64, threshold: i64) -> RgbImage {
    let lut = clip_lut(|i| if i < threshold { (i + add).min(255) } else { i });
    point(img, &[lut; 3])
}

/// `img.filter(ImageFilter.SMOOTH)`: 3×3 kernel [1 1 1; 1 5 1; 1 1 1] / 13 in f32, the outer
/// ring of pixels copied, images smaller than 3×3 returned unchanged.
pub fn smooth(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = img.clone();
    if w < 3 || h < 3 {
        return out;
    }
    let one = 1.0f32 / 13.0f32;
    let five = 5.0f32 / 13.0f32;
    let kernel = [one, one, one, one, five, one, one, one, one];
    let src = img.as_raw();
    let dst: &mut [u8] = &mut out;
    let stride = w * 3;
    let row3 = |row: &[u8], x: usize, k: &[f32]| {
        row[x - 3] as f32 * k[0] + row[x] as f32 * k[1] + row[x + 3] as f32 * k[2]
    };
    for y in 1..h - 1 {
        let below = &src[(y + 1) * stride..][..stride];
        let here = &src[y * stride..][..stride];
        let above = &src[(y - 1) * stride..][..stride];
        for x in 3..stride - 3 {
            // Filter.c adds the row below with kernel[0..3] first, then this row, then the row above.
            let mut ss = 0.5f32;
            ss += row3(below, x, &kernel[0..3]);
            ss += row3(here, x, &kernel[3..6]);
            ss += row3(above, x, &kernel[6..9]);
            dst[y * stride + x] = ss.clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// `ImageEnhance.Sharpness(img).enhance(factor)`: blend from the SMOOTH-filtered image.
pub fn adjust_sharpness(img: &RgbImage, factor: f32) -> RgbImage {
    let degenerate = smooth(img);
    let data = pil::blend(degenerate.as_raw(), img.as_raw(), factor);
    RgbImage::from_raw(img.width(), img.height(), data).expect("same-size buffer")
}
