//! Helpers shared by the end-to-end tests of the `ibot` binary (tests/cli_*.rs): running it,
//! checking how it ended, and writing the tiny inputs (features, labels, images, checkpoints) the
//! tests make at run time.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::Array2;
use ndarray_npy::WriteNpyExt;
use serde_json::Value;

/// Runs the binary under test from the repository root.
pub fn ibot<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ibot"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run ibot")
}

/// Runs it and asserts success (stderr in the message otherwise).
pub fn run_ok<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Output {
    let out = ibot(args);
    assert_success(&out, args);
    out
}

/// [`run_ok`], returning stdout.
pub fn ok_stdout<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    String::from_utf8_lossy(&run_ok(args).stdout).into_owned()
}

/// [`run_ok`], returning stderr (where logs go).
pub fn ok_stderr<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    String::from_utf8_lossy(&run_ok(args).stderr).into_owned()
}

/// [`run_ok`], with stdout parsed as JSON.
pub fn ok_json<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Value {
    let out = run_ok(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ibot {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// stdout of a finished run that must have succeeded.
pub fn stdout_of(out: &Output) -> String {
    assert_success(out, "");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr (the logs) of a finished run that must have succeeded.
pub fn stderr_of(out: &Output) -> String {
    assert_success(out, "");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_success(out: &Output, what: impl std::fmt::Debug) {
    assert!(
        out.status.success(),
        "ibot {what:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs it, asserts a clean failure (no panic) and returns stderr.
pub fn failure<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = ibot(args);
    assert!(!out.status.success(), "ibot {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// Owned command-line arguments from string slices.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `dir/result.json` of an `ibot eval` command.
pub fn result(dir: &Path) -> Value {
    read_json(&dir.join("result.json"))
}

pub fn write_npy<T: ndarray_npy::WritableElement>(path: &Path, a: &Array2<T>) {
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

/// One label per line.
pub fn write_labels(path: &Path, labels: &[usize]) {
    let text: String = labels.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A temporary directory that lives as long as the case.
pub struct TempCase {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
}

impl TempCase {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        TempCase {
            _dir: dir,
            dir: path,
        }
    }

    pub fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The four inputs of the precomputed mode of `ibot eval knn|linear|semisup`.
pub struct FeatureFiles {
    pub train: PathBuf,
    pub train_labels: PathBuf,
    pub test: PathBuf,
    pub test_labels: PathBuf,
}

impl FeatureFiles {
    /// Writes `train.npy`, `train_labels.txt`, `test.npy`, `test_labels.txt` into `dir`.
    pub fn write(
        dir: &Path,
        (train, train_labels): (&Array2<f32>, &[usize]),
        (test, test_labels): (&Array2<f32>, &[usize]),
    ) -> Self {
        let files = FeatureFiles::named(dir);
        write_npy(&files.train, train);
        write_npy(&files.test, test);
        write_labels(&files.train_labels, train_labels);
        write_labels(&files.test_labels, test_labels);
        files
    }

    /// The file names [`FeatureFiles::write`] uses, without writing.
    pub fn named(dir: &Path) -> Self {
        FeatureFiles {
            train: dir.join("train.npy"),
            train_labels: dir.join("train_labels.txt"),
            test: dir.join("test.npy"),
            test_labels: dir.join("test_labels.txt"),
        }
    }

    /// Clustered features from `knn::synthetic` (class centres in the unit box, uniform noise).
    pub fn clustered(
        dir: &Path,
        seed: u64,
        (n_train, n_test): (usize, usize),
        classes: usize,
        dim: usize,
        noise: f32,
    ) -> Self {
        let train_y = knn::synthetic::labels(seed, 3, n_train, classes, 1);
        let test_y = knn::synthetic::labels(seed, 4, n_test, classes, 1);
        FeatureFiles::write(
            dir,
            (
                &knn::synthetic::clustered(seed, 0, 1, &train_y, dim, noise),
                &train_y,
            ),
            (
                &knn::synthetic::clustered(seed, 0, 5, &test_y, dim, noise),
                &test_y,
            ),
        )
    }

    /// `ibot eval <protocol>` in precomputed mode, then `extra`.
    pub fn args(&self, protocol: &str, extra: &[&str]) -> Vec<String> {
        let mut a = strings(&[
            "eval",
            protocol,
            "--train-features",
            s(&self.train),
            "--train-labels",
            s(&self.train_labels),
            "--test-features",
            s(&self.test),
            "--test-labels",
            s(&self.test_labels),
        ]);
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    }
}

/// A random-init ViT of 2 blocks and 2 heads, patch 8 at 32 px.
pub fn tiny_vit(embed_dim: usize, mlp_hidden: usize) -> backbone::VitConfig {
    backbone::VitConfig {
        embed_dim,
        depth: 2,
        num_heads: 2,
        mlp_hidden,
        patch_size: 8,
        img_size: 32,
        in_chans: 3,
        drop_path_rate: 0.0,
        masked_im_modeling: false,
    }
}

/// Random-init weights of `cfg` as safetensors with the config metadata.
pub fn save_random_vit(path: &Path, cfg: &backbone::VitConfig, seed: u64) {
    let mut weights: Vec<_> = backbone::init::init_weights(cfg, seed)
        .unwrap()
        .into_iter()
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    backbone::checkpoint::save_safetensors(
        path,
        &weights,
        backbone::checkpoint::config_metadata(cfg),
    )
    .unwrap();
}

/// `root/{red,green,blue}/NN.png`, 40×36 noise with a class-dependent dominant channel.
pub fn write_image_folder(root: &Path, per_class: usize, seed: u64) {
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

/// A data config (32 px, resize = crop) over image folders, paths relative to the config file.
pub fn write_data_config(path: &Path, train_root: &str, val_root: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        format!(
            "name = \"tiny\"\ntransform = {{ resize = 32, crop = 32 }}\n\
             [train]\nformat = \"image_folder\"\nroot = \"{train_root}\"\n\
             [val]\nformat = \"image_folder\"\nroot = \"{val_root}\"\n"
        ),
    )
    .unwrap();
}
