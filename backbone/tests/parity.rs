//! Parity with the PyTorch DINO/iBOT ViT: fixtures and goldens come from
//! `tests/reference/backbone_reference.py` (seeded random weights saved by torch.save / safetensors).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use backbone::{load, Checkpoint, LoadOptions, LoadSpec, Pool};
use candle_core::{DType, Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("goldens.safetensors"), &Device::Cpu).unwrap()
}

/// The closed-form input of the reference script: ((31h + 17w + 7c + 13b) mod 97)/48.5 − 1.
fn pattern(b: usize, h: usize, w: usize) -> Tensor {
    let mut v = Vec::with_capacity(b * 3 * h * w);
    for bi in 0..b {
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    v.push(((31 * y + 17 * x + 7 * c + 13 * bi) % 97) as f32 / 48.5 - 1.0);
                }
            }
        }
    }
    Tensor::from_vec(v, (b, 3, h, w), &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
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
        .unwrap();
    diff / scale
}

const TOL: f32 = 1e-5;

fn check_model(path: &Path, key: Option<&str>, heads: usize, tag: &str, sizes: &[(usize, usize)]) {
    let g = goldens();
    let spec = LoadSpec {
        key,
        heads: Some(heads),
        ..Default::default()
    };
    let loaded = load(path, &spec, DType::F32, &Device::Cpu).unwrap();
    let model = &loaded.model;
    for &(h, w) in sizes {
        let out = model.forward_tokens(&pattern(2, h, w), None, None).unwrap();
        let e = rel_err(&out, &g[&format!("{tag}.tokens.{h}x{w}")]);
        assert!(e <= TOL, "{tag} tokens at {h}x{w}: relative error {e:e}");
        let cls = model.forward_cls(&pattern(2, h, w)).unwrap();
        let want = g[&format!("{tag}.tokens.{h}x{w}")]
            .get_on_dim(1, 0)
            .unwrap();
        assert!(rel_err(&cls, &want) <= TOL);
    }
    let (h, w) = *sizes.last().unwrap();
    let x = pattern(2, h, w);
    let inter = model.get_intermediate_layers(&x, 4).unwrap();
    let inter = Tensor::stack(&inter, 0).unwrap();
    let e = rel_err(&inter, &g[&format!("{tag}.inter4.{h}x{w}")]);
    assert!(e <= TOL, "{tag} last-4 layers: {e:e}");
    let attn = model.get_last_selfattention(&x).unwrap();
    let e = rel_err(&attn, &g[&format!("{tag}.attn.{h}x{w}")]);
    assert!(e <= TOL, "{tag} attention: {e:e}");
}

#[test]
fn full_training_checkpoint_teacher_matches_pytorch() {
    // Auto-selects `teacher`, strips `backbone.`, skips head/optimizer/args, reads strided views.
    check_model(
        &fixture("vit_p16_full.pth"),
        None,
        2,
        "p16",
        &[(224, 224), (96, 96), (160, 96)],
    );
}

#[test]
fn student_key_with_module_prefix_and_mask_token_loads() {
    check_model(
        &fixture("vit_p16_full.pth"),
        Some("student"),
        2,
        "p16",
        &[(224, 224), (160, 96)],
    );
    let ck = Checkpoint::open(&fixture("vit_p16_full.pth")).unwrap();
    let sel = ck.select(Some("student")).unwrap();
    assert!(sel.backbone.contains_key("masked_embed"));
    assert!(
        sel.other
            .iter()
            .all(|k| k.starts_with("student.module.head.")),
        "{:?}",
        sel.other
    );
}

#[test]
fn state_dict_wrapper_and_safetensors_match_pytorch() {
    check_model(
        &fixture("vit_p8_state_dict.pth"),
        None,
        2,
        "p8",
        &[(112, 112), (80, 48)],
    );
    check_model(
        &fixture("vit_p8.safetensors"),
        None,
        2,
        "p8",
        &[(112, 112), (80, 48)],
    );
}

#[test]
fn interpolated_position_embedding_matches_pytorch_bicubic() {
    let g = goldens();
    let ck = Checkpoint::open(&fixture("vit_p16_full.pth")).unwrap();
    let sel = ck.select(None).unwrap();
    let pos = ck
        .read_all(&[sel.backbone["pos_embed"].clone()])
        .unwrap()
        .remove(0)
        .1;
    let interp = backbone::pos_embed::PosEmbedInterpolator::default();
    let out = interp
        .interpolate(&pos, (14, 14), 10, 6)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let e = rel_err(&out, &g["p16.pos.160x96"]);
    assert!(e <= 1e-6, "pos-embed interpolation relative error {e:e}");
}

#[test]
fn training_checkpoint_structure_is_reported() {
    let ck = Checkpoint::open(&fixture("vit_p16_full.pth")).unwrap();
    let groups = ck.top_level_groups();
    assert_eq!(
        groups[..2],
        ["student".to_string(), "teacher".to_string()],
        "file order is kept"
    );
    for g in ["student", "teacher", "optimizer", "ibot_loss"] {
        assert!(groups.contains(&g.to_string()), "{groups:?}");
    }
    let sel = ck.select(None).unwrap();
    assert_eq!(sel.key.as_deref(), Some("teacher"));
    assert_eq!(sel.backbone.len(), 4 + 4 * 12 + 2);
    // The shared last layer is stored once: last_layer2 aliases last_layer.
    let teacher: Vec<String> = ck
        .names()
        .into_iter()
        .filter(|n| n.starts_with("teacher."))
        .collect();
    let aliases = ck.aliases(&teacher);
    assert_eq!(
        aliases
            .get("teacher.head.last_layer2.weight_v")
            .map(String::as_str),
        Some("teacher.head.last_layer.weight_v")
    );
    let cfg = ck.infer_config(&sel, None, Some(2)).unwrap();
    assert_eq!(
        (cfg.embed_dim, cfg.depth, cfg.patch_size, cfg.img_size),
        (24, 4, 16, 224)
    );
}

#[test]
fn features_pool_layouts() {
    let loaded = load(
        &fixture("vit_p8.safetensors"),
        &LoadSpec {
            heads: Some(2),
            ..Default::default()
        },
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let x = pattern(2, 80, 48);
    let g = goldens();
    let inter = &g["p8.inter4.80x48"];
    let f = loaded.model.features(&x, 4, Pool::ClsAvg).unwrap();
    assert_eq!(f.dims(), &[2, 5 * 16]);
    // Block concatenation: CLS of the 4 last blocks (oldest first), then the last block's patch mean.
    let cls2 = inter.get(1).unwrap().get_on_dim(1, 0).unwrap();
    assert!(rel_err(&f.narrow(1, 16, 16).unwrap(), &cls2) <= TOL);
    let last = inter.get(3).unwrap();
    let mean = last.narrow(1, 1, 60).unwrap().mean(1).unwrap();
    assert!(rel_err(&f.narrow(1, 64, 16).unwrap(), &mean) <= TOL);
    let avg = loaded.model.features(&x, 1, Pool::Avg).unwrap();
    assert!(rel_err(&avg, &mean) <= TOL);
}

#[test]
fn strict_loading_lists_missing_and_misshaped_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights =
        candle_core::safetensors::load(fixture("vit_p8.safetensors"), &Device::Cpu).unwrap();
    weights.remove("blocks.2.attn.proj.bias");
    weights.insert(
        "blocks.1.mlp.fc1.weight".into(),
        Tensor::zeros((10, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    weights.insert(
        "extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&weights, &path).unwrap();
    let spec = LoadSpec {
        heads: Some(2),
        ..Default::default()
    };
    let err = load(&path, &spec, DType::F32, &Device::Cpu)
        .err()
        .expect("strict load must fail");
    let msg = format!("{err:#}");
    for needle in [
        "bad.safetensors",
        "blocks.2.attn.proj.bias",
        "blocks.1.mlp.fc1.weight",
        "[10, 16]",
        "extra.weight",
    ] {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
    // Mis-shaped keys stay an error even when missing/unexpected ones are allowed.
    let relaxed = LoadSpec {
        heads: Some(2),
        options: LoadOptions {
            allow_missing: true,
            allow_unexpected: true,
        },
        ..Default::default()
    };
    assert!(load(&path, &relaxed, DType::F32, &Device::Cpu).is_err());
    weights.insert(
        "blocks.1.mlp.fc1.weight".into(),
        Tensor::zeros((64, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&weights, &path).unwrap();
    let loaded = load(&path, &relaxed, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        loaded.report.missing,
        vec!["blocks.2.attn.proj.bias".to_string()]
    );
    assert_eq!(loaded.report.unexpected, vec!["extra.weight".to_string()]);
}

#[test]
fn wrong_key_and_corrupt_files_are_clear_errors() {
    let ck = Checkpoint::open(&fixture("vit_p16_full.pth")).unwrap();
    let msg = format!("{:#}", ck.select(Some("model")).unwrap_err());
    assert!(
        msg.contains("\"model\" not found") && msg.contains("teacher"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("vit_p16_full.pth")).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let msg = format!("{:#}", Checkpoint::open(&truncated).err().unwrap());
    assert!(msg.contains("truncated.pth"), "{msg}");

    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    let msg = format!("{:#}", Checkpoint::open(&junk).err().unwrap());
    assert!(msg.contains("junk.pth") && msg.contains("neither"), "{msg}");
}

/// Real presets against timm-produced CLS outputs; needs the files written by
/// `backbone_reference.py --presets` in /tmp, so it runs only on request.
#[test]
#[ignore]
fn presets_match_timm_at_224() {
    for (name, heads) in [("vit_small_patch16_224", 6), ("vit_base_patch16_224", 12)] {
        let w = PathBuf::from(format!("/tmp/{name}.safetensors"));
        let cls =
            candle_core::safetensors::load(format!("/tmp/{name}.cls.safetensors"), &Device::Cpu)
                .unwrap();
        let spec = LoadSpec {
            heads: Some(heads),
            ..Default::default()
        };
        let loaded = load(&w, &spec, DType::F32, &Device::Cpu).unwrap();
        let out = loaded.model.forward_cls(&pattern(2, 224, 224)).unwrap();
        let e = rel_err(&out, &cls["cls"]);
        println!("{name}: relative error vs PyTorch {e:e}");
        assert!(e <= TOL);
    }
}
