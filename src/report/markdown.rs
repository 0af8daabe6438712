//! `report.md`: the comparison tables as GitHub-flavoured Markdown.

use std::fmt::Write;

use serde_json::Value;

use super::tables::{build_tables, wall_time_table, Cell, ColumnKind, Table};
use super::Report;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark report: {}\n", suite_names(report));
    out += &checkpoints_table(report);
    for table in build_tables(report) {
        out += &render_table(&table);
    }
    if let Some(t) = wall_time_table(report) {
        out += &render_table(&t);
    }
    out += &manifest_section(report);
    out
}

pub fn suite_names(report: &Report) -> String {
    let name = |s: &Value| {
        s.get("name")
            .and_then(Value::as_str)
            .unwrap_or("unnamed suite")
            .to_string()
    };
    match &report.suite {
        Value::Array(suites) => {
            let mut names: Vec<String> = suites.iter().map(name).collect();
            names.dedup();
            names.join(" + ")
        }
        s => name(s),
    }
}

fn checkpoints_table(report: &Report) -> String {
    let mut out = String::from(
        "## Checkpoints\n\n| Checkpoint | File | SHA-256 | Size |\n|---|---|---|---:|\n",
    );
    for c in &report.checkpoints {
        let _ = writeln!(
            out,
            "| {} | `{}` | `{}` | {} |",
            escape(&c.name),
            c.path.display(),
            c.sha256.get(..12).unwrap_or(&c.sha256),
            human_bytes(c.bytes)
        );
    }
    if let Some(first) = report.checkpoints.first() {
        let _ = writeln!(
            out,
            "\nDeltas in parentheses are against **{}**; the best value of each column is bold.\n",
            escape(&first.name)
        );
    }
    out
}

pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `| Checkpoint | k=20 top-1 | … |` with `**best**` and ` (+delta)` cells.
pub fn render_table(table: &Table) -> String {
    let mut out = format!("## {}\n\n{}\n\n", table.title, table.note);
    out += "| Checkpoint |";
    for c in &table.columns {
        let _ = write!(out, " {} |", escape(&c.header));
    }
    out += "\n|---|";
    for c in &table.columns {
        out += match c.kind {
            ColumnKind::Metric { .. } | ColumnKind::Coco => "---:|",
            ColumnKind::Text => "---|",
        };
    }
    out += "\n";
    for row in &table.rows {
        let _ = write!(out, "| {} |", escape(&row.checkpoint));
        if let Some(status) = &row.status {
            // One cell spanning the row's meaning; Markdown has no colspan.
            let _ = write!(out, " {} |", escape(status));
            for _ in 1..table.columns.len() {
                out += " |";
            }
        } else {
            for cell in &row.cells {
                let _ = write!(out, " {} |", markdown_cell(cell));
            }
        }
        out += "\n";
    }
    out += "\n";
    out
}

pub fn markdown_cell(cell: &Cell) -> String {
    match cell {
        Cell::Number {
            value, best, delta, ..
        } => {
            let v = if *best {
                format!("**{value:.1}**")
            } else {
                format!("{value:.1}")
            };
            match delta {
                Some(d) => format!("{v} ({})", super::tables::signed(*d)),
                None => v,
            }
        }
        other => escape(&other.plain()),
    }
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn manifest_section(report: &Report) -> String {
    let m = &report.manifest;
    let mut out = String::from("## Provenance\n\n");
    let field = |k: &str| {
        m.get(k)
            .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
    };
    for (label, key) in [
        ("ibot", "ibot_version"),
        ("rustc", "rustc"),
        ("candle", "candle"),
        ("started", "started"),
        ("finished", "finished"),
        ("data", "data_sha256"),
    ] {
        if let Some(v) = field(key) {
            let _ = writeln!(out, "- {label}: `{v}`");
        }
    }
    if let Some(runs) = m.get("merged_from").and_then(Value::as_array) {
        for r in runs {
            let _ = writeln!(
                out,
                "- merged from `{}` (ibot {}, finished {})",
                r["dir"].as_str().unwrap_or("?"),
                r["manifest"]["ibot_version"].as_str().unwrap_or("?"),
                r["manifest"]["finished"].as_str().unwrap_or("?"),
            );
        }
    }
    out += "\nEvery number, the checkpoint and data hashes, transforms and seeds are in `report.json`.\n";
    out
}
