//! `DeltaXYWHBBoxCoder` encode/decode (means/stds, dw/dh clamp, clip) vs mmdet 2.11.

use detection::box_coder::DeltaXYWHBBoxCoder;

use crate::util::{check, flat4, Golden, TOL};

#[test]
fn encode_matches() {
    let g = Golden::load("box_coder");
    let (p, gt) = (g.boxes("enc.p"), g.boxes("enc.gt"));
    let cases = [
        ("enc.rpn", DeltaXYWHBBoxCoder::rpn()),
        ("enc.stage0", DeltaXYWHBBoxCoder::cascade_stage(0)),
        (
            "enc.means",
            DeltaXYWHBBoxCoder::new([0.1, -0.2, 0.05, 0.0], [0.5, 0.5, 1.0, 2.0]),
        ),
    ];
    for (key, coder) in cases {
        check(
            &format!("box_coder {key}"),
            &flat4(&coder.encode(&p, &gt)),
            &g.f32s(key),
            TOL,
        );
    }
}

#[test]
fn decode_matches_with_clamp_and_clip() {
    let g = Golden::load("box_coder");
    let rois = g.boxes("dec.rois");
    let deltas = g.boxes("dec.deltas");
    let rpn = DeltaXYWHBBoxCoder::rpn();
    check(
        "box_coder dec.noclip",
        &flat4(&rpn.decode(&rois, &deltas, None)),
        &g.f32s("dec.noclip"),
        TOL,
    );
    check(
        "box_coder dec.clip",
        &flat4(&rpn.decode(&rois, &deltas, Some((70, 90)))),
        &g.f32s("dec.clip"),
        TOL,
    );
    let s2 = DeltaXYWHBBoxCoder::cascade_stage(2);
    check(
        "box_coder dec.stage2.clip",
        &flat4(&s2.decode(&rois, &deltas, Some((70, 90)))),
        &g.f32s("dec.stage2.clip"),
        TOL,
    );
    let s1 = DeltaXYWHBBoxCoder::cascade_stage(1);
    let multi = s1.decode_multiclass(&rois, &g.f32s("dec.multi.deltas"), Some((70, 90)));
    check("box_coder dec.multi", &multi, &g.f32s("dec.multi"), TOL);
    // round trip encode → decode with the stage-1 stds
    let (p, gt) = (g.boxes("enc.p"), g.boxes("enc.gt"));
    let rt = s1.decode(&p, &s1.encode(&p, &gt), None);
    check(
        "box_coder rt.stage1 vs torch",
        &flat4(&rt),
        &g.f32s("rt.stage1"),
        TOL,
    );
    check("box_coder rt.stage1 vs gt", &flat4(&rt), &flat4(&gt), TOL);
}

#[test]
fn clamp_bound_is_log_16_over_1000() {
    let mr = detection::box_coder::max_ratio(detection::box_coder::WH_RATIO_CLIP);
    assert_eq!(mr, 4.135_166_6_f32);
    let c = DeltaXYWHBBoxCoder::rpn();
    let b = c.decode_one(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 100.0, -100.0], None);
    assert!(((b[2] - b[0]) - 10.0 * mr.exp()).abs() < 1e-3);
    assert!(((b[3] - b[1]) - 10.0 * (-mr).exp()).abs() < 1e-5);
}
