//! Feature layouts against hand-built concatenations of the backbone's outputs, and head logits.

mod common;

use std::sync::Arc;

use backbone::head::load_head;
use candle_core::{DType, Device, Tensor, D};
use common::*;
use data::augment::Transform;
use data::loader::{Loader, LoaderConfig};
use features::{FeatureSpec, FeatureStore, Split};

fn tiny_model(seed: u64) -> backbone::VisionTransformer {
    let cfg = tiny_config();
    backbone::build_model(
        &cfg,
        backbone::init::init_weights(&cfg, seed).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

#[test]
fn layouts_match_manual_concatenation() {
    let model = tiny_model(1);
    let x = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &Device::Cpu).unwrap();
    let outs = model.get_intermediate_layers(&x, 2).unwrap();
    let cls = |t: &Tensor| t.get_on_dim(1, 0).unwrap();
    let avg = |t: &Tensor| t.narrow(1, 1, 16).unwrap().mean(1).unwrap();

    let got = |spec: FeatureSpec| spec.compute(&model, &x).unwrap();
    assert_eq!(rows(&got(FeatureSpec::Cls)), rows(&cls(&outs[1])));
    assert_eq!(rows(&got(FeatureSpec::AvgPatch)), rows(&avg(&outs[1])));
    let last2 = Tensor::cat(&[cls(&outs[0]), cls(&outs[1])], D::Minus1).unwrap();
    assert_eq!(rows(&got(FeatureSpec::ClsLastN { n: 2 })), rows(&last2));
    let block = Tensor::cat(&[cls(&outs[0]), cls(&outs[1]), avg(&outs[1])], D::Minus1).unwrap();
    let b = got(FeatureSpec::ClsAvg {
        n: 2,
        interleaved: false,
    });
    assert_eq!(b.dims(), [3, 48]);
    assert_eq!(rows(&b), rows(&block));

    // DINO: torch.cat((cls.unsqueeze(-1), avg.unsqueeze(-1)), -1).reshape(B, -1).
    let inter = rows(&got(FeatureSpec::ClsAvg {
        n: 1,
        interleaved: true,
    }));
    let (c, a) = (rows(&cls(&outs[1])), rows(&avg(&outs[1])));
    for r in 0..3 {
        assert_eq!(inter[r].len(), 32);
        for i in 0..16 {
            assert_eq!(inter[r][2 * i], c[r][i]);
            assert_eq!(inter[r][2 * i + 1], a[r][i]);
        }
    }
}

#[test]
fn impossible_layouts_are_rejected_with_the_reason() {
    let model = tiny_model(1);
    let x = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let err = FeatureSpec::ClsAvg {
        n: 2,
        interleaved: true,
    }
    .compute(&model, &x)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("interleaved") && err.contains("n = 1"),
        "{err}"
    );
    let err = FeatureSpec::ClsLastN { n: 4 }
        .compute(&model, &x)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs 4 blocks") && err.contains("depth 3"),
        "{err}"
    );
}

#[test]
fn store_dims_follow_the_spec_and_patch_size_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit.safetensors");
    save_tiny_vit(&ckpt, 1);
    let mut data = tiny_data(dir.path(), &[1, 1], &[1, 1]);
    let store = FeatureStore::new(dir.path().join("cache"));
    for (spec, dim) in [
        (FeatureSpec::ClsLastN { n: 3 }, 48),
        (
            FeatureSpec::ClsAvg {
                n: 1,
                interleaved: true,
            },
            32,
        ),
    ] {
        let f = store.get(&model(&ckpt), &data, Split::Val, &spec).unwrap();
        assert_eq!(f.x.dim(), (2, dim), "{spec}");
        assert_eq!(f.manifest["features"]["dim"], dim);
    }
    data.transform.crop = 28;
    let err = format!(
        "{:#}",
        store
            .get(&model(&ckpt), &data, Split::Val, &FeatureSpec::Cls)
            .unwrap_err()
    );
    assert!(
        err.contains("crop 28 is not a multiple of the model's patch size 8"),
        "{err}"
    );
}

#[test]
fn head_logits_are_the_head_applied_to_the_final_cls_token() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit_head.safetensors");
    save_tiny_vit_with_head(&ckpt, 8);
    let data = tiny_data(dir.path(), &[2, 2], &[1, 1]);
    let store = FeatureStore::new(dir.path().join("cache"));
    let f = store
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::HeadLogits)
        .unwrap();
    assert_eq!(f.x.dim(), (4, 5));

    // By hand: loader → backbone CLS → head.
    let loaded = backbone::load(&ckpt, &Default::default(), DType::F32, &Device::Cpu).unwrap();
    let (_, head) = load_head(&ckpt, None, DType::F32, &Device::Cpu).unwrap();
    let dataset: Arc<dyn data::loader::ImageDataset> =
        features::open_split(&data, Split::Train).unwrap();
    let loader = Loader::new(
        dataset,
        Transform::Eval {
            resize: 32,
            crop: 32,
        },
        LoaderConfig {
            batch_size: 64,
            ..LoaderConfig::default()
        },
    )
    .unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let [b, c, h, w] = batch.shape;
    let x = Tensor::from_vec(batch.images, (b, c, h, w), &Device::Cpu).unwrap();
    let want = head
        .forward_cls(&loaded.model.forward_cls(&x).unwrap())
        .unwrap();
    let want = rows(&want);
    assert_eq!(want.len(), 4);
    for (r, want) in want.iter().enumerate() {
        assert_eq!(&f.x.row(r).to_vec(), want);
    }

    // A backbone-only checkpoint has no head: the error says so and names the file.
    let plain = dir.path().join("plain.safetensors");
    save_tiny_vit(&plain, 8);
    let err = format!(
        "{:#}",
        store
            .get(
                &model(&plain),
                &data,
                Split::Train,
                &FeatureSpec::HeadLogits
            )
            .unwrap_err()
    );
    assert!(
        err.contains("plain.safetensors") && err.contains("no projection head"),
        "{err}"
    );
}
