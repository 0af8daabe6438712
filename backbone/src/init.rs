//! Seeded initialisation as the official code does it (ibot-reference §1.6): truncated-normal
//! std 0.02 for Linear weights, `pos_embed` and `cls_token` (the ±2 bounds are absolute, so the
//! truncation never bites); zero biases; unit/zero LayerNorms; PyTorch's default Conv2d init for
//! the patch embedding; zero `masked_embed`.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::config::VitConfig;

pub fn init_weights(cfg: &VitConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("valid std");
    let mut out = HashMap::new();
    for (name, shape) in cfg.expected_shapes() {
        let numel: usize = shape.iter().product();
        let values: Vec<f32> = if name.starts_with("patch_embed") {
            // kaiming_uniform(a=√5) and the matching bias init both reduce to U(±1/√fan_in).
            let fan_in = (cfg.in_chans * cfg.patch_size * cfg.patch_size) as f32;
            let bound = 1.0 / fan_in.sqrt();
            let u = Uniform::new(-bound, bound);
            (0..numel).map(|_| u.sample(&mut rng)).collect()
        } else if name == "masked_embed" || name.ends_with(".bias") {
            vec![0.0; numel]
        } else if name.contains("norm") {
            vec![1.0; numel]
        } else {
            (0..numel)
                .map(|_| normal.sample(&mut rng).clamp(-2.0, 2.0))
                .collect()
        };
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(out)
}
