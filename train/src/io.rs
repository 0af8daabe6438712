//! Files written the one safe way: a temporary file in the destination directory, then a rename,
//! so a crash never leaves a half-written checkpoint, export or report behind. Safetensors files
//! come out byte-identical for identical contents: the header lists the metadata keys and the
//! tensors in sorted order (the `safetensors` crate writes its metadata map in hash order, so two
//! identical runs used to produce files with different SHA-256s and missed the feature cache).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

/// Writes `bytes` to `path` atomically (temp file + rename), file mode 0644 on Unix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.flush())
        .with_context(|| format!("{}: writing", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot move the finished file into place: {e}",
            path.display()
        )
    })?;
    Ok(())
}

/// A JSON value as pretty text with a final newline, written atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    write_atomic(
        path,
        (serde_json::to_string_pretty(value)? + "\n").as_bytes(),
    )
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        other => bail!("cannot store dtype {other:?} in safetensors"),
    })
}

/// The safetensors encoding of `tensors` (names must be unique) with `metadata`: header keys in
/// sorted order, data in name order, header padded with spaces to a multiple of 8 bytes.
pub fn safetensors_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<u8>> {
    let mut sorted: Vec<(&str, &Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            bail!("tensor name {:?} appears twice", pair[0].0);
        }
    }
    let metadata: BTreeMap<String, String> = metadata.into_iter().collect();
    // Written by hand rather than through a map type, so the order (metadata first, then the
    // tensors by name) does not depend on serde_json's features.
    let mut entries: Vec<String> = Vec::with_capacity(sorted.len() + 1);
    if !metadata.is_empty() {
        entries.push(format!(
            "\"__metadata__\":{}",
            serde_json::to_string(&metadata)?
        ));
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in &sorted {
        let start = data.len();
        append_le_bytes(t, &mut data).with_context(|| format!("tensor {name}"))?;
        let info = serde_json::json!({
            "dtype": dtype_name(t.dtype())?,
            "shape": t.dims(),
            "data_offsets": [start, data.len()],
        });
        entries.push(format!("{}:{}", serde_json::to_string(name)?, info));
    }
    let mut json = format!("{{{}}}", entries.join(",")).into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    Ok(out)
}

fn append_le_bytes(t: &Tensor, out: &mut Vec<u8>) -> Result<()> {
    let t = t.flatten_all()?.to_device(&candle_core::Device::Cpu)?;
    match t.dtype() {
        DType::U8 => out.extend(t.to_vec1::<u8>()?),
        DType::U32 => t
            .to_vec1::<u32>()?
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::F64 => t
            .to_vec1::<f64>()?
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        other => bail!("cannot store dtype {other:?} in safetensors"),
    }
    Ok(())
}

/// [`safetensors_bytes`] written atomically to `path`.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Result<()> {
    let bytes = safetensors_bytes(tensors.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .with_context(|| format!("{}: encoding safetensors", path.display()))?;
    write_atomic(path, &bytes)
}

/// The metadata map of a safetensors file (empty when it has none).
pub fn read_safetensors_metadata(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    Ok(meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect())
}
