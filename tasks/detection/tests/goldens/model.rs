//! The networks vs `tests/reference/detection_model_reference.py` (torch transcriptions of mmdet
//! 2.11's FPN, RPNHead, Shared2FC / 4conv1fc box heads, FCNMaskHead, their losses and the Cascade
//! R-CNN stage loop), forward and backward with the golden's weights loaded under mmdet's names.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use detection::box_coder::DeltaXYWHBBoxCoder;
use detection::config::{BoxHeadConfig, BoxHeadKind, DetectionConfig, Kind, RegLoss};
use detection::fpn::Fpn;
use detection::roi_heads::box_head::{box_loss, BoxHead};
use detection::roi_heads::mask_head::{mask_loss, MaskHead};
use detection::roi_heads::RoiHead;
use detection::rpn::{rpn_loss, RpnHead};
use detection::sampler::SamplingResult;
use detection::structures::{BitMask, Box4, ImageMeta, ImageTargets};
use detection::targets::{RoiTargets, RpnTargets};
use layers::norm::Buffers;
use train::vars::{insert_vars, sorted_vars, SeededInit};

use crate::util::{check, meta_usize, Golden};

/// Forward values: 1e-5 relative (the crate's golden tolerance); gradients the same.
const TOL: f64 = 1e-5;

fn tensor(g: &Golden, key: &str) -> Tensor {
    Tensor::from_vec(g.f32s(key), g.shape(key), &Device::Cpu).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The golden's weights under `from` renamed to `to` (every key that is not an input, output or
/// gradient), as trainable variables; BN running statistics go to the buffer store.
fn load_weights(g: &Golden, keys: &[String], from: &str, to: &str) -> (VarMap, Buffers) {
    let vars = VarMap::new();
    let buffers = Buffers::new();
    let mut ws = Vec::new();
    // a parameter has a gradient in the golden; BN statistics are the only buffers
    let is_weight = |k: &String| {
        keys.contains(&format!("grad.{k}"))
            || k.ends_with(".running_mean")
            || k.ends_with(".running_var")
    };
    for k in keys.iter().filter(|k| k.starts_with(from) && is_weight(k)) {
        let name = format!("{to}{}", &k[from.len()..]);
        let t = tensor(g, k);
        if name.ends_with(".running_mean") || name.ends_with(".running_var") {
            buffers.set(&name, t);
        } else {
            ws.push((name, t));
        }
    }
    // BN statistics are saved AFTER the training forward; the models start from the defaults
    for (name, t) in buffers.tensors() {
        let init = if name.ends_with(".running_var") {
            t.ones_like()
        } else {
            t.zeros_like()
        };
        buffers.set(&name, init.unwrap());
        let count = name
            .replace(".running_var", ".num_batches_tracked")
            .replace(".running_mean", ".num_batches_tracked");
        buffers.set(&count, Tensor::new(0i64, &Device::Cpu).unwrap());
    }
    insert_vars(&vars, ws, &Device::Cpu).unwrap();
    (vars, buffers)
}

fn keys(g: &Golden) -> Vec<String> {
    g.keys()
}

/// Compares every golden gradient `grad.{from}…` with the gradient of the renamed variable.
fn check_param_grads(
    g: &Golden,
    what: &str,
    vars: &VarMap,
    grads: &candle_core::backprop::GradStore,
    from: &str,
    to: &str,
) {
    let mut n = 0;
    let mut worst: f64 = 0.0;
    for (name, var) in sorted_vars(vars) {
        let gk = format!("grad.{from}{}", &name[to.len()..]);
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let e = crate::util::rel_err(&host(grad), &g.f32s(&gk));
        assert!(e <= TOL, "{what}: gradient of {name}: rel err {e:.3e}");
        worst = worst.max(e);
        n += 1;
    }
    println!("{what}: {n} parameter gradients, worst rel err {worst:.3e}");
}

#[test]
fn fpn_forward_backward() {
    let g = Golden::load("model_fpn");
    let (vars, _) = load_weights(&g, &keys(&g), "neck.", "neck.");
    let vb = SeededInit::var_builder(&vars, 0, &Device::Cpu);
    let n_before = sorted_vars(&vars).len();
    let fpn = Fpn::new(&[6; 4], 8, 5, vb.pp("neck")).unwrap();
    assert_eq!(
        sorted_vars(&vars).len(),
        n_before,
        "every FPN weight comes from the golden"
    );
    let ins: Vec<Var> = (0..4)
        .map(|i| Var::from_tensor(&tensor(&g, &format!("in{i}"))).unwrap())
        .collect();
    let xs: Vec<Tensor> = ins.iter().map(|v| v.as_tensor().clone()).collect();
    let outs = fpn.forward(&xs).unwrap();
    assert_eq!(outs.len(), 5);
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(
            o.dims(),
            g.shape(&format!("out{i}")).as_slice(),
            "level {i}"
        );
        check(
            &format!("fpn out{i}"),
            &host(o),
            &g.f32s(&format!("out{i}")),
            TOL,
        );
        loss = (loss
            + (o * tensor(&g, &format!("r{i}")))
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
    }
    let grads = loss.backward().unwrap();
    for (i, v) in ins.iter().enumerate() {
        check(
            &format!("fpn grad in{i}"),
            &host(grads.get(v.as_tensor()).unwrap()),
            &g.f32s(&format!("grad.in{i}")),
            TOL,
        );
    }
    check_param_grads(&g, "fpn", &vars, &grads, "neck.", "neck.");
}

fn rpn_targets_from(g: &Golden, b: usize, n: usize) -> RpnTargets {
    let labels = g.i64s("labels");
    let lw = g.f32s("label_weights");
    let bt = g.f32s("bbox_targets");
    let bw = g.f32s("bbox_weights");
    let quad =
        |v: &[f32], j: usize| -> [f32; 4] { std::array::from_fn(|c| v[(b * n + j) * 4 + c]) };
    let labels: Vec<i64> = labels[b * n..(b + 1) * n].to_vec();
    let label_weights: Vec<f32> = lw[b * n..(b + 1) * n].to_vec();
    let num_pos = labels
        .iter()
        .zip(&label_weights)
        .filter(|(&l, &w)| l == 0 && w > 0.0)
        .count();
    let num_neg = label_weights.iter().filter(|&&w| w > 0.0).count() - num_pos;
    RpnTargets {
        labels,
        label_weights,
        bbox_targets: (0..n).map(|j| quad(&bt, j)).collect(),
        bbox_weights: (0..n).map(|j| quad(&bw, j)).collect(),
        inside: vec![true; n],
        num_pos,
        num_neg,
        sampling: SamplingResult {
            pos_inds: Vec::new(),
            neg_inds: Vec::new(),
            bboxes: Vec::new(),
            pos_bboxes: Vec::new(),
            neg_bboxes: Vec::new(),
            pos_is_gt: Vec::new(),
            num_gts: 0,
            pos_assigned_gt_inds: Vec::new(),
            pos_gt_bboxes: Vec::new(),
            pos_gt_labels: None,
        },
    }
}

#[test]
fn rpn_head_and_losses() {
    let g = Golden::load("model_rpn");
    let (vars, _) = load_weights(&g, &keys(&g), "rpn_head.", "rpn_head.");
    let vb = SeededInit::var_builder(&vars, 0, &Device::Cpu);
    let head = RpnHead::new(8, 8, 3, vb.pp("rpn_head")).unwrap();
    let ins: Vec<Var> = (0..5)
        .map(|i| Var::from_tensor(&tensor(&g, &format!("in{i}"))).unwrap())
        .collect();
    let xs: Vec<Tensor> = ins.iter().map(|v| v.as_tensor().clone()).collect();
    let levels = head.forward(&xs).unwrap();
    for (i, l) in levels.iter().enumerate() {
        check(
            &format!("rpn cls{i}"),
            &host(&l.cls),
            &g.f32s(&format!("cls{i}")),
            TOL,
        );
        check(
            &format!("rpn reg{i}"),
            &host(&l.reg),
            &g.f32s(&format!("reg{i}")),
            TOL,
        );
    }
    let n = g.shape("labels")[1];
    let targets: Vec<RpnTargets> = (0..2).map(|b| rpn_targets_from(&g, b, n)).collect();
    let total = meta_usize(&g.meta["num_total_samples"]);
    assert_eq!(detection::targets::rpn_num_total_samples(&targets), total);
    let beta = g.meta["beta"].as_f64().unwrap();
    let (lc, lb) = rpn_loss(
        &levels,
        &targets,
        total,
        RegLoss::SmoothL1 { beta, weight: 1.0 },
    )
    .unwrap();
    let (_, lb_l1) = rpn_loss(&levels, &targets, total, RegLoss::L1 { weight: 1.0 }).unwrap();
    check("rpn loss_cls", &host(&lc), &g.f32s("loss_cls"), TOL);
    check(
        "rpn loss_bbox (smooth l1, β = 1/9)",
        &host(&lb),
        &g.f32s("loss_bbox_smooth_l1"),
        TOL,
    );
    check(
        "rpn loss_bbox (l1)",
        &host(&lb_l1),
        &g.f32s("loss_bbox_l1"),
        TOL,
    );
    let grads = (lc + lb).unwrap().backward().unwrap();
    for (i, v) in ins.iter().enumerate() {
        check(
            &format!("rpn grad in{i}"),
            &host(grads.get(v.as_tensor()).unwrap()),
            &g.f32s(&format!("grad.in{i}")),
            TOL,
        );
    }
    check_param_grads(&g, "rpn", &vars, &grads, "rpn_head.", "rpn_head.");
}

fn roi_targets(g: &Golden, target_key: &str, k: usize) -> RoiTargets {
    let labels = g.i64s("labels");
    let t = g.f32s(target_key);
    RoiTargets {
        label_weights: vec![1.0; labels.len()],
        bbox_targets: (0..labels.len())
            .map(|i| std::array::from_fn(|c| t[i * 4 + c]))
            .collect(),
        bbox_weights: labels
            .iter()
            .map(|&l| if (l as usize) < k { [1.0; 4] } else { [0.0; 4] })
            .collect(),
        labels,
    }
}

#[test]
fn box_heads_and_losses() {
    let g = Golden::load("model_box_head");
    let k = meta_usize(&g.meta["classes"]);
    let rois: Vec<Box4> = g
        .rows5("rois")
        .iter()
        .map(|r| [r[1], r[2], r[3], r[4]])
        .collect();
    for (name, kind, loss, target) in [
        (
            "shared2fc",
            BoxHeadKind::Shared2fc,
            RegLoss::L1 { weight: 1.0 },
            "deltas",
        ),
        (
            "conv4fc1",
            BoxHeadKind::Conv4fc1,
            RegLoss::Giou { weight: 10.0 },
            "gt_boxes",
        ),
    ] {
        let m = &g.meta[name];
        let stds: Vec<f32> = m["stds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let coder = DeltaXYWHBBoxCoder::new([0.0; 4], [stds[0], stds[1], stds[2], stds[3]]);
        let (vars, buffers) = load_weights(&g, &keys(&g), &format!("{name}."), "h.");
        let n_before = sorted_vars(&vars).len();
        let vb = SeededInit::var_builder(&vars, 0, &Device::Cpu);
        let cfg = BoxHeadConfig {
            kind,
            conv_channels: 8,
            fc_channels: 16,
            reg_class_agnostic: false,
            reg_decoded_bbox: matches!(loss, RegLoss::Giou { .. }),
            loss_bbox: loss,
        };
        let head = BoxHead::new(&cfg, 8, 7, k, vb.pp("h"), &buffers).unwrap();
        assert_eq!(
            sorted_vars(&vars).len(),
            n_before,
            "{name}: all weights from the golden"
        );
        let x = Var::from_tensor(&tensor(&g, "feats")).unwrap();
        let (cls, reg) = head.forward_t(x.as_tensor(), true).unwrap();
        check(
            &format!("{name} cls"),
            &host(&cls),
            &g.f32s(&format!("{name}.cls")),
            TOL,
        );
        check(
            &format!("{name} reg"),
            &host(&reg),
            &g.f32s(&format!("{name}.reg")),
            TOL,
        );
        let targets = roi_targets(&g, target, k);
        let l = box_loss(&cls, &reg, &rois, &targets, k, false, loss, &coder).unwrap();
        check(
            &format!("{name} loss_cls"),
            &host(&l.loss_cls),
            &g.f32s(&format!("{name}.loss_cls")),
            TOL,
        );
        check(
            &format!("{name} loss_bbox"),
            &host(&l.loss_bbox),
            &g.f32s(&format!("{name}.loss_bbox")),
            TOL,
        );
        let grads = (l.loss_cls + l.loss_bbox).unwrap().backward().unwrap();
        check(
            &format!("{name} grad feats"),
            &host(grads.get(x.as_tensor()).unwrap()),
            &g.f32s(&format!("{name}.grad.feats")),
            TOL,
        );
        check_param_grads(&g, name, &vars, &grads, &format!("{name}."), "h.");
        // BN running statistics after the training forward (momentum 0.1, unbiased variance)
        for (bn, t) in buffers.tensors() {
            if bn.ends_with("num_batches_tracked") {
                continue;
            }
            check(
                &format!("{name} {bn}"),
                &host(&t),
                &g.f32s(&format!("{name}.{}", &bn[2..])),
                TOL,
            );
        }
    }
}

#[test]
fn mask_head_and_loss() {
    let g = Golden::load("model_mask_head");
    let (vars, buffers) = load_weights(&g, &keys(&g), "mask_head.", "mask_head.");
    let vb = SeededInit::var_builder(&vars, 0, &Device::Cpu);
    let head = MaskHead::new(2, 8, 8, 3, vb.pp("mask_head"), &buffers).unwrap();
    let x = Var::from_tensor(&tensor(&g, "feats")).unwrap();
    let pred = head.forward(x.as_tensor()).unwrap();
    check("mask logits", &host(&pred), &g.f32s("pred"), TOL);
    let labels = g.i64s("labels");
    let loss = mask_loss(&pred, &g.f32s("targets"), &labels).unwrap();
    check("mask loss", &host(&loss), &g.f32s("loss"), TOL);
    let grads = loss.backward().unwrap();
    check(
        "mask grad feats",
        &host(grads.get(x.as_tensor()).unwrap()),
        &g.f32s("grad.feats"),
        TOL,
    );
    check_param_grads(&g, "mask head", &vars, &grads, "mask_head.", "mask_head.");
}

fn cascade_config(g: &Golden) -> DetectionConfig {
    let m = &g.meta;
    let mut cfg = DetectionConfig::cascade_mask_rcnn_ibot();
    cfg.model.kind = Kind::CascadeMaskRcnn;
    cfg.model.neck.out_channels = meta_usize(&m["channels"]);
    let r = &mut cfg.model.roi;
    r.finest_scale = m["finest_scale"].as_f64().unwrap() as f32;
    r.num_samples = meta_usize(&m["num_samples"]);
    r.pos_fraction = m["pos_fraction"].as_f64().unwrap() as f32;
    r.stage_iou_thrs = m["iou_thrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    r.stage_loss_weights = m["loss_weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    r.stage_stds = m["stage_stds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| std::array::from_fn(|c| s[c].as_f64().unwrap() as f32))
        .collect();
    cfg.model.box_head.conv_channels = meta_usize(&m["conv_channels"]);
    cfg.model.box_head.fc_channels = meta_usize(&m["fc_channels"]);
    cfg.model.mask_head.num_convs = meta_usize(&m["mask_convs"]);
    cfg.model.mask_head.channels = meta_usize(&m["mask_channels"]);
    cfg
}

#[test]
fn cascade_training_losses_and_test_path() {
    let g = Golden::load("model_cascade");
    let k = meta_usize(&g.meta["classes"]);
    let cfg = cascade_config(&g);
    let (vars, buffers) = load_weights(&g, &keys(&g), "roi_head.", "roi_head.");
    let n_before = sorted_vars(&vars).len();
    let vb = SeededInit::var_builder(&vars, 0, &Device::Cpu);
    let head = RoiHead::new(&cfg, k, vb, &buffers).unwrap();
    assert_eq!(
        sorted_vars(&vars).len(),
        n_before,
        "all weights from the golden"
    );
    let feat_vars: Vec<Var> = (0..4)
        .map(|i| Var::from_tensor(&tensor(&g, &format!("feat{i}"))).unwrap())
        .collect();
    let feats: Vec<Tensor> = feat_vars.iter().map(|v| v.as_tensor().clone()).collect();
    let m = &g.meta;
    let pair = |v: &serde_json::Value| (meta_usize(&v[0]), meta_usize(&v[1]));
    let pad = pair(&m["pad_shape"]);
    let metas: Vec<ImageMeta> = (0..2)
        .map(|j| ImageMeta {
            img_shape: pair(&m["img_shapes"][j]),
            pad_shape: pad,
            ori_shape: pair(&m["ori_shapes"][j]),
            scale_factor: std::array::from_fn(|c| {
                m["scale_factors"][j][c].as_f64().unwrap() as f32
            }),
        })
        .collect();
    let targets: Vec<ImageTargets> = (0..2)
        .map(|j| {
            let masks = g.u8s(&format!("img{j}.masks"));
            let per = pad.0 * pad.1;
            ImageTargets {
                boxes: g.boxes(&format!("img{j}.gts")),
                labels: g.i64s(&format!("img{j}.labels")),
                ignore: Vec::new(),
                masks: masks
                    .chunks(per)
                    .map(|c| BitMask {
                        h: pad.0,
                        w: pad.1,
                        data: c.to_vec(),
                    })
                    .collect(),
            }
        })
        .collect();
    let proposals: Vec<Vec<Box4>> = (0..2)
        .map(|j| g.boxes(&format!("img{j}.proposals")))
        .collect();
    let mut losses = BTreeMap::new();
    let mut logs = BTreeMap::new();
    head.forward_train(
        &feats,
        proposals.clone(),
        &targets,
        &metas,
        None,
        &mut losses,
        &mut logs,
    )
    .unwrap();
    let names: Vec<&String> = losses.keys().collect();
    assert_eq!(
        names,
        [
            "s0.loss_bbox",
            "s0.loss_cls",
            "s0.loss_mask",
            "s1.loss_bbox",
            "s1.loss_cls",
            "s1.loss_mask",
            "s2.loss_bbox",
            "s2.loss_cls",
            "s2.loss_mask"
        ]
    );
    let mut total = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (name, v) in &losses {
        check(&format!("cascade {name}"), &host(v), &g.f32s(name), TOL);
        total = (total + v).unwrap();
    }
    let grads = total.backward().unwrap();
    for (i, v) in feat_vars.iter().enumerate() {
        // a level no RoI maps to gets no gradient (zeros in torch)
        let grad = match grads.get(v.as_tensor()) {
            Some(t) => host(t),
            None => vec![0.0; v.elem_count()],
        };
        check(
            &format!("cascade grad feat{i}"),
            &grad,
            &g.f32s(&format!("grad.feat{i}")),
            TOL,
        );
    }
    check_param_grads(&g, "cascade", &vars, &grads, "roi_head.", "roi_head.");

    // the test path, BN on the running statistics the training forward left
    let dets = head.simple_test(&feats, &proposals, &metas).unwrap();
    for (j, d) in dets.iter().enumerate() {
        let want = g.rows5(&format!("test.img{j}.dets"));
        assert_eq!(d.boxes.len(), want.len(), "image {j}: detection count");
        assert_eq!(
            d.labels,
            g.i64s(&format!("test.img{j}.labels")),
            "image {j} labels"
        );
        check(
            &format!("cascade test img{j} dets"),
            &crate::util::flat5(&d.boxes),
            &crate::util::flat5(&want),
            TOL,
        );
        let want_m = g.u8s(&format!("test.img{j}.masks"));
        let got_m: Vec<u8> = d.masks.iter().flatten().map(|&b| b as u8).collect();
        assert_eq!(got_m.len(), want_m.len());
        let diff = got_m.iter().zip(&want_m).filter(|(a, b)| a != b).count();
        println!(
            "cascade test img{j}: {} detections, {diff} of {} mask pixels differ",
            want.len(),
            want_m.len()
        );
        assert_eq!(diff, 0, "image {j}: pasted masks differ");
    }
}
