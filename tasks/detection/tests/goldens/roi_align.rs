//! `layers::roi_align` vs torchvision `roi_align(aligned=True, sampling_ratio=0)` forward and backward,
//! through mmdet 2.11's `SingleRoIExtractor` on random multi-level features (RoIs partly and wholly
//! outside the image, tiny and zero-size RoIs), plus the level mapping at finest_scale 56.

use candle_core::{Device, Tensor, Var};
use layers::roi_align::{
    roi_align, roi_align_host, roi_align_host_backward, RoiAlignConfig, SingleRoIExtractor,
};

use crate::util::{check, Golden};

fn extractor(out: usize, finest: f32) -> SingleRoIExtractor {
    SingleRoIExtractor {
        finest_scale: finest,
        ..SingleRoIExtractor::mmdet(out)
    }
}

#[test]
fn level_mapping_matches() {
    let g = Golden::load("roi_align");
    let rois = g.rows5("lvl.rois");
    let lv = SingleRoIExtractor::mmdet(7).map_roi_levels(&rois, 4);
    assert_eq!(lv, g.usizes("lvl.levels"));
}

#[test]
fn extractor_forward_and_backward_match_torchvision() {
    extractor_on(&Device::Cpu, true);
}

/// The same golden on the GPU (`cargo test --release -p detection --features cuda`).
#[cfg(feature = "cuda")]
#[test]
fn extractor_on_cuda_matches_torchvision() {
    extractor_on(&Device::new_cuda(0).expect("a CUDA device"), false);
}

fn extractor_on(dev: &Device, host_checks: bool) {
    let g = Golden::load("roi_align");
    let tag = if dev.is_cpu() { "cpu" } else { "cuda" };
    let rois_all = g.rows5("ex.rois");
    let shapes: Vec<Vec<usize>> = (0..4).map(|l| g.shape(&format!("ex.feat.{l}"))).collect();
    let feats: Vec<Var> = (0..4)
        .map(|l| {
            Var::from_tensor(
                &Tensor::from_vec(g.f32s(&format!("ex.feat.{l}")), shapes[l].as_slice(), dev)
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    let ft: Vec<Tensor> = feats.iter().map(|v| v.as_tensor().clone()).collect();
    for (out, n) in [(7usize, rois_all.len()), (14, 10)] {
        let rois = &rois_all[..n];
        let ex = extractor(out, 14.0);
        let levels = ex.map_roi_levels(rois, 4);
        assert_eq!(levels, g.usizes(&format!("ex{out}.levels")));
        let want = g.f32s(&format!("ex{out}.out"));
        let per = want.len() / n;
        // host form, level by level
        if host_checks {
            let mut host = vec![0.0f32; want.len()];
            for (i, r) in rois.iter().enumerate() {
                let l = levels[i];
                let s = &shapes[l];
                let o = roi_align_host(
                    &g.f32s(&format!("ex.feat.{l}")),
                    (s[0], s[1], s[2], s[3]),
                    &[*r],
                    &ex.level_config(l),
                );
                host[i * per..(i + 1) * per].copy_from_slice(&o);
            }
            check(
                &format!("roi_align ex{out} host forward"),
                &host,
                &want,
                1e-6,
            );
        }
        // device (candle) form
        let y = ex.forward(&ft, rois).unwrap();
        assert_eq!(y.dims(), &[n, shapes[0][1], out, out]);
        let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        check(
            &format!("roi_align ex{out} candle {tag} forward"),
            &yv,
            &want,
            1e-5,
        );
        let gout = Tensor::from_vec(g.f32s(&format!("ex{out}.gout")), y.dims(), dev).unwrap();
        let loss = (y * &gout).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gv = g.f32s(&format!("ex{out}.gout"));
        for l in 0..4 {
            let want_g = g.f32s(&format!("ex{out}.grad.{l}"));
            let got: Vec<f32> = match grads.get(feats[l].as_tensor()) {
                Some(t) => t.flatten_all().unwrap().to_vec1().unwrap(),
                None => vec![0.0; want_g.len()],
            };
            check(
                &format!("roi_align ex{out} candle {tag} grad level {l}"),
                &got,
                &want_g,
                1e-5,
            );
            if !host_checks {
                continue;
            }
            // host backward of the level's RoIs
            let idx: Vec<usize> = (0..n).filter(|&i| levels[i] == l).collect();
            let sub: Vec<[f32; 5]> = idx.iter().map(|&i| rois[i]).collect();
            let go: Vec<f32> = idx
                .iter()
                .flat_map(|&i| gv[i * per..(i + 1) * per].iter().copied())
                .collect();
            let s = &shapes[l];
            let hb =
                roi_align_host_backward(&go, (s[0], s[1], s[2], s[3]), &sub, &ex.level_config(l));
            check(
                &format!("roi_align ex{out} host grad level {l}"),
                &hb,
                &want_g,
                1e-6,
            );
        }
    }
}

#[test]
fn sampling_ratio_and_unaligned_variants_match() {
    let g = Golden::load("roi_align");
    let dev = Device::Cpu;
    let rois = g.rows5("ex.rois");
    let s = g.shape("ex.feat.1");
    let f = g.f32s("ex.feat.1");
    let dims = (s[0], s[1], s[2], s[3]);
    let ft = Tensor::from_vec(f.clone(), s.as_slice(), &dev).unwrap();
    let cases = [
        (
            "sr2.out",
            RoiAlignConfig {
                out_h: 5,
                out_w: 4,
                spatial_scale: 0.125,
                sampling_ratio: 2,
                aligned: true,
            },
        ),
        (
            "unaligned.out",
            RoiAlignConfig {
                out_h: 3,
                out_w: 3,
                spatial_scale: 0.125,
                sampling_ratio: 0,
                aligned: false,
            },
        ),
    ];
    for (key, cfg) in cases {
        let want = g.f32s(key);
        check(
            &format!("roi_align {key} host"),
            &roi_align_host(&f, dims, &rois, &cfg),
            &want,
            1e-6,
        );
        let y: Vec<f32> = roi_align(&ft, &rois, &cfg)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        check(&format!("roi_align {key} candle"), &y, &want, 1e-5);
    }
}
