//! Decoding and encoding image files the way torchvision's `pil_loader` sees them.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, GrayImage, RgbImage};

use crate::error::{DataError, Result};

/// Reads any decodable image (format sniffed from the bytes, not the extension) as 8-bit RGB.
///
/// Grey is replicated to three channels; alpha is dropped without compositing, as PIL's
/// `convert("RGB")` does.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_rgb(&bytes, path)
}

/// Decodes in-memory bytes; `path` only names the source in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let img = decode_dynamic(bytes, path)?;
    Ok(to_rgb(img))
}

fn decode_dynamic(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    if bytes.is_empty() {
        return Err(DataError::decode(path, "file is empty"));
    }
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::decode(path, e.to_string()))?;
    if reader.format().is_none() {
        return Err(DataError::decode(
            path,
            "unrecognised image format (supported: PNG, JPEG)",
        ));
    }
    reader
        .decode()
        .map_err(|e| DataError::decode(path, e.to_string()))
}

fn to_rgb(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(grey) => grey_to_rgb(&grey),
        other => other.to_rgb8(),
    }
}

/// Grey → RGB by replication (PIL `convert("RGB")` on mode L).
pub fn grey_to_rgb(grey: &GrayImage) -> RgbImage {
    let (w, h) = grey.dimensions();
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for &v in grey.as_raw() {
        out.extend_from_slice(&[v, v, v]);
    }
    RgbImage::from_raw(w, h, out).expect("buffer sized from dimensions")
}

/// Writes a PNG (lossless, so written data round-trips exactly).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::format(path, format!("cannot write PNG: {e}")))
}

/// A single-channel label map (class index per pixel), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    pub width: u32,
    pub height: u32,
    pub labels: Vec<u8>,
}

impl LabelMap {
    pub fn new(width: u32, height: u32, fill: u8) -> Self {
        LabelMap {
            width,
            height,
            labels: vec![fill; (width * height) as usize],
        }
    }

    pub fn get(&self, x: u32, y: u32) -> u8 {
        self.labels[(y * self.width + x) as usize]
    }
}

/// Reads a label PNG: 8-bit greyscale values or palette *indices* (VOC-style palette PNGs),
/// never the palette colours. RGB label images are rejected because their classes are ambiguous.
pub fn load_label_png(path: &Path) -> Result<LabelMap> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let mut decoder = png::Decoder::new(Cursor::new(&bytes[..]));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| DataError::decode(path, format!("not a readable PNG: {e}")))?;
    let (color, depth) = reader.output_color_type();
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    if depth != png::BitDepth::Eight {
        return Err(DataError::format(
            path,
            format!("label PNG must be 8-bit, found {depth:?}"),
        ));
    }
    let channels = match color {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        other => {
            return Err(DataError::format(
                path,
                format!("label PNG must be greyscale or palette, found {other:?}"),
            ))
        }
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DataError::format(path, "image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| DataError::decode(path, format!("truncated or corrupt PNG: {e}")))?;
    let stride = frame.line_size;
    let mut labels = Vec::with_capacity((width * height) as usize);
    for row in buf.chunks(stride).take(height as usize) {
        labels.extend(row.iter().step_by(channels).take(width as usize));
    }
    Ok(LabelMap {
        width,
        height,
        labels,
    })
}

/// Writes a label map as an 8-bit greyscale PNG (the ADE20K annotation layout).
pub fn save_label_png(map: &LabelMap, path: &Path) -> Result<()> {
    let grey = GrayImage::from_raw(map.width, map.height, map.labels.clone())
        .ok_or_else(|| DataError::format(path, "label buffer does not match its size"))?;
    grey.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::format(path, format!("cannot write PNG: {e}")))
}
