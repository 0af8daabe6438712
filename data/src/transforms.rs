//! Geometric transforms and tensor conversion with torchvision's PIL-path semantics.

use image::RgbImage;

use crate::pil;
pub use crate::pil::Interpolation;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Output (width, height) of torchvision `Resize(size)` with an int: the shorter side becomes
/// `size`, the longer `int(size * long / short)` (Python float arithmetic, truncated).
pub fn resized_output_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `Resize(size: int, interpolation)` on a PIL image.
pub fn resize_shorter(img: &RgbImage, size: u32, filter: Interpolation) -> RgbImage {
    let (w, h) = resized_output_size(img.width(), img.height(), size);
    resize(img, w, h, filter)
}

/// PIL `img.resize((width, height), filter)`, passes in Pillow 13's order.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Interpolation) -> RgbImage {
    let out = pil::resample(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        3,
        width as usize,
        height as usize,
        filter,
    );
    RgbImage::from_raw(width, height, out).expect("resample output sized from dimensions")
}

/// Python's `round()` on a float: halves go to the even neighbour.
pub fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        let t = x.trunc();
        if (t as i64) % 2 == 0 {
            t as i64
        } else {
            r as i64
        }
    } else {
        r as i64
    }
}

/// PIL `img.crop((left, top, left + width, top + height))`; pixels outside the image are 0.
pub fn crop(img: &RgbImage, top: i64, left: i64, height: u32, width: u32) -> RgbImage {
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    let src = img.as_raw();
    let mut out = vec![0u8; (width * height * 3) as usize];
    let x0 = left.max(0);
    let x1 = (left + width as i64).min(iw);
    if x1 > x0 {
        let n = ((x1 - x0) * 3) as usize;
        for oy in 0..height as i64 {
            let y = top + oy;
            if y < 0 || y >= ih {
                continue;
            }
            let s = ((y * iw + x0) * 3) as usize;
            let d = ((oy * width as i64 + (x0 - left)) * 3) as usize;
            out[d..d + n].copy_from_slice(&src[s..s + n]);
        }
    }
    RgbImage::from_raw(width, height, out).expect("crop buffer sized from dimensions")
}

/// torchvision `CenterCrop(size)`: zero-pads first when the image is smaller, then crops at
/// `int(round((h - th) / 2.0))` (Python rounding).
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    center_crop_rect(img, size, size)
}

/// `CenterCrop((height, width))`.
pub fn center_crop_rect(img: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let (iw, ih) = (img.width() as i64, img.height() as i64);
    let (cw, ch) = (crop_w as i64, crop_h as i64);
    if cw > iw || ch > ih {
        let pad_left = if cw > iw { (cw - iw) / 2 } else { 0 };
        let pad_top = if ch > ih { (ch - ih) / 2 } else { 0 };
        let pad_right = if cw > iw { (cw - iw + 1) / 2 } else { 0 };
        let pad_bottom = if ch > ih { (ch - ih + 1) / 2 } else { 0 };
        let nw = (iw + pad_left + pad_right) as u32;
        let nh = (ih + pad_top + pad_bottom) as u32;
        let padded = crop(img, -pad_top, -pad_left, nh, nw);
        if nw == crop_w && nh == crop_h {
            return padded;
        }
        return centered(&padded, crop_h, crop_w);
    }
    centered(img, crop_h, crop_w)
}

fn centered(img: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let top = round_half_even((img.height() as i64 - crop_h as i64) as f64 / 2.0);
    let left = round_half_even((img.width() as i64 - crop_w as i64) as f64 / 2.0);
    crop(img, top, left, crop_h, crop_w)
}

/// Mirror left-right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// torchvision `ToTensor()` then `Normalize(mean, std)`: CHW f32, `(v / 255 - mean) / std`
/// in f32 as torch computes it.
pub fn to_normalized_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let mut out = vec![0f32; (img.width() * img.height() * 3) as usize];
    write_normalized_chw(img, mean, std, &mut out);
    out
}

/// Like [`to_normalized_chw`] but into a caller's slice (one image of a batch).
pub fn write_normalized_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(
        out.len(),
        plane * 3,
        "output slice must hold 3 x H x W values"
    );
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let planes = [r, g, b];
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, entry) in table.iter_mut().enumerate() {
            *entry = (v as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        planes[0][i] = lut[0][px[0] as usize];
        planes[1][i] = lut[1][px[1] as usize];
        planes[2][i] = lut[2][px[2] as usize];
    }
}

/// The frozen-feature evaluation transform: Resize(resize, bicubic) → CenterCrop(crop) →
/// ToTensor → Normalize(ImageNet).
pub fn eval_transform(img: &RgbImage, resize_to: u32, crop_to: u32) -> Vec<f32> {
    let resized = resize_shorter(img, resize_to, Interpolation::Bicubic);
    let cropped = center_crop(&resized, crop_to);
    to_normalized_chw(&cropped, IMAGENET_MEAN, IMAGENET_STD)
}
