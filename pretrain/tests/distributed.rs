//! Data-parallel semantics, proven on CPU thread ranks: 2 ranks with batch B/2 each reproduce one
//! rank with batch B (same losses, centres and teacher), because the DistributedSampler shards of
//! step i together are the one-rank batch i, gradients are averaged before clipping and AdamW, and
//! the centres use all-reduced sums. Resume works the same with ranks, and only rank 0 writes.

mod common;

use candle_core::Tensor;
use common::*;
use pretrain::parallel::run_cpu_threads;
use pretrain::trainer::Trainer;

const STEPS: usize = 6; // crosses the first epoch end (4 steps): the last layer unfreezes

#[test]
fn two_thread_ranks_equal_one_rank_with_twice_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    let ranks = dir.path().join("ranks");
    let one = Trainer::new(recipe(8, "f32"), options(&single, STEPS, false))
        .unwrap()
        .run()
        .unwrap();
    let two = run_cpu_threads(&recipe(4, "f32"), &options(&ranks, STEPS, false), 2).unwrap();
    assert_eq!((one.world_size, two.world_size), (1, 2));
    assert_eq!((one.steps, two.steps), (STEPS, STEPS));

    let (a, b) = (step_lines(&single), step_lines(&ranks));
    assert_eq!(a.len(), STEPS);
    assert_eq!(b.len(), STEPS, "only rank 0 logs");
    let worst_loss = field(&a, "loss")
        .iter()
        .zip(field(&b, "loss"))
        .map(|(x, y)| rel_diff(*x, y))
        .fold(0.0, f64::max);
    eprintln!("loss: largest relative difference {worst_loss:.3e}");
    for key in [
        "loss",
        "cls",
        "patch",
        "lr",
        "entropy",
        "marginal_entropy",
        "agreement",
        "masked_fraction",
    ] {
        for (step, (x, y)) in field(&a, key).iter().zip(field(&b, key)).enumerate() {
            assert!(
                rel_diff(*x, y) < 1e-5 || (x - y).abs() < 1e-7,
                "step {step} {key}: one rank {x}, two ranks {y}"
            );
        }
    }
    // Both epochs' NMI monitors saw the same (teacher prediction, label) pairs.
    let nmi = |dir: &std::path::Path| -> Vec<f64> {
        log(dir)
            .iter()
            .filter(|v| v["event"] == "epoch_end")
            .map(|v| v["nmi"].as_f64().unwrap())
            .collect()
    };
    let (na, nb) = (nmi(&single), nmi(&ranks));
    assert_eq!(na.len(), 1);
    assert!((na[0] - nb[0]).abs() < 1e-9, "{na:?} vs {nb:?}");

    let (ta, tb) = (
        tensors(&single.join("teacher.safetensors")),
        tensors(&ranks.join("teacher.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    let init = tensors(&single.join("init.safetensors"));
    // Per tensor: ‖two ranks − one rank‖ against how far training moved it (‖one rank − init‖).
    let norm = |x: &Tensor| -> f64 {
        x.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt() as f64
    };
    let mut worst = (String::new(), 0.0f64);
    for (name, t) in &ta {
        let (mut x, mut y, mut x0) = (t.clone(), tb[name].clone(), init[name].clone());
        if name.ends_with("attn.qkv.bias") {
            // The key bias has an exactly zero true gradient (softmax ignores a shift common to
            // all keys): its gradient is rounding noise, which Adam normalises to ±lr steps in
            // either run. Compare the query and value biases only.
            let d = t.dim(0).unwrap() / 3;
            let qv = |z: &Tensor| {
                Tensor::cat(
                    &[z.narrow(0, 0, d).unwrap(), z.narrow(0, 2 * d, d).unwrap()],
                    0,
                )
                .unwrap()
            };
            (x, y, x0) = (qv(&x), qv(&y), qv(&x0));
        }
        let moved = norm(&(&x - &x0).unwrap());
        assert!(moved > 1e-4, "{name} did not train ({moved})");
        let ratio = norm(&(&x - &y).unwrap()) / moved;
        if ratio > worst.1 {
            worst = (name.clone(), ratio);
        }
    }
    eprintln!(
        "teacher: largest relative difference {:.3e} ({})",
        worst.1, worst.0
    );
    assert!(
        worst.1 < 1e-4,
        "teacher {} differs by {:.3e} of its update",
        worst.0,
        worst.1
    );

    let (ca, cb) = (
        tensors(&single.join("checkpoint.safetensors")),
        tensors(&ranks.join("checkpoint.safetensors")),
    );
    for key in ["ibot_loss.center", "ibot_loss.center2"] {
        let d = max_abs_diff(&ca[key], &cb[key]);
        assert!(d < 1e-6, "{key} differs by {d}");
    }
}

#[test]
fn ranks_resume_exactly_and_refuse_another_world_size() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let split = dir.path().join("split");
    let cfg = recipe(4, "f32");
    run_cpu_threads(&cfg, &options(&full, 5, false), 2).unwrap();
    run_cpu_threads(&cfg, &options(&split, 2, false), 2).unwrap();
    // A checkpoint of 2 ranks cannot continue on 1 (shards and lr scaling would change).
    let err = Trainer::new(cfg.clone(), options(&split, 5, true))
        .err()
        .expect("resuming 2 ranks on 1 must fail")
        .to_string();
    assert!(
        err.contains("2 rank(s)") && err.contains("this one has 1"),
        "{err}"
    );
    let summary = run_cpu_threads(&cfg, &options(&split, 5, true), 2).unwrap();
    assert_eq!(summary.steps, 5);
    assert_eq!(
        field(&step_lines(&full), "loss"),
        field(&step_lines(&split), "loss")
    );
    let (a, b) = (
        tensors(&full.join("checkpoint.safetensors")),
        tensors(&split.join("checkpoint.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert_eq!(max_abs_diff(t, &b[k]), 0.0, "{k} differs after resume");
    }
}

#[test]
fn a_failing_rank_stops_the_group_with_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // 32 images over 3 ranks: 11 per rank, and a batch of 12 does not fit.
    let err = run_cpu_threads(&recipe(12, "f32"), &options(&out, 2, false), 3).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("11 per rank over 3 ranks"), "{msg}");
    assert!(
        !msg.contains("left the group"),
        "the cause, not the echo: {msg}"
    );
}
