//! Parity with scikit-learn (`tests/reference/semisup_reference.py`): LogisticRegression(lbfgs,
//! fit_intercept=False, C = 1/(nλ)) on L2-normalised features reaches the same minimiser.

use ndarray::Array2;
use semisup::{fit, l2_normalized, logistic_regression, LogRegConfig, Solver};
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/logreg_golden.json"
    ))
    .expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

fn matrix<T: serde::de::DeserializeOwned + Clone>(v: &Value) -> Array2<T> {
    let rows: Vec<Vec<T>> = serde_json::from_value(v.clone()).unwrap();
    let (r, c) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((r, c), rows.into_iter().flatten().collect()).unwrap()
}

fn labels(v: &Value) -> Vec<usize> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn matches_sklearn_lbfgs_minimiser() {
    let g = golden();
    let train_x = l2_normalized(matrix::<f32>(&g["train_x"]).view());
    let train_y = labels(&g["train_y"]);
    let val_x = l2_normalized(matrix::<f32>(&g["val_x"]).view());
    let classes = g["classes"].as_u64().unwrap() as usize;
    let solver = Solver {
        max_iterations: 10_000,
        gradient_tolerance: 1e-10,
        cost_tolerance: 0.0,
    };
    for case in g["cases"].as_array().unwrap() {
        let lambda = case["lambda"].as_f64().unwrap();
        let m = fit(train_x.view(), &train_y, classes, lambda, &solver).unwrap();
        let expected_obj = case["objective"].as_f64().unwrap();
        let rel = (m.objective - expected_obj).abs() / expected_obj;
        assert!(
            rel < 1e-6 && m.objective <= expected_obj * (1.0 + 1e-12),
            "λ {lambda}: objective {} vs sklearn {expected_obj}",
            m.objective
        );
        let w = matrix::<f64>(&case["weights"]);
        let scale = w.iter().fold(0f64, |a, v| a.max(v.abs()));
        for (a, e) in m.weights.iter().zip(w.iter()) {
            assert!(
                (a - e).abs() < 1e-4 * scale.max(1.0),
                "λ {lambda}: coefficient {a} vs sklearn {e}"
            );
        }
        let proba = m.predict_proba(val_x.view());
        let expected = matrix::<f64>(&case["val_proba"]);
        for (a, e) in proba.iter().zip(expected.iter()) {
            assert!((a - e).abs() < 1e-6, "λ {lambda}: probability {a} vs {e}");
        }
        let pred: Vec<usize> = proba
            .rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    )
                    .0
            })
            .collect();
        assert_eq!(pred, labels(&case["val_pred"]), "λ {lambda}: predictions");
    }
}

#[test]
fn protocol_chooses_lambda_on_the_holdout_and_refits() {
    let g = golden();
    let train_x = matrix::<f32>(&g["train_x"]);
    let train_y = labels(&g["train_y"]);
    let val_x = matrix::<f32>(&g["val_x"]);
    let val_y = labels(&g["val_y"]);
    let cfg = LogRegConfig {
        lambdas: vec![1e-4, 1e-2, 0.3],
        ..LogRegConfig::default()
    };
    let mut fits = 0;
    let r = logistic_regression(
        train_x.view(),
        &train_y,
        val_x.view(),
        &val_y,
        &cfg,
        &mut |_| fits += 1,
    )
    .unwrap();
    assert_eq!(fits, 4);
    assert_eq!(r.holdout_rows, 6 * 3); // 25 per class · 10% = 2.5 → 3
    assert_eq!(r.selected_on, "holdout");
    let best = r
        .sweep
        .iter()
        .map(|s| s.holdout_top1.unwrap())
        .fold(0.0, f64::max);
    let chosen = r.sweep.iter().find(|s| s.lambda == r.lambda).unwrap();
    assert_eq!(chosen.holdout_top1.unwrap(), best);
    // The refit uses the whole split, so its val accuracy is the golden one for that λ.
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["lambda"].as_f64().unwrap() == r.lambda)
        .unwrap();
    assert_eq!(r.top1, case["val_top1"].as_f64().unwrap());
    assert_eq!(r.sklearn_c, case["sklearn_C"].as_f64().unwrap());
}

#[test]
fn rejects_bad_inputs() {
    let x = Array2::<f32>::ones((10, 3));
    let y = vec![0usize; 10];
    let cfg = LogRegConfig::default();
    let e = logistic_regression(x.view(), &y[..9], x.view(), &y, &cfg, &mut |_| {}).unwrap_err();
    assert!(e
        .to_string()
        .contains("train features have 10 rows but 9 labels"));
    let mut bad = x.clone();
    bad[[4, 2]] = f32::INFINITY;
    let e = logistic_regression(x.view(), &y, bad.view(), &y, &cfg, &mut |_| {}).unwrap_err();
    assert!(e
        .to_string()
        .contains("val features: row 4 contains NaN or infinity"));
    let e = fit(
        l2_normalized(x.view()).view(),
        &y,
        1,
        0.0,
        &Solver::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("λ must be positive"));
}
