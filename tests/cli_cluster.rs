//! End-to-end tests of `ibot eval cluster` on precomputed features and logits written at test time.

mod common;

use std::path::Path;

use common::{result as read_result, run_ok, s, write_labels, write_npy};
use metrics::cluster::ClusterScores;
use ndarray::Array2;
use serde_json::Value;

/// `ibot eval cluster` with each `(flag, file in dir)` input, then `extra`.
fn cluster_args(dir: &Path, inputs: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut args = common::strings(&["eval", "cluster"]);
    for (flag, file) in inputs {
        args.push(flag.to_string());
        args.push(s(&dir.join(file)).to_string());
    }
    args.extend(extra.iter().map(|e| e.to_string()));
    args
}

fn scores(truth: &[usize], pred: &[usize]) -> ClusterScores {
    let t: Vec<i64> = truth.iter().map(|&v| v as i64).collect();
    let p: Vec<i64> = pred.iter().map(|&v| v as i64).collect();
    ClusterScores::compute(&t, &p).unwrap()
}

/// Noisy logits whose argmax is `pred` (first of equal maxima never arises: the bump is 1.0).
fn logits_for(pred: &[usize], out_dim: usize, seed: u64) -> Array2<f32> {
    let mut l = Array2::<f32>::zeros((pred.len(), out_dim));
    let mut state = seed;
    for (i, &p) in pred.iter().enumerate() {
        for j in 0..out_dim {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            l[[i, j]] = ((state >> 40) as f32 / (1u64 << 24) as f32) * 0.5 - 3.0;
        }
        l[[i, p]] += 1.0;
    }
    l
}

/// A wrong-but-structured head: class c goes to cluster perm(c), except every 7th sample goes to
/// cluster 0 (so ACC < 1 and the Hungarian matching matters).
fn head_prediction(truth: &[usize], out_dim: usize) -> Vec<usize> {
    truth
        .iter()
        .enumerate()
        .map(|(i, &c)| if i % 7 == 0 { 0 } else { (c * 5 + 1) % out_dim })
        .collect()
}

fn check_scores(entry: &Value, expected: &ClusterScores, what: &str) {
    for (field, value) in [
        ("acc", expected.acc),
        ("nmi", expected.nmi),
        ("ari", expected.ari),
        ("fmi", expected.fmi),
    ] {
        let got = entry[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}.{field} missing"));
        assert_eq!(got, value, "{what}.{field}");
    }
}

#[test]
fn kmeans_and_head_on_precomputed_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (x, truth) = cluster::synthetic::blobs(4, 900, 24, 6, 1.5, false);
    let head_pred = head_prediction(&truth, 6);
    write_npy(&dir.path().join("f.npy"), &x);
    write_npy(
        &dir.path().join("logits.npy"),
        &logits_for(&head_pred, 6, 1),
    );
    write_labels(&dir.path().join("labels.txt"), &truth);
    let out = dir.path().join("out");
    let o = run_ok(&cluster_args(
        dir.path(),
        &[
            ("--features", "f.npy"),
            ("--labels", "labels.txt"),
            ("--logits", "logits.npy"),
        ],
        &["--restarts", "4", "--seed", "3", "--out", s(&out)],
    ));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("ACC %") && stdout.contains("kmeans") && stdout.contains("head"));
    let r = read_result(&out);

    // k-means: the same computation in-process (row L2 normalisation, then cluster::kmeans).
    let mut xn = x.clone();
    for mut row in xn.rows_mut() {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        row.mapv_inplace(|v| (v as f64 / norm) as f32);
    }
    let opts = cluster::KmeansOptions {
        restarts: 4,
        seed: 3,
        ..Default::default()
    };
    let km = cluster::kmeans(xn.view(), 6, &opts).unwrap();
    let entry = &r["cluster"]["kmeans"];
    check_scores(entry, &scores(&truth, &km.labels), "kmeans");
    assert_eq!(entry["k"], 6);
    assert_eq!(entry["restarts"], 4);
    assert_eq!(entry["inertia"].as_f64().unwrap(), km.inertia);
    assert!(
        entry["acc"].as_f64().unwrap() > 0.95,
        "blobs are separable: {entry}"
    );

    // head: argmax of the logits we wrote, scored independently.
    let entry = &r["cluster"]["head"];
    check_scores(entry, &scores(&truth, &head_pred), "head");
    assert_eq!(entry["k"], 6);
    let acc = entry["acc"].as_f64().unwrap();
    assert!(acc < 0.9 && acc > 0.8, "{acc}");
    // The confusion after matching: its diagonal is the matched count.
    let counts: Vec<Vec<u64>> =
        serde_json::from_value(entry["confusion"]["counts"].clone()).unwrap();
    let total: u64 = counts.iter().flatten().sum();
    let diag: u64 = (0..counts.len()).map(|i| counts[i][i]).sum();
    assert_eq!(total, 900);
    assert_eq!(diag as f64 / 900.0, acc);

    assert_eq!(r["config"]["kmeans"]["seed"], 3);
    assert_eq!(r["config"]["classes"], 6);
    for key in ["features", "labels", "logits"] {
        assert!(r["manifest"][key]["sha256"].is_string(), "manifest.{key}");
    }
    assert!(r.get("notes").is_none(), "{r}");
}

#[test]
fn head_with_more_clusters_than_classes_warns_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let truth: Vec<usize> = (0..400).map(|i| (i * 7 + i / 3) % 5).collect();
    let pred = head_prediction(&truth, 9);
    write_npy(&dir.path().join("logits.npy"), &logits_for(&pred, 9, 2));
    write_labels(&dir.path().join("labels.txt"), &truth);
    let out = dir.path().join("out");
    let o = run_ok(&cluster_args(
        dir.path(),
        &[("--labels", "labels.txt"), ("--logits", "logits.npy")],
        &["--method", "head", "--out", s(&out)],
    ));
    assert!(String::from_utf8_lossy(&o.stderr).contains("out_dim 9"));
    let r = read_result(&out);
    check_scores(&r["cluster"]["head"], &scores(&truth, &pred), "head");
    assert_eq!(r["cluster"]["head"]["k"], 9);
    assert!(r["cluster"].get("kmeans").is_none());
    assert!(r["notes"][0].as_str().unwrap().contains("out_dim 9"));
}

#[test]
fn head_is_skipped_with_a_note_when_there_are_no_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (x, truth) = cluster::synthetic::blobs(5, 300, 8, 3, 0.5, false);
    write_npy(&dir.path().join("f.npy"), &x);
    write_labels(&dir.path().join("labels.txt"), &truth);
    let out = dir.path().join("out");
    run_ok(&cluster_args(
        dir.path(),
        &[("--features", "f.npy"), ("--labels", "labels.txt")],
        &["--k", "4", "--out", s(&out)],
    ));
    let r = read_result(&out);
    assert!(r["cluster"].get("head").is_none());
    assert_eq!(r["cluster"]["kmeans"]["k"], 4);
    assert!(r["notes"][0].as_str().unwrap().contains("head skipped"));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (x, truth) = cluster::synthetic::blobs(6, 50, 4, 3, 0.5, false);
    let f = dir.path().join("f.npy");
    write_npy(&f, &x);
    let short = dir.path().join("short.txt");
    write_labels(&short, &truth[..40]);
    let good = dir.path().join("labels.txt");
    write_labels(&good, &truth);
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "0\n1\ncat\n").unwrap();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "cluster", "--out", s(&out)];
        args.extend_from_slice(extra);
        common::failure(&args)
    };

    let e = run(&["--features", s(&f), "--labels", s(&short)]);
    assert!(
        e.contains("short.txt") && e.contains("40") && e.contains("50"),
        "{e}"
    );
    let e = run(&["--features", s(&f), "--labels", s(&good), "--k", "51"]);
    assert!(e.contains("k = 51") && e.contains("50 samples"), "{e}");
    let e = run(&["--features", s(&f), "--labels", s(&bad)]);
    assert!(e.contains("bad.txt:3"), "{e}");
    let e = run(&[
        "--features",
        s(&f),
        "--labels",
        s(&good),
        "--method",
        "head",
    ]);
    assert!(e.contains("--logits"), "{e}");
    let e = run(&["--labels", s(&good)]);
    assert!(e.contains("--features"), "{e}");
    let e = run(&["--features", s(&f), "--labels", s(&good), "--restarts", "0"]);
    assert!(e.contains("restarts"), "{e}");
    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, b"not an npy").unwrap();
    let e = run(&["--features", s(&garbage), "--labels", s(&good)]);
    assert!(e.contains("garbage.npy"), "{e}");
    assert!(!out.join("result.json").exists());
}
