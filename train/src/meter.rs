//! Timing and memory figures that every training log carries.

use std::time::Instant;

/// Seconds spent in each phase of a step (logged, so slow phases show up in real runs).
pub struct PhaseTimer {
    last: Instant,
    pub phases: Vec<(&'static str, f64)>,
}

impl Default for PhaseTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl PhaseTimer {
    pub fn new() -> Self {
        PhaseTimer {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, (now - self.last).as_secs_f64()));
        self.last = now;
    }

    /// The phases as a JSON object for a log line.
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.phases
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect(),
        )
    }
}

/// Resident memory of this process in MiB (Linux), logged per step so that growth shows.
pub fn resident_mb() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1024.0 * 1024.0))
}

/// A progress bar with the project's template, hidden when `visible` is false.
pub fn progress_bar(total: u64, visible: bool) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}")
    {
        bar.set_style(style);
    }
    bar
}
