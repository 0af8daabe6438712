//! The pyramid adapter + UPerHead + auxiliary FCNHead (forward, losses, every gradient, BN
//! running statistics), the linear head, the loss and the sliding-window inference, each against
//! the torch transcription of mmseg 0.12.

use std::collections::HashMap;

use backbone::pyramid::VitPyramid;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use layers::norm::{is_buffer_name, Buffers};
use segmentation::config::SegConfig;
use segmentation::inference::{predict_labels, slide_inference, windows};
use segmentation::segmentor::SegHeads;
use serde_json::Value;
use train::vars::{insert_vars, sorted_vars};

fn dir() -> String {
    format!("{}/tests/goldens", env!("CARGO_MANIFEST_DIR"))
}

fn load(name: &str) -> (HashMap<String, Tensor>, Value) {
    let t = candle_core::safetensors::load(format!("{}/{name}.safetensors", dir()), &Device::Cpu)
        .unwrap();
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}/index.json", dir())).unwrap())
            .unwrap();
    (t, index["files"][format!("{name}.safetensors")].clone())
}

fn f32s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (f32s(a), f32s(b));
    // Scalars come as [] here and [1] from the reference.
    let (a, b) = if a.elem_count() == 1 && b.elem_count() == 1 {
        (a.flatten_all().unwrap(), b.flatten_all().unwrap())
    } else {
        (a, b)
    };
    assert_eq!(a.dims(), b.dims());
    let d = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12);
    d / s
}

fn abs_err(a: &Tensor, b: &Tensor) -> f32 {
    (&f32s(a) - &f32s(b))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn is_data(k: &str) -> bool {
    [
        "inputs.",
        "labels",
        "pyramid.",
        "debug.",
        "grad.",
        "new.",
        "decode_logits",
        "aux_logits",
        "loss",
        "acc",
    ]
    .iter()
    .any(|p| k.starts_with(p))
}

/// Parameters as Vars, BN statistics as buffers (the golden's updated `new.*` copies left out).
fn model_state(g: &HashMap<String, Tensor>) -> (VarMap, Buffers) {
    let vars = VarMap::new();
    let params: Vec<(String, Tensor)> = g
        .iter()
        .filter(|(k, _)| !is_data(k) && !is_buffer_name(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    insert_vars(&vars, params, &Device::Cpu).unwrap();
    let buffers = Buffers::from_tensors(g.iter().filter(|(k, _)| !is_data(k) && is_buffer_name(k)));
    (vars, buffers)
}

fn uper_recipe(channels: usize, aux_channels: usize) -> SegConfig {
    SegConfig::parse(
        &format!(
            "name = \"golden\"\nhead = \"upernet\"\n[model]\nchannels = {channels}\naux_channels = {aux_channels}\ndropout = 0.0\n"
        ),
        "golden",
    )
    .unwrap()
}

fn check_uper(name: &str) {
    let (g, meta) = load(name);
    let cfg = &meta["config"];
    let patch = cfg["patch_size"].as_u64().unwrap() as usize;
    let dim = cfg["embed_dim"].as_u64().unwrap() as usize;
    let classes = cfg["num_classes"].as_u64().unwrap() as usize;
    let channels = cfg["decode_head"]["channels"].as_u64().unwrap() as usize;
    let aux_channels = cfg["auxiliary_head"]["channels"].as_u64().unwrap() as usize;
    let zero: Vec<String> = meta["zero_grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (vars, buffers) = model_state(&g);
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let pyramid = VitPyramid::new(patch, dim, vb.pp("backbone"), &buffers).unwrap();
    let heads = SegHeads::new(
        &uper_recipe(channels, aux_channels),
        dim,
        4,
        classes,
        vb,
        &buffers,
    )
    .unwrap();
    let inputs: Vec<Var> = (0..4)
        .map(|i| Var::from_tensor(&g[&format!("inputs.{i}")]).unwrap())
        .collect();
    let ins: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let pyr = pyramid.forward_t(&ins, true).unwrap();
    for (i, p) in pyr.iter().enumerate() {
        assert!(
            rel_err(p, &g[&format!("pyramid.{i}")]) < 1e-5,
            "{name} pyramid.{i}"
        );
    }
    let (main, aux) = heads.forward(&pyr, true, None).unwrap();
    assert!(
        rel_err(&main, &g["decode_logits"]) < 1e-5,
        "{name} decode logits"
    );
    assert!(
        rel_err(aux.as_ref().unwrap(), &g["aux_logits"]) < 1e-5,
        "{name} aux logits"
    );
    let labels = &g["labels"];
    let losses = heads.loss_terms(&main, aux.as_ref(), labels).unwrap();
    for (ours, key) in [
        (&losses.decode, "loss_decode"),
        (losses.aux.as_ref().unwrap(), "loss_aux"),
        (&losses.total, "loss_total"),
    ] {
        assert!(rel_err(ours, &g[key]) < 2e-6, "{name} {key}");
    }
    let grads = losses.total.backward().unwrap();
    let mut worst = 0f32;
    for (pname, var) in sorted_vars(&vars) {
        let want = &g[&format!("grad.{pname}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        if zero.contains(&format!("grad.{pname}")) {
            assert!(
                abs_err(got, want) < 1e-6,
                "{name} grad.{pname} (structurally zero)"
            );
        } else {
            let e = rel_err(got, want);
            worst = worst.max(e);
            assert!(e < 1e-5, "{name} grad.{pname}: {e}");
        }
    }
    for (i, v) in inputs.iter().enumerate() {
        let e = rel_err(
            grads.get(v.as_tensor()).unwrap(),
            &g[&format!("grad.inputs.{i}")],
        );
        assert!(e < 1e-5, "{name} grad.inputs.{i}: {e}");
    }
    for (bname, t) in buffers.tensors() {
        let want = &g[&format!("new.{bname}")];
        if bname.ends_with("num_batches_tracked") {
            assert_eq!(
                t.to_dtype(DType::I64).unwrap().to_scalar::<i64>().unwrap(),
                want.to_dtype(DType::I64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<i64>()
                    .unwrap()[0],
                "{name} {bname}"
            );
        } else {
            assert!(rel_err(&t, want) < 1e-5, "{name} new.{bname}");
        }
    }
    eprintln!("{name}: worst parameter gradient error {worst:.2e}");
}

#[test]
fn uper_patch16_matches_mmseg() {
    check_uper("uper_p16");
}

#[test]
fn uper_patch8_matches_mmseg() {
    check_uper("uper_p8");
}

#[test]
fn linear_head_matches_mmseg() {
    for name in ["linear", "linear_mixed"] {
        let (g, meta) = load(name);
        let cfg = &meta["config"];
        let dim = cfg["embed_dim"].as_u64().unwrap() as usize;
        let classes = cfg["num_classes"].as_u64().unwrap() as usize;
        let (vars, buffers) = model_state(&g);
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        let recipe = SegConfig::parse("name = \"golden\"\nhead = \"linear\"\n", "golden").unwrap();
        let heads = SegHeads::new(&recipe, dim, 4, classes, vb, &buffers).unwrap();
        let inputs: Vec<Var> = (0..4)
            .map(|i| Var::from_tensor(&g[&format!("inputs.{i}")]).unwrap())
            .collect();
        let ins: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let (main, _) = heads.forward(&ins, true, None).unwrap();
        assert!(rel_err(&main, &g["decode_logits"]) < 1e-5, "{name} logits");
        let losses = heads.loss_terms(&main, None, &g["labels"]).unwrap();
        assert!(
            rel_err(&losses.total, &g["loss_decode"]) < 2e-6,
            "{name} loss"
        );
        let grads = losses.total.backward().unwrap();
        for (pname, var) in sorted_vars(&vars) {
            let e = rel_err(
                grads.get(var.as_tensor()).unwrap(),
                &g[&format!("grad.{pname}")],
            );
            assert!(e < 1e-5, "{name} grad.{pname}: {e}");
        }
        for (i, v) in inputs.iter().enumerate() {
            let e = rel_err(
                grads.get(v.as_tensor()).unwrap(),
                &g[&format!("grad.inputs.{i}")],
            );
            assert!(e < 1e-5, "{name} grad.inputs.{i}: {e}");
        }
    }
}

/// The golden's stand-in `encode_decode`: resize(conv_seg(adaptive_avg_pool(crop, ⌈h/4⌉×⌈w/4⌉)), crop size).
fn stand_in<'a>(
    conv_w: &'a Tensor,
    conv_b: &'a Tensor,
) -> impl Fn(&Tensor) -> candle_core::Result<Tensor> + 'a {
    move |crop: &Tensor| {
        let (_, _, h, w) = crop.dims4()?;
        let pooled = layers::pool::adaptive_avg_pool2d(crop, (h.div_ceil(4), w.div_ceil(4)))?;
        let conv = layers::conv::conv2d(
            &pooled,
            conv_w,
            Some(conv_b),
            1,
            0,
            1,
            1,
            layers::ConvImpl::Candle,
        )?;
        layers::resize::bilinear(&conv, (h, w), false)
    }
}

#[test]
fn slide_inference_matches_mmseg() {
    for name in ["slide", "slide_small"] {
        let (g, meta) = load(name);
        let cfg = &meta["config"];
        let pair = |k: &str| {
            let a = cfg[k].as_array().unwrap();
            (
                a[0].as_u64().unwrap() as usize,
                a[1].as_u64().unwrap() as usize,
            )
        };
        let (crop, stride, ori) = (pair("crop_size"), pair("stride"), pair("ori_shape"));
        let classes = cfg["num_classes"].as_u64().unwrap() as usize;
        let img = &g["img"];
        let (_, _, h, w) = img.dims4().unwrap();
        let ours: Vec<Vec<i64>> = windows(h, w, crop, stride)
            .into_iter()
            .map(|(y1, y2, x1, x2)| vec![y1 as i64, y2 as i64, x1 as i64, x2 as i64])
            .collect();
        let want: Vec<Vec<i64>> = g["windows"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(ours, want, "{name} windows");
        let f = stand_in(&g["conv_seg.weight"], &g["conv_seg.bias"]);
        let logits = slide_inference(img, classes, crop, stride, &f).unwrap();
        assert!(rel_err(&logits, &g["logits"]) < 1e-5, "{name} logits");
        if let Some(resized) = g.get("resized") {
            let r = layers::resize::bilinear(&logits, ori, false).unwrap();
            assert!(rel_err(&r, resized) < 1e-5, "{name} resized");
        }
        let pred = predict_labels(&logits, ori.0, ori.1).unwrap();
        let want: Vec<u8> = g["pred"]
            .to_dtype(DType::U8)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mismatched = pred.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            mismatched, 0,
            "{name}: {mismatched} predicted pixels differ"
        );
    }
}

#[test]
fn loss_averages_over_all_pixels_like_mmseg_012() {
    let (g, _) = load("loss");
    let heads_cfg = SegConfig::parse("name = \"golden\"\nhead = \"linear\"\n", "golden").unwrap();
    let vars = VarMap::new();
    let buffers = Buffers::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let heads = SegHeads::new(&heads_cfg, 1, 1, 5, vb, &buffers).unwrap();
    let logits = Var::from_tensor(&g["logits"]).unwrap();
    let losses = heads
        .loss_terms(logits.as_tensor(), None, &g["labels"])
        .unwrap();
    assert!(rel_err(&losses.total, &g["loss"]) < 2e-6);
    let grads = losses.total.backward().unwrap();
    assert!(rel_err(grads.get(logits.as_tensor()).unwrap(), &g["grad.logits"]) < 1e-5);
}
