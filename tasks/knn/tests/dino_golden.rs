//! Counts must equal the numpy transcription of DINO's `knn_classifier`
//! (`tests/reference/knn_reference.py`), on features both sides generate bit for bit.

use knn::{synthetic, KScore, Params};
use serde::Deserialize;

#[derive(Deserialize)]
struct Goldens {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    seed: u64,
    dim: usize,
    train: usize,
    test: usize,
    classes: usize,
    spacing: usize,
    unseen_test_classes: usize,
    noise: f32,
    ks: Vec<usize>,
    temperature: f32,
    expected: Vec<Expected>,
}

#[derive(Deserialize)]
struct Expected {
    k: usize,
    top1_correct: usize,
    top5_correct: usize,
    total: usize,
}

fn goldens() -> Goldens {
    let text = include_str!("goldens/knn_cases.json");
    serde_json::from_str(text).expect("valid goldens")
}

fn features(case: &Case, stream: u64, labels: &[usize]) -> ndarray::Array2<f32> {
    let class_index: Vec<usize> = labels.iter().map(|l| l / case.spacing).collect();
    synthetic::clustered(case.seed, 0, stream, &class_index, case.dim, case.noise)
}

fn run(case: &Case, test_rows_per_block: usize, train_rows_per_block: usize) -> Vec<KScore> {
    let train_labels = synthetic::labels(case.seed, 3, case.train, case.classes, case.spacing);
    let test_labels = synthetic::labels(
        case.seed,
        4,
        case.test,
        case.classes + case.unseen_test_classes,
        case.spacing,
    );
    let params = Params {
        ks: case.ks.clone(),
        temperature: case.temperature,
        test_rows_per_block,
        train_rows_per_block,
    };
    knn::classify(
        features(case, 1, &train_labels),
        &train_labels,
        features(case, 5, &test_labels),
        &test_labels,
        &params,
        &|_| {},
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

fn check(case: &Case, got: &[KScore], blocking: &str) {
    assert_eq!(got.len(), case.expected.len(), "{}", case.name);
    for (g, e) in got.iter().zip(&case.expected) {
        assert_eq!(
            (g.k, g.top1_correct, g.top5_correct, g.total),
            (e.k, e.top1_correct, e.top5_correct, e.total),
            "{} ({blocking}): (k, top1, top5, total) differ from DINO's knn_classifier",
            case.name
        );
    }
}

#[test]
fn matches_dino_knn_classifier() {
    for case in goldens().cases {
        check(&case, &run(&case, 128, 8192), "default blocks");
    }
}

#[test]
fn blocking_does_not_change_results() {
    for case in goldens().cases {
        // Odd sizes put block edges everywhere, including one train row per block.
        check(&case, &run(&case, 7, 33), "7x33 blocks");
        check(&case, &run(&case, 1, 1), "1x1 blocks");
    }
}

#[test]
fn ks_may_come_in_any_order_with_duplicates() {
    let case = &goldens().cases[0];
    let mut reordered = Case {
        ks: case
            .ks
            .iter()
            .rev()
            .chain(case.ks.iter())
            .copied()
            .collect(),
        expected: Vec::new(),
        name: case.name.clone(),
        ..*case
    };
    reordered.expected = goldens().cases.remove(0).expected;
    check(&reordered, &run(&reordered, 128, 8192), "reordered ks");
}
