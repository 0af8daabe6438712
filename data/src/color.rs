//! Photometric transforms as torchvision applies them to PIL images (ImageEnhance, HSV hue
//! shift, grayscale, solarize, GaussianBlur), byte-exact with Pillow.

use image::RgbImage;

use crate::pil;

fn map_pixels(img: &RgbImage, f: impl Fn([u8; 3]) -> [u8; 3]) -> RgbImage {
    let mut out = img.clone();
    for px in out.pixels_mut() {
        px.0 = f(px.0);
    }
    out
}

fn with_buffer(img: &RgbImage, data: Vec<u8>) -> RgbImage {
    RgbImage::from_raw(img.width(), img.height(), data).expect("same-size buffer")
}

/// `F.adjust_brightness` = `ImageEnhance.Brightness(img).enhance(factor)`: blend with black.
pub fn adjust_brightness(img: &RgbImage, factor: f32) -> RgbImage {
    let black = vec![0u8; img.as_raw().len()];
    with_buffer(img, pil::blend(&black, img.as_raw(), factor))
}

/// `F.adjust_contrast` = `ImageEnhance.Contrast`: blend with the solid grey of the rounded
/// mean luma.
pub fn adjust_contrast(img: &RgbImage, factor: f32) -> RgbImage {
    let mut hist = [0u64; 256];
    for px in img.pixels() {
        hist[pil::rgb_to_l(px[0], px[1], px[2]) as usize] += 1;
    }
    let n: u64 = hist.iter().sum();
    // ImageStat.mean: sum(i * h[i]) / n in Python floats.
    let sum: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let mean = (sum / n as f64 + 0.5) as u8;
    let grey = vec![mean; img.as_raw().len()];
    with_buffer(img, pil::blend(&grey, img.as_raw(), factor))
}

/// `F.adjust_saturation` = `ImageEnhance.Color`: blend with the image's own greyscale.
pub fn adjust_saturation(img: &RgbImage, factor: f32) -> RgbImage {
    let grey = rgb_to_grayscale(img);
    with_buffer(img, pil::blend(grey.as_raw(), img.as_raw(), factor))
}

/// `F.adjust_hue` (PIL path): RGB → HSV, add `int(factor * 255)` to H modulo 256, back to RGB.
pub fn adjust_hue(img: &RgbImage, factor: f32) -> RgbImage {
    assert!(
        (-0.5..=0.5).contains(&factor),
        "hue factor {factor} outside [-0.5, 0.5]"
    );
    // np.int32(hue_factor * 255) with hue_factor a Python float, then wrapped to uint8.
    let shift = ((factor as f64 * 255.0) as i32).rem_euclid(256) as u8;
    map_pixels(img, |[r, g, b]| {
        let [h, s, v] = pil::rgb_to_hsv(r, g, b);
        pil::hsv_to_rgb(h.wrapping_add(shift), s, v)
    })
}

/// `F.rgb_to_grayscale(img, num_output_channels=3)`: PIL luma replicated to three channels.
pub fn rgb_to_grayscale(img: &RgbImage) -> RgbImage {
    map_pixels(img, |[r, g, b]| {
        let l = pil::rgb_to_l(r, g, b);
        [l, l, l]
    })
}

/// `ImageOps.solarize(img, threshold)`: invert every value at or above the threshold.
pub fn solarize(img: &RgbImage, threshold: u8) -> RgbImage {
    map_pixels(img, |px| {
        px.map(|v| if v < threshold { v } else { 255 - v })
    })
}

/// `img.filter(ImageFilter.GaussianBlur(radius))`.
pub fn gaussian_blur(img: &RgbImage, radius: f32) -> RgbImage {
    let out = pil::gaussian_blur(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        3,
        radius,
    );
    with_buffer(img, out)
}

/// Which colour operation, in the order ColorJitter applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterOp {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

/// Drawn ColorJitter parameters: the permutation and one factor per enabled op.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterParams {
    pub order: [JitterOp; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

/// Applies drawn jitter parameters in their order (torchvision `ColorJitter.forward`).
pub fn apply_jitter(img: &RgbImage, p: &JitterParams) -> RgbImage {
    let mut out = img.clone();
    for op in p.order {
        out = match (op, p.brightness, p.contrast, p.saturation, p.hue) {
            (JitterOp::Brightness, Some(f), ..) => adjust_brightness(&out, f),
            (JitterOp::Contrast, _, Some(f), ..) => adjust_contrast(&out, f),
            (JitterOp::Saturation, _, _, Some(f), _) => adjust_saturation(&out, f),
            (JitterOp::Hue, _, _, _, Some(f)) => adjust_hue(&out, f),
            _ => out,
        };
    }
    out
}
