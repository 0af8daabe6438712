//! Anchor grids, valid flags and inside flags vs mmdet 2.11's `AnchorGenerator`.

use detection::anchors::{anchor_inside_flags, fpn_featmap_sizes, AnchorGenerator};

use crate::util::{flat4, meta_pair, Golden};

#[test]
fn base_and_grid_anchors_are_bit_identical() {
    let g = Golden::load("anchors");
    let gen = AnchorGenerator::mmdet_rpn();
    for l in 0..5 {
        assert_eq!(
            flat4(&gen.base_anchors[l]),
            g.f32s(&format!("base.{l}")),
            "base anchors of level {l}"
        );
    }
    let m = &g.meta["gen2"];
    let gen2 = AnchorGenerator::new(&[8, 16], &[0.5, 1.0, 2.0], &[2.0, 3.0], None, false, 0.5);
    assert_eq!(m["scale_major"], false);
    for l in 0..2 {
        assert_eq!(
            flat4(&gen2.base_anchors[l]),
            g.f32s(&format!("gen2.base.{l}")),
            "gen2 base {l}"
        );
    }
    let fs: Vec<(usize, usize)> = m["featmap_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(meta_pair)
        .collect();
    let grid2 = gen2.grid_anchors(&fs);
    for l in 0..2 {
        assert_eq!(
            flat4(&grid2[l]),
            g.f32s(&format!("gen2.grid.{l}")),
            "gen2 grid {l}"
        );
    }
}

#[test]
fn grid_valid_and_inside_flags_match() {
    let g = Golden::load("anchors");
    let gen = AnchorGenerator::mmdet_rpn();
    for (c, case) in g.meta["cases"].as_array().unwrap().iter().enumerate() {
        let fs: Vec<(usize, usize)> = case["featmap_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(meta_pair)
            .collect();
        let grid = gen.grid_anchors(&fs);
        for (l, a) in grid.iter().enumerate() {
            assert_eq!(
                flat4(a),
                g.f32s(&format!("c{c}.anchors.{l}")),
                "case {c} level {l} anchors"
            );
        }
        let flat: Vec<[f32; 4]> = grid.concat();
        for (j, im) in case["images"].as_array().unwrap().iter().enumerate() {
            let pad = meta_pair(&im["pad_shape"]);
            let img = meta_pair(&im["img_shape"]);
            let vf = gen.valid_flags(&fs, pad);
            for (l, v) in vf.iter().enumerate() {
                assert_eq!(
                    v,
                    &g.bools(&format!("c{c}.img{j}.valid.{l}")),
                    "case {c} img {j} valid {l}"
                );
            }
            let inside = anchor_inside_flags(&flat, &vf.concat(), img, 0.0);
            assert_eq!(
                inside,
                g.bools(&format!("c{c}.img{j}.inside")),
                "case {c} img {j} inside"
            );
            println!(
                "anchors case {c} img {j}: {} anchors, {} valid, {} inside",
                flat.len(),
                vf.concat().iter().filter(|&&v| v).count(),
                inside.iter().filter(|&&v| v).count()
            );
        }
        // the golden's feature sizes are those of a batch padded to a multiple of 32
        let pad = (fs[0].0 * 4, fs[0].1 * 4);
        assert_eq!(fpn_featmap_sizes(pad), fs);
    }
}
