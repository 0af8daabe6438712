//! Benchmark reports: the `report.json` data model, merging of several runs, and rendering to
//! `report.md` (paper-style tables) and `report.html` (tables + inline SVG charts, no network).
//!
//! `ibot suite` writes a [`Report`]; `ibot report` reads one or more and re-renders them.

pub mod html;
pub mod markdown;
pub mod plots;
pub mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const REPORT_HTML: &str = "report.html";

/// Every number of one or more suite runs, with the provenance needed to trust them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// `{"name", "file", "config"}` of the suite (a list of them for merged reports).
    pub suite: Value,
    /// Row order of every table; the first one is the baseline of the deltas.
    pub checkpoints: Vec<CheckpointInfo>,
    /// task → checkpoint name → the protocol's result body, or `{"status": "failed"|"not_available", …}`.
    pub results: BTreeMap<String, BTreeMap<String, Value>>,
    pub manifest: Value,
    /// Pretraining log rows (`log.jsonl` of `ibot pretrain`) by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pretraining: BTreeMap<String, Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointInfo {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    /// The report directory this row came from, for merged reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Report {
    pub fn load(dir: &Path) -> anyhow::Result<Report> {
        let path = dir.join(REPORT_JSON);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read (is this a report directory?)",
                path.display()
            )
        })?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid ibot report", path.display()))?;
        report
            .validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(report)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.checkpoints {
            if !seen.insert(c.name.as_str()) {
                bail!("checkpoint name {:?} appears twice", c.name);
            }
        }
        for (task, per) in &self.results {
            for name in per.keys() {
                if !seen.contains(name.as_str()) {
                    bail!("results.{task} has checkpoint {name:?}, which is not in checkpoints");
                }
            }
        }
        Ok(())
    }

    /// Tasks present, in table order.
    pub fn tasks(&self) -> Vec<&str> {
        let mut tasks: Vec<&str> = self.results.keys().map(String::as_str).collect();
        tasks.sort_by_key(|t| (crate::protocols::order(t), t.to_string()));
        tasks
    }

    /// The result body of `task` for `checkpoint`, if it holds numbers (not failed / unavailable).
    pub fn body(&self, task: &str, checkpoint: &str) -> Option<&Value> {
        let v = self.results.get(task)?.get(checkpoint)?;
        status_of(v).is_none().then_some(v)
    }

    pub fn checkpoint_names(&self) -> Vec<&str> {
        self.checkpoints.iter().map(|c| c.name.as_str()).collect()
    }

    /// Write report.json, report.md and report.html into `dir` (each atomically).
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(
            &dir.join(REPORT_JSON),
            (serde_json::to_string_pretty(self)? + "\n").as_bytes(),
        )?;
        write_atomic(&dir.join(REPORT_MD), markdown::render(self).as_bytes())?;
        write_atomic(&dir.join(REPORT_HTML), html::render(self, dir)?.as_bytes())?;
        Ok(())
    }
}

/// `Some("failed" | "not_available")` for placeholder entries, `None` for real results.
pub fn status_of(v: &Value) -> Option<&str> {
    v.get("status").and_then(Value::as_str)
}

/// Merge reports of several runs side by side (`ibot report A B --out C`). A checkpoint name that
/// an earlier run already uses gets `@<run>` appended (then `-2`, `-3`… if still taken). Attention
/// images are copied into `out` so the merged report stands alone.
pub fn merge(runs: &[(PathBuf, Report)], out: &Path) -> anyhow::Result<Report> {
    if runs.is_empty() {
        bail!("no report directories given");
    }
    let mut merged = Report {
        suite: Value::Null,
        checkpoints: Vec::new(),
        results: BTreeMap::new(),
        manifest: json!({}),
        pretraining: BTreeMap::new(),
    };
    let mut suites = Vec::new();
    let mut manifests = Vec::new();
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (dir, report) in runs {
        let run = run_label(dir);
        let mut renames = BTreeMap::new();
        for c in &report.checkpoints {
            let name = unique_name(&c.name, &run, &taken);
            taken.insert(name.clone());
            renames.insert(c.name.clone(), name.clone());
            merged.checkpoints.push(CheckpointInfo {
                name,
                // A single run re-rendered in place stays as it was.
                run: c
                    .run
                    .clone()
                    .or_else(|| (runs.len() > 1).then(|| dir.display().to_string())),
                ..c.clone()
            });
        }
        for (task, per) in &report.results {
            for (name, body) in per {
                let new_name = &renames[name];
                let mut body = body.clone();
                if task == "attention" {
                    relocate_attention(&mut body, dir, out, new_name)?;
                }
                merged
                    .results
                    .entry(task.clone())
                    .or_default()
                    .insert(new_name.clone(), body);
            }
        }
        for (name, rows) in &report.pretraining {
            let new_name = match renames.get(name) {
                Some(n) => n.clone(),
                None => {
                    let n = unique_name(name, &run, &merged.pretraining.keys().cloned().collect());
                    n
                }
            };
            merged.pretraining.insert(new_name, rows.clone());
        }
        suites.push(report.suite.clone());
        manifests.push(json!({"dir": dir.display().to_string(), "manifest": report.manifest}));
    }
    merged.suite = if suites.len() == 1 {
        suites.pop().unwrap()
    } else {
        Value::Array(suites)
    };
    merged.manifest = if runs.len() == 1 {
        manifests[0]["manifest"].clone()
    } else {
        json!({
            "merged_from": manifests,
            "ibot_version": env!("CARGO_PKG_VERSION"),
            "merged_at": now_rfc3339(),
        })
    };
    Ok(merged)
}

fn run_label(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".to_string())
}

fn unique_name(name: &str, run: &str, taken: &std::collections::HashSet<String>) -> String {
    if !taken.contains(name) {
        return name.to_string();
    }
    let base = format!("{name}@{run}");
    if !taken.contains(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken.contains(n))
        .expect("an unused suffix exists")
}

/// Copy the attention PNGs of one checkpoint from `from` to `out/attention/<name>/` and point the
/// body at the copies.
fn relocate_attention(body: &mut Value, from: &Path, out: &Path, name: &str) -> anyhow::Result<()> {
    let Some(images) = body.get_mut("images").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let dest_dir = Path::new("attention").join(safe_file_name(name));
    for image in images {
        let Some(file) = image.get("file").and_then(Value::as_str) else {
            continue;
        };
        let src = from.join(file);
        let rel =
            dest_dir.join(Path::new(file).file_name().with_context(|| {
                format!("{}: attention image without a file name", src.display())
            })?);
        let dst = out.join(&rel);
        if src.canonicalize().ok() != dst.canonicalize().ok() {
            std::fs::create_dir_all(dst.parent().expect("joined path has a parent"))?;
            std::fs::copy(&src, &dst).with_context(|| {
                format!(
                    "copying attention image {} to {}",
                    src.display(),
                    dst.display()
                )
            })?;
        }
        image["file"] = json!(rel.to_string_lossy().replace('\\', "/"));
    }
    Ok(())
}

/// A checkpoint name usable as a directory name.
pub fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Read a pretraining log (`log.jsonl`: one JSON object per line).
pub fn read_pretrain_log(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
            if !v.is_object() {
                bail!(
                    "{}:{}: expected a JSON object per line",
                    path.display(),
                    i + 1
                );
            }
            Ok(v)
        })
        .collect()
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Numbers inside `v` at `path` (object keys).
/// The value at `path`; a numeric segment indexes an array (`per_class.3.IoU`).
pub fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Array(a) => a.get(k.parse::<usize>().ok()?),
        _ => v.get(*k),
    })
}
