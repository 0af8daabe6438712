//! Test helpers shared by the dense crates (segmentation, detection) and this crate's goldens.
//! A plain public module rather than a `testing` feature: integration tests of this crate cannot
//! enable a feature of their own package, and the helpers cost nothing to compile.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;

/// max|got − want| / max|want| over all elements (the project's golden metric). Both tensors are
/// compared in f64 on the host; shapes must match.
pub fn rel_err(got: &Tensor, want: &Tensor) -> Result<f64> {
    if got.dims() != want.dims() {
        candle_core::bail!("rel_err: shape {:?} vs {:?}", got.dims(), want.dims())
    }
    let g = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let w = want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let diff = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let scale = w.iter().map(|b| b.abs()).fold(0.0, f64::max);
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// Deterministic values in [−1, 1) from a 64-bit LCG (Knuth's MMIX constants) seeded by `seed`:
/// reproducible across platforms without an RNG crate.
pub fn det_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A tensor of [`det_values`] scaled by `scale`.
pub fn det_tensor(shape: &[usize], seed: u64, scale: f32, device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = det_values(n, seed).into_iter().map(|x| x * scale).collect();
    Tensor::from_vec(v, shape, device)
}

/// Overwrites every variable of `varmap` (in name order) with [`det_values`] × `scale`, the
/// i-th variable seeded with `seed + i`: a tiny deterministic initialiser for tests.
pub fn init_varmap_deterministic(varmap: &VarMap, seed: u64, scale: f32) -> Result<()> {
    let data = varmap.data().lock().expect("varmap poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let t = det_tensor(var.dims(), seed + i as u64, scale, var.device())?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Names of the variables of `varmap` whose gradient is missing or all zeros.
pub fn vars_without_grad(
    varmap: &VarMap,
    grads: &candle_core::backprop::GradStore,
) -> Result<Vec<String>> {
    let data = varmap.data().lock().expect("varmap poisoned");
    let mut missing = Vec::new();
    for (name, var) in data.iter() {
        let ok = match grads.get(var.as_tensor()) {
            Some(g) => {
                g.abs()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    > 0.0
            }
            None => false,
        };
        if !ok {
            missing.push(name.clone());
        }
    }
    missing.sort();
    Ok(missing)
}

/// A `Var` holding `t` (for gradient checks on inputs).
pub fn var(t: &Tensor) -> Result<Var> {
    Var::from_tensor(t)
}
