//! `report.html`: one self-contained page (inline CSS, inline SVG charts, base64 PNGs; nothing is
//! fetched), so it can be mailed, archived or opened offline.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use serde_json::Value;

use super::markdown::{human_bytes, suite_names};
use super::plots::{self, Series};
use super::tables::{build_tables, signed, wall_time_table, Cell, ColumnKind, Table};
use super::Report;

const STYLE: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.status { color: #a33; font-style: italic; }
.delta { color: #777; font-size: .85em; }
.note { color: #555; font-size: .9em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.chart svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figure { margin: .3em; display: inline-block; text-align: center; font-size: .85em; }
figure img { width: 160px; height: 160px; image-rendering: pixelated; border: 1px solid #ccc; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .8em; }
"#;

/// The page for `report`; attention images are read from files relative to `dir`.
pub fn render(report: &Report, dir: &Path) -> anyhow::Result<String> {
    let title = format!("Benchmark report: {}", suite_names(report));
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    out += &checkpoints_section(report);
    for table in build_tables(report) {
        out += &table_html(&table);
        out += &task_charts(report, &table.task)?;
        out += &figures(report, &table.task, dir)?;
    }
    if !report.pretraining.is_empty() {
        out += &pretraining_section(report)?;
    }
    if report.results.contains_key("attention") {
        out += &attention_section(report, dir)?;
    }
    if let Some(t) = wall_time_table(report) {
        out += &table_html(&t);
    }
    let _ = write!(
        out,
        "<h2>Provenance</h2>\n<details><summary>manifest (checkpoint and data hashes, transforms, \
         seeds, versions)</summary>\n<pre>{}</pre></details>\n",
        esc(&serde_json::to_string_pretty(&report.manifest)?)
    );
    out += "</body>\n</html>\n";
    Ok(out)
}

fn checkpoints_section(report: &Report) -> String {
    let mut out = String::from(
        "<h2>Checkpoints</h2>\n<table>\n<tr><th>Checkpoint</th><th>File</th><th>SHA-256</th><th>Size</th></tr>\n",
    );
    for c in &report.checkpoints {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td><code title=\"{}\">{}</code></td><td class=\"num\">{}</td></tr>",
            esc(&c.name),
            esc(&c.path.display().to_string()),
            esc(&c.sha256),
            esc(c.sha256.get(..12).unwrap_or(&c.sha256)),
            human_bytes(c.bytes)
        );
    }
    out += "</table>\n";
    if let Some(first) = report.checkpoints.first() {
        let _ = writeln!(
            out,
            "<p class=\"note\">Deltas are against <b>{}</b>; the best value of each column is bold.</p>",
            esc(&first.name)
        );
    }
    out
}

pub fn table_html(table: &Table) -> String {
    let mut out = format!(
        "<h2 id=\"{}\">{}</h2>\n<p class=\"note\">{}</p>\n<table>\n<tr><th>Checkpoint</th>",
        esc(&table.task),
        esc(&table.title),
        esc(&table.note)
    );
    for c in &table.columns {
        let _ = write!(out, "<th>{}</th>", esc(&c.header));
    }
    out += "</tr>\n";
    for row in &table.rows {
        let _ = write!(out, "<tr><td>{}</td>", esc(&row.checkpoint));
        if let Some(status) = &row.status {
            let _ = write!(
                out,
                "<td class=\"status\" colspan=\"{}\">{}</td>",
                table.columns.len().max(1),
                esc(status)
            );
        } else {
            for (cell, col) in row.cells.iter().zip(&table.columns) {
                let class = match col.kind {
                    ColumnKind::Metric { .. } | ColumnKind::Coco => "num",
                    ColumnKind::Text => "text",
                };
                let _ = write!(out, "<td class=\"{class}\">{}</td>", cell_html(cell));
            }
        }
        out += "</tr>\n";
    }
    out += "</table>\n";
    out
}

fn cell_html(cell: &Cell) -> String {
    match cell {
        Cell::Number { value, best, delta } => {
            let v = if *best {
                format!("<b>{value:.1}</b>")
            } else {
                format!("{value:.1}")
            };
            match delta {
                Some(d) => format!("{v} <span class=\"delta\">({})</span>", signed(*d)),
                None => v,
            }
        }
        other => esc(&other.plain()),
    }
}

fn task_charts(report: &Report, task: &str) -> anyhow::Result<String> {
    let mut charts = match crate::protocols::find(task) {
        Some(p) => (p.charts)(report, task)?,
        None => String::new(),
    };
    // Whatever confusion matrices the protocol returned.
    for c in &report.checkpoints {
        let Some(body) = report.body(task, &c.name) else {
            continue;
        };
        let mut found = Vec::new();
        find_confusions(body, &mut Vec::new(), &mut found);
        for (path, matrix) in found {
            let title = format!("Confusion ({path}): {}", c.name);
            charts += &plots::chart_div(&plots::heatmap(&title, &matrix)?);
        }
    }
    Ok(if charts.is_empty() {
        charts
    } else {
        format!("<div class=\"charts\">\n{charts}</div>\n")
    })
}

fn find_confusions(v: &Value, path: &mut Vec<String>, out: &mut Vec<(String, Vec<Vec<f64>>)>) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            if matches!(k.as_str(), "config" | "manifest") && path.is_empty() {
                continue;
            }
            if k == "confusion" || k == "confusion_matrix" {
                if let Some(m) = as_matrix(child) {
                    out.push((path.join("."), m));
                }
                continue;
            }
            path.push(k.clone());
            find_confusions(child, path, out);
            path.pop();
        }
    }
}

/// `[[…], …]`, or `{"counts": [[…], …], …}` (the clustering protocol's layout).
fn as_matrix(v: &Value) -> Option<Vec<Vec<f64>>> {
    let rows = v.get("counts").unwrap_or(v).as_array()?;
    let m: Option<Vec<Vec<f64>>> = rows
        .iter()
        .map(|r| r.as_array()?.iter().map(Value::as_f64).collect())
        .collect();
    m.filter(|m| !m.is_empty() && m.iter().all(|r| !r.is_empty()))
}

fn pretraining_section(report: &Report) -> anyhow::Result<String> {
    let mut out = String::from(
        "<h2 id=\"pretraining\">Pretraining</h2>\n<p class=\"note\">From <code>log.jsonl</code>: the \
         losses at every logged step and, when the recipe has an <code>[eval]</code> section, the \
         teacher's k-NN top-1 on its labelled data over the epochs (epoch 0 = the initial weights).</p>\n\
         <div class=\"charts\">\n",
    );
    for (name, rows) in &report.pretraining {
        let series: Vec<Series> = ["loss", "cls", "patch"]
            .iter()
            .map(|key| Series {
                name: key.to_string(),
                points: rows
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.get("event").is_none())
                    .filter_map(|(i, r)| {
                        let x = r.get("step").and_then(Value::as_f64).unwrap_or(i as f64);
                        Some((x, r.get(*key)?.as_f64()?))
                    })
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !series.is_empty() {
            out += &plots::chart_div(&plots::line_chart(
                &format!("Training loss: {name}"),
                "step",
                "loss",
                &series,
                false,
            )?);
        }
        let knn = knn_curves(rows);
        if !knn.is_empty() {
            let data = rows
                .iter()
                .find(|r| r.get("event").and_then(Value::as_str) == Some("knn"))
                .and_then(|r| r.get("data"))
                .and_then(Value::as_str)
                .unwrap_or("eval data");
            out += &plots::chart_div(&plots::line_chart(
                &format!("k-NN during pretraining: {name} ({data})"),
                "epochs trained",
                "top-1 %",
                &knn,
                false,
            )?);
        }
    }
    out += "</div>\n";
    Ok(out)
}

/// Top-1 (%) against epochs trained, one series per k, from the `knn` events of a pretraining log.
pub(crate) fn knn_curves(rows: &[Value]) -> Vec<Series> {
    let mut by_k: std::collections::BTreeMap<u64, Vec<(f64, f64)>> = Default::default();
    for r in rows
        .iter()
        .filter(|r| r.get("event").and_then(Value::as_str) == Some("knn"))
    {
        let Some(x) = r.get("epochs_done").and_then(Value::as_f64) else {
            continue;
        };
        let Some(per_k) = r.get("knn").and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in per_k {
            if let (Ok(k), Some(top1)) = (k.parse::<u64>(), v.get("top1").and_then(Value::as_f64)) {
                by_k.entry(k).or_default().push((x, 100.0 * top1));
            }
        }
    }
    by_k.into_iter()
        .map(|(k, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: format!("k = {k}"),
                points,
            }
        })
        .collect()
}

fn attention_section(report: &Report, dir: &Path) -> anyhow::Result<String> {
    let mut out = String::from(
        "<h2 id=\"attention\">Attention maps</h2>\n<p class=\"note\">Last-block self-attention of the \
         CLS token to the patches, mean over heads, overlaid on validation images.</p>\n",
    );
    out += &figures(report, "attention", dir)?;
    Ok(out)
}

/// The images a protocol drew (`"images": [{"file", "caption"}]` in its result bodies, files
/// relative to the report directory), inlined per checkpoint.
fn figures(report: &Report, task: &str, dir: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    for c in &report.checkpoints {
        let Some(images) = report
            .body(task, &c.name)
            .and_then(|b| b.get("images"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let _ = writeln!(out, "<h3>{}</h3>\n<div>", esc(&c.name));
        for image in images {
            let Some(file) = image.get("file").and_then(Value::as_str) else {
                continue;
            };
            let path = dir.join(file);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("{}: {task} image missing", path.display()))?;
            let caption = image.get("caption").and_then(Value::as_str).unwrap_or(file);
            let _ = writeln!(
                out,
                "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>",
                esc(caption),
                base64::engine::general_purpose::STANDARD.encode(&bytes),
                esc(caption)
            );
        }
        out += "</div>\n";
    }
    Ok(out)
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
