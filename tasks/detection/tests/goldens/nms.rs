//! `nms` vs torchvision (ties, identical boxes) and `batched_nms` vs mmcv 1.3.9's (offset trick,
//! per-class split branch, class-agnostic, max_num, negative coordinates).

use detection::nms::{batched_nms, nms, NmsConfig};

use crate::util::{check, flat5, Golden};

#[test]
fn nms_matches_torchvision_including_tie_order() {
    let g = Golden::load("nms");
    let boxes = g.boxes("boxes");
    let scores = g.f32s("scores");
    for (key, thr) in [("nms.3", 0.3), ("nms.5", 0.5), ("nms.7", 0.7)] {
        let keep = nms(&boxes, &scores, thr);
        assert_eq!(keep, g.usizes(key), "{key}");
        println!("nms {key}: kept {} of {}", keep.len(), boxes.len());
    }
}

#[test]
fn batched_nms_matches_mmcv() {
    let g = Golden::load("nms");
    let boxes = g.boxes("boxes");
    let scores = g.f32s("scores");
    let idxs = g.i64s("idxs");
    for c in g.meta["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let cfg = NmsConfig {
            iou_threshold: c["iou_threshold"].as_f64().unwrap(),
            class_agnostic: c
                .get("class_agnostic")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            split_thr: c
                .get("split_thr")
                .and_then(|v| v.as_u64())
                .unwrap_or(10_000) as usize,
            max_num: c.get("max_num").and_then(|v| v.as_i64()).unwrap_or(-1),
        };
        let (dets, keep) = batched_nms(&boxes, &scores, &idxs, &cfg);
        assert_eq!(keep, g.usizes(&format!("{name}.keep")), "{name}: keep");
        // dets are the original boxes and scores of the kept indices
        for (d, &k) in dets.iter().zip(&keep) {
            assert_eq!(&d[..4], &boxes[k][..]);
            assert_eq!(d[4], scores[k]);
        }
        println!("batched_nms {name}: kept {}", keep.len());
    }
    assert_eq!(
        g.meta["tv_batched_nms_same_set"], true,
        "torchvision batched_nms agreed in Python"
    );
    let (nb, ns, ni) = (
        g.boxes("neg.boxes"),
        g.f32s("neg.scores"),
        g.i64s("neg.idxs"),
    );
    let (dets, keep) = batched_nms(&nb, &ns, &ni, &NmsConfig::iou(0.5));
    assert_eq!(keep, g.usizes("neg.keep"));
    check(
        "batched_nms neg.dets",
        &flat5(&dets),
        &g.f32s("neg.dets"),
        0.0,
    );
}

#[test]
fn nms_edge_cases() {
    assert!(nms(&[], &[], 0.5).is_empty());
    // exactly at the threshold is kept (suppression needs IoU > thr); zero-area boxes never suppress
    let b = [
        [0.0, 0.0, 3.0, 1.0],
        [1.0, 0.0, 4.0, 1.0],
        [5.0, 5.0, 5.0, 5.0],
        [5.0, 5.0, 5.0, 5.0],
    ];
    let s = [0.9, 0.8, 0.7, 0.7];
    assert_eq!(nms(&b, &s, 0.5), vec![0, 1, 2, 3]); // IoU exactly 0.5
    assert_eq!(nms(&b, &s, 0.49), vec![0, 2, 3]);
}
