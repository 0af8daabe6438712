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
