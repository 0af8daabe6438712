//! `layers::ConvTranspose2x2` vs `nn.ConvTranspose2d(k=2, s=2)`.

use layers::ConvTranspose2x2;

use crate::*;

#[test]
fn deconv_matches_pytorch() {
    for case in cases("conv_transpose2x2") {
        let has_bias = params(&case)["bias"].as_bool().unwrap();
        let (x, w) = (v(&case, "x"), v(&case, "weight"));
        let b = has_bias.then(|| v(&case, "bias"));
        let layer = ConvTranspose2x2::from_tensors(
            w.as_tensor().clone(),
            b.as_ref().map(|b| b.as_tensor().clone()),
        );
        let y = layer.forward(&x).unwrap();
        check(&case, "y", &y);
        let grads = weighted_sum(&case, &y).unwrap().backward().unwrap();
        check(&case, "grad.x", &grad(&grads, &x));
        check(&case, "grad.weight", &grad(&grads, &w));
        if let Some(b) = &b {
            check(&case, "grad.bias", &grad(&grads, b));
        }
    }
}

/// Keys and shapes as PyTorch's state dict (`weight` [c_in, c_out, 2, 2], `bias` [c_out]).
#[test]
fn deconv_keys() {
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &device());
    ConvTranspose2x2::new(6, 4, true, vb.pp("fpn1").pp("0")).unwrap();
    let data = vm.data().lock().unwrap();
    let mut keys: Vec<_> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("fpn1.0.bias".to_string(), vec![4]),
            ("fpn1.0.weight".to_string(), vec![6, 4, 2, 2])
        ]
    );
}
