//! pycocotools' mask API (`pycocotools.mask`, `maskApi.c`) on run-length encoded masks.
//!
//! Masks are **column-major** (Fortran order, pixel (x, y) at `y + h * x`), as pycocotools stores
//! them; runs alternate starting with a run of zeros. The compressed string is maskApi's
//! LEB128-like text form. The codec, polygon rasteriser and IoU are the `hotcoco` crate's ports of
//! maskApi.c; `metrics/tests/mask.rs` checks them against pycocotools goldens.

use hotcoco::mask as hc;
pub use hotcoco::Rle;

use crate::{Error, Result};

fn wrap<T>(r: hotcoco::error::Result<T>) -> Result<T> {
    r.map_err(|e| Error::invalid(e.to_string()))
}

/// `mask.encode`: a column-major binary mask (any nonzero byte is foreground) of size `h × w`.
pub fn encode(mask: &[u8], h: u32, w: u32) -> Result<Rle> {
    wrap(hc::encode(mask, h, w))
}

/// Like [`encode`] for a row-major mask (the layout of decoded images).
pub fn encode_row_major(mask: &[u8], h: u32, w: u32) -> Result<Rle> {
    let (hu, wu) = (h as usize, w as usize);
    if mask.len() != hu * wu {
        return Err(Error::invalid(format!(
            "mask holds {} pixels, expected {h}x{w}",
            mask.len()
        )));
    }
    let mut col_major = vec![0u8; mask.len()];
    for y in 0..hu {
        for x in 0..wu {
            col_major[y + hu * x] = mask[y * wu + x];
        }
    }
    encode(&col_major, h, w)
}

/// `mask.decode`: the column-major 0/1 mask.
pub fn decode(rle: &Rle) -> Vec<u8> {
    hc::decode(rle)
}

/// An RLE from uncompressed run counts (the `{"counts": [...]}` form); counts must sum to `h × w`.
pub fn from_counts(counts: Vec<u32>, h: u32, w: u32) -> Result<Rle> {
    wrap(Rle::new(h, w, counts))
}

/// `mask.area`: number of foreground pixels.
pub fn area(rle: &Rle) -> u64 {
    hc::area(rle)
}

/// `mask.toBbox`: `[x, y, w, h]` of the foreground (zeros for an empty mask).
pub fn to_bbox(rle: &Rle) -> [f64; 4] {
    hc::to_bbox(rle)
}

/// `mask.merge`: union (or intersection) of same-sized masks.
pub fn merge(rles: &[Rle], intersect: bool) -> Result<Rle> {
    wrap(hc::merge(rles, intersect))
}

/// `rleFrPoly`: one polygon `[x0, y0, x1, y1, ...]` rasterised onto an `h × w` canvas.
pub fn from_polygon(xy: &[f64], h: u32, w: u32) -> Result<Rle> {
    wrap(hc::fr_poly(xy, h, w))
}

/// The polygons of one object, rasterised and merged (pycocotools' `annToRLE` for polygon lists).
pub fn from_polygons(polygons: &[Vec<f64>], h: u32, w: u32) -> Result<Rle> {
    wrap(hc::fr_polys(polygons, h, w))
}

/// `rleFrBbox`: a box `[x, y, w, h]` rasterised as its corner polygon.
pub fn from_bbox(bbox: &[f64; 4], h: u32, w: u32) -> Result<Rle> {
    wrap(hc::fr_bbox(bbox, h, w))
}

/// `rleToString`: the compressed counts string of the COCO JSON format.
pub fn to_string(rle: &Rle) -> String {
    hc::rle_to_string(rle)
}

/// `rleFrString`: parse a compressed counts string; errors when it does not describe `h × w` pixels.
pub fn from_string(counts: &str, h: u32, w: u32) -> Result<Rle> {
    let rle = wrap(hc::rle_from_string(counts, h, w))?;
    let total: u64 = rle.counts.iter().map(|&c| c as u64).sum();
    if total != h as u64 * w as u64 {
        return Err(Error::invalid(format!(
            "RLE counts cover {total} pixels but the mask is {h}x{w}"
        )));
    }
    Ok(rle)
}

/// `mask.iou` for boxes `[x, y, w, h]`: a `dt × gt` matrix; a crowd ground truth divides the
/// intersection by the detection's area instead of the union.
pub fn box_iou(dt: &[[f64; 4]], gt: &[[f64; 4]], iscrowd: &[bool]) -> Result<Vec<Vec<f64>>> {
    check_crowd(gt.len(), iscrowd)?;
    Ok(hotcoco::primitives::sim::bbox_iou(dt, gt, iscrowd))
}

/// `mask.iou` for masks; errors when two masks have different sizes (pycocotools returns −1).
pub fn mask_iou(dt: &[Rle], gt: &[Rle], iscrowd: &[bool]) -> Result<Vec<Vec<f64>>> {
    check_crowd(gt.len(), iscrowd)?;
    for (i, d) in dt.iter().enumerate() {
        for (j, g) in gt.iter().enumerate() {
            if (d.h, d.w) != (g.h, g.w) {
                return Err(Error::invalid(format!(
                    "detection mask {i} is {}x{} but ground-truth mask {j} is {}x{}",
                    d.h, d.w, g.h, g.w
                )));
            }
        }
    }
    Ok(hotcoco::primitives::sim::mask_iou(dt, gt, iscrowd))
}

fn check_crowd(n_gt: usize, iscrowd: &[bool]) -> Result<()> {
    if n_gt != iscrowd.len() {
        return Err(Error::invalid(format!(
            "{n_gt} ground-truth entries but {} iscrowd flags",
            iscrowd.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example_4x5() {
        // evaluation-reference.md B.7: ones at rows 1-2, cols 1-3.
        let mut m = vec![0u8; 20];
        for y in 1..3 {
            for x in 1..4 {
                m[y * 5 + x] = 1;
            }
        }
        let rle = encode_row_major(&m, 4, 5).unwrap();
        assert_eq!(rle.counts, vec![5, 2, 2, 2, 2, 2, 5]);
        assert_eq!(to_string(&rle), "5220003");
        assert_eq!(area(&rle), 6);
        assert_eq!(to_bbox(&rle), [1.0, 1.0, 3.0, 2.0]);
        assert_eq!(to_string(&encode(&[1; 9], 3, 3).unwrap()), "09");
        assert!(from_string("5220003", 4, 6).is_err());
    }
}
