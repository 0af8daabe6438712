//! End-to-end tests of `ibot eval semisup` on precomputed features written at test time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::Array2;
use ndarray_npy::WriteNpyExt;
use serde_json::Value;

fn ibot(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ibot"))
        .args(args)
        .output()
        .expect("run ibot")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

struct Case {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Case {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// 400 train rows of 5 classes (80 each), 120 test rows, dimension 16.
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let train_y: Vec<usize> = (0..400).map(|i| i % 5).collect();
        let test_y: Vec<usize> = (0..120).map(|i| (i / 3) % 5).collect();
        let write = |name: &str, a: &Array2<f32>| {
            a.write_npy(std::fs::File::create(root.join(name)).unwrap())
                .unwrap()
        };
        write(
            "train.npy",
            &knn::synthetic::clustered(2, 0, 1, &train_y, 16, 1.0),
        );
        write(
            "test.npy",
            &knn::synthetic::clustered(2, 0, 5, &test_y, 16, 1.0),
        );
        let lines = |v: &[usize]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
        std::fs::write(root.join("train.txt"), lines(&train_y)).unwrap();
        std::fs::write(root.join("test.txt"), lines(&test_y)).unwrap();
        let names: String = (0..400)
            .map(|i| format!("c{}/img_{i:04}.png\n", train_y[i]))
            .collect();
        std::fs::write(root.join("names.txt"), names).unwrap();
        Case {
            _dir: dir,
            dir: root,
        }
    }

    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "eval".into(),
            "semisup".into(),
            "--train-features".into(),
            s(&self.p("train.npy")),
            "--train-labels".into(),
            s(&self.p("train.txt")),
            "--test-features".into(),
            s(&self.p("test.npy")),
            "--test-labels".into(),
            s(&self.p("test.txt")),
            "--linear-epochs".into(),
            "3".into(),
            "--linear-sweep".into(),
            "lr-only".into(),
            "--linear-batch-size".into(),
            "32".into(),
            "--out".into(),
            s(out),
        ];
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    }
}

fn ok(args: &[String]) -> String {
    let out = ibot(args);
    assert!(
        out.status.success(),
        "ibot {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn failure(args: &[String]) -> String {
    let out = ibot(args);
    assert!(!out.status.success(), "ibot {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn result(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap()
}

#[test]
fn every_protocol_on_every_split() {
    let c = Case::new();
    let out = c.p("out");
    let stdout = ok(&c.args(&out, &["--percent", "5,25"]));
    assert!(stdout.contains("logreg"), "{stdout}");
    let r = result(&out);
    for split in ["5%", "25%"] {
        let sp = &r["semisup"][split];
        for protocol in ["logreg", "knn", "linear"] {
            for key in ["top1", "top5"] {
                let v = sp[protocol][key].as_f64().unwrap_or(-1.0);
                assert!((0.0..=1.0).contains(&v), "{split} {protocol}.{key} = {v}");
            }
        }
        assert!(sp["logreg"]["lambda"].as_f64().unwrap() > 0.0);
        assert_eq!(sp["knn"]["k"], 20);
    }
    assert_eq!(r["semisup"]["5%"]["train_images"], 20);
    assert_eq!(r["semisup"]["25%"]["train_images"], 100);
    // Clustered features: the larger split is learnt well by logistic regression.
    assert!(r["semisup"]["25%"]["logreg"]["top1"].as_f64().unwrap() > 0.8);
    assert_eq!(r["config"]["protocol"], "semisup");
    assert_eq!(r["manifest"]["splits"]["5%"]["train_images"], 20);
    assert_eq!(
        r["manifest"]["train_features"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

#[test]
fn split_files_select_rows_by_file_name() {
    let c = Case::new();
    let listed: String = (0..400)
        .step_by(10)
        .map(|i| format!("img_{i:04}.png\n"))
        .collect();
    std::fs::write(c.p("my_split.txt"), listed).unwrap();
    let out = c.p("out");
    ok(&c.args(
        &out,
        &[
            "--percent",
            "10",
            "--split-file",
            &s(&c.p("my_split.txt")),
            "--train-names",
            &s(&c.p("names.txt")),
            "--protocols",
            "logreg,knn",
        ],
    ));
    let r = result(&out);
    assert_eq!(r["semisup"]["my_split.txt"]["train_images"], 40);
    assert!(r["semisup"]["my_split.txt"]["linear"].is_null());
    assert!(r["semisup"]["10%"]["logreg"]["top1"].as_f64().is_some());
    assert_eq!(
        r["manifest"]["splits"]["my_split.txt"]["file"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

#[test]
fn bad_inputs_fail_with_reasons() {
    let c = Case::new();
    let out = c.p("out");
    std::fs::write(c.p("missing.txt"), "img_0001.png\nnot_there.png\n").unwrap();
    let err = failure(&c.args(
        &out,
        &[
            "--split-file",
            &s(&c.p("missing.txt")),
            "--train-names",
            &s(&c.p("names.txt")),
        ],
    ));
    assert!(
        err.contains(
            "missing.txt: 1 of 2 listed files are not in the training set (first: not_there.png)"
        ),
        "{err}"
    );
    let err = failure(&c.args(&out, &["--split-file", &s(&c.p("missing.txt"))]));
    assert!(err.contains("--train-names"), "{err}");

    std::fs::write(c.p("short.txt"), "0\n1\n").unwrap();
    let mut args = c.args(&out, &[]);
    args[5] = s(&c.p("short.txt"));
    let err = failure(&args);
    assert!(err.contains("short.txt has 2 labels but"), "{err}");

    let mut bad = Array2::<f32>::ones((120, 16));
    bad[[9, 0]] = f32::NAN;
    bad.write_npy(std::fs::File::create(c.p("nan.npy")).unwrap())
        .unwrap();
    let mut args = c.args(&out, &[]);
    args[7] = s(&c.p("nan.npy"));
    let err = failure(&args);
    assert!(err.contains("nan.npy: row 9 contains NaN"), "{err}");

    let err = failure(&c.args(&out, &["--protocols", "svm"]));
    assert!(err.contains("unknown protocol \"svm\""), "{err}");
    assert!(!out.join("result.json").exists());
}
