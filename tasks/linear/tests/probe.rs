//! The whole cached-feature protocol on separable synthetic data: hold-out selection, val report,
//! determinism and input errors.

use linear::{official_grid, probe, LinearError, ProbeConfig, Sweep};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut centers = ChaCha8Rng::seed_from_u64(99);
    let centers: Vec<f32> = (0..classes * dim)
        .map(|_| centers.random_range(-1.0..1.0))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let x = Array2::from_shape_fn((n, dim), |(i, d)| {
        centers[labels[i] * dim + d] + 0.6 * rng.random_range(-1.0f32..1.0)
    });
    (x, labels)
}

fn config() -> ProbeConfig {
    ProbeConfig {
        heads: official_grid(Sweep::Full),
        epochs: 6,
        batch_size: 64,
        eval_every: 1,
        holdout: 0.1,
        seed: 3,
    }
}

#[test]
fn selects_on_the_holdout_and_reports_val() {
    let (tx, ty) = blobs(400, 16, 7, 1);
    let (vx, vy) = blobs(140, 16, 7, 2);
    let cfg = config();
    let mut steps = 0;
    let (report, shape) = probe(tx.view(), &ty, vx.view(), &vy, &cfg, &mut |p| {
        if let linear::Progress::Step = p {
            steps += 1
        }
    })
    .unwrap();
    assert_eq!(shape.holdout_rows, 7 * 6); // round(57.1·0.1) = 6 per class
    assert_eq!(shape.train_rows, 400 - 42);
    assert_eq!(shape.classes, 7);
    assert_eq!(steps, 6 * shape.train_rows.div_ceil(64));
    assert_eq!(report.sweep.len(), 180);
    assert_eq!(report.selected_on, "holdout");
    assert!(report.top1 > 0.9, "separable blobs: top-1 {}", report.top1);
    assert!(report.best_on_val.top1 >= report.top1);
    assert!(report.top5.unwrap() >= report.top1);
    assert_eq!(report.curves.epoch, (1..=6).collect::<Vec<_>>());
    let selected_holdout = report.selected.holdout_top1.unwrap();
    let best_holdout = report
        .sweep
        .iter()
        .map(|h| h.holdout_top1.unwrap())
        .fold(0.0, f64::max);
    assert_eq!(selected_holdout, best_holdout);

    // Same seed, same result; another seed, another hold-out.
    let (again, _) = probe(tx.view(), &ty, vx.view(), &vy, &cfg, &mut |_| {}).unwrap();
    assert_eq!(again, report);
}

#[test]
fn rejects_bad_inputs_with_reasons() {
    let (tx, ty) = blobs(50, 4, 3, 1);
    let (vx, vy) = blobs(20, 4, 3, 2);
    let cfg = config();
    let err = |r: Result<_, LinearError>| r.unwrap_err().to_string();
    assert!(err(probe(
        tx.view(),
        &ty[..49],
        vx.view(),
        &vy,
        &cfg,
        &mut |_| {}
    ))
    .contains("train features have 50 rows but 49 labels"));
    let (wide, _) = blobs(20, 5, 3, 2);
    assert!(
        err(probe(tx.view(), &ty, wide.view(), &vy, &cfg, &mut |_| {}))
            .contains("dimension 4 but val features 5")
    );
    let mut nan = vx.clone();
    nan[[3, 1]] = f32::NAN;
    assert!(
        err(probe(tx.view(), &ty, nan.view(), &vy, &cfg, &mut |_| {}))
            .contains("val features: row 3 contains NaN")
    );
    let bad = ProbeConfig {
        holdout: 1.5,
        ..config()
    };
    assert!(err(probe(tx.view(), &ty, vx.view(), &vy, &bad, &mut |_| {})).contains("hold-out"));
    let none = ProbeConfig {
        heads: vec![],
        ..config()
    };
    assert!(err(probe(tx.view(), &ty, vx.view(), &vy, &none, &mut |_| {})).contains("no heads"));
}
