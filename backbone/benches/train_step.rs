//! Forward + backward time of a ViT training step through the fused CPU kernels (f32 and bf16
//! compute, AMX where available) and through the composed reference ops.
//! `cargo bench -p backbone --bench train_step [-- small|vit_s] [fused|bf16|composed]`.
//! Runs with `backbone::ops::init_cpu_runtime()` (candle's element-wise pool on the calling
//! thread, malloc tuned), as `ibot` does.

use std::time::Instant;

use backbone::ops::with_composed_ops;
use backbone::{build_trainable, init::init_weights, TrainCtx, VitConfig};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;

struct Case {
    name: &'static str,
    cfg: VitConfig,
    global: (usize, usize),
    local: (usize, usize),
}

fn cases() -> Vec<Case> {
    let small = VitConfig {
        embed_dim: 128,
        depth: 4,
        num_heads: 4,
        mlp_hidden: 512,
        patch_size: 7,
        img_size: 28,
        in_chans: 3,
        drop_path_rate: 0.1,
        masked_im_modeling: true,
    };
    let vit_s = VitConfig {
        embed_dim: 384,
        depth: 12,
        num_heads: 6,
        mlp_hidden: 1536,
        patch_size: 16,
        img_size: 224,
        in_chans: 3,
        drop_path_rate: 0.1,
        masked_im_modeling: true,
    };
    vec![
        // The Fashion-MNIST recipe: batch 128, 2 global 28 px + 4 local 14 px crops.
        Case {
            name: "small",
            cfg: small,
            global: (256, 28),
            local: (512, 14),
        },
        // ViT-S/16 at batch 2: 2×224 + 10×96 crops.
        Case {
            name: "vit_s",
            cfg: vit_s,
            global: (4, 224),
            local: (20, 96),
        },
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> candle_core::Result<()> {
    backbone::ops::init_cpu_runtime();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let dev = Device::Cpu;
    for case in cases() {
        if filter.iter().any(|f| f == "small" || f == "vit_s")
            && !filter.iter().any(|f| f == case.name)
        {
            continue;
        }
        let cfg = &case.cfg;
        let (vars, model) = build_trainable(cfg, init_weights(cfg, 0).unwrap(), DType::F32, &dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let model16 = backbone::VisionTransformer::new(
            cfg,
            candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &dev),
        )?
        .with_compute_dtype(DType::BF16);
        let (bg, sg) = case.global;
        let (bl, sl) = case.local;
        let global = Tensor::randn(0f32, 1.0, (bg, 3, sg, sg), &dev)?;
        let local = Tensor::randn(0f32, 1.0, (bl, 3, sl, sl), &dev)?;
        let n = (sg / cfg.patch_size).pow(2);
        let mask = Tensor::from_vec(
            (0..bg * n)
                .map(|i| u8::from(i % 4 == 0))
                .collect::<Vec<_>>(),
            (bg, n),
            &dev,
        )?;
        let step = |model: &backbone::VisionTransformer| -> candle_core::Result<(f64, f64)> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            let t0 = Instant::now();
            let a = model.forward_tokens(
                &global,
                Some(&mask),
                Some(&mut TrainCtx { rng: &mut rng }),
            )?;
            let b = model.forward_tokens(&local, None, Some(&mut TrainCtx { rng: &mut rng }))?;
            let loss = (a.sqr()?.mean_all()? + b.sqr()?.mean_all()?)?;
            let t1 = Instant::now();
            let grads = loss.backward()?;
            drop(grads);
            Ok(((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
        };
        let reps = if case.name == "small" { 7 } else { 3 };
        for (label, composed) in [("fused", false), ("bf16", false), ("composed", true)] {
            let wanted = |l: &str| filter.iter().any(|f| f == l);
            if (wanted("fused") || wanted("bf16") || wanted("composed")) && !wanted(label) {
                continue;
            }
            let model = if label == "bf16" { &model16 } else { &model };
            let run = || -> candle_core::Result<(f64, f64)> {
                let mut f = Vec::new();
                let mut b = Vec::new();
                step(model)?; // warm-up: allocator, thread pools
                for _ in 0..reps {
                    let (tf, tb) = step(model)?;
                    f.push(tf);
                    b.push(tb);
                }
                Ok((median(f), median(b)))
            };
            let (tf, tb) = if composed {
                with_composed_ops(run)?
            } else {
                run()?
            };
            println!(
                "{:6} {:9} forward {:7.3} s  backward {:7.3} s  (median of {reps})",
                case.name, label, tf, tb
            );
        }
    }
    Ok(())
}
