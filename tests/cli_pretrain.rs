//! End-to-end tests of `ibot pretrain` on generated scenes: the run learns without NaN, resuming
//! reproduces the uninterrupted run exactly, bad recipes and NaN losses stop with clear errors, and
//! the exported teacher loads in the evaluation tools.

mod common;

use std::path::{Path, PathBuf};

use common::{failure as fails, ok_stdout as ok};
use serde_json::Value;

const RECIPE: &str = "configs/pretrain/synthetic-tiny.toml";

fn recipe_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(RECIPE)
}

/// The tiny recipe with TOML text substitutions applied.
/// `pretrain --config CONFIG --out OUT EXTRA…`
fn pretrain_args(config: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = common::strings(&["pretrain", "--config"]);
    args.push(config.to_str().unwrap().to_string());
    args.push("--out".to_string());
    args.push(out.to_str().unwrap().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn variant(dir: &Path, name: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(recipe_path()).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "recipe has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn steps(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("event").is_none())
        .collect()
}

fn losses(log: &Path) -> Vec<f64> {
    steps(log)
        .iter()
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let split = dir.path().join("split");
    ok(&pretrain_args(
        Path::new(RECIPE),
        &full,
        &["--quiet", "--max-steps", "11"],
    ));
    // Stops mid-epoch (4 steps per epoch), then resumes.
    ok(&pretrain_args(
        Path::new(RECIPE),
        &split,
        &["--quiet", "--max-steps", "6"],
    ));
    assert_eq!(losses(&split.join("log.jsonl")).len(), 6);
    ok(&pretrain_args(
        Path::new(RECIPE),
        &split,
        &["--quiet", "--max-steps", "11", "--resume"],
    ));
    let a = losses(&full.join("log.jsonl"));
    let b = losses(&split.join("log.jsonl"));
    assert_eq!(a.len(), 11);
    assert_eq!(a, b, "resumed losses differ from the uninterrupted run");
    let ta = std::fs::read(full.join("teacher.safetensors")).unwrap();
    let tb = std::fs::read(split.join("teacher.safetensors")).unwrap();
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&ta).unwrap(),
        safetensors::SafeTensors::deserialize(&tb).unwrap(),
    );
    assert_eq!(ta.len(), tb.len());
    for (name, view) in ta.tensors() {
        assert!(
            view.data() == tb.tensor(&name).unwrap().data(),
            "resumed teacher {name} differs"
        );
    }
    // Every logged quantity is finite and the schedules move as specified.
    for v in steps(&full.join("log.jsonl")) {
        for key in [
            "loss",
            "cls",
            "patch",
            "lr",
            "wd",
            "momentum",
            "entropy",
            "agreement",
        ] {
            assert!(
                v[key].as_f64().unwrap().is_finite(),
                "{key} not finite in {v}"
            );
        }
    }
    let log = steps(&full.join("log.jsonl"));
    assert_eq!(log[0]["lr"].as_f64().unwrap(), 0.0, "warm-up starts at 0");
    assert!(log[4]["lr"].as_f64().unwrap() > log[1]["lr"].as_f64().unwrap());
    assert!(log[10]["momentum"].as_f64().unwrap() > 0.996);
}

#[test]
fn training_learns_on_generated_scenes() {
    // Fixed teacher temperature so the target's own entropy does not move the loss.
    let dir = tempfile::tempdir().unwrap();
    let recipe = variant(
        dir.path(),
        "learn.toml",
        &[
            ("epochs = 4", "epochs = 40"),
            ("teacher_temp = 0.07", "teacher_temp = 0.04"),
            (
                "warmup_teacher_temp_epochs = 2",
                "warmup_teacher_temp_epochs = 0",
            ),
        ],
    );
    let out = dir.path().join("run");
    ok(&pretrain_args(&recipe, &out, &["--quiet"]));
    let l = losses(&out.join("log.jsonl"));
    assert_eq!(l.len(), 160);
    assert!(l.iter().all(|v| v.is_finite()));
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    // Centering first raises the loss from the identical-networks start; after that the student
    // must close the gap to the teacher.
    let peak = l.chunks(16).map(mean).fold(f64::MIN, f64::max);
    let last = mean(&l[l.len() - 16..]);
    assert!(
        last < peak - 0.2,
        "loss did not come down: peak {peak}, last {last}"
    );
}

#[test]
fn teacher_export_loads_in_the_backbone_tools() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    ok(&pretrain_args(
        Path::new(RECIPE),
        &out,
        &["--quiet", "--max-steps", "2"],
    ));
    for file in [
        "teacher.safetensors",
        "init.safetensors",
        "checkpoint.safetensors",
    ] {
        let path = out.join(file);
        let text = ok(&["inspect", path.to_str().unwrap()]);
        assert!(text.contains("depth"), "inspect {file}: {text}");
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
}

#[test]
fn bad_recipes_and_misuse_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = variant(
        dir.path(),
        "unknown.toml",
        &[("[optim]", "[optim]\nlearning_rate = 1.0")],
    );
    let err = fails(&pretrain_args(&unknown, &dir.path().join("a"), &[]));
    assert!(
        err.contains("unknown.toml") && err.contains("learning_rate"),
        "{err}"
    );

    let bad_crop = variant(
        dir.path(),
        "crop.toml",
        &[("local_size = 16", "local_size = 12")],
    );
    let err = fails(&pretrain_args(&bad_crop, &dir.path().join("b"), &[]));
    assert!(err.contains("multiples of the patch size"), "{err}");

    let out = dir.path().join("run");
    let err = fails(&pretrain_args(Path::new(RECIPE), &out, &["--resume"]));
    assert!(err.contains("nothing to resume"), "{err}");
    ok(&pretrain_args(
        Path::new(RECIPE),
        &out,
        &["--quiet", "--max-steps", "1"],
    ));
    let err = fails(&pretrain_args(Path::new(RECIPE), &out, &["--quiet"]));
    assert!(err.contains("--resume"), "{err}");
    let other = variant(dir.path(), "other.toml", &[("lr = 5e-4", "lr = 1e-3")]);
    let err = fails(&pretrain_args(&other, &out, &["--resume"]));
    assert!(err.contains("optim.lr"), "{err}");
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = variant(
        dir.path(),
        "diverge.toml",
        &[
            ("lr = 5e-4", "lr = 1e30"),
            ("warmup_epochs = 1", "warmup_epochs = 0\nclip_grad = 0.0"),
            (
                "loader_threads = 2",
                "loader_threads = 2\ncheckpoint_every = 1",
            ),
        ],
    );
    let out = dir.path().join("run");
    let err = fails(&pretrain_args(&recipe, &out, &["--quiet"]));
    assert!(
        err.contains("loss is") && err.contains("last good checkpoint"),
        "{err}"
    );
    let logged = losses(&out.join("log.jsonl"));
    assert!(logged.iter().all(|v| v.is_finite()));
    if !logged.is_empty() {
        // The checkpoint on disk is the last finite step and resumes.
        let text = ok(&[
            "inspect",
            out.join("checkpoint.safetensors").to_str().unwrap(),
        ]);
        assert!(text.contains("depth"));
    }
}

#[test]
fn identical_runs_write_byte_identical_checkpoints() {
    // Same recipe, same seed, two directories: every safetensors file must be the same bytes
    // (the header's metadata map used to come out in hash order).
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        ok(&pretrain_args(
            Path::new(RECIPE),
            out,
            &["--quiet", "--max-steps", "5"],
        ));
    }
    for file in [
        "teacher.safetensors",
        "checkpoint.safetensors",
        "init.safetensors",
    ] {
        let (x, y) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert!(
            x == y,
            "{file}: two identical runs wrote different bytes ({} vs {} bytes)",
            x.len(),
            y.len()
        );
    }
}

#[test]
fn eval_section_logs_the_teachers_knn_as_ibot_eval_knn_computes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::write_image_folder(&data.join("train"), 8, 1);
    common::write_image_folder(&data.join("val"), 4, 2);
    let data_cfg = dir.path().join("tiny-data.toml");
    common::write_data_config(&data_cfg, "data/train", "data/val");
    let mut text = std::fs::read_to_string(recipe_path()).unwrap();
    // Relative to the recipe's directory.
    text += "\n[eval]\ndata = \"tiny-data.toml\"\nevery = 2\nk = [5, 20]\n";
    let recipe = dir.path().join("eval.toml");
    std::fs::write(&recipe, text).unwrap();
    let out = dir.path().join("run");
    ok(&pretrain_args(&recipe, &out, &["--quiet"]));
    let events: Vec<Value> = std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "knn")
        .collect();
    // The initial weights, then after epochs 2 and 4 (of 4).
    let done: Vec<u64> = events
        .iter()
        .map(|e| e["epochs_done"].as_u64().unwrap())
        .collect();
    assert_eq!(done, [0, 2, 4]);
    assert_eq!(events[0]["step"], 0);
    assert_eq!(events[2]["step"], 16);
    assert_eq!(events[2]["train_images"], 24);
    assert_eq!(events[2]["val_images"], 12);
    // The last point is what the evaluation protocol says of the exported teacher.
    let eval = dir.path().join("knn");
    ok(&[
        "eval",
        "knn",
        "--checkpoint",
        out.join("teacher.safetensors").to_str().unwrap(),
        "--data",
        data_cfg.to_str().unwrap(),
        "--k",
        "5,20",
        "--cache",
        dir.path().join("cache").to_str().unwrap(),
        "--out",
        eval.to_str().unwrap(),
    ]);
    let result = common::result(&eval);
    for k in ["5", "20"] {
        assert_eq!(
            events[2]["knn"][k]["top1"], result["knn"][k]["top1"],
            "k = {k}: the log's last point and `ibot eval knn` disagree"
        );
    }
    // The same for the initial weights.
    let init = dir.path().join("knn-init");
    ok(&[
        "eval",
        "knn",
        "--checkpoint",
        out.join("init.safetensors").to_str().unwrap(),
        "--data",
        data_cfg.to_str().unwrap(),
        "--k",
        "5,20",
        "--cache",
        dir.path().join("cache").to_str().unwrap(),
        "--out",
        init.to_str().unwrap(),
    ]);
    assert_eq!(
        events[0]["knn"]["20"]["top1"],
        common::result(&init)["knn"]["20"]["top1"]
    );
}
