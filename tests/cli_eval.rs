//! End-to-end tests of `ibot eval knn` on precomputed features written at test time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{failure, result, run_ok, s, write_labels, write_npy, FeatureFiles};
use ndarray::Array2;
use serde_json::Value;

/// Clustered features; the test features are written as float64 (accepted and converted).
fn write_inputs(
    dir: &Path,
    seed: u64,
    n: (usize, usize),
    classes: usize,
    dim: usize,
    noise: f32,
) -> FeatureFiles {
    let inputs = FeatureFiles::clustered(dir, seed, n, classes, dim, noise);
    let test_labels = knn::synthetic::labels(seed, 4, n.1, classes, 1);
    let test = knn::synthetic::clustered(seed, 0, 5, &test_labels, dim, noise);
    write_npy(&inputs.test, &test.mapv(f64::from));
    inputs
}

fn knn_args(inputs: &FeatureFiles, out: &Path) -> Vec<String> {
    inputs.args("knn", &["--out", s(out)])
}

#[test]
fn well_separated_clusters_are_classified_perfectly() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 11, (300, 100), 5, 16, 0.05);
    let out = dir.path().join("out");
    let run = run_ok(&knn_args(&inputs, &out));

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
    args.extend([
        "--k".to_string(),
        ks,
        "--temperature".to_string(),
        temperature,
    ]);
    run_ok(&args);
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
        let mut a = args.clone();
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = value.to_string();
        a
    };
    let fail = |a: Vec<String>| failure(&a);

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

// ---- checkpoint mode: `ibot eval knn --checkpoint … --data …` through the feature store ----

struct CheckpointCase {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ckpt: PathBuf,
    config: PathBuf,
}

fn checkpoint_case() -> CheckpointCase {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let ckpt = root.join("vit.safetensors");
    common::save_random_vit(&ckpt, &common::tiny_vit(16, 32), 5);
    common::write_image_folder(&root.join("images/train"), 6, 1);
    common::write_image_folder(&root.join("images/val"), 3, 2);
    let config = root.join("configs/tiny.toml");
    common::write_data_config(&config, "../images/train", "../images/val");
    CheckpointCase {
        _dir: dir,
        root,
        ckpt,
        config,
    }
}

impl CheckpointCase {
    /// `ibot eval knn` on the case's checkpoint and data config, then `extra`.
    fn knn(&self, config: &Path, extra: &[&str]) -> Vec<String> {
        let mut a = common::strings(&[
            "eval",
            "knn",
            "--checkpoint",
            s(&self.ckpt),
            "--data",
            s(config),
        ]);
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    }

    /// `ibot extract` of one split's images at the data config's 32-px transform.
    fn extract(&self, split: &str, out: &Path, extra: &[&str]) {
        let mut a = common::strings(&[
            "extract",
            "--checkpoint",
            s(&self.ckpt),
            "--images",
            s(&self.root.join("images").join(split)),
            "--out",
            s(out),
            "--resize",
            "32",
            "--crop",
            "32",
        ]);
        a.extend(extra.iter().map(|e| e.to_string()));
        run_ok(&a);
    }
}

#[test]
fn checkpoint_mode_extracts_once_then_hits_the_cache() {
    let case = checkpoint_case();
    let (cache, out) = (case.root.join("cache"), case.root.join("out"));
    let args = case.knn(
        &case.config,
        &[
            "--cache",
            s(&cache),
            "--k",
            "1,5",
            "--batch-size",
            "4",
            "--out",
            s(&out),
        ],
    );
    let first = run_ok(&args);
    let r1 = result(&out);
    assert_eq!(
        r1["knn"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["1", "5"]
    );
    for k in ["1", "5"] {
        for t in ["top1", "top5"] {
            let v = r1["knn"][k][t].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{k} {t} {v}");
        }
    }
    assert_eq!(r1["config"]["k"], serde_json::json!([1, 5]));
    assert_eq!(r1["config"]["data"], "tiny");
    let m = &r1["manifest"];
    for (split, n) in [("train", 18), ("val", 9)] {
        let s = &m[split];
        assert_eq!(s["data"]["split"], split);
        assert_eq!(s["data"]["num_images"], n);
        assert_eq!(s["data"]["num_classes"], 3);
        assert_eq!(s["features"]["spec"], "cls");
        assert_eq!(s["features"]["dim"], 16);
        assert_eq!(s["cache"]["from_cache"], false);
        assert_eq!(s["checkpoint"]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(s["transform"]["crop"], 32);
        let key = s["cache"]["key"].as_str().unwrap();
        assert!(cache.join(format!("{key}.safetensors")).exists());
    }
    assert!(m["data_config"].as_str().unwrap().ends_with("tiny.toml"));
    let table = String::from_utf8_lossy(&first.stdout);
    assert!(table.contains("train 18  test 9"), "{table}");

    // Second run: both splits from the cache, same numbers.
    let second = run_ok(&args);
    let r2 = result(&out);
    assert_eq!(r2["knn"], r1["knn"]);
    for split in ["train", "val"] {
        assert_eq!(r2["manifest"][split]["cache"]["from_cache"], true);
        assert_eq!(
            r2["manifest"][split]["cache"]["key"],
            r1["manifest"][split]["cache"]["key"]
        );
    }
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(err.matches("from cache").count(), 2, "{err}");

    // Another layout is another cache entry.
    run_ok(&case.knn(
        &case.config,
        &[
            "--cache",
            s(&cache),
            "--features",
            "cls-last-2+avg",
            "--k",
            "3",
            "--out",
            s(&out),
        ],
    ));
    let r3 = result(&out);
    assert_eq!(r3["manifest"]["val"]["features"]["dim"], 48);
    assert_eq!(r3["manifest"]["val"]["cache"]["from_cache"], false);
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 4, "train+val for two layouts, no leftovers");
}

#[test]
fn checkpoint_mode_agrees_with_extract_then_precomputed_knn() {
    let case = checkpoint_case();
    let cache = case.root.join("cache");
    run_ok(&case.knn(
        &case.config,
        &[
            "--cache",
            s(&cache),
            "--k",
            "1,3,10",
            "--out",
            s(&case.root.join("direct")),
        ],
    ));
    let direct = result(&case.root.join("direct"));

    // The same features through `ibot extract` (the store's file format) and the .npy mode.
    let mut npy = Vec::new();
    for split in ["train", "val"] {
        let st = case.root.join(format!("{split}.safetensors"));
        case.extract(split, &st, &[]);
        let file = features::read_feature_file(&st).unwrap();
        assert_eq!(file.class_names, ["blue", "green", "red"]);
        assert_eq!(file.manifest["features"]["dim"], 16);
        assert_eq!(
            file.manifest["checkpoint"]["sha256"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
        assert!(file.metadata["files"].starts_with(r#"["blue/00.png","#));
        // The store's cache entry for this split holds the same rows and labels.
        let key = direct["manifest"][split]["cache"]["key"].as_str().unwrap();
        let cached =
            features::read_feature_file(&cache.join(format!("{key}.safetensors"))).unwrap();
        assert_eq!(cached.labels, file.labels);
        let diff = (&cached.x - &file.x)
            .mapv(f32::abs)
            .fold(0f32, |m, &v| m.max(v));
        assert!(diff < 1e-5, "store vs extract max |Δ| {diff}");

        let labels: Vec<usize> = file.labels.iter().map(|&l| l as usize).collect();
        npy.push((file.x, labels));
    }
    let files = FeatureFiles::write(&case.root, (&npy[0].0, &npy[0].1), (&npy[1].0, &npy[1].1));
    run_ok(&files.args(
        "knn",
        &["--k", "1,3,10", "--out", s(&case.root.join("npy"))],
    ));
    assert_eq!(result(&case.root.join("npy"))["knn"], direct["knn"]);
}

#[test]
fn bf16_extraction_is_cached_apart_and_stays_close_to_f32() {
    let case = checkpoint_case();
    let cache = case.root.join("cache");
    let run = |precision: Option<&str>, out: &str| {
        let mut extra = vec!["--cache", s(&cache), "--k", "1,3", "--out", out];
        if let Some(p) = precision {
            extra.extend(["--precision", p]);
        }
        run_ok(&case.knn(&case.config, &extra));
        result(Path::new(out))
    };
    let dir = |n: &str| case.root.join(n).to_string_lossy().into_owned();
    let default = run(None, &dir("default"));
    let f32_run = run(Some("f32"), &dir("f32"));
    let bf16_run = run(Some("bf16"), &dir("bf16"));
    for split in ["train", "val"] {
        let key = |r: &Value| {
            r["manifest"][split]["cache"]["key"]
                .as_str()
                .unwrap()
                .to_string()
        };
        // f32 keeps the key it had before the option existed; bf16 gets its own entry.
        assert_eq!(key(&default), key(&f32_run));
        assert_ne!(key(&default), key(&bf16_run));
        assert_eq!(f32_run["manifest"][split]["features"]["precision"], "f32");
        assert_eq!(bf16_run["manifest"][split]["features"]["precision"], "bf16");
        let read = |r: &Value| {
            features::read_feature_file(&cache.join(format!("{}.safetensors", key(r))))
                .unwrap()
                .x
        };
        let (a, b) = (read(&f32_run), read(&bf16_run));
        assert_ne!(a, b, "bf16 GEMMs should change the features");
        for (ra, rb) in a.rows().into_iter().zip(b.rows()) {
            let cos = ra.dot(&rb) / (ra.dot(&ra).sqrt() * rb.dot(&rb).sqrt());
            assert!(cos > 0.999, "bf16 vs f32 feature cosine {cos}");
        }

        // `ibot extract --precision bf16` computes the same rows as the store.
        let st = case.root.join(format!("{split}-bf16.safetensors"));
        case.extract(split, &st, &["--precision", "bf16"]);
        let file = features::read_feature_file(&st).unwrap();
        assert_eq!(file.manifest["extraction"]["precision"], "bf16");
        let diff = (&file.x - &b).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        assert!(diff < 1e-5, "extract vs store (bf16) max |Δ| {diff}");
    }
    let err = failure(&case.knn(&case.config, &["--precision", "f16", "--out", &dir("bad")]));
    assert!(err.contains("f32 or bf16"), "{err}");
}

#[test]
fn the_default_cache_honours_ibot_cache() {
    let case = checkpoint_case();
    let home = case.root.join("cache-home");
    let args = case.knn(
        &case.config,
        &["--k", "2", "--out", s(&case.root.join("out"))],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ibot"))
        .args(&args)
        .env("IBOT_CACHE", &home)
        .output()
        .unwrap();
    common::assert_success(&out, &args);
    let r = result(&case.root.join("out"));
    let key = r["manifest"]["val"]["cache"]["key"].as_str().unwrap();
    assert!(home
        .join("features")
        .join(format!("{key}.safetensors"))
        .exists());
}

#[test]
fn mode_and_config_errors_name_what_is_wrong() {
    let case = checkpoint_case();
    let out = case.root.join("out");
    let err = failure(&["eval", "knn", "--out", s(&out)]);
    assert!(
        err.contains("--train-features") && err.contains("--checkpoint"),
        "{err}"
    );
    let err = failure(&[
        "eval",
        "knn",
        "--checkpoint",
        s(&case.ckpt),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("--data"), "{err}");
    let err = failure(&case.knn(
        &case.config,
        &["--train-features", "x.npy", "--out", s(&out)],
    ));
    assert!(err.contains("cannot be used with"), "{err}");
    let err = failure(&["eval", "knn", "--train-features", "x.npy", "--out", s(&out)]);
    assert!(err.contains("--train-labels"), "{err}");
    let cache = case.root.join("cache");
    let base = |extra: &[&str], config: &Path| -> Vec<String> {
        let mut v = case.knn(config, &["--cache", s(&cache), "--out", s(&out)]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let fail = |a: Vec<String>| failure(&a);
    let err = fail(base(&["--features", "pooled"], &case.config));
    assert!(err.contains("unknown feature layout \"pooled\""), "{err}");
    let err = fail(base(&["--features", "cls-last-3"], &case.config));
    assert!(
        err.contains("needs 3 blocks") && err.contains("depth 2"),
        "{err}"
    );
    let err = fail(base(&["--features", "head-logits"], &case.config));
    assert!(
        err.contains("no projection head") && err.contains("vit.safetensors"),
        "{err}"
    );

    let typo = case.root.join("configs/typo.toml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&case.config)
            .unwrap()
            .replace("resize", "resise"),
    )
    .unwrap();
    let err = fail(base(&[], &typo));
    assert!(err.contains("typo.toml") && err.contains("resise"), "{err}");
    let moved = case.root.join("configs/moved.toml");
    std::fs::write(
        &moved,
        std::fs::read_to_string(&case.config)
            .unwrap()
            .replace("images/val", "images/gone"),
    )
    .unwrap();
    let err = fail(base(&[], &moved));
    assert!(
        err.contains("moved.toml") && err.contains("val.root") && err.contains("images/gone"),
        "{err}"
    );
    assert!(!out.join("result.json").exists());
}
