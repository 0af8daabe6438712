//! `configs/suites/<name>.toml`: which data, which protocols with which options.
//!
//! Every other top-level table names a protocol of [`crate::protocols::PROTOCOLS`] (or an alias);
//! an unknown table is an error listing the known ones. Each protocol table is kept as TOML here
//! and converted to the protocol's own options type, so that type (with `deny_unknown_fields`)
//! decides what is valid — and rejects it before any work starts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::protocols::{self, ProtocolSpec};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// A data config file (relative to the suite file) or an inline data table.
    pub data: toml::Value,
    /// Feature store directory, relative to `--out` (or absolute, to share it between runs).
    #[serde(default = "default_cache")]
    pub cache: PathBuf,
    /// How checkpoints are read (overridable with --key / --arch).
    #[serde(default)]
    pub model: ModelDefaults,
}

/// The keys of a suite file that are not protocol tables.
const SUITE_KEYS: &[&str] = &["name", "description", "data", "cache", "model"];

fn default_cache() -> PathBuf {
    PathBuf::from("features")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaults {
    /// Sub-dict of the checkpoint (`teacher`, `student`, `state_dict`…); default: auto.
    pub key: Option<String>,
    /// Architecture preset; default: inferred from the weights.
    pub arch: Option<String>,
}

/// A loaded suite: the file, its resolved data config, and its task tables in run order.
pub struct Suite {
    pub path: PathBuf,
    pub file: SuiteFile,
    pub data: features::DataConfig,
    /// The data config file, when the data is not inline.
    pub data_path: Option<PathBuf>,
    /// (protocol, its table) in the report's order.
    pub tasks: Vec<(&'static ProtocolSpec, toml::Value)>,
    /// The suite file as JSON, for report.json.
    pub json: serde_json::Value,
}

impl Suite {
    /// The directory relative paths in the suite resolve against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    pub fn load(path: &Path) -> anyhow::Result<Suite> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read suite", path.display()))?;
        let whole: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid suite: {e}", path.display()))?;
        let (own, tables): (toml::Table, toml::Table) = whole
            .clone()
            .into_iter()
            .partition(|(k, _)| SUITE_KEYS.contains(&k.as_str()));
        let file: SuiteFile = toml::Value::Table(own)
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: invalid suite: {e}", path.display()))?;
        let json = serde_json::to_value(&whole)?;
        let base = path.parent().unwrap_or(Path::new(""));
        let (data, data_path) = match &file.data {
            toml::Value::String(p) => {
                let p = base.join(p);
                let data = features::DataConfig::load(&p)
                    .with_context(|| format!("{}: data = {:?}", path.display(), p))?;
                (data, Some(p))
            }
            toml::Value::Table(_) => {
                let mut d: features::DataConfig = file.data.clone().try_into().map_err(|e| {
                    anyhow::anyhow!("{}: invalid [data] table: {e}", path.display())
                })?;
                resolve(&mut d.train, base);
                resolve(&mut d.val, base);
                d.validate()
                    .with_context(|| format!("{}: invalid [data] table", path.display()))?;
                (d, None)
            }
            other => anyhow::bail!(
                "{}: `data` must be a data config path or a [data] table, found {}",
                path.display(),
                other.type_str()
            ),
        };
        let mut tasks: Vec<(&'static ProtocolSpec, toml::Value)> = Vec::new();
        for (name, table) in tables {
            let Some(spec) = protocols::find(&name) else {
                let known: Vec<&str> = protocols::PROTOCOLS.iter().map(|p| p.name).collect();
                anyhow::bail!(
                    "{}: unknown task [{name}] (known: {}; other keys: {})",
                    path.display(),
                    known.join(", "),
                    SUITE_KEYS.join(", ")
                );
            };
            if tasks.iter().any(|(p, _)| p.name == spec.name) {
                anyhow::bail!(
                    "{}: [{name}] is given twice (as {} and an alias)",
                    path.display(),
                    spec.name
                );
            }
            if !table.is_table() {
                anyhow::bail!("{}: `{name}` must be a table ([{name}])", path.display());
            }
            tasks.push((spec, table));
        }
        tasks.sort_by_key(|(p, _)| protocols::order(p.name));
        if tasks.is_empty() {
            anyhow::bail!(
                "{}: the suite lists no task (add a table such as [knn] or [cluster])",
                path.display()
            );
        }
        Ok(Suite {
            path: path.to_path_buf(),
            file,
            data,
            data_path,
            tasks,
            json,
        })
    }
}

/// Inline data tables resolve relative paths against the suite file, as data config files do
/// against themselves.
fn resolve(source: &mut features::SplitSource, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    match source {
        features::SplitSource::ImageFolder { root } => fix(root),
        features::SplitSource::FileList { list, root } => {
            fix(list);
            fix(root);
        }
        features::SplitSource::Idx { images, labels } => {
            fix(images);
            fix(labels);
        }
    }
}
