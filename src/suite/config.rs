//! `configs/suites/<name>.toml`: which data, which protocols with which options.
//!
//! Each protocol table is kept as TOML here and converted to the protocol's own options type when
//! the task runs, so that type (with `deny_unknown_fields`) decides what is valid — and rejects it
//! before any work starts (see [`super::protocols::check_options`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

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
    pub knn: Option<toml::Value>,
    pub linear: Option<toml::Value>,
    pub semisup: Option<toml::Value>,
    pub cluster: Option<toml::Value>,
    pub finetune: Option<toml::Value>,
    pub coco: Option<toml::Value>,
    pub ade20k: Option<toml::Value>,
    pub attention: Option<toml::Value>,
}

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
    pub tasks: Vec<(&'static str, toml::Value)>,
    /// The suite file as JSON, for report.json.
    pub json: serde_json::Value,
}

impl Suite {
    pub fn load(path: &Path) -> anyhow::Result<Suite> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read suite", path.display()))?;
        let file: SuiteFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid suite: {e}", path.display()))?;
        let json: serde_json::Value = toml::from_str::<toml::Value>(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid suite: {e}", path.display()))
            .and_then(|v| Ok(serde_json::to_value(v)?))?;
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
        let f = &file;
        let tables = [
            ("knn", &f.knn),
            ("linear", &f.linear),
            ("semisup", &f.semisup),
            ("cluster", &f.cluster),
            ("finetune", &f.finetune),
            ("coco", &f.coco),
            ("ade20k", &f.ade20k),
            ("attention", &f.attention),
        ];
        let tasks: Vec<(&'static str, toml::Value)> = tables
            .into_iter()
            .filter_map(|(name, t)| Some((name, t.clone()?)))
            .collect();
        if tasks.is_empty() {
            anyhow::bail!(
                "{}: the suite lists no task (add a table such as [knn] or [cluster])",
                path.display()
            );
        }
        for (name, table) in &tasks {
            if !table.is_table() {
                anyhow::bail!("{}: `{name}` must be a table ([{name}])", path.display());
            }
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
