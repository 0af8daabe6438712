//! The iBOT projection head (backbone::head) against torch's iBOTHead (weight_norm Linear, GELU
//! erf, F.normalize; tests/reference/pretrain_reference.py): forward and gradients w.r.t. the
//! tokens and every trainable weight; every Var gets a gradient; seeded init; loading heads from
//! official full checkpoints and from our safetensors exports, next to a strict backbone load.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use backbone::checkpoint::{config_metadata, save_safetensors};
use backbone::head::{infer_head_config, init_head_weights, load_head, HeadConfig, IbotHead};
use backbone::{Checkpoint, LoadSpec, VitConfig};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{rel_err, values};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn backbone_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../backbone/tests/fixtures")
        .join(name)
}

/// A head whose weights are trainable Vars (how the trainer builds it).
fn trainable(cfg: &HeadConfig, weights: HashMap<String, Tensor>) -> (VarMap, IbotHead) {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in weights {
            data.insert(name, Var::from_tensor(&t).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = IbotHead::new(cfg, vb).unwrap();
    (varmap, head)
}

#[test]
fn forward_and_gradients_match_torch() {
    let g =
        candle_core::safetensors::load(fixture("head_goldens.safetensors"), &Device::Cpu).unwrap();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("head_cases.json")).unwrap())
            .unwrap();
    let mut worst = [0f64; 2];
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let u = |k: &str| case[k].as_u64().unwrap() as usize;
        let cfg = HeadConfig {
            in_dim: u("in_dim"),
            out_dim: u("K"),
            patch_out_dim: u("Kp"),
            hidden_dim: u("hidden"),
            bottleneck_dim: u("bottleneck"),
            shared: case["shared"].as_bool().unwrap(),
            norm_last_layer: case["norm_last_layer"].as_bool().unwrap(),
        };
        let p = |k: &str| g[&format!("{name}.{k}")].clone();
        let prefix = format!("{name}.w.");
        let weights: HashMap<String, Tensor> = g
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|n| (n.to_string(), t.clone())))
            .collect();
        let shapes = weights
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        assert_eq!(
            infer_head_config(&shapes, cfg.norm_last_layer).unwrap(),
            cfg
        );
        let (varmap, head) = trainable(&cfg, weights);
        let tokens = Var::from_tensor(&p("tokens")).unwrap();
        let (cls, patch) = head.forward(tokens.as_tensor()).unwrap();
        for (ours, key) in [(&cls, "cls"), (&patch, "patch")] {
            let e = rel_err(ours, &p(key));
            assert!(e <= 1e-5, "{name}: {key} rel err {e:e}");
            worst[0] = worst[0].max(e);
        }
        let e = rel_err(&head.forward_cls(&p("x2")).unwrap(), &p("cls2"));
        assert!(e <= 1e-5, "{name}: forward_cls rel err {e:e}");
        worst[0] = worst[0].max(e);

        let objective = ((&cls * &p("r_cls")).unwrap().sum_all().unwrap()
            + (&patch * &p("r_patch")).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = objective.backward().unwrap();
        let e = rel_err(grads.get(tokens.as_tensor()).unwrap(), &p("grad.tokens"));
        assert!(e <= 1e-5, "{name}: d/d tokens rel err {e:e}");
        worst[1] = worst[1].max(e);
        let data = varmap.data().lock().unwrap();
        let mut compared = 0;
        for (wname, var) in data.iter() {
            let key = format!("{name}.grad.{wname}");
            match (g.get(&key), grads.get(var.as_tensor())) {
                (Some(want), Some(ours)) => {
                    let e = rel_err(ours, want);
                    assert!(e <= 1e-5, "{name}: d/d {wname} rel err {e:e}");
                    worst[1] = worst[1].max(e);
                    compared += 1;
                }
                // torch: weight_g.requires_grad = False under norm_last_layer.
                (None, None) => assert!(cfg.is_frozen(wname), "{name}: {wname} has no gradient"),
                (want, ours) => panic!(
                    "{name}: {wname}: torch gradient {}, ours {}",
                    want.is_some(),
                    ours.is_some()
                ),
            }
        }
        let expected = if cfg.norm_last_layer {
            data.len() - if cfg.shared { 1 } else { 2 }
        } else {
            data.len()
        };
        assert_eq!(compared, expected, "{name}");
    }
    eprintln!(
        "worst relative errors: forward {:e}, gradients {:e}",
        worst[0], worst[1]
    );
}

fn small(shared: bool, norm_last_layer: bool) -> HeadConfig {
    HeadConfig {
        in_dim: 16,
        out_dim: 32,
        patch_out_dim: if shared { 32 } else { 24 },
        hidden_dim: 40,
        bottleneck_dim: 8,
        shared,
        norm_last_layer,
    }
}

/// candle's fused softmax/LayerNorm record no backward op; the head must train end to end.
#[test]
fn every_trainable_var_gets_a_nonzero_gradient() {
    for (shared, norm_last_layer) in [(false, false), (true, false), (true, true), (false, true)] {
        let cfg = small(shared, norm_last_layer);
        let (varmap, head) = trainable(&cfg, init_head_weights(&cfg, 3).unwrap());
        let tokens = Tensor::randn(0f32, 1.0, (2, 5, cfg.in_dim), &Device::Cpu).unwrap();
        let local = Tensor::randn(0f32, 1.0, (3, cfg.in_dim), &Device::Cpu).unwrap();
        let (cls, patch) = head.forward(&tokens).unwrap();
        let cls2 = head.forward_cls(&local).unwrap();
        // A softmax-style objective so that the unit-norm prototypes still get gradients.
        let obj = (candle_nn::ops::log_softmax(&(cls * 10.0).unwrap(), 1)
            .unwrap()
            .sum_all()
            .unwrap()
            + candle_nn::ops::log_softmax(&(patch * 7.0).unwrap(), 2)
                .unwrap()
                .sum_all()
                .unwrap()
            + (cls2.sqr().unwrap() * 0.3).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = obj.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        assert_eq!(data.len(), cfg.expected_shapes().len());
        for (name, var) in data.iter() {
            let g = grads.get(var.as_tensor());
            if cfg.is_frozen(name) {
                assert!(g.is_none(), "{name} is frozen under norm_last_layer");
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("{name} gets no gradient ({cfg:?})"));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient sum {norm} ({cfg:?})"
            );
        }
    }
}

#[test]
fn initialisation_follows_the_official_recipe() {
    let cfg = HeadConfig::ibot(64, 512);
    assert_eq!(
        (
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            cfg.patch_out_dim,
            cfg.shared,
            cfg.norm_last_layer
        ),
        (2048, 256, 512, true, true)
    );
    let w = init_head_weights(&cfg, 0).unwrap();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "last_layer.weight_g",
            "last_layer.weight_v",
            "mlp.0.bias",
            "mlp.0.weight",
            "mlp.2.bias",
            "mlp.2.weight",
            "mlp.4.bias",
            "mlp.4.weight"
        ]
    );
    let stats = |t: &Tensor| {
        let v = values(t);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
        (mean, std, max)
    };
    let (mean, std, _) = stats(&w["mlp.2.weight"]);
    assert!(
        mean.abs() < 1e-3 && (std - 0.02).abs() < 2e-4,
        "{mean} {std}"
    );
    let (mean, std, max) = stats(&w["last_layer.weight_v"]);
    let bound = 1.0 / 256f64.sqrt();
    assert!(max <= bound && max > 0.99 * bound, "{max}");
    assert!(
        mean.abs() < 2e-3 && (std - bound / 3f64.sqrt()).abs() < 1e-3,
        "{std}"
    );
    assert!(values(&w["last_layer.weight_g"]).iter().all(|v| *v == 1.0));
    assert!(values(&w["mlp.0.bias"]).iter().all(|v| *v == 0.0));
    assert_eq!(w["last_layer.weight_g"].dims(), &[512, 1]);
    // Seeded: same seed, same weights; another seed, other weights.
    let again = init_head_weights(&cfg, 0).unwrap();
    assert_eq!(values(&again["mlp.0.weight"]), values(&w["mlp.0.weight"]));
    let other = init_head_weights(&cfg, 1).unwrap();
    assert_ne!(values(&other["mlp.0.weight"]), values(&w["mlp.0.weight"]));
    let sep = init_head_weights(&small(false, false), 0).unwrap();
    assert_eq!(sep["last_layer2.weight_v"].dims(), &[24, 8]);
}

#[test]
fn config_inference_rejects_non_ibot_heads() {
    let bad = HeadConfig {
        patch_out_dim: 7,
        ..small(true, true)
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("patch_out_dim"));
    let classifier: HashMap<String, Vec<usize>> = [
        ("weight".to_string(), vec![1000, 384]),
        ("bias".to_string(), vec![1000]),
    ]
    .into();
    let err = infer_head_config(&classifier, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("linear classifier"), "{err}");
    let mut shapes: HashMap<String, Vec<usize>> =
        small(true, true).expected_shapes().into_iter().collect();
    shapes.insert("mlp.1.weight".into(), vec![40]);
    let err = infer_head_config(&shapes, true).unwrap_err().to_string();
    assert!(err.contains("unexpected mlp.1.weight"), "{err}");
    shapes.remove("mlp.1.weight");
    shapes.insert("mlp.2.bias".into(), vec![41]);
    let err = infer_head_config(&shapes, true).unwrap_err().to_string();
    assert!(err.contains("mlp.2.bias: [41]"), "{err}");
}

/// The official full checkpoint written by backbone_reference.py: teacher `head.*`, student
/// `module.head.*`, shared last layer stored as aliases.
#[test]
fn loads_heads_from_an_official_full_checkpoint() {
    let path = backbone_fixture("vit_p16_full.pth");
    let dev = Device::Cpu;
    let (cfg, teacher) = load_head(&path, None, DType::F32, &dev).unwrap();
    assert_eq!(
        cfg,
        HeadConfig {
            in_dim: 24,
            out_dim: 16,
            patch_out_dim: 16,
            hidden_dim: 24,
            bottleneck_dim: 8,
            shared: true,
            norm_last_layer: cfg.norm_last_layer,
        }
    );
    let (scfg, student) = load_head(&path, Some("student"), DType::F32, &dev).unwrap();
    assert_eq!(scfg, cfg);
    // Independent path: the teacher's tensors read by name.
    let ck = Checkpoint::open(&path).unwrap();
    let names: Vec<String> = ck
        .names()
        .into_iter()
        .filter(|n| n.starts_with("teacher.head.") && !n.contains("last_layer2"))
        .collect();
    let weights: HashMap<String, Tensor> = ck
        .read_all(&names)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n["teacher.head.".len()..].to_string(), t))
        .collect();
    let reference =
        IbotHead::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &dev)).unwrap();
    let tokens = Tensor::randn(0f32, 1.0, (2, 4, 24), &dev).unwrap();
    let (a, pa) = teacher.forward(&tokens).unwrap();
    let (b, pb) = reference.forward(&tokens).unwrap();
    let (c, _) = student.forward(&tokens).unwrap();
    assert_eq!(values(&a), values(&b));
    assert_eq!(values(&pa), values(&pb));
    assert!(rel_err(&a, &c) < 1e-6);
    // Logits of a weight-normed layer with g = 1 are cosines.
    if cfg.norm_last_layer {
        assert!(values(&a).iter().all(|v| v.abs() <= 1.0 + 1e-6));
    }
}

/// Our exports keep `head.*` next to the backbone keys: the strict backbone loader reports them
/// as non-backbone keys and load_head finds them.
#[test]
fn safetensors_export_with_head_loads_both_parts() {
    let dev = Device::Cpu;
    let vit = VitConfig {
        embed_dim: 16,
        depth: 1,
        num_heads: 2,
        mlp_hidden: 32,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    };
    let head_cfg = small(false, false);
    let mut tensors: Vec<(String, Tensor)> = backbone::init::init_weights(&vit, 0)
        .unwrap()
        .into_iter()
        .collect();
    let mut head_w = init_head_weights(&head_cfg, 9).unwrap();
    // A trained g (norm_last_layer false) is no longer 1; load_head reports that.
    let g = (head_w["last_layer.weight_g"].clone() * 1.5).unwrap();
    head_w.insert("last_layer.weight_g".into(), g);
    tensors.extend(head_w.iter().map(|(k, t)| (format!("head.{k}"), t.clone())));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.safetensors");
    save_safetensors(&path, &tensors, config_metadata(&vit)).unwrap();

    let loaded = backbone::load(&path, &LoadSpec::default(), DType::F32, &dev).unwrap();
    assert_eq!(loaded.report.ignored_non_backbone.len(), head_w.len());
    assert!(loaded.report.unexpected.is_empty());

    let (cfg, head) = load_head(&path, None, DType::F32, &dev).unwrap();
    assert_eq!(
        cfg,
        HeadConfig {
            norm_last_layer: false,
            ..head_cfg.clone()
        }
    );
    let (_, reference) = trainable(&head_cfg, head_w);
    let x = Tensor::randn(0f32, 1.0, (3, 16), &dev).unwrap();
    assert_eq!(
        values(&head.forward_cls(&x).unwrap()),
        values(&reference.forward_cls(&x).unwrap())
    );

    // A mis-shaped head tensor: the error names the file and the tensor.
    let mut broken = tensors.clone();
    for (k, t) in broken.iter_mut() {
        if k == "head.mlp.4.bias" {
            *t = Tensor::zeros(7, DType::F32, &dev).unwrap();
        }
    }
    let bad = dir.path().join("broken.safetensors");
    save_safetensors(&bad, &broken, config_metadata(&vit)).unwrap();
    let err = format!(
        "{:#}",
        load_head(&bad, None, DType::F32, &dev).err().unwrap()
    );
    assert!(
        err.contains("broken.safetensors") && err.contains("mlp.4.bias"),
        "{err}"
    );
}

#[test]
fn files_without_a_head_are_clear_errors() {
    let dev = Device::Cpu;
    for name in ["vit_p8.safetensors", "vit_p8_state_dict.pth"] {
        let path = backbone_fixture(name);
        let err = format!(
            "{:#}",
            load_head(&path, None, DType::F32, &dev).err().unwrap()
        );
        assert!(
            err.contains(name) && err.contains("no projection head"),
            "{err}"
        );
    }
    let path = backbone_fixture("vit_p16_full.pth");
    let err = format!(
        "{:#}",
        load_head(&path, Some("model"), DType::F32, &dev)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("vit_p16_full.pth") && err.contains("\"model\" not found"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        load_head(&path, Some("optimizer"), DType::F32, &dev)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("no projection head") && err.contains("optimizer"),
        "{err}"
    );
}

/// A frozen g is detached from autograd but still shares the Var's storage, so an EMA update of
/// the teacher's `weight_g` Var (`Var::set`) reaches the head's forward.
#[test]
fn frozen_norms_still_follow_their_var() {
    let cfg = small(true, true);
    let (varmap, head) = trainable(&cfg, init_head_weights(&cfg, 4).unwrap());
    let x = Tensor::randn(0f32, 1.0, (2, cfg.in_dim), &Device::Cpu).unwrap();
    let before = head.forward_cls(&x).unwrap();
    let data = varmap.data().lock().unwrap();
    let g = &data["last_layer.weight_g"];
    g.set(&(g.as_tensor() * 2.0).unwrap()).unwrap();
    let after = head.forward_cls(&x).unwrap();
    assert!(rel_err(&after, &(before * 2.0).unwrap()) < 1e-6);
}
