//! Every evaluation protocol as one unit: its options (the suite table and the CLI flags both fill
//! them; `deny_unknown_fields` rejects typos before work starts), its `evaluate` (the whole
//! `result.json` body), and its report section (table columns, charts). `ibot eval <protocol>`
//! and `ibot suite` both call `evaluate`; the suite, the report's task order and its tables read
//! [`PROTOCOLS`], so a new protocol is one file here plus one line in that list.

pub mod attention;
pub mod cluster;
pub mod detection;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod segmentation;
pub mod semisup;

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::cmd_eval::EvalContext;
use crate::report::tables::Spec;
use crate::report::Report;

/// What one (checkpoint, protocol) unit works with.
pub struct UnitContext<'a> {
    pub eval: &'a EvalContext<'a>,
    /// The checkpoint's name in the report.
    pub checkpoint_name: &'a str,
    /// The report directory (protocols that draw images write them under it).
    pub report_dir: &'a Path,
    /// A directory of this unit alone: training protocols keep their checkpoint and log there,
    /// so a killed run continues where it stopped.
    pub work_dir: PathBuf,
    /// Relative paths in the options (data configs, recipes) resolve against this directory.
    pub base_dir: PathBuf,
}

impl UnitContext<'_> {
    /// `path` relative to [`UnitContext::base_dir`] unless absolute.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

pub trait Protocol {
    /// The suite table, the results key and the report anchor.
    const NAME: &'static str;
    /// Other suite table names accepted for it.
    const ALIASES: &'static [&'static str] = &[];
    /// The report section title and its one-line note (units, protocol reminders).
    const TITLE: &'static str;
    const NOTE: &'static str;
    type Options: Serialize + DeserializeOwned + Default;
    fn evaluate(ctx: &UnitContext, opts: &Self::Options) -> anyhow::Result<Value>;
    /// Table columns for the result bodies present in a report.
    fn columns(bodies: &[&Value]) -> Vec<Spec>;
    /// Inline SVG charts (HTML) for the task's section; none by default.
    fn charts(_report: &Report, _task: &str) -> anyhow::Result<String> {
        Ok(String::new())
    }
    /// Whether the report shows a comparison table for it.
    const TABLE: bool = true;
}

/// A protocol as the suite and the report see it.
pub struct ProtocolSpec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub title: &'static str,
    pub note: &'static str,
    pub table: bool,
    /// The effective options (defaults filled in) of a suite table, or why it is invalid.
    pub check: fn(&toml::Value) -> anyhow::Result<Value>,
    pub run: fn(&toml::Value, &UnitContext) -> anyhow::Result<Value>,
    pub columns: fn(&[&Value]) -> Vec<Spec>,
    pub charts: fn(&Report, &str) -> anyhow::Result<String>,
}

const fn spec<P: Protocol>() -> ProtocolSpec {
    ProtocolSpec {
        name: P::NAME,
        aliases: P::ALIASES,
        title: P::TITLE,
        note: P::NOTE,
        table: P::TABLE,
        check: check::<P>,
        run: run::<P>,
        columns: P::columns,
        charts: P::charts,
    }
}

/// Every protocol, in the report's (the paper's) order.
pub const PROTOCOLS: &[ProtocolSpec] = &[
    spec::<knn::Knn>(),
    spec::<linear::Linear>(),
    spec::<semisup::Semisup>(),
    spec::<cluster::Cluster>(),
    spec::<finetune::Finetune>(),
    spec::<segmentation::Segmentation>(),
    spec::<detection::CocoDetection>(),
    spec::<attention::Attention>(),
];

/// The protocol a suite table name (or alias) refers to.
pub fn find(name: &str) -> Option<&'static ProtocolSpec> {
    PROTOCOLS
        .iter()
        .find(|p| p.name == name || p.aliases.contains(&name))
}

/// Position in the report order (unknown tasks last).
pub fn order(name: &str) -> usize {
    PROTOCOLS
        .iter()
        .position(|p| p.name == name)
        .unwrap_or(usize::MAX)
}

/// The protocol's options from its suite table, and the effective options as JSON for the record
/// and the resume key.
pub fn options<T: DeserializeOwned + Serialize>(
    task: &str,
    table: &toml::Value,
) -> anyhow::Result<(T, Value)> {
    let opts: T = table
        .clone()
        .try_into()
        .map_err(|e| anyhow::anyhow!("[{task}]: {e}"))?;
    let json = serde_json::to_value(&opts)?;
    Ok((opts, json))
}

/// A recipe's text and a name for errors: the file at `path` (relative to `base`), or, when no
/// such file exists and `path` is a bare name, the built-in recipe of that name.
pub fn recipe_text(
    path: &Path,
    base: &Path,
    builtin: &[(&str, &str)],
    dir: &str,
) -> anyhow::Result<(String, String)> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    if full.is_file() {
        let text = std::fs::read_to_string(&full)
            .map_err(|e| anyhow::anyhow!("{}: cannot read recipe: {e}", full.display()))?;
        return Ok((text, full.display().to_string()));
    }
    let name = path.to_string_lossy();
    let stem = name.trim_end_matches(".toml");
    if let Some((n, text)) = builtin.iter().find(|(n, _)| *n == stem) {
        return Ok((text.to_string(), format!("{dir}/{n}.toml (built in)")));
    }
    let names: Vec<&str> = builtin.iter().map(|(n, _)| *n).collect();
    anyhow::bail!(
        "{}: no such recipe file, and {name:?} is not a built-in recipe ({})",
        full.display(),
        names.join(", ")
    )
}

/// Writes `panels` (same size) side by side, 4 px apart, upscaled to about 256 px high for
/// legibility, to `report_dir/file`; returns the report's figure entry.
pub fn save_panels(
    panels: Vec<image::RgbImage>,
    report_dir: &Path,
    file: &Path,
    caption: String,
) -> anyhow::Result<Value> {
    let (w, h) = panels.first().map_or((0, 0), |p| (p.width(), p.height()));
    let n = panels.len() as u32;
    let mut canvas = image::RgbImage::new(n * w + 4 * n.saturating_sub(1), h);
    for (k, panel) in panels.iter().enumerate() {
        image::imageops::replace(&mut canvas, panel, (k as u32 * (w + 4)) as i64, 0);
    }
    let scale = (256 / h.max(1)).clamp(1, 8);
    let canvas = image::imageops::resize(
        &canvas,
        canvas.width() * scale,
        h * scale,
        image::imageops::FilterType::Nearest,
    );
    let path = report_dir.join(file);
    canvas
        .save(&path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(serde_json::json!({"file": file.display().to_string(), "caption": caption}))
}

fn check<P: Protocol>(table: &toml::Value) -> anyhow::Result<Value> {
    Ok(options::<P::Options>(P::NAME, table)?.1)
}

fn run<P: Protocol>(table: &toml::Value, ctx: &UnitContext) -> anyhow::Result<Value> {
    let (opts, _) = options::<P::Options>(P::NAME, table)?;
    P::evaluate(ctx, &opts)
}
