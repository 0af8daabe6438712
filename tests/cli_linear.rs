//! End-to-end tests of `ibot eval linear`: precomputed features written at test time, a tiny
//! checkpoint through the feature store, and the augmented (official) training mode.

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

fn run_ok(args: &[&str]) -> Output {
    let out = ibot(args);
    assert!(
        out.status.success(),
        "ibot {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn failure(args: &[&str]) -> String {
    let out = ibot(args);
    assert!(!out.status.success(), "ibot {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write_npy(path: &Path, a: &Array2<f32>) {
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

fn write_labels(path: &Path, labels: &[usize]) {
    let text: String = labels.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

struct Case {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Case {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Clustered 5-class features: 300 train, 100 test, dimension 12.
fn features_case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let train_y = knn::synthetic::labels(1, 3, 300, 5, 1);
    let test_y = knn::synthetic::labels(1, 4, 100, 5, 1);
    write_npy(
        &root.join("train.npy"),
        &knn::synthetic::clustered(1, 0, 1, &train_y, 12, 0.8),
    );
    write_npy(
        &root.join("test.npy"),
        &knn::synthetic::clustered(1, 0, 5, &test_y, 12, 0.8),
    );
    write_labels(&root.join("train.txt"), &train_y);
    write_labels(&root.join("test.txt"), &test_y);
    Case {
        _dir: dir,
        dir: root,
    }
}

fn precomputed_args<'a>(c: &'a Case, out: &'a Path) -> Vec<String> {
    [
        "eval",
        "linear",
        "--train-features",
        s(&c.p("train.npy")),
        "--train-labels",
        s(&c.p("train.txt")),
        "--test-features",
        s(&c.p("test.npy")),
        "--test-labels",
        s(&c.p("test.txt")),
        "--epochs",
        "4",
        "--batch-size",
        "64",
        "--out",
        s(out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn result(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap()
}

#[test]
fn precomputed_features_give_a_complete_result() {
    let c = features_case();
    let out = c.p("out");
    let args = precomputed_args(&c, &out);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = String::from_utf8(run_ok(&args).stdout).unwrap();
    assert!(stdout.contains("val, selected head"), "{stdout}");
    assert!(stdout.contains("best on val"), "{stdout}");
    let r = result(&out);
    let l = &r["linear"];
    let top1 = l["top1"].as_f64().unwrap();
    assert!(top1 > 0.9 && top1 <= 1.0, "clustered features: {top1}");
    assert!(l["top5"].as_f64().unwrap() >= top1);
    assert_eq!(l["selected_on"], "holdout");
    for key in ["optimizer", "lr", "weight_decay", "epoch", "holdout_top1"] {
        assert!(!l["selected"][key].is_null(), "selected.{key}");
    }
    for key in [
        "top1",
        "top5",
        "optimizer",
        "lr",
        "weight_decay",
        "epoch",
        "note",
    ] {
        assert!(!l["best_on_val"][key].is_null(), "best_on_val.{key}");
    }
    assert!(l["best_on_val"]["note"]
        .as_str()
        .unwrap()
        .contains("selected on the evaluation set"));
    assert_eq!(l["sweep"].as_array().unwrap().len(), 180);
    assert_eq!(l["curves"]["epoch"].as_array().unwrap().len(), 4);
    assert_eq!(r["config"]["holdout_rows"], 30);
    assert_eq!(r["config"]["train_rows"], 270);
    assert_eq!(r["config"]["batch_size"], 64);
    assert_eq!(
        r["manifest"]["train_features"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    // The lr-only sweep, without a hold-out: 45 heads, selection labelled as made on val.
    let out2 = c.p("out2");
    let mut args2 = precomputed_args(&c, &out2);
    args2.extend(["--sweep", "lr-only", "--holdout", "0"].map(String::from));
    let args2: Vec<&str> = args2.iter().map(String::as_str).collect();
    run_ok(&args2);
    let r2 = result(&out2);
    assert_eq!(r2["linear"]["sweep"].as_array().unwrap().len(), 45);
    assert_eq!(r2["linear"]["selected_on"], "val");
    assert_eq!(r2["linear"]["top1"], r2["linear"]["best_on_val"]["top1"]);
    assert!(r2["linear"]["selected"]["holdout_top1"].is_null());
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_file() {
    let c = features_case();
    let out = c.p("out");
    // Label count mismatch.
    write_labels(&c.p("short.txt"), &[0; 299]);
    let mut args = precomputed_args(&c, &out);
    args[5] = s(&c.p("short.txt")).to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failure(&args);
    assert!(err.contains("short.txt has 299 labels"), "{err}");
    assert!(err.contains("train.npy has 300 rows"), "{err}");

    // NaN in the test features.
    let mut bad = knn::synthetic::clustered(1, 0, 5, &[0; 100], 12, 0.8);
    bad[[17, 3]] = f32::NAN;
    write_npy(&c.p("nan.npy"), &bad);
    let mut args = precomputed_args(&c, &out);
    args[7] = s(&c.p("nan.npy")).to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failure(&args);
    assert!(err.contains("nan.npy: row 17 contains NaN"), "{err}");

    // Dimension mismatch.
    write_npy(&c.p("wide.npy"), &Array2::<f32>::ones((100, 13)));
    let mut args = precomputed_args(&c, &out);
    args[7] = s(&c.p("wide.npy")).to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failure(&args);
    assert!(err.contains("wide.npy has feature dimension 13"), "{err}");

    // A hold-out fraction out of range.
    let mut args = precomputed_args(&c, &out);
    args.extend(["--holdout", "1.5"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = failure(&args);
    assert!(err.contains("hold-out fraction 1.5"), "{err}");
    assert!(!out.join("result.json").exists());
}

// ---- checkpoint modes (tiny random ViT, image folder written at test time) ----

fn save_tiny_vit(path: &Path) {
    let cfg = backbone::VitConfig {
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_hidden: 32,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    };
    let mut weights: Vec<_> = backbone::init::init_weights(&cfg, 5)
        .unwrap()
        .into_iter()
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    backbone::checkpoint::save_safetensors(
        path,
        &weights,
        backbone::checkpoint::config_metadata(&cfg),
    )
    .unwrap();
}

/// `root/<class>/NN.png`: noise with a class-dependent dominant channel.
fn write_image_folder(root: &Path, per_class: usize, seed: u64) {
    for (class, name) in ["red", "green", "blue"].iter().enumerate() {
        for i in 0..per_class {
            let mut state = seed ^ ((class * 1000 + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let img = image::RgbImage::from_fn(40, 36, |_, _| {
                let mut px = [0u8; 3];
                for (c, p) in px.iter_mut().enumerate() {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *p = (state >> 57) as u8 + if c == class { 120 } else { 30 };
                }
                image::Rgb(px)
            });
            let path = root.join(name).join(format!("{i:02}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            img.save(&path).unwrap();
        }
    }
}

fn checkpoint_case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    save_tiny_vit(&root.join("vit.safetensors"));
    write_image_folder(&root.join("images/train"), 8, 1);
    write_image_folder(&root.join("images/val"), 3, 2);
    std::fs::write(
        root.join("tiny.toml"),
        "name = \"tiny\"\ntransform = { resize = 32, crop = 32 }\n\
         [train]\nformat = \"image_folder\"\nroot = \"images/train\"\n\
         [val]\nformat = \"image_folder\"\nroot = \"images/val\"\n",
    )
    .unwrap();
    Case {
        _dir: dir,
        dir: root,
    }
}

fn checkpoint_args(c: &Case, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "eval",
        "linear",
        "--checkpoint",
        s(&c.p("vit.safetensors")),
        "--data",
        s(&c.p("tiny.toml")),
        "--cache",
        s(&c.p("cache")),
        "--sweep",
        "lr-only",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--out",
        s(out),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn checkpoint_mode_cached_and_augmented() {
    let c = checkpoint_case();
    let cached = c.p("cached");
    let args = checkpoint_args(&c, &cached, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&args);
    let r = result(&cached);
    // Embed dim 16 ≤ 384: iBOT's ViT-S layout, CLS of the last 4 blocks, here all 2 blocks.
    assert_eq!(r["config"]["dim"], 32);
    assert_eq!(r["config"]["train_rows"], 21);
    assert_eq!(r["config"]["holdout_rows"], 3);
    assert_eq!(r["config"]["val_rows"], 9);
    assert!(r["linear"]["top1"].as_f64().is_some());
    assert!(r["manifest"]["train"].is_object());

    let augmented = c.p("augmented");
    let args = checkpoint_args(&c, &augmented, &["--augment", "--features", "cls"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&args);
    let r = result(&augmented);
    assert_eq!(r["config"]["augment"], true);
    assert_eq!(r["config"]["dim"], 16);
    assert!(r["config"]["features"]
        .as_str()
        .unwrap()
        .contains("augmented"));
    assert_eq!(r["linear"]["curves"]["epoch"], serde_json::json!([1, 2]));
    let top1 = r["linear"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
}
