//! IDX files (MNIST / Fashion-MNIST), raw or gzip-compressed (detected from the magic bytes).

use std::io::Read;
use std::path::Path;

use image::RgbImage;

use crate::error::{DataError, Result};
use crate::image_io::grey_to_rgb;

/// An IDX tensor of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads an IDX file of type 0x08 (unsigned byte), any rank.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = read_maybe_gzip(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(
            path,
            "not an IDX file (bad magic number)",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::format(
            path,
            format!(
                "IDX element type 0x{:02x} unsupported (only unsigned byte, 0x08)",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(DataError::format(path, "IDX header truncated"));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(DataError::format(
            path,
            format!(
                "IDX dims {dims:?} need {n} bytes of data but the file has {}",
                bytes.len() - header
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Writes an unsigned-byte IDX file (raw).
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    std::fs::write(path, out).map_err(|e| DataError::io(path, e))
}

/// Images + labels from an IDX pair (images N x H x W, labels N), as RGB (grey replicated,
/// as torchvision's MNIST datasets do after `convert("RGB")`).
pub fn read_idx_classification(
    images: &Path,
    labels: &Path,
) -> Result<(Vec<RgbImage>, Vec<usize>)> {
    let imgs = read_idx(images)?;
    if imgs.dims.len() != 3 {
        return Err(DataError::format(
            images,
            format!("expected N x H x W images, found dims {:?}", imgs.dims),
        ));
    }
    let labs = read_idx(labels)?;
    if labs.dims.len() != 1 || labs.dims[0] != imgs.dims[0] {
        return Err(DataError::format(
            labels,
            format!(
                "expected {} labels to match {}, found dims {:?}",
                imgs.dims[0],
                images.display(),
                labs.dims
            ),
        ));
    }
    let (h, w) = (imgs.dims[1], imgs.dims[2]);
    let out = imgs
        .data
        .chunks_exact(h * w)
        .map(|px| {
            let grey = image::GrayImage::from_raw(w as u32, h as u32, px.to_vec()).unwrap();
            grey_to_rgb(&grey)
        })
        .collect();
    Ok((out, labs.data.iter().map(|&l| l as usize).collect()))
}
