//! RPN proposals (`RPNHead._get_bboxes`, one image) from random level maps vs mmdet 2.11.

use detection::anchors::AnchorGenerator;
use detection::proposals::{rpn_proposals, LevelOutput, ProposalConfig};

use crate::util::{check, flat5, meta_pair, Golden, TOL};

#[test]
fn proposals_match_mmdet() {
    let g = Golden::load("proposals");
    let fs: Vec<(usize, usize)> = g.meta["featmap_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(meta_pair)
        .collect();
    let anchors = AnchorGenerator::mmdet_rpn().grid_anchors(&fs);
    let scores: Vec<Vec<f32>> = (0..5).map(|l| g.f32s(&format!("scores.{l}"))).collect();
    let deltas: Vec<Vec<f32>> = (0..5).map(|l| g.f32s(&format!("deltas.{l}"))).collect();
    let levels: Vec<LevelOutput> = (0..5)
        .map(|l| LevelOutput {
            cls: &scores[l],
            deltas: &deltas[l],
            h: fs[l].0,
            w: fs[l].1,
        })
        .collect();
    for c in g.meta["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let cfg = ProposalConfig {
            nms_pre: c["nms_pre"].as_u64().unwrap() as usize,
            max_per_img: c["max_per_img"].as_u64().unwrap() as usize,
            iou_threshold: c["iou_thr"].as_f64().unwrap(),
            min_bbox_size: c["min_bbox_size"].as_f64().unwrap() as f32,
        };
        let dets = rpn_proposals(&levels, &anchors, meta_pair(&c["img_shape"]), &cfg);
        let want = g.f32s(&format!("{name}.dets"));
        assert_eq!(dets.len() * 5, want.len(), "{name}: number of proposals");
        check(&format!("proposals {name}"), &flat5(&dets), &want, TOL);
    }
}
