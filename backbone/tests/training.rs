//! The backbone is trainable: every weight receives a gradient through the composed LayerNorm and
//! softmax, the custom GELU, the mask token and the interpolated position embedding; drop-path acts
//! only when a training context is given.

use backbone::{build_trainable, init::init_weights, TrainCtx, VitConfig};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn tiny() -> VitConfig {
    VitConfig {
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_hidden: 64,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.5,
        masked_im_modeling: true,
    }
}

#[test]
fn every_weight_gets_a_gradient() {
    let cfg = tiny();
    let dev = Device::Cpu;
    let (varmap, model) =
        build_trainable(&cfg, init_weights(&cfg, 1).unwrap(), DType::F32, &dev).unwrap();
    let global = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
    let local = Tensor::randn(0f32, 1.0, (2, 3, 16, 24), &dev).unwrap();
    let mask = Tensor::from_vec(
        (0..32u8)
            .map(|i| i % 3 == 0)
            .map(u8::from)
            .collect::<Vec<_>>(),
        (2, 16),
        &dev,
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let a = model
        .forward_tokens(&global, Some(&mask), Some(&mut TrainCtx { rng: &mut rng }))
        .unwrap();
    let b = model.forward_tokens(&local, None, None).unwrap();
    let loss = (a.sqr().unwrap().sum_all().unwrap() + b.sqr().unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut without = Vec::new();
    for (name, var) in data.iter() {
        let g = grads.get(var.as_tensor());
        let norm = g
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if !(norm > 0.0) {
            without.push(name.clone());
        }
    }
    assert_eq!(data.len(), cfg.expected_shapes().len());
    assert!(without.is_empty(), "no gradient for {without:?}");
}

#[test]
fn drop_path_only_in_training_and_rescales_survivors() {
    let cfg = tiny();
    let dev = Device::Cpu;
    let (_, model) =
        build_trainable(&cfg, init_weights(&cfg, 1).unwrap(), DType::F32, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (8, 3, 32, 32), &dev).unwrap();
    let eval1 = model.forward_tokens(&x, None, None).unwrap();
    let eval2 = model.forward_tokens(&x, None, None).unwrap();
    let same = max_abs_diff(&eval1, &eval2);
    assert_eq!(same, 0.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let train = model
        .forward_tokens(&x, None, Some(&mut TrainCtx { rng: &mut rng }))
        .unwrap();
    let diff = max_abs_diff(&eval1, &train);
    assert!(diff > 1e-3, "drop-path at rate 0.5 changed nothing");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let again = model
        .forward_tokens(&x, None, Some(&mut TrainCtx { rng: &mut rng }))
        .unwrap();
    let d = max_abs_diff(&train, &again);
    assert_eq!(d, 0.0, "same seed, same drop decisions");
}
