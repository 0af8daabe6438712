//! CIFAR-10 / CIFAR-100 binary batches (`data_batch_*.bin`, `test_batch.bin`, `train.bin`, `test.bin`).

use std::path::Path;

use image::RgbImage;

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// 1 label byte + 3072 pixels.
    Cifar10,
    /// coarse label + fine label + 3072 pixels; the fine label is returned.
    Cifar100,
}

/// Reads one binary batch file into 32x32 RGB images and labels.
pub fn read_cifar_batch(path: &Path, kind: CifarKind) -> Result<(Vec<RgbImage>, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let label_bytes = match kind {
        CifarKind::Cifar10 => 1,
        CifarKind::Cifar100 => 2,
    };
    let record = label_bytes + 3072;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(DataError::format(
            path,
            format!(
                "size {} is not a multiple of the {record}-byte {kind:?} record",
                bytes.len()
            ),
        ));
    }
    let classes = match kind {
        CifarKind::Cifar10 => 10,
        CifarKind::Cifar100 => 100,
    };
    let mut images = Vec::with_capacity(bytes.len() / record);
    let mut labels = Vec::with_capacity(bytes.len() / record);
    for (n, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[label_bytes - 1] as usize;
        if label >= classes {
            return Err(DataError::format(
                path,
                format!("record {n}: label {label} out of range for {kind:?}"),
            ));
        }
        let px = &rec[label_bytes..];
        let mut rgb = Vec::with_capacity(3072);
        for i in 0..1024 {
            rgb.extend_from_slice(&[px[i], px[1024 + i], px[2048 + i]]);
        }
        images.push(RgbImage::from_raw(32, 32, rgb).unwrap());
        labels.push(label);
    }
    Ok((images, labels))
}
