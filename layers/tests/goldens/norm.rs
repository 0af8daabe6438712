//! `layers::BatchNorm2d` vs `nn.BatchNorm2d` in train mode (output, gradients, updated running
//! statistics) and eval mode; buffers kept out of the `VarMap`.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use layers::norm::{BatchNorm2d, Buffers};

use crate::*;

/// A BN under prefix `bn` with the golden's parameters (as `Var`s in a `VarMap`) and running
/// statistics (in a `Buffers` store seeded like a checkpoint load).
fn bn_from_golden(case: &str) -> (BatchNorm2d, VarMap, Buffers) {
    let c = usize_param(case, "num_features");
    let mut ckpt: HashMap<String, Tensor> = HashMap::new();
    for k in ["running_mean", "running_var"] {
        ckpt.insert(format!("bn.{k}"), t(case, k));
    }
    ckpt.insert(
        "bn.num_batches_tracked".into(),
        t(case, "num_batches_tracked")
            .to_dtype(DType::I64)
            .unwrap()
            .squeeze(0)
            .unwrap(),
    );
    let buffers = Buffers::from_tensors(&ckpt);
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &device());
    let bn = BatchNorm2d::new(c, vb.pp("bn"), &buffers).unwrap();
    vm.data().lock().unwrap()["bn.weight"]
        .set(&t(case, "weight"))
        .unwrap();
    vm.data().lock().unwrap()["bn.bias"]
        .set(&t(case, "bias"))
        .unwrap();
    (bn, vm, buffers)
}

#[test]
fn bn_train_matches_pytorch() {
    let case = "bn_train";
    let (bn, vm, buffers) = bn_from_golden(case);
    let x = v(case, "x");
    let y = bn.forward_t(&x, true).unwrap();
    check(case, "y", &y);
    let grads = weighted_sum(case, &y).unwrap().backward().unwrap();
    check(case, "grad.x", &grad(&grads, &x));
    let data = vm.data().lock().unwrap();
    check(case, "grad.weight", &grad(&grads, &data["bn.weight"]));
    check(case, "grad.bias", &grad(&grads, &data["bn.bias"]));
    check(case, "new.running_mean", &bn.running_mean().unwrap());
    check(case, "new.running_var", &bn.running_var().unwrap());
    let want = t(case, "new.num_batches_tracked")
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()[0];
    assert_eq!(bn.num_batches_tracked().unwrap(), want);
    assert_eq!(want, 8);
    // The running statistics are buffers: the optimiser's VarMap holds only weight and bias.
    let mut keys: Vec<_> = data.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, vec!["bn.bias", "bn.weight"]);
    let mut bkeys: Vec<_> = buffers.tensors().into_keys().collect();
    bkeys.sort();
    assert_eq!(
        bkeys,
        vec![
            "bn.num_batches_tracked",
            "bn.running_mean",
            "bn.running_var"
        ]
    );
}

#[test]
fn bn_eval_matches_pytorch() {
    let case = "bn_eval";
    let (bn, vm, _) = bn_from_golden(case);
    let x = v(case, "x");
    let y = bn.forward_t(&x, false).unwrap();
    check(case, "y", &y);
    let grads = weighted_sum(case, &y).unwrap().backward().unwrap();
    check(case, "grad.x", &grad(&grads, &x));
    let data = vm.data().lock().unwrap();
    check(case, "grad.weight", &grad(&grads, &data["bn.weight"]));
    check(case, "grad.bias", &grad(&grads, &data["bn.bias"]));
    check(case, "new.running_mean", &bn.running_mean().unwrap());
    assert_eq!(bn.num_batches_tracked().unwrap(), 7);
}

/// Loading from a checkpoint-backed `VarBuilder` fills the buffer store from the file.
#[test]
fn bn_loads_running_stats_from_a_checkpoint() {
    let case = "bn_eval";
    let mut ckpt: HashMap<String, Tensor> = HashMap::new();
    for k in ["weight", "bias", "running_mean", "running_var"] {
        ckpt.insert(format!("m.bn.{k}"), t(case, k));
    }
    ckpt.insert(
        "m.bn.num_batches_tracked".into(),
        t(case, "num_batches_tracked")
            .to_dtype(DType::I64)
            .unwrap()
            .squeeze(0)
            .unwrap(),
    );
    let vb = VarBuilder::from_tensors(ckpt, DType::F32, &device());
    let buffers = Buffers::new();
    let bn = BatchNorm2d::new(5, vb.pp("m").pp("bn"), &buffers).unwrap();
    check(case, "y", &bn.forward_t(&t(case, "x"), false).unwrap());
    assert_eq!(bn.num_batches_tracked().unwrap(), 7);
    assert_eq!(buffers.len(), 3);
    assert!(buffers.contains("m.bn.running_var"));
}

/// Fresh statistics are PyTorch's: mean 0, var 1, count 0.
#[test]
fn bn_fresh_buffers() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &device());
    let buffers = Buffers::new();
    let bn = BatchNorm2d::new(3, vb, &buffers).unwrap();
    assert_eq!(
        bn.running_mean().unwrap().to_vec1::<f32>().unwrap(),
        vec![0.0; 3]
    );
    assert_eq!(
        bn.running_var().unwrap().to_vec1::<f32>().unwrap(),
        vec![1.0; 3]
    );
    assert_eq!(bn.num_batches_tracked().unwrap(), 0);
    assert!(buffers.contains("running_mean"));
}
