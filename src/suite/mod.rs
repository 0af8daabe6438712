//! `ibot suite`: every task a suite lists, for every checkpoint, sharing one feature store;
//! resumable (finished results are kept per task and checkpoint), then one report.

pub mod config;

use std::collections::BTreeMap;
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cmd_eval::EvalContext;
use crate::protocols::UnitContext;
use crate::report::{self, safe_file_name, CheckpointInfo, Report};
use config::Suite;

#[derive(Args)]
pub struct SuiteArgs {
    /// Suite file (configs/suites/<name>.toml).
    #[arg(long)]
    config: PathBuf,
    /// Checkpoint to evaluate, as PATH or NAME=PATH (default name: the file stem); repeatable.
    /// The first one is the baseline of the report's deltas.
    #[arg(long = "checkpoint", value_name = "[NAME=]PATH", required = true)]
    checkpoints: Vec<String>,
    /// Report directory: report.{json,md,html}, results/, the feature store (unless the suite
    /// says otherwise).
    #[arg(long)]
    out: PathBuf,
    /// Pretraining log (`ibot pretrain`'s log.jsonl) to plot, as NAME=PATH; repeatable.
    #[arg(long = "pretrain-log", value_name = "NAME=PATH")]
    pretrain_logs: Vec<String>,
    /// Checkpoint sub-dict (overrides the suite's [model] key).
    #[arg(long)]
    key: Option<String>,
    /// Architecture preset (overrides the suite's [model] arch).
    #[arg(long)]
    arch: Option<String>,
    /// Recompute every task even where a matching result exists.
    #[arg(long)]
    force: bool,
    /// Hide the progress display (log lines still go to stderr, and one JSON line per unit to
    /// DIR/suite.log.jsonl).
    #[arg(long)]
    quiet: bool,
}

/// One finished (task, checkpoint): what `results/<checkpoint>/<task>.json` holds.
const RECORD_VERSION: u64 = 1;

/// The per-unit JSON-lines log in the report directory.
pub const UNIT_LOG: &str = "suite.log.jsonl";

/// The protocols that run on frozen features alone, so also on the `pixels` baseline; the others
/// need a model and record `not_available` for it.
const PIXEL_TASKS: &[&str] = &["knn", "linear", "semisup", "cluster"];

pub fn run(args: SuiteArgs) -> anyhow::Result<()> {
    let started = report::now_rfc3339();
    let suite = Suite::load(&args.config)?;
    let key = args.key.clone().or(suite.file.model.key.clone());
    let arch = args.arch.clone().or(suite.file.model.arch.clone());

    // Validate every task table before hours of work start.
    let mut effective: BTreeMap<&str, Value> = BTreeMap::new();
    for (task, table) in &suite.tasks {
        let opts = (task.check)(table).with_context(|| format!("{}", args.config.display()))?;
        effective.insert(task.name, opts);
    }
    let checkpoints = resolve_checkpoints(&args.checkpoints)?;
    let mut pretraining = BTreeMap::new();
    for spec in &args.pretrain_logs {
        let (name, path) = crate::cmd_report::parse_named(spec, "--pretrain-log")?;
        pretraining.insert(name, report::read_pretrain_log(&path)?);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let store = features::FeatureStore::new(args.out.join(&suite.file.cache));
    let data_json = serde_json::to_value(&suite.data)?;
    let data_sha256 = sha256_hex(serde_json::to_string(&data_json)?.as_bytes());

    let total = suite.tasks.len() * checkpoints.len();
    let display = features::progress::display(args.quiet);
    let overall = display.add(indicatif::ProgressBar::new(total as u64));
    overall.set_style(indicatif::ProgressStyle::with_template(
        "suite {prefix} {bar:30} {pos}/{len} units [{elapsed} < {eta}] {msg}",
    )?);
    overall.set_prefix(suite.file.name.clone());
    let progress = features::Progress::under(&display);
    let store = store.with_progress(progress.clone());
    let mut log = UnitLog::open(&args.out, total, progress.clone())?;

    let mut results: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    let mut wall: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut failures = Vec::new();
    let (mut ran, mut skipped) = (0usize, 0usize);
    let mut n = 0;
    for ckpt in &checkpoints {
        let model = features::ModelSource {
            checkpoint: ckpt.path.clone(),
            key: key.clone(),
            arch: arch.clone(),
            precision: features::Precision::F32,
        };
        let ctx = EvalContext {
            model: &model,
            data: &suite.data,
            store: &store,
            progress: &progress,
        };
        for (spec, table) in &suite.tasks {
            let task = spec.name;
            n += 1;
            let label = format!("[{n}/{total}] {task} · {}", ckpt.name);
            overall.set_message(format!("{} · {task}", ckpt.name));
            let options = &effective[task];
            let inputs = json!({
                "task": task,
                "options": options,
                "checkpoint_sha256": ckpt.sha256,
                "key": key, "arch": arch,
                "data": data_json,
            });
            let inputs_key = sha256_hex(serde_json::to_string(&inputs)?.as_bytes());
            let record_path = args
                .out
                .join("results")
                .join(safe_file_name(&ckpt.name))
                .join(format!("{task}.json"));
            if !args.force {
                if let Some(record) = read_record(&record_path, &inputs_key) {
                    log.unit(task, &ckpt.name, "skipped", None, None);
                    progress.println(format!("{label}: done earlier, skipped"));
                    wall.entry(task.to_string()).or_default().insert(
                        ckpt.name.clone(),
                        record["wall_seconds"].as_f64().unwrap_or(0.0),
                    );
                    results
                        .entry(task.to_string())
                        .or_default()
                        .insert(ckpt.name.clone(), record["result"].clone());
                    skipped += 1;
                    overall.inc(1);
                    continue;
                }
            }
            if ckpt.pixels && !PIXEL_TASKS.contains(&task) {
                log.unit(task, &ckpt.name, "not_available", None, None);
                progress.println(format!(
                    "{label}: not available for the pixel baseline (no model)"
                ));
                results.entry(task.to_string()).or_default().insert(
                    ckpt.name.clone(),
                    json!({
                        "status": "not_available",
                        "reason": "the pixel baseline has no model (only k-NN, linear, semi-supervised and clustering run on it)",
                    }),
                );
                overall.inc(1);
                continue;
            }
            progress.println(format!("{label} …"));
            let task_started = report::now_rfc3339();
            let clock = Instant::now();
            let unit = UnitContext {
                eval: &ctx,
                checkpoint_name: &ckpt.name,
                report_dir: &args.out,
                work_dir: args
                    .out
                    .join("runs")
                    .join(safe_file_name(&ckpt.name))
                    .join(task),
                base_dir: suite.base_dir(),
            };
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (spec.run)(table, &unit)));
            let seconds = clock.elapsed().as_secs_f64();
            let entry = match outcome {
                Ok(Ok(body)) => {
                    let record = json!({
                        "version": RECORD_VERSION,
                        "task": task,
                        "checkpoint": ckpt.info(),
                        "inputs_key": inputs_key,
                        "inputs": inputs,
                        "started": task_started,
                        "finished": report::now_rfc3339(),
                        "wall_seconds": seconds,
                        "result": body,
                    });
                    report::write_atomic(
                        &record_path,
                        (serde_json::to_string_pretty(&record)? + "\n").as_bytes(),
                    )?;
                    wall.entry(task.to_string())
                        .or_default()
                        .insert(ckpt.name.clone(), seconds);
                    ran += 1;
                    log.unit(task, &ckpt.name, "done", Some(seconds), None);
                    progress.println(format!("{label}: done in {seconds:.1} s"));
                    record["result"].clone()
                }
                Ok(Err(e)) => {
                    let msg = format!("{e:#}");
                    log.unit(task, &ckpt.name, "failed", Some(seconds), Some(&msg));
                    progress.println(format!("{label}: FAILED: {msg}"));
                    failures.push(format!("{task} · {}: {msg}", ckpt.name));
                    json!({"status": "failed", "error": msg})
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".to_string());
                    log.unit(task, &ckpt.name, "failed", Some(seconds), Some(&msg));
                    progress.println(format!("{label}: FAILED (internal error): {msg}"));
                    failures.push(format!("{task} · {}: internal error: {msg}", ckpt.name));
                    json!({"status": "failed", "error": format!("internal error: {msg}")})
                }
            };
            results
                .entry(task.to_string())
                .or_default()
                .insert(ckpt.name.clone(), entry);
            overall.inc(1);
        }
    }
    overall.finish_and_clear();
    display.remove(&overall);

    let seeds: BTreeMap<&str, Value> = effective
        .iter()
        .filter_map(|(t, o)| Some((*t, o.get("seed")?.clone())))
        .collect();
    let report = Report {
        suite: json!({
            "name": suite.file.name,
            "description": suite.file.description,
            "file": suite.path.display().to_string(),
            "config": suite.json,
            "options": effective,
        }),
        checkpoints: checkpoints.iter().map(|c| c.info_struct()).collect(),
        results,
        manifest: json!({
            "ibot_version": env!("CARGO_PKG_VERSION"),
            "rustc": env!("IBOT_RUSTC_VERSION"),
            "candle": env!("IBOT_CANDLE_VERSION"),
            "started": started,
            "finished": report::now_rfc3339(),
            "wall_seconds": wall,
            "seeds": seeds,
            "data": {
                "config": data_json,
                "file": suite.data_path.as_ref().map(|p| p.display().to_string()),
                "transform": suite.data.transform,
            },
            "data_sha256": data_sha256,
            "feature_store": store.root().display().to_string(),
            "model": {"key": key, "arch": arch},
            "threads": rayon::current_num_threads(),
            "tasks_run": ran,
            "tasks_skipped": skipped,
        }),
        pretraining,
    };
    report.write_all(&args.out)?;
    eprintln!(
        "{ran} task(s) run, {skipped} reused; wrote {}",
        args.out.join(report::REPORT_HTML).display()
    );
    if !failures.is_empty() {
        bail!(
            "{} task(s) failed (the report shows the rest; re-run to retry them):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// A finished record whose inputs match, or `None` (missing, unreadable, or made from other inputs).
fn read_record(path: &Path, inputs_key: &str) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    (v["version"] == RECORD_VERSION && v["inputs_key"] == inputs_key && v.get("result").is_some())
        .then_some(v)
}

struct Checkpoint {
    name: String,
    path: PathBuf,
    sha256: String,
    bytes: u64,
    /// The `pixels[:SIZE]` baseline (no file).
    pixels: bool,
}

impl Checkpoint {
    fn info_struct(&self) -> CheckpointInfo {
        CheckpointInfo {
            name: self.name.clone(),
            path: self.path.clone(),
            sha256: self.sha256.clone(),
            bytes: self.bytes,
            run: None,
        }
    }
    fn info(&self) -> Value {
        serde_json::to_value(self.info_struct()).expect("plain struct")
    }
}

/// `[NAME=]PATH` arguments → named, hashed checkpoints; duplicate stems get `-2`, `-3`….
fn resolve_checkpoints(specs: &[String]) -> anyhow::Result<Vec<Checkpoint>> {
    let mut out: Vec<Checkpoint> = Vec::new();
    for spec in specs {
        let (explicit, path) = match spec.split_once('=') {
            Some((name, path)) if !Path::new(spec).exists() && !name.is_empty() => {
                (Some(name.to_string()), PathBuf::from(path))
            }
            _ => (None, PathBuf::from(spec)),
        };
        let pixels = features::PixelSource::from_path(&path)
            .with_context(|| format!("--checkpoint {spec}"))?;
        // The baseline has no file: its name stands for its content in the resume keys.
        let (sha256, bytes) = match &pixels {
            Some(px) => (sha256_hex(px.name().as_bytes()), 0),
            None => hash_file(&path)?,
        };
        let base = explicit.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "checkpoint".to_string())
        });
        let taken = |n: &str| out.iter().any(|c| c.name == n);
        if explicit.is_some() && taken(&base) {
            bail!("--checkpoint {spec}: the name {base:?} is used twice");
        }
        let name = if taken(&base) {
            (2..)
                .map(|i| format!("{base}-{i}"))
                .find(|n| !taken(n))
                .expect("an unused suffix exists")
        } else {
            base
        };
        let path = if pixels.is_some() {
            path
        } else {
            path.canonicalize().unwrap_or(path)
        };
        out.push(Checkpoint {
            name,
            path,
            sha256,
            bytes,
            pixels: pixels.is_some(),
        });
    }
    Ok(out)
}

fn hash_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open checkpoint", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `DIR/suite.log.jsonl`: one JSON line per (checkpoint, task) unit as it ends, appended across runs,
/// so scripts and CI can follow a run whose display is hidden (not a terminal, or `--quiet`).
struct UnitLog {
    file: std::fs::File,
    path: PathBuf,
    run_started: String,
    total: usize,
    done: usize,
    progress: features::Progress,
}

impl UnitLog {
    fn open(dir: &Path, total: usize, progress: features::Progress) -> anyhow::Result<Self> {
        let path = dir.join(UNIT_LOG);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        Ok(UnitLog {
            file,
            path,
            run_started: report::now_rfc3339(),
            total,
            done: 0,
            progress,
        })
    }

    /// `status`: done (ran now), skipped (done earlier), failed, not_available.
    fn unit(
        &mut self,
        task: &str,
        checkpoint: &str,
        status: &str,
        seconds: Option<f64>,
        error: Option<&str>,
    ) {
        use std::io::Write;
        self.done += 1;
        let mut line = json!({
            "time": report::now_rfc3339(),
            "run_started": self.run_started,
            "done": self.done,
            "total": self.total,
            "checkpoint": checkpoint,
            "task": task,
            "status": status,
        });
        if let Some(s) = seconds {
            line["seconds"] = json!(s);
        }
        if let Some(e) = error {
            line["error"] = json!(e);
        }
        // The log is a convenience next to the records that make the run resumable: failing to
        // append is worth a warning, not the run.
        if let Err(e) = writeln!(self.file, "{line}").and_then(|_| self.file.flush()) {
            self.progress
                .println(format!("warning: {}: {e}", self.path.display()));
        }
    }
}
