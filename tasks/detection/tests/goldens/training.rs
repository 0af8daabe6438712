//! The detector end to end on generated COCO scenes: every trainable parameter receives a gradient,
//! the losses decrease over a few steps, a seeded run repeats exactly, a stopped run resumes
//! exactly, and the results JSON round-trips through `metrics::coco`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use backbone::VitConfig;
use candle_core::Device;
use data::augment::sample_rng;
use detection::config::DetectionConfig;
use detection::detector::Batch;
use detection::train::{build_model, losses_at, DetectionData, Init};
use train::vars::{sorted_vars, without_gradient};

/// The demo ViT of configs/pretrain/demo.toml.
pub fn demo_vit() -> VitConfig {
    VitConfig {
        embed_dim: 96,
        depth: 4,
        num_heads: 3,
        mlp_hidden: 384,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    }
}

pub fn demo_config() -> DetectionConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/detection/demo.toml");
    DetectionConfig::load(&path).unwrap()
}

/// Generated scenes (8 train / 8 val images of 64 px), shared by the tests of this binary.
pub fn scenes() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        data::synth::generate(
            dir.path(),
            &data::synth::SynthConfig {
                seed: 3,
                images: 8,
                size: 32,
            },
        )
        .unwrap();
        dir
    })
    .path()
}

pub fn demo_data() -> DetectionData {
    DetectionData::from_dir(&scenes().join("coco")).unwrap()
}

/// The first `n` training images through the demo's train pipeline.
pub fn demo_batch(cfg: &DetectionConfig, data: &DetectionData, n: usize) -> Batch {
    let pipe = cfg.train_pipeline().unwrap();
    let inputs: Vec<_> = (0..n)
        .map(|i| {
            let s = data.train.sample(i).unwrap();
            pipe.apply(&s.joint, &s.ignore, &mut sample_rng(0, 0, i as u64))
                .unwrap()
        })
        .collect();
    Batch::collate(&inputs, &Device::Cpu).unwrap()
}

#[test]
fn every_parameter_gets_a_gradient() {
    let cfg = demo_config();
    let data = demo_data();
    let init = Init::random(&demo_vit(), &cfg, 1).unwrap();
    let (model, vars, _) = build_model(&cfg, &init, data.num_classes(), 0, &Device::Cpu).unwrap();
    let batch = demo_batch(&cfg, &data, 2);
    let t0 = std::time::Instant::now();
    let out = losses_at(&model, &batch, 0, 0).unwrap();
    let total = out.total().unwrap();
    let t1 = t0.elapsed().as_secs_f64();
    let grads = total.backward().unwrap();
    println!(
        "forward {t1:.3} s, backward {:.3} s",
        t0.elapsed().as_secs_f64() - t1
    );
    for (k, v) in &out.losses {
        println!("{k}: {}", v.to_scalar::<f32>().unwrap());
    }
    let trainable: Vec<_> = sorted_vars(&vars)
        .into_iter()
        .filter(|(n, _)| model.is_trainable(n))
        .collect();
    let missing = without_gradient(&grads, &trainable).unwrap();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

#[test]
fn cascade_detector_gets_every_gradient() {
    // the official Cascade Mask R-CNN wiring (3 stages, 4conv1fc + BN, GIoU) at demo widths
    let mut cfg = demo_config();
    let official = DetectionConfig::cascade_mask_rcnn_ibot();
    cfg.model.kind = detection::config::Kind::CascadeMaskRcnn;
    cfg.model.roi.stage_iou_thrs = official.model.roi.stage_iou_thrs.clone();
    cfg.model.roi.stage_loss_weights = official.model.roi.stage_loss_weights.clone();
    cfg.model.roi.stage_stds = official.model.roi.stage_stds.clone();
    cfg.model.roi.match_low_quality = false;
    cfg.model.box_head = detection::config::BoxHeadConfig {
        conv_channels: 16,
        fc_channels: 32,
        ..official.model.box_head.clone()
    };
    cfg.model.rpn.loss_bbox = official.model.rpn.loss_bbox;
    // allowed_border stays the demo's -1: with the official 0, no anchor of the top FPN levels
    // fits inside these small scenes and `neck.fpn_convs.3` would rightly get no gradient.
    cfg.validate().unwrap();
    let data = demo_data();
    let init = Init::random(&demo_vit(), &cfg, 1).unwrap();
    let (model, vars, buffers) =
        build_model(&cfg, &init, data.num_classes(), 0, &Device::Cpu).unwrap();
    let batch = demo_batch(&cfg, &data, 2);
    let out = losses_at(&model, &batch, 0, 0).unwrap();
    let names: Vec<&str> = out.losses.keys().map(|s| s.as_str()).collect();
    assert_eq!(names.len(), 11, "{names:?}");
    assert!(names.contains(&"s2.loss_mask") && names.contains(&"loss_rpn_cls"));
    let grads = out.total().unwrap().backward().unwrap();
    let trainable: Vec<_> = sorted_vars(&vars)
        .into_iter()
        .filter(|(n, _)| model.is_trainable(n))
        .collect();
    assert!(trainable
        .iter()
        .any(|(n, _)| n == "roi_head.bbox_head.2.shared_convs.3.bn.weight"));
    let missing = without_gradient(&grads, &trainable).unwrap();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    // BN statistics moved and live in the buffer store, not among the parameters
    let n = buffers
        .get("roi_head.bbox_head.0.shared_convs.0.bn.num_batches_tracked")
        .unwrap();
    assert_eq!(n.to_scalar::<i64>().unwrap(), 1);
    assert!(!trainable.iter().any(|(n, _)| n.ends_with("running_mean")));
    let dets = model.predict(&batch.images, &batch.metas).unwrap();
    assert_eq!(dets.len(), 2);
}

#[test]
fn group_sampler_fills_whole_batches_from_one_group() {
    let groups: Vec<u8> = (0..11).map(|i| (i % 3 == 0) as u8).collect(); // 4 wide, 7 tall
    let order = detection::train::group_sampler_order(&groups, 2, 5, 0);
    assert_eq!(order.len(), 4 + 8); // ceil(4/2)·2 + ceil(7/2)·2
    for b in order.chunks(2) {
        assert_eq!(groups[b[0]], groups[b[1]], "a batch mixes groups: {b:?}");
    }
    for i in 0..11 {
        assert!(order.contains(&i), "index {i} missing");
    }
    assert_eq!(
        order,
        detection::train::group_sampler_order(&groups, 2, 5, 0)
    );
    assert_ne!(
        order,
        detection::train::group_sampler_order(&groups, 2, 5, 1)
    );
}

/// The demo recipe at test size: batch 2 (4 steps per epoch on the 8 generated images), 2 epochs,
/// at most 20 detections per image.
fn tiny_config() -> DetectionConfig {
    let mut cfg = demo_config();
    cfg.train.batch_size = 2;
    cfg.train.epochs = 2;
    cfg.train.steps = vec![1];
    cfg.train.warmup_iters = 2;
    cfg.test.max_per_img = 20;
    cfg.run.log_every = 1;
    cfg
}

#[test]
fn losses_decrease_on_a_fixed_batch() {
    let cfg = demo_config();
    let data = demo_data();
    let init = Init::random(&demo_vit(), &cfg, 1).unwrap();
    let (model, vars, _) = build_model(&cfg, &init, data.num_classes(), 0, &Device::Cpu).unwrap();
    let params: Vec<_> = sorted_vars(&vars)
        .into_iter()
        .filter(|(n, _)| model.is_trainable(n))
        .collect();
    let mut opt = train::AdamW::with_rule(
        params,
        |n, r| train::param_groups::mmcv_layer_decay(n, r, 4, 0.75),
        train::AdamWConfig::default(),
    );
    let batch = demo_batch(&cfg, &data, 2);
    let mut history = Vec::new();
    for step in 0..8 {
        // the same sampling draws every step, so the losses are comparable
        let out = losses_at(&model, &batch, 0, 0).unwrap();
        let total = out.total().unwrap();
        history.push(total.to_scalar::<f32>().unwrap());
        let grads = total.backward().unwrap();
        opt.step(&grads, 1e-3, 0.05, train::Clip::None, &|_| false)
            .unwrap();
        let _ = step;
    }
    println!("losses: {history:?}");
    assert!(
        history[7] < 0.7 * history[0],
        "the loss did not decrease: {history:?}"
    );
}

fn run_tiny(out: &Path, max_steps: usize) -> detection::Outcome {
    let cfg = tiny_config();
    let init = Init::random(&demo_vit(), &cfg, 1).unwrap();
    let opts = detection::RunOptions {
        out: out.to_path_buf(),
        device: Device::Cpu,
        progress: indicatif::ProgressBar::hidden(),
        max_steps: Some(max_steps),
    };
    detection::run(cfg, init, demo_data(), opts).unwrap()
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .filter(|(_, x)| x.dtype() == candle_core::DType::F32)
        .map(|(k, x)| (k, x.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Step lines of log.jsonl without the timing fields.
fn step_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("event").is_none())
        .map(|mut v| {
            let o = v.as_object_mut().unwrap();
            for k in ["step_seconds", "data_seconds", "images_per_s", "rss_mb"] {
                o.remove(k);
            }
            v
        })
        .collect()
}

#[test]
fn seeded_run_repeats_and_resumes_exactly() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // A: 6 steps straight; B: stopped after 3 (mid-epoch), then resumed to 6 (across the epoch end)
    let out_a = run_tiny(a.path(), 6);
    let stopped = run_tiny(b.path(), 3);
    assert!(!stopped.completed && stopped.steps == 3);
    let out_b = run_tiny(b.path(), 6);
    assert_eq!(out_b.steps, 6);
    let untimed = |o: &detection::Outcome| {
        let mut h = o.history.clone();
        h.iter_mut().for_each(|r| r.seconds = 0.0);
        h
    };
    assert_eq!(untimed(&out_a), untimed(&out_b), "epoch records");
    let ta = tensors(&a.path().join("checkpoint.safetensors"));
    let tb = tensors(&b.path().join("checkpoint.safetensors"));
    assert_eq!(ta.len(), tb.len());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        assert!(va == vb, "{ka} differs after resume");
    }
    assert_eq!(step_lines(a.path()), step_lines(b.path()), "log.jsonl");
    assert_eq!(
        std::fs::read(a.path().join("detections.json")).unwrap(),
        std::fs::read(b.path().join("detections.json")).unwrap(),
        "detections.json"
    );
    assert_eq!(out_a.bbox, out_b.bbox);
    assert_eq!(out_a.segm, out_b.segm);
    // a finished run re-run in place reuses its detections and gives the same numbers
    let again = run_tiny(a.path(), 6);
    assert_eq!(again.bbox, out_a.bbox);
    results_round_trip(a.path(), &out_a);
}

/// detections.json is a valid COCO results file whose `metrics::coco` evaluation (what `ibot
/// metrics coco` runs) gives the run's numbers, with the GT's category ids and image-sized RLEs.
fn results_round_trip(dir: &Path, out: &detection::Outcome) {
    use metrics::coco::{evaluate_files, CocoOptions, IouType};
    let data = demo_data();
    let gt = &data.val.annotation_file;
    let path = dir.join("detections.json");
    let dets = detection::eval::read_detections(&path).unwrap();
    assert_eq!(dets.len(), out.detections);
    assert!(!dets.is_empty());
    let sizes: std::collections::HashMap<u64, (u32, u32)> = data
        .val
        .entries
        .iter()
        .map(|e| (e.image.id, (e.image.height, e.image.width)))
        .collect();
    for d in &dets {
        assert!(data.val.cat_ids.contains(&d.category_id));
        let b = d.bbox.unwrap();
        assert!(b[2] >= 0.0 && b[3] >= 0.0 && d.score > 0.05 && d.score <= 1.0);
        let s = d.segmentation.as_ref().unwrap();
        let (h, w) = sizes[&d.image_id];
        assert_eq!(s.size, [h, w]);
        metrics::mask::from_string(&s.counts, h, w).unwrap();
    }
    // re-serialising gives the same bytes
    let again = tempfile::tempdir().unwrap();
    detection::eval::write_detections(&again.path().join("d.json"), &dets).unwrap();
    assert_eq!(
        std::fs::read(again.path().join("d.json")).unwrap(),
        std::fs::read(&path).unwrap()
    );
    let bbox = evaluate_files(gt, &path, &CocoOptions::new(IouType::Bbox)).unwrap();
    let segm = evaluate_files(gt, &path, &CocoOptions::new(IouType::Segm)).unwrap();
    assert_eq!(detection::CocoStats::from_summary(&bbox), out.bbox);
    assert_eq!(detection::CocoStats::from_summary(&segm), out.segm);
    println!("bbox AP {:.4}, segm AP {:.4}", out.bbox.ap, out.segm.ap);
}

/// The demo recipe end to end on `ibot demo`'s data and checkpoints (slow: minutes). Run with
/// ```sh
/// /work/main/target/release/ibot demo --out /tmp/demo-det --quiet   # scenes + teacher/init
/// IBOT_DET_DATA=/tmp/demo-det/data/coco IBOT_DET_INIT=/tmp/demo-det/pretrain/teacher.safetensors \
///   IBOT_DET_OUT=/tmp/det-teacher cargo test --release -p detection --test goldens \
///   demo_run -- --ignored --nocapture
/// ```
/// (`IBOT_DET_INIT=…/init.safetensors` for the random-init baseline, `IBOT_DET_STEPS=N` to stop
/// early, `IBOT_DET_SEED` for another seed.)
#[test]
#[ignore]
fn demo_run() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let mut cfg = demo_config();
    if let Ok(s) = std::env::var("IBOT_DET_SEED") {
        cfg.run.seed = s.parse().unwrap();
    }
    let data = DetectionData::from_dir(Path::new(&var("IBOT_DET_DATA"))).unwrap();
    let (init, report) =
        Init::from_checkpoint(Path::new(&var("IBOT_DET_INIT")), None, None, &cfg).unwrap();
    println!("load report: {report:?}");
    let opts = detection::RunOptions {
        out: PathBuf::from(var("IBOT_DET_OUT")),
        device: Device::Cpu,
        progress: indicatif::ProgressBar::hidden(),
        max_steps: std::env::var("IBOT_DET_STEPS")
            .ok()
            .map(|s| s.parse().unwrap()),
    };
    let out = detection::run(cfg, init, data, opts).unwrap();
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

/// Speed of the demo recipe, comparable with `tests/reference/bench_detection_torch.py` (same
/// model, random init, batches prepared before timing, 64-px images without augmentation):
/// ```sh
/// IBOT_DET_DATA=/tmp/demo-det/data/coco cargo test --release -p detection --test goldens \
///   bench_demo -- --ignored --nocapture
/// /opt/refvenv/bin/python tests/reference/bench_detection_torch.py --threads 2 --batch-size 4 \
///   --steps 20 --eval-images 80 --data /tmp/demo-det/data/coco
/// ```
#[test]
#[ignore]
fn bench_demo() {
    let cfg = demo_config();
    let root = std::env::var("IBOT_DET_DATA").expect("set IBOT_DET_DATA");
    let data = DetectionData::from_dir(Path::new(&root)).unwrap();
    let init = Init::random(&demo_vit(), &cfg, 1).unwrap();
    let (model, vars, _) = build_model(&cfg, &init, data.num_classes(), 0, &Device::Cpu).unwrap();
    let params: Vec<_> = sorted_vars(&vars)
        .into_iter()
        .filter(|(n, _)| model.is_trainable(n))
        .collect();
    let mut opt = train::AdamW::with_rule(
        params,
        |n, r| train::param_groups::mmcv_layer_decay(n, r, 4, 0.75),
        train::AdamWConfig::default(),
    );
    let pipe = cfg.test_pipeline().unwrap();
    let (bs, steps, warmup) = (4, 20, 3);
    let batches: Vec<Batch> = (0..steps + warmup)
        .map(|s| {
            let inputs: Vec<_> = (s * bs..(s + 1) * bs)
                .map(|i| {
                    let smp = data.train.sample(i).unwrap();
                    let mut d = pipe.apply(&smp.joint).unwrap();
                    d.boxes = smp.joint.boxes.clone();
                    d.labels = smp.joint.labels.clone();
                    d.masks = smp.joint.instance_masks.clone();
                    d
                })
                .collect();
            Batch::collate(&inputs, &Device::Cpu).unwrap()
        })
        .collect();
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for (s, b) in batches.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let out = losses_at(&model, b, 0, s).unwrap();
        let total = out.total().unwrap();
        losses.push(total.to_scalar::<f32>().unwrap());
        let grads = total.backward().unwrap();
        opt.step(&grads, 2e-4, 0.05, train::Clip::None, &|_| false)
            .unwrap();
        if s >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let n_eval = 80.min(data.val.len());
    let eval: Vec<Batch> = (0..n_eval)
        .step_by(8)
        .map(|s| {
            let inputs: Vec<_> = (s..(s + 8).min(n_eval))
                .map(|i| pipe.apply(&data.val.sample(i).unwrap().joint).unwrap())
                .collect();
            Batch::collate(&inputs, &Device::Cpu).unwrap()
        })
        .collect();
    let t0 = std::time::Instant::now();
    let mut ndet = 0;
    for b in &eval {
        for (i, d) in model
            .predict(&b.images, &b.metas)
            .unwrap()
            .iter()
            .enumerate()
        {
            ndet += detection::eval::image_results(i as u64, d, &data.val.cat_ids)
                .unwrap()
                .len();
        }
    }
    let te = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "train_seconds_per_step": times.iter().sum::<f64>() / times.len() as f64,
            "train_steps_timed": times.len(), "batch_size": bs,
            "first_loss": losses[0], "last_loss": losses[losses.len() - 1],
            "eval_images": n_eval, "eval_images_per_s": n_eval as f64 / te, "detections": ndet,
            "threads": rayon::current_num_threads(),
        })
    );
}
