//! End-to-end tests of `ibot eval knn` on precomputed features written at test time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::Array2;
use ndarray_npy::WriteNpyExt;
use serde_json::Value;

fn ibot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ibot"))
        .args(args)
        .output()
        .expect("run ibot")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Inputs {
    train: PathBuf,
    train_labels: PathBuf,
    test: PathBuf,
    test_labels: PathBuf,
}

fn write_npy<T: ndarray_npy::WritableElement>(path: &Path, a: &Array2<T>) {
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

fn write_labels(path: &Path, labels: &[usize]) {
    let text: String = labels.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Clustered features from `knn::synthetic` (the generator the DINO goldens use).
fn write_inputs(
    dir: &Path,
    seed: u64,
    n: (usize, usize),
    classes: usize,
    dim: usize,
    noise: f32,
) -> Inputs {
    let train_labels = knn::synthetic::labels(seed, 3, n.0, classes, 1);
    let test_labels = knn::synthetic::labels(seed, 4, n.1, classes, 1);
    let inputs = Inputs {
        train: dir.join("train.npy"),
        train_labels: dir.join("train_labels.txt"),
        test: dir.join("test.npy"),
        test_labels: dir.join("test_labels.txt"),
    };
    write_npy(
        &inputs.train,
        &knn::synthetic::clustered(seed, 0, 1, &train_labels, dim, noise),
    );
    // float64 features are accepted (and converted) as well.
    let test = knn::synthetic::clustered(seed, 0, 5, &test_labels, dim, noise);
    write_npy(&inputs.test, &test.mapv(f64::from));
    write_labels(&inputs.train_labels, &train_labels);
    write_labels(&inputs.test_labels, &test_labels);
    inputs
}

fn knn_args<'a>(inputs: &'a Inputs, out: &'a Path) -> Vec<&'a str> {
    vec![
        "eval",
        "knn",
        "--train-features",
        s(&inputs.train),
        "--train-labels",
        s(&inputs.train_labels),
        "--test-features",
        s(&inputs.test),
        "--test-labels",
        s(&inputs.test_labels),
        "--out",
        s(out),
    ]
}

fn result(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap()
}

fn failure(args: &[&str]) -> String {
    let out = ibot(args);
    assert!(!out.status.success(), "ibot {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn well_separated_clusters_are_classified_perfectly() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 11, (300, 100), 5, 16, 0.05);
    let out = dir.path().join("out");
    let run = ibot(&knn_args(&inputs, &out));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let r = result(&out);
    let knn = r["knn"].as_object().unwrap();
    assert_eq!(knn.keys().collect::<Vec<_>>(), ["10", "100", "20", "200"]);
    for (k, score) in knn {
        assert_eq!(score["top1"], 1.0, "k={k}: {score}");
        assert_eq!(score["top5"], 1.0, "k={k}: {score}");
    }
    assert_eq!(r["config"]["k"], serde_json::json!([10, 20, 100, 200]));
    assert!((r["config"]["temperature"].as_f64().unwrap() - 0.07).abs() < 1e-7);
    let m = &r["manifest"];
    assert_eq!(m["train_features"]["shape"], serde_json::json!([300, 16]));
    assert_eq!(m["test_features"]["dtype"], "float64");
    assert_eq!(m["test_labels"]["count"], 100);
    assert_eq!(m["train_labels"]["sha256"].as_str().unwrap().len(), 64);

    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("top-1 %"), "{table}");
    assert_eq!(table.matches("100.00").count(), 8, "{table}");
}

#[test]
fn matches_the_dino_golden_through_the_cli() {
    let goldens: Value =
        serde_json::from_str(include_str!("../tasks/knn/tests/goldens/knn_cases.json")).unwrap();
    let case = &goldens["cases"][0];
    let n = |key: &str| case[key].as_u64().unwrap() as usize;
    assert_eq!(n("spacing"), 1);
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(
        dir.path(),
        case["seed"].as_u64().unwrap(),
        (n("train"), n("test")),
        n("classes"),
        n("dim"),
        case["noise"].as_f64().unwrap() as f32,
    );
    let out = dir.path().join("out");
    let ks: Vec<String> = case["ks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.to_string())
        .collect();
    let ks = ks.join(",");
    let temperature = case["temperature"].to_string();
    let mut args = knn_args(&inputs, &out);
    args.extend(["--k", &ks, "--temperature", &temperature]);
    let run = ibot(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r = result(&out);
    for e in case["expected"].as_array().unwrap() {
        let k = e["k"].to_string();
        let total = e["total"].as_f64().unwrap();
        assert_eq!(
            r["knn"][&k]["top1"].as_f64().unwrap(),
            e["top1_correct"].as_f64().unwrap() / total,
            "k={k}"
        );
        assert_eq!(
            r["knn"][&k]["top5"].as_f64().unwrap(),
            e["top5_correct"].as_f64().unwrap() / total,
            "k={k}"
        );
    }
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 3, (40, 10), 3, 8, 0.5);
    let out = dir.path().join("out");
    let args = knn_args(&inputs, &out);
    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = value.to_string();
        a
    };
    let fail = |a: Vec<String>| failure(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // Row count ≠ label count.
    let short = dir.path().join("short_labels.txt");
    write_labels(&short, &[0; 39]);
    let err = fail(with("--train-labels", s(&short)));
    assert!(
        err.contains("short_labels.txt has 39 labels") && err.contains("train.npy has 40 rows"),
        "{err}"
    );

    // Dimension mismatch.
    let wide = dir.path().join("wide.npy");
    write_npy(&wide, &Array2::<f32>::ones((10, 9)));
    let err = fail(with("--test-features", s(&wide)));
    assert!(
        err.contains("wide.npy has feature dimension 9") && err.contains("train.npy has 8"),
        "{err}"
    );

    // Missing file.
    let err = fail(with("--test-labels", "/nonexistent/labels.txt"));
    assert!(err.contains("reading /nonexistent/labels.txt"), "{err}");

    // Not an .npy file, wrong dtype, a malformed label, a non-finite feature.
    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"not numpy").unwrap();
    let err = fail(with("--train-features", s(&junk)));
    assert!(
        err.contains("junk.npy: expected a 2-D float32 or float64 .npy array"),
        "{err}"
    );
    let ints = dir.path().join("ints.npy");
    write_npy(&ints, &Array2::<i64>::zeros((40, 8)));
    let err = fail(with("--train-features", s(&ints)));
    assert!(err.contains("ints.npy: expected a 2-D float32"), "{err}");
    let bad_label = dir.path().join("bad_label.txt");
    std::fs::write(&bad_label, "0\n1\n-2\n").unwrap();
    let err = fail(with("--test-labels", s(&bad_label)));
    assert!(
        err.contains("bad_label.txt:3: expected one non-negative integer"),
        "{err}"
    );
    let nan = dir.path().join("nan.npy");
    let mut x = Array2::<f32>::ones((10, 8));
    x[[4, 2]] = f32::NAN;
    write_npy(&nan, &x);
    let err = fail(with("--test-features", s(&nan)));
    assert!(err.contains("nan.npy: row 4 contains NaN"), "{err}");

    // k beyond the train set, and k = 0.
    let err = fail(
        with("--out", s(&out))
            .into_iter()
            .chain(["--k".into(), "41".into()])
            .collect(),
    );
    assert!(
        err.contains("k = 41 exceeds the 40 train samples") && err.contains("train.npy"),
        "{err}"
    );
    let err = fail(
        with("--out", s(&out))
            .into_iter()
            .chain(["--k".into(), "0,5".into()])
            .collect(),
    );
    assert!(err.contains("k must be at least 1"), "{err}");
    assert!(!out.join("result.json").exists());
}
