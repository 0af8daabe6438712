//! `bbox_overlaps` (iou / iof / giou, pairwise and aligned) vs mmdet 2.11.

use detection::structures::{bbox_overlaps, bbox_overlaps_aligned, OverlapMode};

use crate::util::{check, Golden};

#[test]
fn overlaps_match_mmdet() {
    let g = Golden::load("structures");
    let (a, b, aa) = (g.boxes("a"), g.boxes("b"), g.boxes("aa"));
    for (name, mode) in [
        ("iou", OverlapMode::Iou),
        ("iof", OverlapMode::Iof),
        ("giou", OverlapMode::Giou),
    ] {
        let m = bbox_overlaps(&a, &b, mode);
        assert_eq!((m.rows, m.cols), (a.len(), b.len()));
        check(
            &format!("structures pair.{name}"),
            &m.data,
            &g.f32s(&format!("pair.{name}")),
            1e-6,
        );
        let v = bbox_overlaps_aligned(&aa, &b, mode);
        check(
            &format!("structures aligned.{name}"),
            &v,
            &g.f32s(&format!("aligned.{name}")),
            1e-6,
        );
    }
    // empty inputs give empty outputs
    assert!(bbox_overlaps(&[], &b, OverlapMode::Iou).data.is_empty());
}
