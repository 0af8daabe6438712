//! A process-wide cache of small host-built operator matrices and index tensors.
//!
//! Resize, pooling and subsampling operators are built on the host once per (kind, sizes,
//! device, dtype) and then reused by every forward pass: building them is cheap, but uploading
//! a fresh copy to a GPU at every step is not.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Result, Tensor};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: &'static str,
    sizes: Vec<usize>,
    // `Device` is not `Hash`; its debug form names the backend and the device ordinal/stream, which
    // is what decides whether a cached tensor can be used with a given input.
    device: String,
    dtype: DType,
}

/// Entries kept before the cache is reset.
const MAX_ENTRIES: usize = 512;

fn cache() -> &'static Mutex<HashMap<Key, Tensor>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Tensor>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Returns the cached tensor for `(kind, sizes, device, dtype)`, building it with `build` (an f32
/// or u32 host tensor) on a miss. Float tensors are converted to `dtype`; index tensors (u32) keep
/// their dtype.
pub(crate) fn cached(
    kind: &'static str,
    sizes: &[usize],
    device: &Device,
    dtype: DType,
    build: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let key = Key {
        kind,
        sizes: sizes.to_vec(),
        device: format!("{device:?}"),
        dtype,
    };
    if let Some(t) = cache()
        .lock()
        .expect("layers matrix cache poisoned")
        .get(&key)
    {
        return Ok(t.clone());
    }
    let host = build()?;
    let host = if host.dtype().is_float() {
        host.to_dtype(dtype)?
    } else {
        host
    };
    let t = host.to_device(device)?;
    let mut c = cache().lock().expect("layers matrix cache poisoned");
    // Variable input sizes (multi-scale detection) would otherwise grow the cache without bound;
    // rebuilding a few matrices after a reset is cheap.
    if c.len() >= MAX_ENTRIES {
        c.clear();
    }
    c.insert(key, t.clone());
    Ok(t)
}
