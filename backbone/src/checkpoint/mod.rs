//! Checkpoint I/O: PyTorch zip `.pth` and `.safetensors`, in every layout the official iBOT/DINO
//! code and timm produce, loaded STRICTLY: a missing, unexpected or mis-shaped key is an error
//! that lists them all (the official scripts' silent `strict=False` no-load is their
//! most-reported pitfall).

mod pth;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::config::VitConfig;
use pth::{PthReader, PthTensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Pth,
    Safetensors,
}

#[derive(Debug, Clone)]
enum Source {
    Pth(PthTensor),
    Safetensors,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
    source: Source,
}

/// Sub-dicts holding a state dict, in the order they are preferred when the user names none.
/// `teacher` first, as every official evaluation script defaults to it.
const STATE_KEYS: [&str; 4] = ["teacher", "state_dict", "model", "module"];

/// An opened checkpoint: every tensor it holds under its full dotted name, nothing read yet.
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    entries: Vec<Entry>,
    metadata: HashMap<String, String>,
    safetensors_bytes: Option<Vec<u8>>,
}

/// The backbone part of a checkpoint after key selection and prefix normalisation.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    /// Sub-dict the state came from (`teacher`, `state_dict`, …), `None` for a bare state dict.
    pub key: Option<String>,
    /// Backbone key → full name in the file.
    pub backbone: BTreeMap<String, String>,
    /// Keys of the selected state that are not backbone weights (projection head, classifier).
    pub other: Vec<String>,
    /// Top-level groups of the file that were not selected (student, optimizer, …).
    pub unselected_groups: Vec<String>,
}

/// What a load did, for printing and for `inspect`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Kept at their initial values because the checkpoint lacks them (only with allow_missing,
    /// or for `masked_embed`, which teachers never have).
    pub missing: Vec<String>,
    /// In the checkpoint but not in the model (only with allow_unexpected).
    pub unexpected: Vec<String>,
    /// Keys of the selected state that are not backbone weights, ignored by design.
    pub ignored_non_backbone: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub allow_missing: bool,
    pub allow_unexpected: bool,
}

fn detect_format(path: &Path) -> Result<Format> {
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open checkpoint", path.display()))?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let head = &head[..n];
    if head.starts_with(b"PK") {
        return Ok(Format::Pth);
    }
    if n == 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    if head.first() == Some(&0x80) {
        bail!(
            "{}: legacy (non-zip) PyTorch serialization is not supported; re-save it with a PyTorch ≥ 1.6 torch.save",
            path.display()
        );
    }
    if n == 0 {
        bail!("{}: file is empty", path.display());
    }
    bail!(
        "{}: neither a PyTorch zip checkpoint nor a safetensors file",
        path.display()
    )
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let format = detect_format(path)?;
        match format {
            Format::Pth => {
                let entries = pth::list_tensors(path)?
                    .into_iter()
                    .map(|(name, t)| Entry {
                        shape: t.shape(),
                        dtype: t.dtype(),
                        name,
                        source: Source::Pth(t),
                    })
                    .collect::<Vec<_>>();
                if entries.is_empty() {
                    bail!("{}: the checkpoint holds no tensors", path.display());
                }
                Ok(Self {
                    path: path.to_owned(),
                    format,
                    entries,
                    metadata: HashMap::new(),
                    safetensors_bytes: None,
                })
            }
            Format::Safetensors => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: invalid safetensors file (truncated?): {e}",
                        path.display()
                    )
                })?;
                let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
                    anyhow::anyhow!("{}: invalid safetensors header: {e}", path.display())
                })?;
                let mut entries = Vec::new();
                for (name, view) in st.tensors() {
                    let dtype = DType::try_from(view.dtype())
                        .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
                    entries.push(Entry {
                        name,
                        shape: view.shape().to_vec(),
                        dtype,
                        source: Source::Safetensors,
                    });
                }
                entries.sort_by(|a, b| natural_key(&a.name).cmp(&natural_key(&b.name)));
                let metadata = meta.metadata().clone().unwrap_or_default();
                Ok(Self {
                    path: path.to_owned(),
                    format,
                    entries,
                    metadata,
                    safetensors_bytes: Some(bytes),
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub fn num_tensors(&self) -> usize {
        self.entries.len()
    }

    /// Full name, shape and dtype of every tensor in the file.
    pub fn tensor_infos(&self) -> Vec<(String, Vec<usize>, DType)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone(), e.dtype))
            .collect()
    }

    /// First path components, in file order.
    pub fn top_level_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for e in &self.entries {
            let g = e.name.split('.').next().unwrap_or("").to_string();
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        groups
    }

    /// Choose the state dict (`key`, or the first of teacher/state_dict/model/module that the file
    /// has), strip `module.`/`backbone.` prefixes, and split backbone from other keys.
    pub fn select(&self, key: Option<&str>) -> Result<Selection> {
        let groups = self.top_level_groups();
        let has_group = |k: &str| {
            self.entries
                .iter()
                .any(|e| e.name.starts_with(&format!("{k}.")))
        };
        let key: Option<String> = match key {
            Some(k) => {
                if !has_group(k) {
                    bail!(
                        "{}: key {k:?} not found; the checkpoint's top-level keys are: {}",
                        self.path.display(),
                        groups.join(", ")
                    );
                }
                Some(k.to_string())
            }
            None => STATE_KEYS
                .iter()
                .find(|k| has_group(k))
                .map(|k| k.to_string()),
        };
        let prefix = key.as_ref().map(|k| format!("{k}."));
        let mut stripped = Vec::new();
        for e in &self.entries {
            let rel = match &prefix {
                Some(p) => match e.name.strip_prefix(p.as_str()) {
                    Some(r) => r,
                    None => continue,
                },
                None => e.name.as_str(),
            };
            let (had_backbone_prefix, name) = strip_wrappers(rel);
            stripped.push((had_backbone_prefix, name, e.name.clone()));
        }
        let any_backbone_prefix = stripped.iter().any(|s| s.0);
        let mut backbone = BTreeMap::new();
        let mut other = Vec::new();
        for (had_prefix, name, full) in stripped {
            let is_backbone = if any_backbone_prefix {
                had_prefix
            } else {
                !is_non_backbone(&name)
            };
            if is_backbone {
                if let Some(prev) = backbone.insert(name.clone(), full.clone()) {
                    bail!(
                        "{}: keys {prev} and {full} both map to backbone key {name}",
                        self.path.display()
                    );
                }
            } else {
                other.push(full);
            }
        }
        if backbone.is_empty() {
            bail!(
                "{}: no backbone weights under {}; top-level keys: {}",
                self.path.display(),
                key.as_deref()
                    .map(|k| format!("key {k:?}"))
                    .unwrap_or_else(|| "the root".into()),
                groups.join(", ")
            );
        }
        let unselected_groups = match &key {
            Some(k) => groups.into_iter().filter(|g| g != k).collect(),
            None => Vec::new(),
        };
        Ok(Selection {
            key,
            backbone,
            other,
            unselected_groups,
        })
    }

    /// Backbone shapes (normalised names) of a selection.
    pub fn backbone_shapes(&self, sel: &Selection) -> HashMap<String, Vec<usize>> {
        let by_name: HashMap<&str, &Entry> =
            self.entries.iter().map(|e| (e.name.as_str(), e)).collect();
        sel.backbone
            .iter()
            .map(|(k, full)| (k.clone(), by_name[full.as_str()].shape.clone()))
            .collect()
    }

    /// The architecture: from `arch` if given (with the checkpoint's position-embedding grid),
    /// else from safetensors metadata written by `save_backbone`, else inferred from shapes.
    pub fn infer_config(
        &self,
        sel: &Selection,
        arch: Option<&str>,
        heads: Option<usize>,
    ) -> Result<VitConfig> {
        let shapes = self.backbone_shapes(sel);
        let heads = heads.or_else(|| self.metadata.get("num_heads").and_then(|h| h.parse().ok()));
        let inferred =
            VitConfig::infer(&shapes, heads).with_context(|| format!("{}", self.path.display()))?;
        match arch {
            None => Ok(inferred),
            Some(arch) => {
                let mut cfg = VitConfig::preset(arch)?;
                if let Some(h) = heads {
                    cfg.num_heads = h;
                }
                // The trained grid belongs to the weights, not to the architecture name.
                if cfg.patch_size == inferred.patch_size {
                    cfg.img_size = inferred.img_size;
                }
                cfg.masked_im_modeling = inferred.masked_im_modeling;
                Ok(cfg)
            }
        }
    }

    /// Read one tensor by its full name as f32 on the CPU.
    fn read(&self, reader: &mut Option<PthReader>, entry: &Entry) -> Result<Tensor> {
        let t = match &entry.source {
            Source::Pth(t) => {
                if reader.is_none() {
                    *reader = Some(PthReader::open(&self.path)?);
                }
                reader.as_mut().unwrap().read(&entry.name, t)?
            }
            Source::Safetensors => {
                let bytes = self.safetensors_bytes.as_ref().expect("safetensors bytes");
                let st = safetensors::SafeTensors::deserialize(bytes)?;
                let view = st.tensor(&entry.name)?;
                candle_core::safetensors::Load::load(&view, &Device::Cpu)?
            }
        };
        Ok(t)
    }

    /// Every tensor of the file (or of one sub-dict), full names, in file order.
    pub fn read_all(&self, names: &[String]) -> Result<Vec<(String, Tensor)>> {
        let by_name: HashMap<&str, &Entry> =
            self.entries.iter().map(|e| (e.name.as_str(), e)).collect();
        let mut reader = None;
        names
            .iter()
            .map(|n| {
                let e = by_name
                    .get(n.as_str())
                    .with_context(|| format!("{}: no tensor {n}", self.path.display()))?;
                Ok((n.clone(), self.read(&mut reader, e)?))
            })
            .collect()
    }

    /// Names of every tensor in the file, in file order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Among `names`, tensors that share storage with an earlier one (the shared
    /// `last_layer`/`last_layer2` head): later name → earlier name.
    pub fn aliases(&self, names: &[String]) -> BTreeMap<String, String> {
        let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut seen: HashMap<(String, usize, Vec<usize>, Vec<usize>), String> = HashMap::new();
        let mut aliases = BTreeMap::new();
        for e in self
            .entries
            .iter()
            .filter(|e| wanted.contains(e.name.as_str()))
        {
            if let Source::Pth(t) = &e.source {
                let key = (
                    t.info.path.clone(),
                    t.info.layout.start_offset(),
                    t.info.layout.dims().to_vec(),
                    t.info.layout.stride().to_vec(),
                );
                match seen.get(&key) {
                    Some(first) => {
                        aliases.insert(e.name.clone(), first.clone());
                    }
                    None => {
                        seen.insert(key, e.name.clone());
                    }
                }
            }
        }
        aliases
    }

    /// Load the backbone weights for `cfg`, strictly unless `opts` relaxes it. Missing keys that
    /// are allowed keep the values of `init`.
    pub fn load_backbone(
        &self,
        sel: &Selection,
        cfg: &VitConfig,
        opts: LoadOptions,
        mut init: HashMap<String, Tensor>,
    ) -> Result<(HashMap<String, Tensor>, LoadReport)> {
        let shapes = self.backbone_shapes(sel);
        let expected = cfg.expected_shapes();
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        for (k, shape) in &expected {
            match shapes.get(k) {
                None => missing.push(k.clone()),
                Some(s) if s != shape => {
                    mismatched.push(format!("{k}: checkpoint {s:?}, model {shape:?}"))
                }
                Some(_) => {}
            }
        }
        let expected_names: std::collections::HashSet<&str> =
            expected.iter().map(|(k, _)| k.as_str()).collect();
        // A student's mask token is harmless extra state when evaluating.
        let unexpected: Vec<String> = sel
            .backbone
            .keys()
            .filter(|k| !expected_names.contains(k.as_str()) && k.as_str() != "masked_embed")
            .cloned()
            .collect();
        // Teachers never have `masked_embed`; a fresh zero token is what the official code starts from.
        let hard_missing: Vec<String> = missing
            .iter()
            .filter(|k| k.as_str() != "masked_embed")
            .cloned()
            .collect();
        let mut problems = Vec::new();
        if !mismatched.is_empty() {
            problems.push(format!(
                "mis-shaped keys ({}):\n    {}",
                mismatched.len(),
                mismatched.join("\n    ")
            ));
        }
        if !hard_missing.is_empty() && !opts.allow_missing {
            problems.push(format!(
                "missing keys ({}):\n    {}",
                hard_missing.len(),
                hard_missing.join("\n    ")
            ));
        }
        if !unexpected.is_empty() && !opts.allow_unexpected {
            problems.push(format!(
                "unexpected keys ({}):\n    {}",
                unexpected.len(),
                unexpected.join("\n    ")
            ));
        }
        if !problems.is_empty() {
            bail!(
                "{}: checkpoint does not match the model ({}{}, {} heads, patch {}):\n  {}\n(use --allow-missing / --allow-unexpected to load anyway)",
                self.path.display(),
                cfg.preset_name().unwrap_or_else(|| format!("dim {}", cfg.embed_dim)),
                sel.key.as_deref().map(|k| format!(", key {k:?}")).unwrap_or_default(),
                cfg.num_heads,
                cfg.patch_size,
                problems.join("\n  ")
            );
        }
        let mut report = LoadReport {
            missing,
            unexpected,
            ignored_non_backbone: sel.other.clone(),
            ..Default::default()
        };
        let names: Vec<(String, String)> = expected
            .iter()
            .filter_map(|(k, _)| sel.backbone.get(k).map(|full| (k.clone(), full.clone())))
            .collect();
        let full: Vec<String> = names.iter().map(|(_, f)| f.clone()).collect();
        let tensors = self.read_all(&full)?;
        for ((key, _), (_, t)) in names.into_iter().zip(tensors) {
            let t = t.to_dtype(DType::F32)?;
            check_finite(&t).with_context(|| format!("{}: tensor {key}", self.path.display()))?;
            init.insert(key.clone(), t);
            report.loaded.push(key);
        }
        init.retain(|k, _| expected_names.contains(k.as_str()));
        Ok((init, report))
    }
}

pub(crate) fn check_finite(t: &Tensor) -> Result<()> {
    let bad = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|v| !v.is_finite())
        .count();
    if bad > 0 {
        bail!("{bad} non-finite values");
    }
    Ok(())
}

/// Strip DDP (`module.`) and wrapper (`backbone.`) prefixes; report whether `backbone.` was seen.
fn strip_wrappers(name: &str) -> (bool, String) {
    let mut rest = name;
    let mut had_backbone = false;
    loop {
        if let Some(r) = rest.strip_prefix("module.") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("backbone.") {
            rest = r;
            had_backbone = true;
        } else {
            return (had_backbone, rest.to_string());
        }
    }
}

/// Keys of bare state dicts that belong to heads, not to the backbone (iBOT head saved with
/// `--with_head`, timm/DeiT classifier).
fn is_non_backbone(name: &str) -> bool {
    name.starts_with("head.")
        || name == "head"
        || name.starts_with("head_dist.")
        || name.starts_with("fc_norm.")
}

/// Sort key that orders `blocks.10` after `blocks.9`.
pub fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (part.to_string(), 0),
        })
        .collect()
}

/// Write tensors as safetensors atomically (temp file in the target directory, then rename).
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    train::io::save_safetensors(path, tensors, metadata)
}

/// Metadata recording the architecture, so a saved backbone loads without guessing heads.
pub fn config_metadata(cfg: &VitConfig) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "ibot-rs".to_string()),
        ("embed_dim".to_string(), cfg.embed_dim.to_string()),
        ("depth".to_string(), cfg.depth.to_string()),
        ("num_heads".to_string(), cfg.num_heads.to_string()),
        ("patch_size".to_string(), cfg.patch_size.to_string()),
        ("img_size".to_string(), cfg.img_size.to_string()),
    ])
}
