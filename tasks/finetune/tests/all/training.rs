//! The loop on generated images: it learns (val top-1 far above chance after a few epochs), every
//! parameter receives a gradient, and a run stopped mid-way and re-run continues exactly.

use std::collections::HashMap;
use std::sync::Arc;

use backbone::VitConfig;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use data::loader::InMemory;
use finetune::config::{FinetuneConfig, Mode};
use finetune::model::{Classifier, HeadKind};
use finetune::train::{FinetuneData, Finetuner, Init, RunOptions};
use image::RgbImage;

fn vit() -> VitConfig {
    VitConfig {
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        mlp_hidden: 64,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    }
}

/// Class c: a noisy image whose dominant channel is c % 3, brighter for c ≥ 3.
fn images(n: usize, seed: u64) -> InMemory {
    let mut imgs = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % 4;
        let img = RgbImage::from_fn(32, 32, |x, y| {
            let noise = ((x * 31 + y * 17 + i as u32 * 7 + seed as u32 * 13) % 61) as u8;
            let mut p = [noise, noise, noise];
            p[c % 3] = p[c % 3].saturating_add(if c == 3 { 190 } else { 120 });
            image::Rgb(p)
        });
        imgs.push(img);
        labels.push(c);
    }
    InMemory {
        images: imgs,
        labels,
    }
}

fn recipe(epochs: usize) -> FinetuneConfig {
    FinetuneConfig::parse(
        &format!(
            r#"name = "test"
mode = "full"
[model]
input_size = 32
drop_path = 0.1
[optim]
epochs = {epochs}
batch_size = 16
lr = 5e-3
warmup_epochs = 1
layer_decay = 0.75
[augment]
mixup = 0.0
cutmix = 0.0
reprob = 0.0
auto_augment = "none"
[run]
eval_batch_size = 64
"#
        ),
        "test recipe",
    )
    .unwrap()
}

fn init() -> Init {
    let weights: HashMap<String, Tensor> = backbone::init::init_weights(&vit(), 3).unwrap();
    Init {
        vit: vit(),
        weights,
    }
}

fn data() -> FinetuneData {
    FinetuneData {
        train: Arc::new(images(96, 0)),
        val: Arc::new(images(48, 1)),
        classes: 4,
    }
}

fn opts(out: &std::path::Path, max_steps: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        device: Device::Cpu,
        progress: indicatif::ProgressBar::hidden(),
        max_steps,
    }
}

#[test]
fn learns_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let outcome = Finetuner::new(recipe(6), init(), data(), opts(&a, None))
        .unwrap()
        .run()
        .unwrap();
    assert!(outcome.completed);
    assert_eq!(outcome.history.len(), 6);
    assert!(
        outcome.max_top1 >= 0.75,
        "val top-1 {} after 6 epochs: {:?}",
        outcome.max_top1,
        outcome.history
    );
    assert_eq!(outcome.predictions.len(), 48);

    // Stopped after 14 steps (mid-epoch 2, checkpointed at the stop), then re-run to the end.
    let b = dir.path().join("b");
    let first = Finetuner::new(recipe(6), init(), data(), opts(&b, Some(14)))
        .unwrap()
        .run()
        .unwrap();
    assert!(!first.completed);
    let resumed = Finetuner::new(recipe(6), init(), data(), opts(&b, None))
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(resumed.predictions, outcome.predictions);
    assert_eq!(resumed.top1, outcome.top1);
    let ta = candle_core::safetensors::load(a.join("model.safetensors"), &Device::Cpu).unwrap();
    let tb = candle_core::safetensors::load(b.join("model.safetensors"), &Device::Cpu).unwrap();
    for (k, v) in &ta {
        let d = (v - &tb[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{k} differs after resume");
    }
    // A different recipe in the same directory is refused, naming the field.
    let err = Finetuner::new(recipe(7), init(), data(), opts(&b, None))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("optim.epochs"), "{err:#}");
}

#[test]
fn every_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    for mode in [Mode::Full, Mode::Semisup] {
        let vars = VarMap::new();
        let mut w: Vec<(String, Tensor)> = backbone::init::init_weights(&vit(), 1)
            .unwrap()
            .into_iter()
            .collect();
        let kind = match mode {
            Mode::Full => HeadKind::Linear,
            Mode::Semisup => HeadKind::Proj { hidden: 2048 },
        };
        w.extend(finetune::model::init_head(kind, 32, 4, 1.0, 0).unwrap());
        if mode == Mode::Semisup {
            w.push((
                "head.mlp.0.weight".into(),
                Tensor::randn(0f32, 0.02, (2048, 32), &dev).unwrap(),
            ));
            w.push((
                "head.mlp.0.bias".into(),
                Tensor::zeros(2048, DType::F32, &dev).unwrap(),
            ));
        }
        train::vars::insert_vars(&vars, w, &dev).unwrap();
        let model = Classifier::new(
            &vit(),
            kind,
            4,
            VarBuilder::from_varmap(&vars, DType::F32, &dev),
            DType::F32,
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let loss = train::loss::label_smoothing_cross_entropy(
            &model.forward(&x, None).unwrap(),
            &[1, 3],
            0.1,
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        let missing =
            train::vars::without_gradient(&grads, &train::vars::sorted_vars(&vars)).unwrap();
        assert!(missing.is_empty(), "{mode:?}: no gradient for {missing:?}");
    }
}
