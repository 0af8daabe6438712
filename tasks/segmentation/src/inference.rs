//! mmseg 0.x `EncoderDecoder.slide_inference` and `simple_test`: overlapping `crop` windows with
//! `stride` (grid count `max(H − crop + stride − 1, 0) // stride + 1` per axis, windows clamped
//! inside the image: `y2 = min(y1 + crop, H)`, `y1 = max(y2 − crop, 0)`), each window's logits
//! added into place and divided by the per-pixel window count, then resized bilinearly
//! (`align_corners=False`) to the original image size and arg-maxed (first maximum on ties, as
//! `torch.argmax`).

use candle_core::{DType, Result, Tensor};

/// The windows as (y1, y2, x1, x2), row-major.
pub fn windows(
    h: usize,
    w: usize,
    crop: (usize, usize),
    stride: (usize, usize),
) -> Vec<(usize, usize, usize, usize)> {
    let grids = |size: usize, crop: usize, stride: usize| {
        (size + stride).saturating_sub(crop + 1) / stride + 1
    };
    let (hg, wg) = (grids(h, crop.0, stride.0), grids(w, crop.1, stride.1));
    let mut out = Vec::with_capacity(hg * wg);
    for hi in 0..hg {
        for wi in 0..wg {
            let (y1, x1) = (hi * stride.0, wi * stride.1);
            let (y2, x2) = ((y1 + crop.0).min(h), (x1 + crop.1).min(w));
            out.push((y2.saturating_sub(crop.0), y2, x2.saturating_sub(crop.1), x2));
        }
    }
    out
}

/// Averaged window logits [B, C, H, W] of `img` [B, 3, H, W]; `encode_decode` maps a window to
/// its logits at the window's size.
pub fn slide_inference(
    img: &Tensor,
    classes: usize,
    crop: (usize, usize),
    stride: (usize, usize),
    encode_decode: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, _, h, w) = img.dims4()?;
    let mut preds = Tensor::zeros((b, classes, h, w), DType::F32, img.device())?;
    let mut count = vec![0f32; h * w];
    for (y1, y2, x1, x2) in windows(h, w, crop, stride) {
        let window = img.narrow(2, y1, y2 - y1)?.narrow(3, x1, x2 - x1)?;
        let logits = encode_decode(&window)?.to_dtype(DType::F32)?;
        let padded = logits
            .pad_with_zeros(2, y1, h - y2)?
            .pad_with_zeros(3, x1, w - x2)?;
        preds = (preds + padded)?;
        for y in y1..y2 {
            for c in &mut count[y * w + x1..y * w + x2] {
                *c += 1.0;
            }
        }
    }
    let count = Tensor::from_vec(count, (1, 1, h, w), img.device())?;
    preds.broadcast_div(&count)
}

/// `simple_test`'s label map: logits [1, C, h, w] resized to `(height, width)` and arg-maxed.
pub fn predict_labels(logits: &Tensor, height: usize, width: usize) -> Result<Vec<u8>> {
    let (_, c, h, w) = logits.dims4()?;
    let logits = if (h, w) == (height, width) {
        logits.clone()
    } else {
        layers::resize::bilinear(logits, (height, width), false)?
    };
    let flat: Vec<f32> = logits.squeeze(0)?.flatten_all()?.to_vec1()?;
    let plane = height * width;
    Ok((0..plane)
        .map(|p| {
            let mut best = 0usize;
            for k in 1..c {
                if flat[k * plane + p] > flat[best * plane + p] {
                    best = k;
                }
            }
            best as u8
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_image_and_stay_inside() {
        let ws = windows(22, 29, (12, 16), (8, 10));
        assert_eq!(ws.len(), 3 * 3);
        for &(y1, y2, x1, x2) in &ws {
            assert!(y2 <= 22 && x2 <= 29 && y2 - y1 == 12 && x2 - x1 == 16);
        }
        // An image smaller than the crop is one window of the whole image.
        assert_eq!(windows(10, 12, (12, 16), (8, 10)), vec![(0, 10, 0, 12)]);
    }
}
