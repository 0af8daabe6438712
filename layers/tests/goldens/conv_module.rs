//! `layers::ConvModule` vs mmcv's `ConvModule` (conv → BN → ReLU and conv(+bias) → ReLU), its key
//! layout, and a gradient-reaches-every-parameter check on a small stack.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use layers::conv::{Conv2d, Conv2dConfig};
use layers::testing::{det_tensor, init_varmap_deterministic, vars_without_grad};
use layers::{Buffers, ConvModule, ConvModuleConfig};

use crate::*;

fn golden_module(case: &str, vm: &VarMap, buffers: &Buffers) -> ConvModule {
    let (ci, co, k, pad) = (
        usize_param(case, "c_in"),
        usize_param(case, "c_out"),
        usize_param(case, "kernel"),
        usize_param(case, "padding"),
    );
    let norm = params(case)["norm"].as_bool().unwrap();
    let cfg = ConvModuleConfig {
        padding: pad,
        ..if norm {
            ConvModuleConfig::bn_relu(k)
        } else {
            ConvModuleConfig::relu(k)
        }
    };
    let vb = VarBuilder::from_varmap(vm, DType::F32, &device());
    let m = ConvModule::new(ci, co, cfg, vb, buffers).unwrap();
    for (name, var) in vm.data().lock().unwrap().iter() {
        var.set(&t(case, name)).unwrap();
    }
    m
}

#[test]
fn conv_module_matches_mmcv() {
    for case in cases("conv_module") {
        let norm = params(&case)["norm"].as_bool().unwrap();
        let mut ckpt: HashMap<String, Tensor> = HashMap::new();
        if norm {
            for k in ["bn.running_mean", "bn.running_var"] {
                ckpt.insert(k.into(), t(&case, k));
            }
            ckpt.insert(
                "bn.num_batches_tracked".into(),
                t(&case, "bn.num_batches_tracked")
                    .to_dtype(DType::I64)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            );
        }
        let buffers = Buffers::from_tensors(&ckpt);
        let vm = VarMap::new();
        let m = golden_module(&case, &vm, &buffers);
        let mut keys: Vec<_> = vm.data().lock().unwrap().keys().cloned().collect();
        keys.sort();
        let want_keys: Vec<&str> = if norm {
            vec!["bn.bias", "bn.weight", "conv.weight"]
        } else {
            vec!["conv.bias", "conv.weight"]
        };
        assert_eq!(keys, want_keys);
        let x = v(&case, "x");
        let y = m.forward_t(&x, true).unwrap();
        check(&case, "y", &y);
        let grads = weighted_sum(&case, &y).unwrap().backward().unwrap();
        check(&case, "grad.x", &grad(&grads, &x));
        for (name, var) in vm.data().lock().unwrap().iter() {
            check(&case, &format!("grad.{name}"), &grad(&grads, var));
        }
        if norm {
            let bn = m.bn().unwrap();
            check(&case, "new.bn.running_mean", &bn.running_mean().unwrap());
            check(&case, "new.bn.running_var", &bn.running_var().unwrap());
            assert_eq!(bn.num_batches_tracked().unwrap(), 1);
        }
    }
}

/// A PPM-like stack (ConvModules with BN, a bias-only ConvModule, a 1×1 classifier conv) trains:
/// every parameter gets a non-zero gradient, and the VarMap holds exactly mmcv's keys.
#[test]
fn every_parameter_of_a_conv_module_stack_gets_a_gradient() {
    let dev = device();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let buffers = Buffers::new();
    let m0 = ConvModule::new(
        4,
        8,
        ConvModuleConfig::bn_relu(3),
        vb.pp("convs").pp("0"),
        &buffers,
    )
    .unwrap();
    let m1 = ConvModule::new(
        8,
        8,
        ConvModuleConfig::bn_relu(1),
        vb.pp("convs").pp("1"),
        &buffers,
    )
    .unwrap();
    let m2 = ConvModule::new(
        8,
        6,
        ConvModuleConfig::relu(3),
        vb.pp("convs").pp("2"),
        &buffers,
    )
    .unwrap();
    let seg = Conv2d::new(6, 3, Conv2dConfig::default(), vb.pp("conv_seg")).unwrap();
    init_varmap_deterministic(&vm, 7, 0.5).unwrap();
    let x = det_tensor(&[2, 4, 6, 5], 11, 1.0, &dev).unwrap();
    let y = seg
        .forward(
            &m2.forward_t(
                &m1.forward_t(&m0.forward_t(&x, true).unwrap(), true)
                    .unwrap(),
                true,
            )
            .unwrap(),
        )
        .unwrap();
    let loss = (&y * det_tensor(&[2, 3, 6, 5], 12, 1.0, &dev).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(
        vars_without_grad(&vm, &grads).unwrap(),
        Vec::<String>::new()
    );
    let mut keys: Vec<_> = vm.data().lock().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "conv_seg.bias",
            "conv_seg.weight",
            "convs.0.bn.bias",
            "convs.0.bn.weight",
            "convs.0.conv.weight",
            "convs.1.bn.bias",
            "convs.1.bn.weight",
            "convs.1.conv.weight",
            "convs.2.conv.bias",
            "convs.2.conv.weight",
        ]
    );
    assert_eq!(buffers.len(), 6);
}

/// `ConvModule.init_weights`: kaiming normal (fan_out, ReLU gain) for the conv, 1/0 for the BN.
#[test]
fn conv_module_fresh_init_is_mmcv_kaiming() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    ConvModule::new(64, 32, ConvModuleConfig::bn_relu(3), vb, &Buffers::new()).unwrap();
    let data = vm.data().lock().unwrap();
    let w = data["conv.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let std = (w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64).sqrt();
    let want = (2.0f64 / (32.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "std {std} vs {want}");
    assert_eq!(data["bn.weight"].to_vec1::<f32>().unwrap(), vec![1.0; 32]);
    assert_eq!(data["bn.bias"].to_vec1::<f32>().unwrap(), vec![0.0; 32]);
}
