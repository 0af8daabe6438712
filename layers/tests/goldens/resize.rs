//! `layers::resize` vs `F.interpolate` (bilinear both `align_corners`, legacy nearest).

use layers::resize::{bilinear, nearest};

use crate::*;

#[test]
fn bilinear_matches_pytorch_forward_and_backward() {
    for case in cases("bilinear") {
        let size = pair_param(&case, "size");
        let ac = params(&case)["align_corners"].as_bool().unwrap();
        let x = v(&case, "x");
        let y = bilinear(&x, size, ac).unwrap();
        check(&case, "y", &y);
        let grads = weighted_sum(&case, &y).unwrap().backward().unwrap();
        check(&case, "grad.x", &grad(&grads, &x));
    }
}

/// candle's own `upsample_bilinear2d` (no backward) is fine for inference: it agrees.
#[test]
fn candle_upsample_bilinear_agrees_for_inference() {
    for case in cases("bilinear") {
        let (oh, ow) = pair_param(&case, "size");
        let ac = params(&case)["align_corners"].as_bool().unwrap();
        let y = t(&case, "x").upsample_bilinear2d(oh, ow, ac).unwrap();
        check(&case, "y", &y);
    }
}

#[test]
fn nearest_matches_pytorch_forward_and_backward() {
    for case in cases("nearest") {
        let size = pair_param(&case, "size");
        let x = v(&case, "x");
        let y = nearest(&x, size).unwrap();
        check(&case, "y", &y);
        let grads = weighted_sum(&case, &y).unwrap().backward().unwrap();
        check(&case, "grad.x", &grad(&grads, &x));
    }
}
