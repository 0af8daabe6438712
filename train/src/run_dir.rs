//! A training run's directory: the JSON-lines log (one line per step or event, appended; on
//! resume the lines of steps that will be redone are dropped so the log reads as one run), and
//! JSON files written atomically (config, summary, results).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const LOG: &str = "log.jsonl";

#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// Creates the directory if needed.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(RunDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts an empty log (a fresh run).
    pub fn reset_log(&self) -> Result<()> {
        let path = self.path(LOG);
        std::fs::write(&path, "").with_context(|| format!("writing {}", path.display()))
    }

    /// Appends one JSON line to the log.
    pub fn log(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.path(LOG);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{value}").with_context(|| format!("writing {}", path.display()))
    }

    /// On resume at (`step`, `epoch`): keeps step lines (and epoch-less events) before `step`,
    /// event lines of epochs before `epoch` and `run_start` lines before `step`; drops the rest
    /// (they will be redone).
    pub fn truncate_log(&self, step: usize, epoch: usize) -> Result<()> {
        let path = self.path(LOG);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let keep: String = text
            .lines()
            .filter(|line| {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    return false;
                };
                let num = |k: &str| v.get(k).and_then(|s| s.as_u64()).map(|s| s as usize);
                if v.get("event").and_then(|e| e.as_str()) == Some("run_start") {
                    return num("step").is_some_and(|s| s < step);
                }
                match (v.get("event"), num("step"), num("epoch")) {
                    (Some(_), _, Some(e)) => e < epoch,
                    (_, Some(s), _) => s < step,
                    _ => false,
                }
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::io::write_atomic(&path, keep.as_bytes())
    }

    /// `name` (JSON, pretty) written atomically.
    pub fn write_json(&self, name: &str, value: &impl serde::Serialize) -> Result<()> {
        crate::io::write_json(&self.path(name), value)
    }
}
