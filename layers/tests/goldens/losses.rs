//! `layers::losses` vs PyTorch / transcriptions of mmseg 0.12 and mmdet 2.11 losses.

use candle_core::Tensor;
use layers::losses::{self, IgnoreAverage};

use crate::*;

/// Loss `y = f(input)`; checks `y` and `grad.<input>` with the golden upstream gradient.
fn check_loss(case: &str, input: &str, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) {
    let x = v(case, input);
    let y = f(&x).unwrap();
    check(case, "y", &y.reshape(t(case, "y").shape()).unwrap());
    let grads = weighted_sum(case, &y).unwrap().backward().unwrap();
    check(case, &format!("grad.{input}"), &grad(&grads, &x));
}

#[test]
fn seg_cross_entropy_mmseg012_counts_ignored_pixels_in_the_mean() {
    let case = "seg_ce_mmseg012";
    let labels = t(case, "labels");
    check_loss(case, "logits", |x| {
        losses::seg_cross_entropy(x, &labels, Some(255), IgnoreAverage::AllPixels)
    });
}

#[test]
fn seg_cross_entropy_avg_non_ignore() {
    let case = "seg_ce_avg_non_ignore";
    let labels = t(case, "labels");
    check_loss(case, "logits", |x| {
        losses::seg_cross_entropy(x, &labels, Some(255), IgnoreAverage::NonIgnored)
    });
}

#[test]
fn pixel_cross_entropy_is_zero_on_ignored_pixels() {
    let case = "pixel_ce";
    let labels = t(case, "labels");
    check_loss(case, "logits", |x| {
        losses::pixel_cross_entropy(x, &labels, Some(255))
    });
}

#[test]
fn cross_entropy_with_class_targets() {
    let case = "ce";
    let targets = t(case, "targets");
    check_loss(case, "logits", |x| losses::cross_entropy(x, &targets));
}

#[test]
fn soft_target_cross_entropy() {
    let case = "soft_ce";
    let targets = t(case, "targets");
    check_loss(case, "logits", |x| {
        losses::soft_target_cross_entropy(x, &targets)
    });
}

#[test]
fn bce_with_logits_is_stable() {
    for case in ["bce_mean", "bce_none"] {
        let tt = t(case, "t");
        check_loss(case, "x", |x| {
            if case == "bce_mean" {
                losses::bce_with_logits_mean(x, &tt)
            } else {
                losses::bce_with_logits(x, &tt)
            }
        });
    }
}

#[test]
fn smooth_l1_and_l1() {
    for case in cases("smooth_l1") {
        let beta = params(&case)["beta"].as_f64().unwrap();
        let target = t(&case, "target");
        check_loss(&case, "pred", |p| losses::smooth_l1(p, &target, beta));
    }
    let target = t("l1", "target");
    check_loss("l1", "pred", |p| losses::l1(p, &target));
}

#[test]
fn giou_loss_matches_mmdet() {
    let case = "giou_loss";
    let target = t(case, "target");
    let eps = params(case)["eps"].as_f64().unwrap();
    check_loss(case, "pred", |p| losses::giou_loss(p, &target, eps));
}

#[test]
fn softmax_and_log_softmax_have_a_backward() {
    check_loss("softmax", "x", |x| losses::softmax(x, 1));
    check_loss("log_softmax", "x", |x| losses::log_softmax(x, 1));
}

#[test]
fn weight_reduce_loss_follows_mmdet() {
    use layers::losses::{weight_reduce_loss, Reduction};
    let dev = device();
    let l = Tensor::new(&[1f32, 2., 3., 4.], &dev).unwrap();
    let w = Tensor::new(&[1f32, 0., 1., 0.5], &dev).unwrap();
    let s = |t: Tensor| t.to_scalar::<f32>().unwrap();
    assert_eq!(
        s(weight_reduce_loss(&l, None, Reduction::Mean, None).unwrap()),
        2.5
    );
    assert_eq!(
        s(weight_reduce_loss(&l, Some(&w), Reduction::Sum, None).unwrap()),
        6.0
    );
    assert_eq!(
        s(weight_reduce_loss(&l, Some(&w), Reduction::Mean, Some(3.0)).unwrap()),
        2.0
    );
    assert!(weight_reduce_loss(&l, None, Reduction::Sum, Some(2.0)).is_err());
}
