//! The comparison tables shared by the Markdown and HTML renderers, in the iBOT paper's style:
//! one row per checkpoint, metrics in % with one decimal, the best value of each column marked,
//! and the difference to the first checkpoint.

use serde_json::Value;

use super::{lookup, status_of, Report};

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub task: String,
    pub title: String,
    /// One line under the title: units and protocol reminders.
    pub note: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub header: String,
    pub kind: ColumnKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColumnKind {
    /// Compared across rows: best marked, delta vs the first row. `scale` multiplies the raw value
    /// (100 for fractions shown in %).
    Metric { scale: f64, higher_is_better: bool },
    /// A pycocotools statistic: −1 means the category of objects is absent (no value), not a score.
    Coco,
    /// Shown as is (hyper-parameters, times).
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub checkpoint: String,
    pub cells: Vec<Cell>,
    /// `failed: …` / `not available: …` when the task produced no numbers for this checkpoint.
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Missing,
    Text(String),
    /// `value` is already in display units and rounded to one decimal.
    Number {
        value: f64,
        best: bool,
        delta: Option<f64>,
    },
}

impl Cell {
    /// `71.3`, `**71.3**`-less plain text of the number with its delta: `71.3 (+4.2)`.
    pub fn plain(&self) -> String {
        match self {
            Cell::Missing => "–".to_string(),
            Cell::Text(t) => t.clone(),
            Cell::Number { value, delta, .. } => match delta {
                Some(d) => format!("{value:.1} ({})", signed(*d)),
                None => format!("{value:.1}"),
            },
        }
    }
}

/// `+4.2`, `-0.3`, and `+0.0` (never `-0.0`).
pub fn signed(d: f64) -> String {
    let r = round1(d);
    if r == 0.0 {
        "+0.0".to_string()
    } else {
        format!("{r:+.1}")
    }
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// What a column reads from a result body.
pub struct Spec {
    header: String,
    path: Vec<String>,
    kind: ColumnKind,
}

pub const PERCENT: ColumnKind = ColumnKind::Metric {
    scale: 100.0,
    higher_is_better: true,
};

/// A COCO AP/AR fraction shown in %, its −1 ("no such objects") as missing.
pub const COCO_PERCENT: ColumnKind = ColumnKind::Coco;

pub fn spec(header: impl Into<String>, path: &[&str], kind: ColumnKind) -> Spec {
    Spec {
        header: header.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        kind,
    }
}

/// One table per task present in the report, in table order.
pub fn build_tables(report: &Report) -> Vec<Table> {
    report
        .tasks()
        .into_iter()
        .filter(|t| crate::protocols::find(t).is_none_or(|p| p.table))
        .filter_map(|task| task_table(report, task))
        .collect()
}

pub fn task_table(report: &Report, task: &str) -> Option<Table> {
    let bodies: Vec<&Value> = report
        .checkpoint_names()
        .into_iter()
        .filter_map(|c| report.body(task, c))
        .collect();
    let (title, note, specs) = match crate::protocols::find(task) {
        Some(p) => (p.title.to_string(), p.note, (p.columns)(&bodies)),
        None => (
            task.to_string(),
            "Numbers as reported by the task.",
            generic_specs(&bodies),
        ),
    };
    if specs.is_empty() && bodies.is_empty() && !report.results.contains_key(task) {
        return None;
    }
    let per_task = report.results.get(task);
    let mut rows: Vec<Row> = report
        .checkpoints
        .iter()
        .map(|c| {
            let entry = per_task.and_then(|p| p.get(&c.name));
            let status = match entry {
                None => Some("not run".to_string()),
                Some(v) => status_of(v).map(|s| {
                    let why = v
                        .get("error")
                        .or_else(|| v.get("reason"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    format!("{}: {why}", s.replace('_', " "))
                }),
            };
            let cells = specs
                .iter()
                .map(|s| match entry.filter(|_| status.is_none()) {
                    None => Cell::Missing,
                    Some(body) => read_cell(body, s),
                })
                .collect();
            Row {
                checkpoint: c.name.clone(),
                cells,
                status,
            }
        })
        .collect();
    mark_best_and_deltas(&specs, &mut rows);
    Some(Table {
        task: task.to_string(),
        title,
        note: note.to_string(),
        columns: specs
            .into_iter()
            .map(|s| Column {
                header: s.header,
                kind: s.kind,
            })
            .collect(),
        rows,
    })
}

fn read_cell(body: &Value, s: &Spec) -> Cell {
    let path: Vec<&str> = s.path.iter().map(String::as_str).collect();
    let Some(v) = lookup(body, &path) else {
        return Cell::Missing;
    };
    match s.kind {
        ColumnKind::Metric { scale, .. } => match v.as_f64() {
            Some(x) if x.is_finite() => Cell::Number {
                value: round1(x * scale),
                best: false,
                delta: None,
            },
            _ => Cell::Missing,
        },
        ColumnKind::Coco => match v.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Cell::Number {
                value: round1(x * 100.0),
                best: false,
                delta: None,
            },
            _ => Cell::Missing,
        },
        ColumnKind::Text => Cell::Text(match v {
            Value::String(t) => t.clone(),
            Value::Number(n) => format_number(n.as_f64().unwrap_or(f64::NAN)),
            other => other.to_string(),
        }),
    }
}

/// Hyper-parameters: short and exact (`0.001`, `1e-5`, `20`).
pub fn format_number(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e6 {
        format!("{x:.0}")
    } else if x.abs() >= 1e-3 && x.abs() < 1e4 {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:e}")
    }
}

fn mark_best_and_deltas(specs: &[Spec], rows: &mut [Row]) {
    for (j, s) in specs.iter().enumerate() {
        let higher_is_better = match s.kind {
            ColumnKind::Metric {
                higher_is_better, ..
            } => higher_is_better,
            ColumnKind::Coco => true,
            ColumnKind::Text => continue,
        };
        let values: Vec<Option<f64>> = rows
            .iter()
            .map(|r| match r.cells[j] {
                Cell::Number { value, .. } => Some(value),
                _ => None,
            })
            .collect();
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        let best = if higher_is_better {
            present.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        } else {
            present.iter().copied().fold(f64::INFINITY, f64::min)
        };
        let baseline = values.first().copied().flatten();
        let all_equal = present.iter().all(|v| *v == present[0]);
        for (i, row) in rows.iter_mut().enumerate() {
            if let Cell::Number {
                value,
                best: b,
                delta,
            } = &mut row.cells[j]
            {
                // A single number, or all equal, is not a comparison: nothing to mark.
                *b = !all_equal && *value == best;
                *delta = match baseline {
                    Some(base) if i > 0 => Some(round1(*value - base)),
                    _ => None,
                };
            }
        }
    }
}

pub fn numeric_keys<'a>(bodies: &[&'a Value], path: &[&str]) -> Vec<&'a str> {
    let mut keys: Vec<&str> = Vec::new();
    for b in bodies {
        if let Some(obj) = lookup(b, path).and_then(Value::as_object) {
            for k in obj.keys() {
                if !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
        }
    }
    keys.sort_by(|a, b| {
        let num = |s: &str| s.trim_end_matches('%').parse::<f64>().ok();
        match (num(a), num(b)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => a.cmp(b),
        }
    });
    keys
}

/// Every numeric leaf outside `config` / `manifest`, for tasks this renderer has no layout for
/// (fine-tuning, COCO, ADE20K as they land). Columns whose values all lie in [0, 1] are shown in %.
fn generic_specs(bodies: &[&Value]) -> Vec<Spec> {
    let mut paths: Vec<Vec<String>> = Vec::new();
    for b in bodies {
        let mut found = Vec::new();
        collect_leaves(b, &mut Vec::new(), &mut found);
        for p in found {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let refs: Vec<&str> = p.iter().map(String::as_str).collect();
            let fraction = bodies.iter().all(|b| {
                lookup(b, &refs)
                    .and_then(Value::as_f64)
                    .is_none_or(|x| (0.0..=1.0).contains(&x))
            });
            let lower = p.last().is_some_and(|k| {
                k.contains("loss") || k.contains("seconds") || k.contains("error")
            });
            spec(
                p.join("."),
                &refs,
                ColumnKind::Metric {
                    scale: if fraction { 100.0 } else { 1.0 },
                    higher_is_better: !lower,
                },
            )
        })
        .collect()
}

fn collect_leaves(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if prefix.is_empty() && matches!(k.as_str(), "config" | "manifest" | "status") {
                    continue;
                }
                prefix.push(k.clone());
                collect_leaves(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Number(_) => out.push(prefix.clone()),
        _ => {}
    }
}

/// Seconds per task and checkpoint, from the manifest.
pub fn wall_time_table(report: &Report) -> Option<Table> {
    let wall = report.manifest.get("wall_seconds")?.as_object()?;
    let tasks: Vec<&str> = report
        .tasks()
        .into_iter()
        .filter(|t| wall.contains_key(*t))
        .collect();
    if tasks.is_empty() {
        return None;
    }
    let rows = report
        .checkpoints
        .iter()
        .map(|c| Row {
            checkpoint: c.name.clone(),
            cells: tasks
                .iter()
                .map(|t| match wall[*t].get(&c.name).and_then(Value::as_f64) {
                    Some(s) => Cell::Text(format!("{s:.1}")),
                    None => Cell::Missing,
                })
                .collect(),
            status: None,
        })
        .collect();
    Some(Table {
        task: "wall_seconds".to_string(),
        title: "Wall time".to_string(),
        note: "Seconds per task and checkpoint (feature extraction is counted by the first task \
               that needs the features; later tasks read the cache)."
            .to_string(),
        columns: tasks
            .iter()
            .map(|t| Column {
                header: t.to_string(),
                kind: ColumnKind::Text,
            })
            .collect(),
        rows,
    })
}
