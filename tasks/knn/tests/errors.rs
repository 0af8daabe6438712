use knn::{KnnError, Params};
use ndarray::Array2;

fn params(ks: &[usize]) -> Params {
    Params {
        ks: ks.to_vec(),
        ..Params::default()
    }
}

fn classify(train: Array2<f32>, train_labels: &[usize], test: Array2<f32>, p: &Params) -> KnnError {
    let test_labels = vec![0; test.nrows()];
    knn::classify(train, train_labels, test, &test_labels, p, &|_| {}).unwrap_err()
}

#[test]
fn rejects_inconsistent_inputs_with_a_reason() {
    let train = Array2::<f32>::ones((4, 3));
    let test = Array2::<f32>::ones((2, 3));
    let cases: Vec<(KnnError, &str)> = vec![
        (
            classify(train.clone(), &[0, 1, 0], test.clone(), &params(&[1])),
            "train features have 4 rows but 3 labels",
        ),
        (
            classify(train.clone(), &[0; 4], Array2::ones((2, 5)), &params(&[1])),
            "dimension 3 but test features 5",
        ),
        (
            classify(train.clone(), &[0; 4], test.clone(), &params(&[5])),
            "k = 5 exceeds the 4 train samples",
        ),
        (
            classify(train.clone(), &[0; 4], test.clone(), &params(&[0, 1])),
            "k must be at least 1",
        ),
        (
            classify(train.clone(), &[0; 4], test.clone(), &params(&[])),
            "no k given",
        ),
        (
            classify(Array2::zeros((0, 3)), &[], test.clone(), &params(&[1])),
            "train feature set is empty",
        ),
        (
            classify(
                train.clone(),
                &[0; 4],
                test.clone(),
                &Params {
                    temperature: 0.0,
                    ..params(&[1])
                },
            ),
            "temperature must be a positive",
        ),
    ];
    for (err, needle) in cases {
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle:?}"
        );
    }
    let mut bad = train.clone();
    bad[[2, 1]] = f32::NAN;
    let err = classify(bad, &[0; 4], test, &params(&[1]));
    assert!(
        err.to_string()
            .contains("train features row 2 is not finite"),
        "{err}"
    );
}

#[test]
fn zero_rows_normalise_to_zero_like_torch() {
    // A zero feature row has similarity 0 to everything (torch: x / max(‖x‖, 1e-12) = 0).
    let mut x = Array2::<f32>::zeros((2, 3));
    x[[1, 0]] = 3.0;
    x[[1, 2]] = 4.0;
    knn::l2_normalize_rows(&mut x);
    assert_eq!(x.row(0).to_vec(), vec![0.0, 0.0, 0.0]);
    assert_eq!(x.row(1).to_vec(), vec![0.6, 0.0, 0.8]);
}

#[test]
fn unvoted_test_label_never_counts_even_in_top5() {
    // Two train classes (ids 0 and 2); the test label 1 gets no vote, so it is wrong at every k even
    // though fewer than five classes were voted for.
    let train = ndarray::array![[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0]];
    let test = ndarray::array![[1.0f32, 0.05], [0.1, 1.0]];
    let scores =
        knn::classify(train, &[0, 0, 2], test, &[1, 2], &params(&[1, 3]), &|_| {}).unwrap();
    assert_eq!(
        scores
            .iter()
            .map(|s| (s.k, s.top1_correct, s.top5_correct))
            .collect::<Vec<_>>(),
        vec![(1, 1, 1), (3, 1, 1)]
    );
}
