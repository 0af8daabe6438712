//! Named trainable variables: building them, listing them in a fixed order, and checking that a
//! backward pass reached every one (candle-nn's fused LayerNorm/softmax silently drop gradients,
//! so every training crate asserts coverage in its tests).

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

/// Inserts `weights` as f32 `Var`s on `device`.
pub fn insert_vars(map: &VarMap, weights: Vec<(String, Tensor)>, device: &Device) -> Result<()> {
    let mut data = map.data().lock().expect("VarMap lock");
    for (name, t) in weights {
        let var = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?;
        data.insert(name, var);
    }
    Ok(())
}

/// The map's variables sorted by name (the order optimizers and checkpoints use).
pub fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let data = map.data().lock().expect("VarMap lock");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Names of the variables that got no gradient or an all-zero one.
pub fn without_gradient(grads: &GradStore, vars: &[(String, Var)]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for (name, v) in vars {
        let ok = match grads.get(v.as_tensor()) {
            None => false,
            Some(g) => {
                g.to_dtype(DType::F32)?
                    .abs()?
                    .sum_all()?
                    .to_scalar::<f32>()?
                    > 0.0
            }
        };
        if !ok {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

/// A `VarBuilder` backend over a `VarMap` that creates missing variables deterministically: each
/// is drawn from its `Init` hint with an RNG seeded by (seed, name), so a model's fresh layers do
/// not depend on construction order or on candle's unseeded CPU generator, and a run with the same
/// seed starts from the same weights. Variables already in the map (loaded weights) are returned
/// as they are (shape-checked).
pub struct SeededInit {
    map: VarMap,
    seed: u64,
    /// Frozen weights, served as plain tensors (no `Var`, so no gradient and no graph).
    constants: std::collections::HashMap<String, Tensor>,
}

impl SeededInit {
    pub fn new(map: VarMap, seed: u64) -> Self {
        SeededInit {
            map,
            seed,
            constants: Default::default(),
        }
    }

    /// A `VarBuilder` over `map` creating missing variables from `seed`.
    pub fn var_builder(map: &VarMap, seed: u64, device: &Device) -> candle_nn::VarBuilder<'static> {
        Self::var_builder_with_constants(map, seed, Default::default(), device)
    }

    /// As [`SeededInit::var_builder`], with `constants` served as frozen tensors.
    pub fn var_builder_with_constants(
        map: &VarMap,
        seed: u64,
        constants: std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_backend(
            Box::new(SeededInit {
                map: map.clone(),
                seed,
                constants,
            }),
            DType::F32,
            device.clone(),
        )
    }

    fn sample(&self, shape: &candle_core::Shape, name: &str, init: candle_nn::Init) -> Vec<f32> {
        use candle_nn::init::{Init, NormalOrUniform};
        let n = shape.elem_count();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut state = self.seed ^ h;
        let mut next = || {
            // splitmix64 → uniform in [0, 1)
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut normal = |mean: f64, std: f64| -> f64 {
            // Box–Muller
            let u1 = next().max(f64::MIN_POSITIVE);
            let u2 = next();
            mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| normal(mean, stdev) as f32).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| (lo + (up - lo) * next()) as f32).collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n)
                            .map(|_| (-bound + 2.0 * bound * next()) as f32)
                            .collect()
                    }
                    NormalOrUniform::Normal => (0..n).map(|_| normal(0.0, std) as f32).collect(),
                }
            }
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(t) = self.constants.get(name) {
            if t.shape() != &s {
                candle_core::bail!(
                    "{name}: the weights have shape {:?}, the model needs {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            return t.to_dtype(dtype)?.to_device(dev);
        }
        let mut data = self.map.data().lock().expect("VarMap lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "{name}: the weights have shape {:?}, the model needs {:?}",
                    v.dims(),
                    s.dims()
                );
            }
            return v.as_tensor().to_dtype(dtype);
        }
        let values = self.sample(&s, name, h);
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some(t) = self.constants.get(name) {
            return t.to_dtype(dtype)?.to_device(dev);
        }
        let data = self.map.data().lock().expect("VarMap lock");
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("cannot find tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.constants.contains_key(name)
            || self
                .map
                .data()
                .lock()
                .expect("VarMap lock")
                .contains_key(name)
    }
}
