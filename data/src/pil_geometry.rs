//! Pillow's affine resampling and `Image.rotate`, byte-exact for RGB images.
//!
//! Transcribes libImaging/Geometry.c (Pillow 13): `ImagingTransformAffine` and its nearest-neighbour
//! engines (`ImagingScaleAffine` for scale-only matrices, `affine_fixed` in 16.16 fixed point, the
//! floating-point fallback), `ImagingGenericTransform` with the `bilinear_filter32RGB` and
//! `bicubic_filter32RGB` transform filters, and the reverse matrix `Image.rotate` builds in Image.py
//! (cos/sin rounded to 15 decimals, rotation about `(w / 2, h / 2)`, the 0/90/180/270-degree
//! transpose shortcuts). `Image.transform(..., fillcolor=c)` starts from an image filled with `c` and
//! leaves every pixel whose source point falls outside the input untouched; without a fill colour
//! those pixels are black, which is the same as passing `[0, 0, 0]` here.

use image::{Rgb, RgbImage};

use crate::pil::Interpolation;

/// C's `(int)` of a coordinate that may be negative: `COORD` maps every negative value to -1.
#[inline]
fn coord(v: f64) -> i64 {
    if v < 0.0 {
        -1
    } else {
        v as i64
    }
}

/// Geometry.c `FLOOR`.
#[inline]
fn floor_i(v: f64) -> i64 {
    if v < 0.0 {
        v.floor() as i64
    } else {
        v as i64
    }
}

/// PIL `img.transform((out_w, out_h), Image.Transform.AFFINE, data, resample=filter, fillcolor=fill)`.
/// `data = (a, b, c, d, e, f)` maps the centre of output pixel (x, y) to the input point
/// `(a (x + ½) + b (y + ½) + c, d (x + ½) + e (y + ½) + f)`.
pub fn affine(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    data: [f64; 6],
    filter: Interpolation,
    fill: [u8; 3],
) -> RgbImage {
    let mut out = RgbImage::from_pixel(out_w, out_h, Rgb(fill));
    if img.width() == 0 || img.height() == 0 {
        return out;
    }
    match filter {
        Interpolation::Nearest => {
            if data[1] == 0.0 && data[3] == 0.0 {
                scale_affine(img, &mut out, &data);
            } else {
                let (w, h) = (out_w as f64, out_h as f64);
                let fits = |x: f64, y: f64| {
                    (x * data[0] + y * data[1] + data[2]).abs() < 32768.0
                        && (x * data[3] + y * data[4] + data[5]).abs() < 32768.0
                };
                if fits(0.0, 0.0) && fits(w, h) && fits(0.0, h) && fits(w, 0.0) {
                    affine_fixed(img, &mut out, &data);
                } else {
                    affine_float(img, &mut out, &data);
                }
            }
        }
        Interpolation::Bilinear | Interpolation::Bicubic => {
            let sample = if filter == Interpolation::Bilinear {
                bilinear
            } else {
                bicubic
            };
            for (y, row) in out.rows_mut().enumerate() {
                let yin = y as f64 + 0.5;
                for (x, px) in row.enumerate() {
                    let xin = x as f64 + 0.5;
                    let xs = data[0] * xin + data[1] * yin + data[2];
                    let ys = data[3] * xin + data[4] * yin + data[5];
                    if let Some(v) = sample(img, xs, ys) {
                        px.0 = v;
                    }
                }
            }
        }
    }
    out
}

/// `ImagingScaleAffine`: nearest neighbour for matrices without rotation or shear.
fn scale_affine(img: &RgbImage, out: &mut RgbImage, a: &[f64; 6]) {
    let (in_w, in_h) = (img.width() as i64, img.height() as i64);
    let out_w = out.width() as usize;
    // calloc'd in C: columns that never hit the input read column 0 if they fall inside [xmin, xmax).
    let mut xintab = vec![0usize; out_w];
    let mut xo = a[2] + a[0] * 0.5;
    let mut yo = a[5] + a[4] * 0.5;
    let (mut xmin, mut xmax) = (out_w, 0usize);
    for (x, entry) in xintab.iter_mut().enumerate() {
        let xin = coord(xo);
        if xin >= 0 && xin < in_w {
            xmax = x + 1;
            xmin = xmin.min(x);
            *entry = xin as usize;
        }
        xo += a[0];
    }
    for y in 0..out.height() {
        let yi = coord(yo);
        if yi >= 0 && yi < in_h {
            for x in xmin..xmax {
                let p = *img.get_pixel(xintab[x] as u32, yi as u32);
                out.put_pixel(x as u32, y, p);
            }
        }
        yo += a[4];
    }
}

/// `affine_fixed`: nearest neighbour in 16.16 fixed point (every corner within ±32768).
fn affine_fixed(img: &RgbImage, out: &mut RgbImage, a: &[f64; 6]) {
    let fix = |v: f64| floor_i(v * 65536.0 + 0.5) as i32;
    let (a0, a1, a3, a4) = (fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4]));
    let mut a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
    let mut a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
    let (in_w, in_h) = (img.width() as i32, img.height() as i32);
    for y in 0..out.height() {
        let (mut xx, mut yy) = (a2, a5);
        for x in 0..out.width() {
            let xin = xx >> 16;
            if xin >= 0 && xin < in_w {
                let yin = yy >> 16;
                if yin >= 0 && yin < in_h {
                    let p = *img.get_pixel(xin as u32, yin as u32);
                    out.put_pixel(x, y, p);
                }
            }
            xx = xx.wrapping_add(a0);
            yy = yy.wrapping_add(a3);
        }
        a2 = a2.wrapping_add(a1);
        a5 = a5.wrapping_add(a4);
    }
}

/// The floating-point nearest-neighbour loop used when fixed point would overflow.
fn affine_float(img: &RgbImage, out: &mut RgbImage, a: &[f64; 6]) {
    let (in_w, in_h) = (img.width() as i64, img.height() as i64);
    let mut xo = a[2] + a[1] * 0.5 + a[0] * 0.5;
    let mut yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
    for y in 0..out.height() {
        let (mut xx, mut yy) = (xo, yo);
        for x in 0..out.width() {
            let xin = coord(xx);
            if xin >= 0 && xin < in_w {
                let yin = coord(yy);
                if yin >= 0 && yin < in_h {
                    let p = *img.get_pixel(xin as u32, yin as u32);
                    out.put_pixel(x, y, p);
                }
            }
            xx += a[0];
            yy += a[3];
        }
        xo += a[1];
        yo += a[4];
    }
}

#[inline]
fn clip_index(v: i64, size: i64) -> usize {
    v.clamp(0, size - 1) as usize
}

/// `bilinear_filter32RGB`.
fn bilinear(img: &RgbImage, xin: f64, yin: f64) -> Option<[u8; 3]> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if xin < 0.0 || xin >= w as f64 || yin < 0.0 || yin >= h as f64 {
        return None;
    }
    let (xin, yin) = (xin - 0.5, yin - 0.5);
    let (x, y) = (floor_i(xin), floor_i(yin));
    let (dx, dy) = (xin - x as f64, yin - y as f64);
    let raw = img.as_raw();
    let row = |yy: i64| &raw[yy as usize * w as usize * 3..][..w as usize * 3];
    let (x0, x1) = (clip_index(x, w) * 3, clip_index(x + 1, w) * 3);
    let lerp = |a: f64, b: f64, d: f64| a + (b - a) * d;
    let mut out = [0u8; 3];
    for (b, o) in out.iter_mut().enumerate() {
        let r = row(clip_index(y, h) as i64);
        let v1 = lerp(r[x0 + b] as f64, r[x1 + b] as f64, dx);
        let v2 = if y + 1 >= 0 && y + 1 < h {
            let r = row(y + 1);
            lerp(r[x0 + b] as f64, r[x1 + b] as f64, dx)
        } else {
            v1
        };
        *o = lerp(v1, v2, dy) as u8;
    }
    Some(out)
}

/// Geometry.c `BICUBIC(v, v1, v2, v3, v4, d)`, operation order kept.
#[inline]
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p1 = v2;
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// `bicubic_filter32RGB`: rows beyond the image repeat the previous row's result, columns clamp.
fn bicubic(img: &RgbImage, xin: f64, yin: f64) -> Option<[u8; 3]> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if xin < 0.0 || xin >= w as f64 || yin < 0.0 || yin >= h as f64 {
        return None;
    }
    let (xin, yin) = (xin - 0.5, yin - 0.5);
    let (x, y) = (floor_i(xin) - 1, floor_i(yin) - 1);
    let (dx, dy) = (xin - (x + 1) as f64, yin - (y + 1) as f64);
    let raw = img.as_raw();
    let stride = w as usize * 3;
    let xs = [0, 1, 2, 3].map(|k| clip_index(x + k, w) * 3);
    let mut out = [0u8; 3];
    for (b, o) in out.iter_mut().enumerate() {
        let at = |yy: usize| {
            let r = &raw[yy * stride..][..stride];
            cubic(
                r[xs[0] + b] as f64,
                r[xs[1] + b] as f64,
                r[xs[2] + b] as f64,
                r[xs[3] + b] as f64,
                dx,
            )
        };
        let inside = |yy: i64| yy >= 0 && yy < h;
        let v1 = at(clip_index(y, h));
        let v2 = if inside(y + 1) {
            at((y + 1) as usize)
        } else {
            v1
        };
        let v3 = if inside(y + 2) {
            at((y + 2) as usize)
        } else {
            v2
        };
        let v4 = if inside(y + 3) {
            at((y + 3) as usize)
        } else {
            v3
        };
        let v = cubic(v1, v2, v3, v4, dy);
        *o = if v <= 0.0 {
            0
        } else if v >= 255.0 {
            255
        } else {
            v as u8
        };
    }
    Some(out)
}

/// Python's `x % y` on floats (the result takes the divisor's sign).
pub fn py_fmod(x: f64, y: f64) -> f64 {
    let m = x % y;
    if m != 0.0 {
        if (y < 0.0) != (m < 0.0) {
            m + y
        } else {
            m
        }
    } else {
        0.0f64.copysign(y)
    }
}

/// Python's `round(x, ndigits)`: the correctly rounded decimal, read back as a double.
pub fn py_round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's fixed-precision formatting is exact; a tie would need x = k / 2^16-ish values that
    // cos/sin never produce, so half-even vs half-up cannot differ here.
    format!("{x:.ndigits$}")
        .parse()
        .expect("formatted float parses")
}

/// The reverse affine matrix `Image.rotate(angle)` passes to `transform` (no expand, centre
/// `(w / 2, h / 2)`, no translation). `angle` is in degrees, counter-clockwise.
pub fn rotate_matrix(width: u32, height: u32, angle: f64) -> [f64; 6] {
    let angle = -py_fmod(angle, 360.0).to_radians();
    let (cos, sin) = (py_round(angle.cos(), 15), py_round(angle.sin(), 15));
    let neg_sin = py_round(-angle.sin(), 15);
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    let (x, y) = (-cx, -cy);
    let c = cos * x + sin * y + 0.0;
    let f = neg_sin * x + cos * y + 0.0;
    [cos, sin, c + cx, neg_sin, cos, f + cy]
}

/// PIL `img.rotate(angle, resample=filter, fillcolor=fill)` with `expand=False`.
pub fn rotate(img: &RgbImage, angle: f64, filter: Interpolation, fill: [u8; 3]) -> RgbImage {
    let a = py_fmod(angle, 360.0);
    if a == 0.0 {
        return img.clone();
    }
    if a == 180.0 {
        return image::imageops::rotate180(img);
    }
    if img.width() == img.height() {
        // Transpose.ROTATE_90 / ROTATE_270 (counter-clockwise) == image's clockwise 270 / 90.
        if a == 90.0 {
            return image::imageops::rotate270(img);
        }
        if a == 270.0 {
            return image::imageops::rotate90(img);
        }
    }
    let m = rotate_matrix(img.width(), img.height(), angle);
    affine(img, img.width(), img.height(), m, filter, fill)
}
