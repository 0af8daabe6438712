//! `layers::Conv2d` (both implementations) vs `nn.Conv2d`, the two implementations against each
//! other, and their speed.

use std::time::Instant;

use candle_core::Var;
use layers::conv::{conv2d, ConvImpl};
use layers::testing::{det_tensor, rel_err};

use crate::*;

#[test]
fn conv_matches_pytorch_with_both_implementations() {
    for case in cases("conv2d") {
        let p = |k: &str| usize_param(&case, k);
        let has_bias = params(&case)["bias"].as_bool().unwrap();
        for imp in [ConvImpl::Candle, ConvImpl::Im2col] {
            let (x, w) = (v(&case, "x"), v(&case, "weight"));
            let b = has_bias.then(|| v(&case, "bias"));
            let y = conv2d(
                &x,
                &w,
                b.as_ref().map(|b| b.as_tensor()),
                p("stride"),
                p("padding"),
                p("dilation"),
                p("groups"),
                imp,
            )
            .unwrap();
            println!("{imp:?}");
            check(&case, "y", &y);
            let grads = weighted_sum(&case, &y).unwrap().backward().unwrap();
            check(&case, "grad.x", &grad(&grads, &x));
            check(&case, "grad.weight", &grad(&grads, &w));
            if let Some(b) = &b {
                check(&case, "grad.bias", &grad(&grads, b));
            }
        }
    }
}

/// Forward and backward of the two implementations agree on a wider layer.
#[test]
fn im2col_equals_candle_conv() {
    let dev = device();
    for (stride, padding, dilation, groups) in
        [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 4)]
    {
        let x = Var::from_tensor(&det_tensor(&[2, 16, 13, 11], 1, 1.0, &dev).unwrap()).unwrap();
        let w =
            Var::from_tensor(&det_tensor(&[24, 16 / groups, 3, 3], 2, 0.2, &dev).unwrap()).unwrap();
        let g = det_tensor(&[2, 24, 13, 11], 3, 1.0, &dev).unwrap();
        let mut outs = Vec::new();
        for imp in [ConvImpl::Candle, ConvImpl::Im2col] {
            let y = conv2d(&x, &w, None, stride, padding, dilation, groups, imp).unwrap();
            let gy = g
                .narrow(2, 0, y.dim(2).unwrap())
                .unwrap()
                .narrow(3, 0, y.dim(3).unwrap())
                .unwrap();
            let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            outs.push((y, grad(&grads, &x), grad(&grads, &w)));
        }
        let (a, b) = (&outs[0], &outs[1]);
        let e = [
            rel_err(&b.0, &a.0).unwrap(),
            rel_err(&b.1, &a.1).unwrap(),
            rel_err(&b.2, &a.2).unwrap(),
        ];
        println!("im2col vs candle s{stride} p{padding} d{dilation} g{groups}: y {:.1e} dx {:.1e} dw {:.1e}", e[0], e[1], e[2]);
        assert!(e.iter().all(|&e| e <= TOL), "{e:?}");
    }
}

/// Forward + backward of a 3×3, 64→64 conv on a 32×32 map, batch 4, per implementation (no
/// bias, loss Σ y·g, gradients w.r.t. input and weight; the median of 10 runs):
/// `cargo test --release -p layers --test goldens conv_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn conv_timing() {
    let dev = device();
    let x = Var::from_tensor(&det_tensor(&[4, 64, 32, 32], 1, 1.0, &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&det_tensor(&[64, 64, 3, 3], 2, 0.05, &dev).unwrap()).unwrap();
    let g = det_tensor(&[4, 64, 32, 32], 3, 1.0, &dev).unwrap();
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2] * 1e3
    };
    for imp in [
        ConvImpl::Candle,
        ConvImpl::Im2col,
        ConvImpl::Candle,
        ConvImpl::Im2col,
    ] {
        let (mut fwd, mut both) = (Vec::new(), Vec::new());
        for _ in 0..11 {
            let t0 = Instant::now();
            let y = conv2d(&x, &w, None, 1, 1, 1, 1, imp).unwrap();
            let loss = (&y * &g).unwrap().sum_all().unwrap();
            let _ = loss.to_scalar::<f32>().unwrap();
            fwd.push(t0.elapsed().as_secs_f64());
            let grads = loss.backward().unwrap();
            let _ = grad(&grads, &x)
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let _ = grad(&grads, &w)
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            both.push(t0.elapsed().as_secs_f64());
        }
        println!(
            "conv 3x3 64->64 32x32 b4 {imp:?}: forward {:.1} ms, forward+backward {:.1} ms",
            median(fwd),
            median(both)
        );
    }
}
