//! Two optimizer steps of each mode against PyTorch: the same initial weights (the pretrained
//! pos_embed resized 4×4 → 6×6 as BEiT does at load), the same batch and soft targets, the
//! recipe's parameter groups. Every parameter after every step within 1e-5 of PyTorch (relative
//! to the tensor's largest value).

use std::collections::HashMap;

use backbone::VitConfig;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use finetune::config::{FinetuneConfig, Mode};
use finetune::model::{Classifier, HeadKind};
use finetune::train::{group_of, optimize_step, Targets};
use train::vars::{insert_vars, sorted_vars};
use train::{AdamW, AdamWConfig, Clip};

fn goldens() -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens");
    let t =
        candle_core::safetensors::load(format!("{dir}/step.safetensors"), &Device::Cpu).unwrap();
    let j = serde_json::from_str(&std::fs::read_to_string(format!("{dir}/step.json")).unwrap())
        .unwrap();
    (t, j)
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12);
    diff / scale
}

fn vit() -> VitConfig {
    VitConfig {
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_hidden: 64,
        patch_size: 4,
        img_size: 24,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    }
}

fn recipe(mode: &str) -> FinetuneConfig {
    FinetuneConfig::parse(
        &format!("name = \"golden\"\nmode = \"{mode}\"\n[optim]\nbatch_size = 4\nlayer_decay = 0.75\nweight_decay = 0.05\n"),
        "golden recipe",
    )
    .unwrap()
}

#[test]
fn pos_embed_resize_matches_bicubic_size_mode() {
    let (g, _) = goldens();
    let ours =
        backbone::pos_embed::resize_pos_embed(&g["pretrained_pos_embed"], (4, 4), (6, 6)).unwrap();
    let err = rel_err(&ours, &g["full.init.pos_embed"]);
    assert!(err < 1e-6, "pos_embed resize: {err}");
}

#[test]
fn steps_match_pytorch() {
    let (g, meta) = goldens();
    let dev = Device::Cpu;
    for (mode_name, mode) in [("full", Mode::Full), ("semisup", Mode::Semisup)] {
        let cfg = recipe(mode_name);
        let prefix = format!("{mode_name}.init.");
        let init: Vec<(String, Tensor)> = g
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
            .collect();
        let vars = VarMap::new();
        insert_vars(&vars, init, &dev).unwrap();
        let kind = HeadKind::of(mode, g.get(&format!("{prefix}head.mlp.0.weight"))).unwrap();
        let model = Classifier::new(
            &vit(),
            kind,
            5,
            VarBuilder::from_varmap(&vars, DType::F32, &dev),
            DType::F32,
        )
        .unwrap();
        let params = sorted_vars(&vars);
        let mut opt = AdamW::with_rule(params.clone(), group_of(&cfg, 2), AdamWConfig::default());
        let m = &meta[mode_name];
        let mut worst = 0f32;
        for it in 0..2 {
            let loss = optimize_step(
                &model,
                &mut opt,
                &g["images"],
                Targets::Soft(&g["targets"]),
                None,
                m["lrs"][it].as_f64().unwrap(),
                m["wds"][it].as_f64().unwrap(),
                Clip::None,
            )
            .unwrap();
            let want = m["losses"][it].as_f64().unwrap();
            assert!(
                (loss - want).abs() < 2e-6 * want,
                "{mode_name} step {it}: loss {loss} vs {want}"
            );
            for (name, var) in &params {
                let key = format!("{mode_name}.after{}.{name}", it + 1);
                let err = if name.ends_with("attn.qkv.bias") {
                    // The key bias's gradient is analytically zero (a constant added to every key
                    // leaves each softmax row unchanged), so both sides' Adam updates of that third
                    // are rounding noise divided by eps: compare the query and value thirds.
                    let d = var.dim(0).unwrap() / 3;
                    let pick = |t: &Tensor| {
                        Tensor::cat(
                            &[t.narrow(0, 0, d).unwrap(), t.narrow(0, 2 * d, d).unwrap()],
                            0,
                        )
                        .unwrap()
                    };
                    rel_err(&pick(var.as_tensor()), &pick(&g[&key]))
                } else {
                    rel_err(var.as_tensor(), &g[&key])
                };
                worst = worst.max(err);
                assert!(err <= 1e-5, "{key}: relative error {err}");
            }
        }
        eprintln!("{mode_name}: worst parameter error {worst:.2e}");
    }
}
