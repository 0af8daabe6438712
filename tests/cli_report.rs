//! `ibot report`: rendering of report.json into report.md / report.html, and merging runs.
//! The inputs are report directories written here from fixture JSON in the shape `ibot suite` writes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ibot, s, stdout_of as ok};
use serde_json::{json, Value};

fn knn(k20: f64, k10: f64) -> Value {
    json!({
        "knn": {"10": {"top1": k10, "top5": 0.9}, "20": {"top1": k20, "top5": 0.95}},
        "config": {"protocol": "knn", "temperature": 0.07},
        "manifest": {"train_features": {"sha256": "ab"}},
    })
}

fn linear(top1: f64) -> Value {
    json!({
        "linear": {
            "top1": top1, "top5": 0.97,
            "selected": {"optimizer": "sgd", "lr": 0.001, "weight_decay": 0.0, "epoch": 20, "holdout_top1": 0.7},
            "best_on_val": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "epoch": 18, "val_top1": top1 + 0.01},
            "sweep": [
                {"optimizer": "sgd", "lr": 0.001, "weight_decay": 0.0, "holdout_top1": 0.70, "val_top1": 0.69},
                {"optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "holdout_top1": 0.68, "val_top1": 0.70},
                {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0, "holdout_top1": 0.50, "val_top1": 0.52},
                {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.05, "holdout_top1": 0.66, "val_top1": 0.65}
            ],
        },
        "config": {}, "manifest": {},
    })
}

fn cluster(acc: f64) -> Value {
    json!({
        "cluster": {
            "kmeans": {"acc": acc, "nmi": 0.5, "ari": 0.3, "fmi": 0.4, "k": 3, "inertia": 12.5,
                       "confusion": [[5, 1, 0], [0, 6, 0], [1, 0, 5]]},
            "head": {"acc": 0.2, "nmi": 0.1, "ari": 0.05, "fmi": 0.3, "k": 3},
        },
        "config": {}, "manifest": {},
    })
}

/// A report directory as `ibot suite` leaves it, with one attention PNG for the first checkpoint.
fn write_run(dir: &Path, names: [&str; 2], shift: f64) {
    std::fs::create_dir_all(dir.join("attention").join(names[0])).unwrap();
    let png = dir.join("attention").join(names[0]).join("0.png");
    image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, 128])
    })
    .save(&png)
    .unwrap();
    let report = json!({
        "suite": {"name": "fixture", "file": "fixture.toml", "config": {}},
        "checkpoints": [
            {"name": names[0], "path": "/ckpt/a.pth", "sha256": "0123456789abcdef0123", "bytes": 2048},
            {"name": names[1], "path": "/ckpt/b.pth", "sha256": "fedcba9876543210fedc", "bytes": 4096},
        ],
        "results": {
            "knn": {names[0]: knn(0.671 + shift, 0.65), names[1]: knn(0.713 + shift, 0.64)},
            "linear": {names[0]: linear(0.755), names[1]: linear(0.74)},
            "cluster": {names[0]: cluster(0.40), names[1]: cluster(0.434)},
            "semisup": {
                names[0]: {"semisup": {"1%": {"logreg": {"top1": 0.5, "top5": 0.8, "lambda": 0.1}, "knn": {"top1": 0.45, "top5": 0.7}, "train_images": 10}}},
                names[1]: {"status": "failed", "error": "out of memory"},
            },
            "attention": {names[0]: {"images": [{"file": format!("attention/{}/0.png", names[0]), "caption": "val 0 (class 1)"}]}},
        },
        "manifest": {
            "ibot_version": "0.1.0", "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:01:00Z",
            "wall_seconds": {"knn": {names[0]: 1.25, names[1]: 2.5}},
        },
        "pretraining": {names[1]: [
            {"epoch": 0, "step": 0, "loss": 9.0, "cls": 5.0, "patch": 4.0},
            {"epoch": 0, "step": 1, "loss": 8.0, "cls": 4.5, "patch": 3.5},
            {"epoch": 1, "step": 2, "loss": 7.5, "cls": 4.4, "patch": 3.1},
        ]},
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}

fn assert_self_contained(html: &str) {
    for bad in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
        "@import",
    ] {
        assert!(
            !html.contains(bad),
            "report.html references the network: {bad}"
        );
    }
}

#[test]
fn report_renders_paper_style_tables_and_a_self_contained_page() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, ["dino", "ibot"], 0.0);
    let before: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    ok(&ibot(&["report", s(&run), "--out", s(&run)]));

    // report.json round-trips: re-rendering in place keeps every number.
    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(before["results"], after["results"]);
    assert_eq!(before["checkpoints"], after["checkpoints"]);

    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    // k-NN: one decimal in %, best bold, delta against the first checkpoint.
    assert!(
        md.contains("| Checkpoint | k=10 top-1 | k=10 top-5 | k=20 top-1 | k=20 top-5 |"),
        "{md}"
    );
    assert!(
        md.contains("| dino | **65.0** | 90.0 | 67.1 | 95.0 |"),
        "{md}"
    );
    assert!(
        md.contains("| ibot | 64.0 (-1.0) | 90.0 (+0.0) | **71.3** (+4.2) | 95.0 (+0.0) |"),
        "{md}"
    );
    // Linear: selected head and the DINO-style best-on-val; hyper-parameters as text.
    assert!(
        md.contains("| dino | **75.5** | 97.0 | **76.5** | sgd | 0.001 | 0 | 20 |"),
        "{md}"
    );
    assert!(
        md.contains("| ibot | 74.0 (-1.5) | 97.0 (+0.0) | 75.0 (-1.5) | sgd | 0.001 | 0 | 20 |"),
        "{md}"
    );
    // Clustering in the paper's column order; a failed task is stated, not hidden.
    assert!(
        md.contains("| head ACC | head ARI | head NMI | head FMI | kmeans ACC |"),
        "{md}"
    );
    assert!(md.contains("| **43.4** (+3.4) |"), "{md}");
    assert!(md.contains("| ibot | failed: out of memory |"), "{md}");
    assert!(md.contains("| dino | 50.0 | 45.0 |"), "{md}");
    assert!(md.contains("| dino | 1.2 |\n| ibot | 2.5 |"), "{md}");

    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_self_contained(&html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<b>71.3</b> <span class=\"delta\">(+4.2)</span>"));
    // Charts: k-NN vs k, the lr sweep, clustering bars, confusion, loss curves; attention inline.
    for title in [
        "k-NN top-1 vs k",
        "Linear probe sweep: dino",
        "Clustering (kmeans)",
        "Confusion (cluster.kmeans): ibot",
        "Training loss: ibot",
    ] {
        assert!(html.contains(title), "chart {title:?} missing");
    }
    assert!(
        html.matches("<svg").count() >= 8,
        "expected inline SVG charts"
    );
    assert!(html.contains("src=\"data:image/png;base64,iVBORw0KGgo"));
}

#[test]
fn report_merges_runs_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let (monday, tuesday, out) = (
        tmp.path().join("monday"),
        tmp.path().join("tuesday"),
        tmp.path().join("merged"),
    );
    write_run(&monday, ["dino", "ibot"], 0.0);
    write_run(&tuesday, ["ibot", "ibot-long"], 0.05);
    ok(&ibot(&[
        "report",
        s(&monday),
        s(&tuesday),
        "--out",
        s(&out),
    ]));
    let merged: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let names: Vec<&str> = merged["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dino", "ibot", "ibot@tuesday", "ibot-long"]);
    assert_eq!(
        merged["results"]["knn"]["ibot@tuesday"]["knn"]["20"]["top1"],
        0.671 + 0.05
    );
    assert_eq!(merged["results"]["knn"]["ibot"]["knn"]["20"]["top1"], 0.713);
    assert_eq!(
        merged["manifest"]["merged_from"].as_array().unwrap().len(),
        2
    );
    // The renamed checkpoint's attention images were copied next to the merged report.
    let file = merged["results"]["attention"]["ibot@tuesday"]["images"][0]["file"]
        .as_str()
        .unwrap();
    assert!(out.join(file).exists(), "{file} not copied");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| ibot@tuesday | **65.0** (+0.0) | 90.0 (+0.0) | 72.1 (+5.0) | 95.0 (+0.0) |"),
        "{md}"
    );
    assert!(
        md.contains("| ibot-long | 64.0 (-1.0) | 90.0 (+0.0) | **76.3** (+9.2) |"),
        "{md}"
    );
    assert_self_contained(&std::fs::read_to_string(out.join("report.html")).unwrap());
}

#[test]
fn report_rejects_what_is_not_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ibot(&["report", s(tmp.path()), "--out", s(&tmp.path().join("o"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("report.json") && err.contains("cannot read"),
        "{err}"
    );

    std::fs::write(
        tmp.path().join("report.json"),
        "{\"suite\": 1, \"bogus\": 2}",
    )
    .unwrap();
    let out = ibot(&["report", s(tmp.path()), "--out", s(&tmp.path().join("o"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid ibot report"), "{err}");
}

/// The page renders in a real browser: headless Chromium screenshots it (skipped where Chromium is
/// not installed, e.g. on CI runners without it).
#[test]
fn report_page_renders_in_headless_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(chromium) = chromium else {
        eprintln!("note: chromium not installed; screenshot test skipped");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    write_run(&run, ["dino", "ibot"], 0.0);
    ok(&ibot(&["report", s(&run), "--out", s(&run)]));
    let png = tmp.path().join("shot.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/screenshot_report.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(run.join("report.html"))
        .arg(&png)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run screenshot script");
    assert!(
        out.status.success(),
        "screenshot failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shot = image::open(&png).expect("a PNG screenshot").to_rgb8();
    assert_eq!(shot.width(), 1280);
    // Not a blank page: the tables and charts leave many distinct colours.
    let mut colours: Vec<[u8; 3]> = shot.pixels().step_by(7).map(|p| p.0).collect();
    colours.sort();
    colours.dedup();
    assert!(
        colours.len() > 50,
        "screenshot looks blank ({} colours)",
        colours.len()
    );
}
