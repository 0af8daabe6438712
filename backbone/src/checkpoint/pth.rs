//! PyTorch zip checkpoints (`torch.save`), read without executing any pickled code.
//!
//! candle's `pickle` module parses the opcode stream; we walk the resulting object tree ourselves
//! because candle 0.11's readers descend one key deep only and refuse strided (view) tensors.
//! Here every nested dict is flattened to dotted names, anything that is not a tensor (argparse
//! Namespace, epoch counters, optimizer hyper-parameters) is skipped, and tensors stored as views of
//! a larger storage are gathered element by element.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};

/// One tensor stored in a `.pth` archive, not yet read.
#[derive(Debug, Clone)]
pub struct PthTensor {
    pub info: TensorInfo,
}

impl PthTensor {
    pub fn shape(&self) -> Vec<usize> {
        self.info.layout.dims().to_vec()
    }

    pub fn dtype(&self) -> DType {
        self.info.dtype
    }
}

/// Parse `data.pkl` of a zip checkpoint and list every tensor under its dotted path.
pub fn list_tensors(path: &Path) -> Result<Vec<(String, PthTensor)>> {
    let mut zip = open_zip(path)?;
    let names = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: unreadable zip directory: {e}", path.display()))?;
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl"))
        .with_context(|| {
            format!(
                "{}: zip archive has no data.pkl, so it is not a torch.save checkpoint",
                path.display()
            )
        })?
        .clone();
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let entry = zip
        .by_name(&pkl)
        .with_context(|| format!("{}: cannot open {pkl}", path.display()))?;
    let mut reader = BufReader::new(entry);
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut reader)
        .map_err(|e| anyhow::anyhow!("{}: cannot parse {pkl}: {e}", path.display()))?;
    let root = stack
        .finalize()
        .map_err(|e| anyhow::anyhow!("{}: empty pickle: {e}", path.display()))?;
    let mut out = Vec::new();
    walk(root, String::new(), &dir, &mut out);
    Ok(out)
}

/// Depth-first flattening; dict keys become dotted path components.
fn walk(obj: Object, prefix: String, dir: &Path, out: &mut Vec<(String, PthTensor)>) {
    match obj {
        Object::Dict(items) => {
            for (key, value) in in_file_order(items) {
                let Some(key) = key_string(&key) else {
                    continue;
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                walk(value, name, dir, out);
            }
        }
        // `torch.save(module)` wraps the state in a Build of a `__torch__.Module`.
        Object::Build { args, .. } if matches!(*args, Object::Dict(_)) => {
            walk(*args, prefix, dir, out)
        }
        other => {
            if prefix.is_empty() {
                return;
            }
            if let Ok(Some(info)) = other.into_tensor_info(Object::Unicode(prefix.clone()), dir) {
                out.push((prefix, PthTensor { info }));
            }
        }
    }
}

/// Python's pickler writes dict items in SETITEMS batches of 1000, and candle pushes each batch
/// in reverse; undo that so names keep the order of the file (`last_layer` before `last_layer2`).
fn in_file_order(mut items: Vec<(Object, Object)>) -> Vec<(Object, Object)> {
    const PICKLE_BATCH: usize = 1000;
    for chunk in items.chunks_mut(PICKLE_BATCH) {
        chunk.reverse();
    }
    items
}

fn key_string(key: &Object) -> Option<String> {
    match key {
        Object::Unicode(s) => Some(s.clone()),
        Object::Int(i) => Some(i.to_string()),
        Object::Long(i) => Some(i.to_string()),
        _ => None,
    }
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<BufReader<std::fs::File>>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a readable zip archive (truncated or corrupt PyTorch checkpoint?): {e}",
            path.display()
        )
    })
}

/// Reads tensors on demand; the archive is opened once.
pub struct PthReader {
    path: PathBuf,
    zip: zip::ZipArchive<BufReader<std::fs::File>>,
    storages: HashMap<String, Vec<u8>>,
}

impl PthReader {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            zip: open_zip(path)?,
            storages: HashMap::new(),
        })
    }

    /// Materialise one tensor (contiguous, CPU), whatever its stored strides and offset.
    pub fn read(&mut self, name: &str, t: &PthTensor) -> Result<Tensor> {
        let info = &t.info;
        let elem = info.dtype.size_in_bytes();
        if !self.storages.contains_key(&info.path) {
            let mut entry = self.zip.by_name(&info.path).map_err(|e| {
                anyhow::anyhow!(
                    "{}: storage {} of tensor {name} is missing: {e}",
                    self.path.display(),
                    info.path
                )
            })?;
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read storage of tensor {name} (truncated file?): {e}",
                    self.path.display()
                )
            })?;
            if bytes.len() < info.storage_size * elem {
                bail!(
                    "{}: storage of tensor {name} holds {} bytes, expected {}",
                    self.path.display(),
                    bytes.len(),
                    info.storage_size * elem
                );
            }
            self.storages.insert(info.path.clone(), bytes);
        }
        let storage = &self.storages[&info.path];
        let dims = info.layout.dims();
        let strides = info.layout.stride();
        // candle's layout stores the element offset already multiplied by the element size.
        let offset_elems = info.layout.start_offset() / elem;
        let numel: usize = dims.iter().product();
        let max_index = offset_elems
            + dims
                .iter()
                .zip(strides)
                .map(|(d, s)| d.saturating_sub(1) * s)
                .sum::<usize>();
        if numel > 0 && (max_index + 1) * elem > storage.len() {
            bail!(
                "{}: tensor {name} ({dims:?}, strides {strides:?}, offset {offset_elems}) reaches past its storage",
                self.path.display()
            );
        }
        let mut out = Vec::with_capacity(numel * elem);
        let mut index = vec![0usize; dims.len()];
        for _ in 0..numel {
            let src: usize =
                offset_elems + index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[src * elem..(src + 1) * elem]);
            for axis in (0..dims.len()).rev() {
                index[axis] += 1;
                if index[axis] < dims[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        Tensor::from_raw_buffer(&out, info.dtype, dims, &Device::Cpu)
            .with_context(|| format!("{}: building tensor {name}", self.path.display()))
    }
}
