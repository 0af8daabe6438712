//! The loop on generated ADE-layout scenes: losses come down, every trainable parameter gets a
//! gradient, a stopped run continues exactly, and the predictions written to pred/ reproduce the
//! reported mIoU through the metrics crate.

use std::path::Path;

use backbone::dense::init_dense_weights;
use backbone::VitConfig;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use layers::norm::Buffers;
use segmentation::config::{SegConfig, SegDataConfig};
use segmentation::segmentor::{dense_config, Segmentor};
use segmentation::train::{Init, RunOptions, SegTrainer};

fn vit() -> VitConfig {
    VitConfig {
        embed_dim: 32,
        depth: 4,
        num_heads: 2,
        mlp_hidden: 64,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    }
}

fn recipe(head: &str, iters: usize) -> SegConfig {
    SegConfig::parse(
        &format!(
            r#"name = "test"
head = "{head}"
[model]
channels = 16
aux_channels = 8
[optim]
iters = {iters}
batch_size = 4
lr = 1e-3
warmup_iters = 2
layer_decay = 0.9
[pipeline]
img_scale = [256, 64]
crop_size = [32, 32]
test_scale = [256, 64]
slide_crop = [32, 32]
slide_stride = [21, 21]
"#
        ),
        "test recipe",
    )
    .unwrap()
}

fn scenes(dir: &Path) -> SegDataConfig {
    data::synth::generate(
        dir,
        &data::synth::SynthConfig {
            seed: 3,
            images: 24,
            size: 32,
        },
    )
    .unwrap();
    SegDataConfig {
        name: "synth-ade".into(),
        format: "ade20k".into(),
        root: dir.join("ade"),
        train_split: "training".into(),
        val_split: "validation".into(),
        num_classes: 8,
        reduce_zero_label: true,
        class_names: Vec::new(),
    }
}

fn init(cfg: &SegConfig) -> Init {
    let v = vit();
    Init {
        weights: init_dense_weights(&v, &dense_config(cfg, &v), 1).unwrap(),
        vit: v,
    }
}

fn opts(out: &Path, max_iters: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        device: Device::Cpu,
        progress: indicatif::ProgressBar::hidden(),
        max_iters,
    }
}

#[test]
fn upernet_trains_resumes_and_writes_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let data = scenes(dir.path());
    let cfg = recipe("upernet", 30);
    let a = dir.path().join("a");
    let full = SegTrainer::new(cfg.clone(), data.clone(), init(&cfg), opts(&a, None))
        .unwrap()
        .run()
        .unwrap();
    assert!(full.completed && full.iters == 30);
    let log = std::fs::read_to_string(a.join("log.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("loss")?
                .as_f64()
        })
        .collect();
    assert_eq!(losses.len(), 30);
    assert!(losses.iter().all(|l| l.is_finite()));
    eprintln!("scores after 30 iterations: {:?}", full.scores);

    // Stopped after 5 iterations, then continued: the same predictions and scores.
    let b = dir.path().join("b");
    SegTrainer::new(cfg.clone(), data.clone(), init(&cfg), opts(&b, Some(13)))
        .unwrap()
        .run()
        .unwrap();
    let resumed = SegTrainer::new(cfg.clone(), data.clone(), init(&cfg), opts(&b, None))
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(resumed.scores, full.scores);

    // The written predictions reproduce the scores through the metrics crate.
    let gt_dir = data.root.join("annotations/validation");
    let pairs = metrics::segmentation::pair_label_pngs(&gt_dir, &full.pred_dir).unwrap();
    assert_eq!(pairs.len(), full.val_images);
    let mut acc = metrics::segmentation::SegmentationAccumulator::new(
        metrics::segmentation::SegmentationConfig {
            num_classes: 8,
            ignore_index: 255,
            reduce_zero_label: true,
        },
    );
    for (gt, pred) in &pairs {
        let g = metrics::segmentation::read_label_png(gt).unwrap();
        let mut p = metrics::segmentation::read_label_png(pred).unwrap();
        // Annotation-space predictions (ADE: +1) back to class indices.
        p.reduce_zero_label();
        acc.add(&p, &g).unwrap();
    }
    assert!((acc.scores().m_iou - full.scores.miou).abs() < 1e-12);
}

/// Ten steps on one fixed batch bring its loss steadily down (the random crops of the real loop make
/// consecutive losses too noisy to compare).
#[test]
fn a_fixed_batch_is_fitted() {
    let dir = tempfile::tempdir().unwrap();
    let data = scenes(dir.path());
    let cfg = recipe("upernet", 10);
    let i = init(&cfg);
    let vars = VarMap::new();
    let buffers = Buffers::new();
    train::vars::insert_vars(&vars, i.weights.into_iter().collect(), &Device::Cpu).unwrap();
    let vb = train::vars::SeededInit::var_builder(&vars, 0, &Device::Cpu);
    let model = Segmentor::new(&i.vit, &cfg, data.num_classes, vb, &buffers).unwrap();
    let pairs = data::segmentation::SegPairs::ade(&data.root, "training", 8, true).unwrap();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for k in 0..4 {
        let mut rng = data::augment::sample_rng(0, 0, k);
        let s = segmentation::pipeline::train_sample(&pairs, k as usize, &cfg.pipeline, &mut rng)
            .unwrap();
        images.extend(s.image);
        labels.extend(s.labels);
    }
    let x = candle_core::Tensor::from_vec(images, (4, 3, 32, 32), &Device::Cpu).unwrap();
    let y = candle_core::Tensor::from_vec(labels, (4, 32, 32), &Device::Cpu).unwrap();
    let params = train::vars::sorted_vars(&vars);
    let mut opt = train::AdamW::new(
        params
            .into_iter()
            .map(|(n, v)| (n, v, train::ParamGroup::PLAIN))
            .collect(),
        train::AdamWConfig::default(),
    );
    let mut losses = Vec::new();
    for _ in 0..10 {
        let l = model.losses(&x, &y, None, None).unwrap();
        losses.push(l.total.to_scalar::<f32>().unwrap());
        let g = l.total.backward().unwrap();
        opt.step(&g, 1e-3, 0.0, train::Clip::None, &|_| false)
            .unwrap();
    }
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]) && losses[9] < 0.93 * losses[0],
        "losses {losses:?}"
    );
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let data = scenes(dir.path());
    for head in ["upernet", "linear"] {
        let cfg = recipe(head, 1);
        let vars = VarMap::new();
        let buffers = Buffers::new();
        let frozen = head == "linear";
        let i = init(&cfg);
        let mut constants = std::collections::HashMap::new();
        if frozen {
            constants = i.weights.clone();
        } else {
            train::vars::insert_vars(&vars, i.weights.clone().into_iter().collect(), &Device::Cpu)
                .unwrap();
        }
        let vb =
            train::vars::SeededInit::var_builder_with_constants(&vars, 0, constants, &Device::Cpu);
        let model = Segmentor::new(&i.vit, &cfg, data.num_classes, vb, &buffers).unwrap();
        let x = candle_core::Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let y = candle_core::Tensor::from_vec(
            (0..2048u32).map(|v| (v % 7) as u8).collect::<Vec<u8>>(),
            (2, 32, 32),
            &Device::Cpu,
        )
        .unwrap();
        let losses = model.losses(&x, &y, None, None).unwrap();
        let grads = losses.total.backward().unwrap();
        let trainable: Vec<(String, candle_core::Var)> = train::vars::sorted_vars(&vars)
            .into_iter()
            .filter(|(n, _)| model.backbone().is_trainable(n))
            .collect();
        assert!(!trainable.is_empty());
        let missing = train::vars::without_gradient(&grads, &trainable).unwrap();
        assert!(missing.is_empty(), "{head}: no gradient for {missing:?}");
        let _ = DType::F32;
    }
}
