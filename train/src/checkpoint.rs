//! Training checkpoints: one safetensors file holding every tensor a run needs to continue
//! (weights, optimizer moments, EMA copies, buffers) with the run's position and resolved recipe
//! as JSON in its metadata, tagged with a format name so that one tool's checkpoint is never taken
//! for another's. Written atomically and byte-reproducibly (see [`crate::io`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{de::DeserializeOwned, Serialize};

use crate::io;

pub struct Saved {
    pub meta: BTreeMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
    path: std::path::PathBuf,
}

impl Saved {
    /// A metadata field parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let text = self
            .meta
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("{}: metadata has no {key:?}", self.path.display()))?;
        serde_json::from_str(text)
            .with_context(|| format!("{}: bad {key:?} in the metadata", self.path.display()))
    }

    /// A tensor that must be present.
    pub fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("{}: tensor {key} is missing", self.path.display()))
    }

    /// Copies the saved tensor `key` into `var`, checking its shape.
    pub fn restore(&self, key: &str, var: &candle_core::Var) -> Result<()> {
        let t = self.tensor(key)?;
        if t.dims() != var.dims() {
            bail!(
                "{}: {key} has shape {:?}, the model needs {:?}",
                self.path.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        Ok(())
    }
}

/// Writes `tensors` with `format`, `state` and `config` (as JSON) and `extra` in the metadata.
pub fn save(
    path: &Path,
    format: &str,
    state: &impl Serialize,
    config: &impl Serialize,
    tensors: &[(String, Tensor)],
    extra: impl IntoIterator<Item = (String, String)>,
) -> Result<()> {
    let mut meta: BTreeMap<String, String> = extra.into_iter().collect();
    meta.insert("format".into(), format.into());
    meta.insert("state".into(), serde_json::to_string(state)?);
    meta.insert("config".into(), serde_json::to_string(config)?);
    io::save_safetensors(path, tensors, meta)
}

/// Reads a checkpoint written by [`save`] with the same `format`.
pub fn load(path: &Path, format: &str, device: &Device) -> Result<Saved> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let meta = io::read_safetensors_metadata(&bytes, path)?;
    if meta.get("format").map(String::as_str) != Some(format) {
        bail!(
            "{}: not a checkpoint of this kind (metadata format {:?}, expected {format:?})",
            path.display(),
            meta.get("format")
        );
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("{}: reading tensors", path.display()))?;
    Ok(Saved {
        meta,
        tensors,
        path: path.to_path_buf(),
    })
}

/// A resumed run must be the same run: `saved` and `now` (the configs as JSON, with the fields
/// that may change between attempts already normalised by the caller) must be equal; the error
/// lists every differing field.
pub fn check_compatible(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    path: &Path,
) -> Result<()> {
    if saved != now {
        let mut diffs = Vec::new();
        diff_json("", saved, now, &mut diffs);
        bail!(
            "{}: the recipe differs from the one this checkpoint was trained with ({}); resume with the same recipe or start a new --out",
            path.display(),
            diffs.join(", ")
        );
    }
    Ok(())
}

/// Paths (`a.b.c: old → new`) where two JSON values differ.
pub fn diff_json(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<String>,
) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, v) in x {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match y.get(k) {
                    Some(w) => diff_json(&p, v, w, out),
                    None => out.push(p),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                });
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} → {b}")),
        _ => {}
    }
}
