//! End-to-end tests of `ibot eval semisup` on precomputed features written at test time.

mod common;

use std::path::{Path, PathBuf};

use common::{failure, ok_stdout as ok, result, s, write_npy, FeatureFiles, TempCase};
use ndarray::Array2;

struct Case {
    tmp: TempCase,
    files: FeatureFiles,
}

impl Case {
    fn p(&self, name: &str) -> PathBuf {
        self.tmp.p(name)
    }

    /// 400 train rows of 5 classes (80 each), 120 test rows, dimension 16.
    fn new() -> Case {
        let tmp = TempCase::new();
        let train_y: Vec<usize> = (0..400).map(|i| i % 5).collect();
        let test_y: Vec<usize> = (0..120).map(|i| (i / 3) % 5).collect();
        let files = FeatureFiles::write(
            &tmp.dir,
            (
                &knn::synthetic::clustered(2, 0, 1, &train_y, 16, 1.0),
                &train_y,
            ),
            (
                &knn::synthetic::clustered(2, 0, 5, &test_y, 16, 1.0),
                &test_y,
            ),
        );
        let names: String = (0..400)
            .map(|i| format!("c{}/img_{i:04}.png\n", train_y[i]))
            .collect();
        std::fs::write(tmp.p("names.txt"), names).unwrap();
        Case { tmp, files }
    }

    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut a = self.files.args(
            "semisup",
            &[
                "--linear-epochs",
                "3",
                "--linear-sweep",
                "lr-only",
                "--linear-batch-size",
                "32",
                "--out",
                s(out),
            ],
        );
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    }
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
            s(&c.p("my_split.txt")),
            "--train-names",
            s(&c.p("names.txt")),
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
            s(&c.p("missing.txt")),
            "--train-names",
            s(&c.p("names.txt")),
        ],
    ));
    assert!(
        err.contains(
            "missing.txt: 1 of 2 listed files are not in the training set (first: not_there.png)"
        ),
        "{err}"
    );
    let err = failure(&c.args(&out, &["--split-file", s(&c.p("missing.txt"))]));
    assert!(err.contains("--train-names"), "{err}");

    std::fs::write(c.p("short.txt"), "0\n1\n").unwrap();
    let mut args = c.args(&out, &[]);
    args[5] = s(&c.p("short.txt")).to_string();
    let err = failure(&args);
    assert!(err.contains("short.txt has 2 labels but"), "{err}");

    let mut bad = Array2::<f32>::ones((120, 16));
    bad[[9, 0]] = f32::NAN;
    write_npy(&c.p("nan.npy"), &bad);
    let mut args = c.args(&out, &[]);
    args[7] = s(&c.p("nan.npy")).to_string();
    let err = failure(&args);
    assert!(err.contains("nan.npy: row 9 contains NaN"), "{err}");

    let err = failure(&c.args(&out, &["--protocols", "svm"]));
    assert!(err.contains("unknown protocol \"svm\""), "{err}");
    assert!(!out.join("result.json").exists());
}

/// Checkpoint mode: a SimCLR-style split file names train images of an image-folder data set by
/// file name (with or without their class directory); features come from the frozen ViT.
#[test]
fn checkpoint_mode_split_file_selects_images_by_name() {
    let c = TempCase::new();
    common::save_random_vit(&c.p("vit.safetensors"), &common::tiny_vit(16, 32), 5);
    common::write_image_folder(&c.p("images/train"), 6, 1);
    common::write_image_folder(&c.p("images/val"), 3, 2);
    // SimCLR's lists hold unique file names (n01440764_10026.JPEG); make ours unique too.
    for class in ["red", "green", "blue"] {
        let dir = c.p("images/train").join(class);
        for i in 0..6 {
            let from = dir.join(format!("{i:02}.png"));
            std::fs::rename(from, dir.join(format!("{class}_{i:02}.png"))).unwrap();
        }
    }
    common::write_data_config(&c.p("tiny.toml"), "images/train", "images/val");
    let args = |split: &str, out: &str| {
        let (vit, data, cache) = (c.p("vit.safetensors"), c.p("tiny.toml"), c.p("cache"));
        let (split, out) = (c.p(split), c.p(out));
        common::strings(&[
            "eval",
            "semisup",
            "--checkpoint",
            s(&vit),
            "--data",
            s(&data),
            "--cache",
            s(&cache),
            "--percent",
            "50",
            "--holdout",
            "0",
            "--protocols",
            "logreg,knn",
            "--k",
            "3",
            "--split-file",
            s(&split),
            "--out",
            s(&out),
        ])
    };
    let listed =
        "red_00.png\nred_03.png\ngreen/green_01.png\ngreen_04.png\nblue_02.png\nblue_05.png\n";
    std::fs::write(c.p("two_each.txt"), listed).unwrap();
    ok(&args("two_each.txt", "out"));
    let r = result(&c.p("out"));
    let split = &r["semisup"]["two_each.txt"];
    assert_eq!(split["train_images"], 6);
    for protocol in ["logreg", "knn"] {
        let top1 = split[protocol]["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{protocol} top1 {top1}");
    }
    assert_eq!(r["semisup"]["50%"]["train_images"], 9);

    // A listed file that is not in the training set is named in the error.
    std::fs::write(c.p("bad.txt"), "red_00.png\nnot_there.png\n").unwrap();
    let err = failure(&args("bad.txt", "out-bad"));
    assert!(
        err.contains("bad.txt") && err.contains("not_there.png"),
        "{err}"
    );
}
