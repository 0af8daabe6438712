//! mmseg-style segmentation scores against a numpy transcription of mmseg's formula.

mod common;

use common::*;
use metrics::segmentation::{SegmentationAccumulator, SegmentationConfig};

#[test]
fn scores_match_mmseg_formula() {
    let g = golden("segmentation.json");
    for (i, case) in cases(&g).iter().enumerate() {
        let config = SegmentationConfig {
            num_classes: case["num_classes"].as_u64().unwrap() as usize,
            ignore_index: case["ignore_index"].as_u64().unwrap() as u32,
            reduce_zero_label: case["reduce_zero_label"].as_bool().unwrap(),
        };
        let wide = case["bit_depth"].as_u64().unwrap() == 16;
        let mut acc = SegmentationAccumulator::new(config);
        for img in case["images"].as_array().unwrap() {
            let pred = u64s(&img["pred"]);
            let gt = u64s(&img["gt"]);
            if wide {
                let p: Vec<u16> = pred.iter().map(|&v| v as u16).collect();
                let g: Vec<u16> = gt.iter().map(|&v| v as u16).collect();
                acc.add_u16(&p, &g).unwrap();
            } else {
                let p: Vec<u8> = pred.iter().map(|&v| v as u8).collect();
                let g: Vec<u8> = gt.iter().map(|&v| v as u8).collect();
                acc.add_u8(&p, &g).unwrap();
            }
        }
        let s = acc.scores();
        assert_eq!(s.area_intersect, u64s(&case["area_intersect"]), "case {i}");
        assert_eq!(s.area_union, u64s(&case["area_union"]), "case {i}");
        assert_eq!(s.area_pred, u64s(&case["area_pred"]), "case {i}");
        assert_eq!(s.area_label, u64s(&case["area_label"]), "case {i}");
        // Bit-identical (NaN where the reference has NaN).
        assert_close(
            &format!("case {i} aAcc"),
            s.a_acc,
            opt_f64(&case["aAcc"]),
            0.0,
        );
        assert_close(
            &format!("case {i} mIoU"),
            s.m_iou,
            opt_f64(&case["mIoU"]),
            0.0,
        );
        assert_close(
            &format!("case {i} mAcc"),
            s.m_acc,
            opt_f64(&case["mAcc"]),
            0.0,
        );
        for (c, (&got, want)) in s.iou.iter().zip(f64s(&case["iou"])).enumerate() {
            assert_close(&format!("case {i} IoU[{c}]"), got, want, 0.0);
        }
        for (c, (&got, want)) in s.acc.iter().zip(f64s(&case["acc"])).enumerate() {
            assert_close(&format!("case {i} Acc[{c}]"), got, want, 0.0);
        }
    }
}

#[test]
fn mmseg_issue_964_example() {
    // Background everywhere, one pixel predicted as class 1: IoU[1] = 0 (counted), Acc[1] = NaN.
    let gt = vec![0u8; 2500];
    let mut pred = gt.clone();
    pred[0] = 1;
    let mut acc = SegmentationAccumulator::new(SegmentationConfig::new(2));
    acc.add_u8(&pred, &gt).unwrap();
    let s = acc.scores();
    assert_eq!(s.iou[1], 0.0);
    assert!(s.acc[1].is_nan());
    assert_eq!((s.m_iou * 10000.0).round() / 100.0, 49.98);
    assert_eq!((s.m_acc * 10000.0).round() / 100.0, 99.96);
}

fn write_png(
    path: &std::path::Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if color == png::ColorType::Indexed {
        enc.set_palette(
            (0..16u8)
                .flat_map(|i| [255 - i, i * 3, 7])
                .collect::<Vec<u8>>(),
        );
    }
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn label_pngs_read_palette_indices_not_colours() {
    use metrics::segmentation::{read_label_png, LabelValues};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pal.png");
    write_png(
        &p,
        3,
        2,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &[0, 1, 2, 3, 4, 5],
    );
    assert_eq!(
        read_label_png(&p).unwrap().values,
        LabelValues::U8(vec![0, 1, 2, 3, 4, 5])
    );
    // 4-bit palette: two pixels per byte, rows padded to whole bytes.
    write_png(
        &p,
        3,
        2,
        png::ColorType::Indexed,
        png::BitDepth::Four,
        &[0x12, 0x30, 0x45, 0x60],
    );
    assert_eq!(
        read_label_png(&p).unwrap().values,
        LabelValues::U8(vec![1, 2, 3, 4, 5, 6])
    );
    write_png(
        &p,
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &[1, 2, 0, 7],
    );
    assert_eq!(
        read_label_png(&p).unwrap().values,
        LabelValues::U16(vec![258, 7])
    );
    write_png(
        &p,
        1,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &[1, 2, 3],
    );
    let err = read_label_png(&p).unwrap_err().to_string();
    assert!(err.contains("pal.png") && err.contains("Rgb"), "{err}");
    std::fs::write(&p, b"garbage").unwrap();
    assert!(read_label_png(&p)
        .unwrap_err()
        .to_string()
        .contains("pal.png"));
}
