//! `ibot suite` end to end: generated images, two tiny random ViTs, a seconds-sized suite; the
//! three report files, every task's numbers, and resuming after a crash without redoing work.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{ibot, read_json, s, stderr_of as ok};
use serde_json::Value;

struct Case {
    _tmp: tempfile::TempDir,
    suite: PathBuf,
    a: PathBuf,
    b: PathBuf,
    root: PathBuf,
}

fn setup() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let synth = root.join("synth");
    ok(&ibot(&[
        "data",
        "synth",
        "--out",
        s(&synth),
        "--images",
        "40",
        "--size",
        "32",
    ]));
    let (a, b) = (
        root.join("random-a.safetensors"),
        root.join("random-b.safetensors"),
    );
    // Patch 8, 32 px, width 24, depth 2.
    let cfg = common::tiny_vit(24, 96);
    common::save_random_vit(&a, &cfg, 1);
    common::save_random_vit(&b, &cfg, 2);
    let suite = root.join("tiny.toml");
    std::fs::write(
        &suite,
        r#"
name = "tiny"
cache = "features"

[data]
name = "synth"
transform = { resize = 32, crop = 32 }
train = { format = "image_folder", root = "synth/classification/train" }
val = { format = "image_folder", root = "synth/classification/val" }

[knn]
k = [1, 5]

[linear]
sweep = "lr-only"
epochs = 2
batch_size = 16
features = "cls"

[semisup]
percent = [50]
protocols = ["logreg", "knn"]
k = 5
holdout = 0.0

[cluster]
methods = ["kmeans"]
restarts = 2

[attention]
images = 2
"#,
    )
    .unwrap();
    Case {
        _tmp: tmp,
        suite,
        a,
        b,
        root,
    }
}

fn suite_args<'a>(c: &'a Case, out: &'a Path) -> Vec<&'a str> {
    vec![
        "suite",
        "--config",
        s(&c.suite),
        "--checkpoint",
        s(&c.a),
        "--checkpoint",
        s(&c.b),
        "--out",
        s(out),
    ]
}

/// The lines of `ibot suite`'s per-unit log.
fn unit_log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("suite.log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mtimes(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut out = BTreeMap::new();
    for ckpt in std::fs::read_dir(dir.join("results")).into_iter().flatten() {
        for f in std::fs::read_dir(ckpt.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            out.insert(
                p.clone(),
                std::fs::metadata(&p).unwrap().modified().unwrap(),
            );
        }
    }
    out
}

#[test]
fn suite_writes_three_reports_and_resumes_without_redoing_work() {
    let c = setup();
    let out = c.root.join("report");
    let log = ok(&ibot(&suite_args(&c, &out)));
    for f in ["report.json", "report.md", "report.html"] {
        assert!(out.join(f).exists(), "{f} missing\n{log}");
    }
    let report = read_json(&out.join("report.json"));
    let names: Vec<&str> = report["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["random-a", "random-b"]);
    assert_eq!(
        report["checkpoints"][0]["sha256"].as_str().unwrap().len(),
        64
    );
    for name in names {
        let km = &report["results"]["cluster"][name]["cluster"]["kmeans"];
        for metric in ["acc", "nmi", "ari", "fmi"] {
            let v = km[metric]
                .as_f64()
                .unwrap_or_else(|| panic!("{metric}: {km}"));
            assert!((-1.0..=1.0).contains(&v), "{metric} = {v}");
        }
        for k in ["1", "5"] {
            let top1 = report["results"]["knn"][name]["knn"][k]["top1"]
                .as_f64()
                .unwrap();
            assert!((0.0..=1.0).contains(&top1), "k-NN top-1 {top1}");
        }
        let linear = &report["results"]["linear"][name]["linear"];
        assert!(
            (0.0..=1.0).contains(&linear["top1"].as_f64().unwrap()),
            "{linear}"
        );
        assert!(!linear["sweep"].as_array().unwrap().is_empty(), "{linear}");
        let images = report["results"]["attention"][name]["images"]
            .as_array()
            .unwrap();
        assert_eq!(images.len(), 2);
        for img in images {
            let png = image::open(out.join(img["file"].as_str().unwrap())).unwrap();
            assert_eq!((png.width(), png.height()), (32, 32));
        }
    }
    // Different random weights: different features, so not the identical clustering.
    assert_ne!(
        report["results"]["cluster"]["random-a"],
        report["results"]["cluster"]["random-b"]
    );
    let m = &report["manifest"];
    assert_eq!(m["tasks_run"], 10);
    assert_eq!(m["tasks_skipped"], 0);
    // stderr is not a terminal here: no bar is drawn, and each unit leaves one JSON log line.
    assert!(
        !log.contains('\r') && !log.contains("\x1b["),
        "bars drawn:\n{log}"
    );
    let units = unit_log(&out);
    assert_eq!(units.len(), 10, "{units:?}");
    let mut seen = std::collections::BTreeSet::new();
    for (i, u) in units.iter().enumerate() {
        assert_eq!(u["done"], i as u64 + 1, "{u}");
        assert_eq!(u["total"], 10, "{u}");
        assert_eq!(u["status"], "done", "{u}");
        assert!(u["seconds"].as_f64().unwrap() > 0.0, "{u}");
        seen.insert((u["checkpoint"].to_string(), u["task"].to_string()));
    }
    assert_eq!(seen.len(), 10, "a unit was logged twice: {units:?}");
    assert!(m["rustc"].as_str().unwrap().starts_with("rustc "));
    assert!(m["wall_seconds"]["cluster"]["random-b"].as_f64().unwrap() > 0.0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for section in [
        "## k-NN",
        "## Linear probing",
        "## Unsupervised classification",
    ] {
        assert!(md.contains(section), "{section} missing\n{md}");
    }
    assert!(md.contains("| random-b |"), "{md}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    assert!(html.contains("data:image/png;base64,"));
    assert!(html.contains("Confusion (cluster.kmeans): random-a"));
    assert!(html.contains("Clustering (kmeans)"));
    assert!(html.contains("k-NN top-1 vs k") && html.contains("Linear probe sweep: random-b"));

    // A crash lost the reports and one result: the re-run redoes only that one.
    let before = mtimes(&out);
    for f in ["report.json", "report.md", "report.html"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let lost = out.join("results/random-b/cluster.json");
    std::fs::remove_file(&lost).unwrap();
    let log = ok(&ibot(&suite_args(&c, &out)));
    assert_eq!(log.matches("done earlier, skipped").count(), 9, "{log}");
    let after = mtimes(&out);
    for (path, t) in &before {
        if path != &lost {
            assert_eq!(after[path], *t, "{} was rewritten", path.display());
        }
    }
    let again = read_json(&out.join("report.json"));
    assert_eq!(again["manifest"]["tasks_run"], 1);
    assert_eq!(again["manifest"]["tasks_skipped"], 9);
    // The log is appended: the re-run counts its own units, skipped ones included.
    let units = unit_log(&out);
    assert_eq!(units.len(), 20);
    let rerun = &units[10..];
    assert!(rerun
        .iter()
        .enumerate()
        .all(|(i, u)| u["done"] == i as u64 + 1));
    let redone: Vec<_> = rerun.iter().filter(|u| u["status"] == "done").collect();
    assert_eq!(redone.len(), 1, "{rerun:?}");
    assert_eq!(
        (&redone[0]["checkpoint"], &redone[0]["task"]),
        (&Value::from("random-b"), &Value::from("cluster"))
    );
    assert_eq!(rerun.iter().filter(|u| u["status"] == "skipped").count(), 9);
    // Same inputs, same seed: the recomputed result equals the first one.
    let kmeans = |r: &Value| {
        let km = &r["results"]["cluster"]["random-b"]["cluster"]["kmeans"];
        ["acc", "nmi", "ari", "fmi", "inertia"].map(|m| km[m].clone())
    };
    assert_eq!(kmeans(&again), kmeans(&report));
    assert_eq!(
        again["results"]["attention"],
        report["results"]["attention"]
    );

    // Changed options are not "done": the cluster tasks run again, the others are reused.
    let text = std::fs::read_to_string(&c.suite).unwrap();
    std::fs::write(&c.suite, text.replace("restarts = 2", "restarts = 3")).unwrap();
    let log = ok(&ibot(&suite_args(&c, &out)));
    assert_eq!(log.matches("done earlier, skipped").count(), 8, "{log}");
}

#[test]
fn suite_killed_midway_finishes_on_rerun() {
    let c = setup();
    let out = c.root.join("report");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ibot"))
        .args(suite_args(&c, &out))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the first result is on disk (or whenever the run ends first).
    let start = Instant::now();
    while mtimes(&out).is_empty() && start.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let done = mtimes(&out).len();
    assert!(done >= 1, "no result was written before the kill");
    ok(&ibot(&suite_args(&c, &out)));
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["manifest"]["tasks_skipped"], done as u64);
    assert_eq!(report["manifest"]["tasks_run"], 10 - done as u64);
    assert_eq!(mtimes(&out).len(), 10);
}

#[test]
fn suite_rejects_bad_configs_before_running() {
    let c = setup();
    let out = c.root.join("report");
    let text = std::fs::read_to_string(&c.suite).unwrap();
    std::fs::write(&c.suite, text.replace("restarts = 2", "restart = 2")).unwrap();
    let o = ibot(&suite_args(&c, &out));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[cluster]") && err.contains("restart"),
        "{err}"
    );
    assert!(
        !out.join("results").exists(),
        "work started despite a bad config"
    );

    std::fs::write(
        &c.suite,
        text.replace("name = \"tiny\"", "name = \"tiny\"\nbogus = 1"),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&ibot(&suite_args(&c, &out)).stderr).into_owned();
    assert!(err.contains("tiny.toml") && err.contains("bogus"), "{err}");

    std::fs::write(&c.suite, &text).unwrap();
    let o = ibot(&[
        "suite",
        "--config",
        s(&c.suite),
        "--checkpoint",
        "/no/such.pth",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such.pth"), "{err}");
}

/// Every image of an ImageFolder split as raw bytes / 255 (HWC: cosine similarity does not care
/// about the order of the coordinates), with its class index.
fn raw_pixels(root: &Path) -> (ndarray::Array2<f32>, Vec<usize>) {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    let (mut rows, mut labels, mut dim) = (Vec::new(), Vec::new(), 0);
    for (label, dir) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let img = image::open(&f).unwrap().to_rgb8();
            assert_eq!((img.width(), img.height()), (32, 32));
            dim = img.as_raw().len();
            rows.extend(img.as_raw().iter().map(|&v| v as f32 / 255.0));
            labels.push(label);
        }
    }
    (
        ndarray::Array2::from_shape_vec((labels.len(), dim), rows).unwrap(),
        labels,
    )
}

#[test]
fn the_pixel_baseline_is_a_checkpoint_like_any_other() {
    let c = setup();
    let out = c.root.join("report-pixels");
    let log = ok(&ibot(&[
        "suite",
        "--config",
        s(&c.suite),
        "--checkpoint",
        "pixels",
        "--checkpoint",
        "thumb=pixels:8",
        "--checkpoint",
        &format!("random={}", s(&c.a)),
        "--out",
        s(&out),
    ]));
    let report = read_json(&out.join("report.json"));
    let names: Vec<&str> = report["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pixels", "thumb", "random"]);
    // k-NN on the raw pixels, computed here from the PNG bytes.
    let synth = c.root.join("synth/classification");
    let (train, train_y) = raw_pixels(&synth.join("train"));
    let (val, val_y) = raw_pixels(&synth.join("val"));
    let params = knn::Params {
        ks: vec![1, 5],
        ..knn::Params::default()
    };
    let want = knn::classify(train, &train_y, val, &val_y, &params, &|_| {}).unwrap();
    for s in &want {
        assert_eq!(
            report["results"]["knn"]["pixels"]["knn"][s.k.to_string()]["top1"]
                .as_f64()
                .unwrap(),
            s.top1(),
            "k = {}",
            s.k
        );
    }
    let manifest = &report["results"]["knn"]["pixels"]["manifest"]["train"];
    assert_eq!(manifest["features"]["dim"], 3 * 32 * 32, "{manifest}");
    assert_eq!(
        report["results"]["knn"]["thumb"]["manifest"]["train"]["features"]["dim"],
        3 * 8 * 8
    );
    // The frozen-feature protocols run on it; the model-only ones say so instead of failing.
    for name in ["pixels", "thumb"] {
        for task in ["knn", "linear", "semisup", "cluster"] {
            let body = &report["results"][task][name];
            assert!(body.get("status").is_none(), "{task} · {name}: {body}");
        }
        assert_eq!(
            report["results"]["attention"][name]["status"], "not_available",
            "{log}"
        );
    }
    let km = report["results"]["cluster"]["pixels"]["cluster"]["kmeans"]["nmi"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&km));
    let units = unit_log(&out);
    assert_eq!(
        units
            .iter()
            .filter(|u| u["status"] == "not_available")
            .count(),
        2
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("pixels"), "{md}");

    // `ibot eval knn` takes it too, with the same numbers.
    let data = c.root.join("data.toml");
    common::write_data_config(&data, s(&synth.join("train")), s(&synth.join("val")));
    let eval = c.root.join("eval-pixels");
    ok(&ibot(&[
        "eval",
        "knn",
        "--checkpoint",
        "pixels",
        "--data",
        s(&data),
        "--k",
        "1,5",
        "--cache",
        s(&c.root.join("cache")),
        "--out",
        s(&eval),
    ]));
    let r = common::result(&eval);
    for s in &want {
        assert_eq!(
            r["knn"][s.k.to_string()]["top1"].as_f64().unwrap(),
            s.top1()
        );
    }
    // A bad size is an error naming the form.
    let err = common::failure(&[
        "eval",
        "knn",
        "--checkpoint",
        "pixels:0",
        "--data",
        s(&data),
        "--out",
        s(&eval),
    ]);
    assert!(err.contains("pixels:SIZE"), "{err}");
}
