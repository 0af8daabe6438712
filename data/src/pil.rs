//! Bit-exact ports of the Pillow (libImaging) kernels that torchvision's PIL path uses:
//! convolution resampling (Resample.c), nearest scaling (Geometry.c), box/gaussian blur (BoxBlur.c),
//! blending (Blend.c) and the L/HSV conversions (Convert.c). Each mirrors the C integer and
//! float arithmetic so outputs match PIL to the byte; the goldens in `tests/` hold them to that.

/// Resampling filters with PIL's kernels and supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
}

impl std::str::FromStr for Interpolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nearest" => Ok(Interpolation::Nearest),
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            other => Err(format!(
                "unknown interpolation '{other}' (expected nearest, bilinear or bicubic)"
            )),
        }
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point coefficients for one axis: for output index i, taps `kk[i*ksize..][..len]`
/// starting at input index `bounds[i].0`.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize, filter: Interpolation) -> Coeffs {
    let (kernel, base_support): (fn(f64) -> f64, f64) = match filter {
        Interpolation::Bilinear => (bilinear_filter, 1.0),
        Interpolation::Bicubic => (bicubic_filter, 2.0),
        Interpolation::Nearest => unreachable!("nearest uses scale_nearest"),
    };
    // PIL passes the box as C floats; (in1 - in0) is exact for integer sizes.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = base_support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let len = xmax - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(len) {
            let w = kernel((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(len) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let fixed = if v < 0.0 {
                (-0.5 + v * (1u32 << PRECISION_BITS) as f64) as i32
            } else {
                (0.5 + v * (1u32 << PRECISION_BITS) as f64) as i32
            };
            kk[xx * ksize + x] = fixed;
        }
        bounds.push((xmin, len));
    }
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Which of the two separable passes runs first. Each pass rounds to uint8, so the order changes
/// the output by a level or two on natural images (more on hard edges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOrder {
    HorizontalFirst,
    VerticalFirst,
}

impl PassOrder {
    /// The order Pillow 13's `ImagingResampleInner` (Resample.c) picks for a full-image resize:
    /// vertical first exactly when the height shrinks, and by more than twice as many pixels as
    /// the width shrinks (`(H - h) > 0 && (H - h) > 2 * (W - w)`, integer pixel counts, so an
    /// upscaled width always counts as a negative shrink). Older Pillow (e.g. 10.x) always ran
    /// horizontal first; goldens made with those would need `PassOrder::HorizontalFirst`.
    pub fn pillow(width: usize, height: usize, out_w: usize, out_h: usize) -> PassOrder {
        let shrink_h = height as i64 - out_h as i64;
        let shrink_w = width as i64 - out_w as i64;
        if shrink_h > 0 && shrink_h > 2 * shrink_w {
            PassOrder::VerticalFirst
        } else {
            PassOrder::HorizontalFirst
        }
    }
}

/// PIL `Image.resize((out_w, out_h), filter)` on an interleaved 8-bit image with `channels`
/// channels, passes in the order Pillow 13 picks ([`PassOrder::pillow`]). Antialiasing comes
/// from the support growing with the downscale factor.
pub fn resample(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Interpolation,
) -> Vec<u8> {
    let order = PassOrder::pillow(width, height, out_w, out_h);
    resample_in_order(src, width, height, channels, out_w, out_h, filter, order)
}

/// [`resample`] with the pass order forced; an axis whose size does not change gets no pass.
#[allow(clippy::too_many_arguments)]
pub fn resample_in_order(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Interpolation,
    order: PassOrder,
) -> Vec<u8> {
    assert_eq!(src.len(), width * height * channels);
    if out_w == width && out_h == height {
        return src.to_vec();
    }
    if filter == Interpolation::Nearest {
        return scale_nearest(src, width, height, channels, out_w, out_h);
    }
    let need_horizontal = out_w != width;
    let need_vertical = out_h != height;
    match order {
        PassOrder::HorizontalFirst => {
            let vert = precompute_coeffs(height, out_h, filter);
            if !need_horizontal {
                return vertical_pass(src, width, 0, channels, &vert);
            }
            let horiz = precompute_coeffs(width, out_w, filter);
            // Only the source rows the vertical pass reads are resampled horizontally.
            let first = vert.bounds[0].0;
            let last = vert.bounds[out_h - 1];
            let rows = &src[first * width * channels..(last.0 + last.1) * width * channels];
            let tmp = horizontal_pass(rows, width, channels, &horiz);
            if !need_vertical {
                return tmp;
            }
            vertical_pass(&tmp, out_w, first, channels, &vert)
        }
        PassOrder::VerticalFirst => {
            let tmp = if need_vertical {
                let vert = precompute_coeffs(height, out_h, filter);
                vertical_pass(src, width, 0, channels, &vert)
            } else {
                src.to_vec()
            };
            if !need_horizontal {
                return tmp;
            }
            let horiz = precompute_coeffs(width, out_w, filter);
            horizontal_pass(&tmp, width, channels, &horiz)
        }
    }
}

fn horizontal_pass(rows: &[u8], width: usize, channels: usize, horiz: &Coeffs) -> Vec<u8> {
    let out_w = horiz.bounds.len();
    let n_rows = rows.len() / (width * channels);
    let mut out = vec![0u8; out_w * n_rows * channels];
    for (in_row, out_row) in rows
        .chunks_exact(width * channels)
        .zip(out.chunks_exact_mut(out_w * channels))
    {
        convolve_row(in_row, out_row, horiz, channels);
    }
    out
}

/// `src` holds consecutive source rows starting at source row `row_offset`.
fn vertical_pass(
    src: &[u8],
    width: usize,
    row_offset: usize,
    channels: usize,
    vert: &Coeffs,
) -> Vec<u8> {
    let out_h = vert.bounds.len();
    let row_len = width * channels;
    let mut out = vec![0u8; row_len * out_h];
    let mut acc = vec![0i32; row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, len) = vert.bounds[yy];
        let ymin = ymin - row_offset;
        let k = &vert.kk[yy * vert.ksize..][..len];
        acc.iter_mut().for_each(|a| *a = 1 << (PRECISION_BITS - 1));
        for (y, &ky) in k.iter().enumerate() {
            let in_row = &src[(ymin + y) * row_len..][..row_len];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += p as i32 * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

fn convolve_row(in_row: &[u8], out_row: &mut [u8], c: &Coeffs, channels: usize) {
    for (xx, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
        let (xmin, len) = c.bounds[xx];
        let k = &c.kk[xx * c.ksize..][..len];
        let mut ss = [1i32 << (PRECISION_BITS - 1); 4];
        let taps = &in_row[xmin * channels..][..len * channels];
        for (px, &kx) in taps.chunks_exact(channels).zip(k) {
            for ch in 0..channels {
                ss[ch] += px[ch] as i32 * kx;
            }
        }
        for ch in 0..channels {
            out_px[ch] = clip8(ss[ch]);
        }
    }
}

/// PIL's NEAREST resize (`ImagingScaleAffine`): source positions accumulate in doubles from the
/// pixel centre, exactly as the C loop does.
pub fn scale_nearest(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    let a0 = width as f32 as f64 / out_w as f64;
    let a4 = height as f32 as f64 / out_h as f64;
    let coord = |v: f64| if v < 0.0 { -1i64 } else { v as i64 };
    let mut xin = Vec::with_capacity(out_w);
    let mut xo = a0 * 0.5;
    for _ in 0..out_w {
        xin.push(coord(xo).clamp(0, width as i64 - 1) as usize);
        xo += a0;
    }
    let mut out = vec![0u8; out_w * out_h * channels];
    let mut yo = a4 * 0.5;
    for y in 0..out_h {
        let yi = coord(yo).clamp(0, height as i64 - 1) as usize;
        yo += a4;
        let in_row = &src[yi * width * channels..][..width * channels];
        let out_row = &mut out[y * out_w * channels..][..out_w * channels];
        for (o, &x) in out_row.chunks_exact_mut(channels).zip(&xin) {
            o.copy_from_slice(&in_row[x * channels..][..channels]);
        }
    }
    out
}

/// PIL `ImageFilter.GaussianBlur(radius)`: three passes of an extended box blur per axis.
pub fn gaussian_blur(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    radius: f32,
) -> Vec<u8> {
    if radius == 0.0 {
        return src.to_vec();
    }
    let box_radius = gaussian_blur_radius(radius, 3);
    let mut img = src.to_vec();
    if box_radius != 0.0 {
        for _ in 0..3 {
            horizontal_box_blur(&mut img, width, height, channels, box_radius);
        }
        let mut t = transpose(&img, width, height, channels);
        for _ in 0..3 {
            horizontal_box_blur(&mut t, height, width, channels, box_radius);
        }
        img = transpose(&t, height, width, channels);
    }
    img
}

fn gaussian_blur_radius(radius: f32, passes: i32) -> f32 {
    let sigma2: f32 = radius * radius / passes as f32;
    let big_l: f32 = (12.0 * sigma2 as f64 + 1.0).sqrt() as f32;
    let l: f32 = ((big_l as f64 - 1.0) / 2.0).floor() as f32;
    let mut a: f32 = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

fn transpose(src: &[u8], width: usize, height: usize, channels: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    for y in 0..height {
        for x in 0..width {
            let s = (y * width + x) * channels;
            let d = (x * height + y) * channels;
            out[d..d + channels].copy_from_slice(&src[s..s + channels]);
        }
    }
    out
}

fn horizontal_box_blur(
    img: &mut [u8],
    width: usize,
    height: usize,
    channels: usize,
    float_radius: f32,
) {
    let radius = float_radius as i32;
    let ww = ((1u32 << 24) as f32 / (float_radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (radius as u32 * 2 + 1) * ww) / 2;
    let xsize = width as i32;
    let edge_a = (radius + 1).min(xsize);
    let edge_b = (xsize - radius - 1).max(0);
    let lastx = xsize - 1;
    let mut line_out = vec![0u8; width * channels];
    for y in 0..height {
        let line = &mut img[y * width * channels..][..width * channels];
        for ch in 0..channels {
            let px = |x: i32| line[x as usize * channels + ch] as u32;
            let mut acc: u32 = px(0).wrapping_mul((radius + 1) as u32);
            for x in 0..(edge_a - 1) {
                acc = acc.wrapping_add(px(x));
            }
            acc = acc.wrapping_add(px(lastx).wrapping_mul((radius - edge_a + 1) as u32));
            let mut step = |x: i32, sub: i32, add: i32, left: i32, right: i32, acc: &mut u32| {
                *acc = acc.wrapping_add(px(add)).wrapping_sub(px(sub));
                let bulk = acc
                    .wrapping_mul(ww)
                    .wrapping_add((px(left) + px(right)).wrapping_mul(fw));
                line_out[x as usize * channels + ch] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
            };
            if edge_a <= edge_b {
                for x in 0..edge_a {
                    step(x, 0, x + radius, 0, x + radius + 1, &mut acc);
                }
                for x in edge_a..edge_b {
                    step(
                        x,
                        x - radius - 1,
                        x + radius,
                        x - radius - 1,
                        x + radius + 1,
                        &mut acc,
                    );
                }
                for x in edge_b..=lastx {
                    step(x, x - radius - 1, lastx, x - radius - 1, lastx, &mut acc);
                }
            } else {
                for x in 0..edge_b {
                    step(x, 0, x + radius, 0, x + radius + 1, &mut acc);
                }
                for x in edge_b..edge_a {
                    step(x, 0, lastx, 0, lastx, &mut acc);
                }
                for x in edge_a..=lastx {
                    step(x, x - radius - 1, lastx, x - radius - 1, lastx, &mut acc);
                }
            }
        }
        line.copy_from_slice(&line_out);
    }
}

/// PIL `Image.blend(a, b, alpha)` (ImagingBlend): `a + alpha * (b - a)` in C float arithmetic,
/// truncated, clipped only when extrapolating.
pub fn blend_value(a: u8, b: u8, alpha: f32) -> u8 {
    let t = a as f32 + alpha * (b as i32 - a as i32) as f32;
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// PIL's `Image.blend` over whole buffers, including its alpha == 0 / 1 copy shortcuts.
pub fn blend(a: &[u8], b: &[u8], alpha: f32) -> Vec<u8> {
    if alpha == 0.0 {
        return a.to_vec();
    }
    if alpha == 1.0 {
        return b.to_vec();
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| blend_value(x, y, alpha))
        .collect()
}

/// ITU-R 601-2 luma in PIL's 16-bit fixed point (`convert("L")`).
#[inline]
pub fn rgb_to_l(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// PIL `convert("HSV")` for one pixel.
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return [0, 0, maxc];
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h: f32 = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let clip = |v: i32| v.clamp(0, 255) as u8;
    let uh = clip((h as f64 * 255.0) as i32);
    let us = clip((s as f64 * 255.0) as i32);
    [uh, us, maxc]
}

/// PIL `convert("RGB")` from HSV for one pixel.
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let i = (h as f32 as f64 * 6.0 / 255.0).floor() as i32;
    let f: f32 = (h as f32 as f64 * 6.0 / 255.0 - i as f32 as f64) as f32;
    let fs: f32 = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let clip = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip(vf * (1.0 - fs as f64));
    let q = clip(vf * (1.0 - (fs * f) as f64));
    let t = clip(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}
