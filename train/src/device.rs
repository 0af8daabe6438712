//! One way to pick the device and the GEMM precision for every command.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when built with `--features cuda` and a GPU is present, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(format!("unknown device {s:?}: expected auto, cpu or cuda")),
        }
    }
}

pub fn device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available(0)?),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this binary was built without the `cuda` feature (cargo build --release --features cuda) or no GPU is visible");
            }
            Ok(Device::new_cuda(0)?)
        }
    }
}

/// The GEMM dtype of a `precision` setting on `device`: `bf16` forces bf16 (also on the CPU, where
/// candle widens bf16 GEMMs to f32 internally: slow), `auto` is bf16 on CUDA and f32 elsewhere,
/// `f32` is f32. Master weights, optimizer state, normalisation, softmax and losses stay f32.
pub fn compute_dtype(precision: &str, device: &Device) -> Result<DType> {
    Ok(match precision {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "auto" if device.is_cuda() => DType::BF16,
        "auto" => DType::F32,
        other => bail!("precision must be auto, f32 or bf16, got {other:?}"),
    })
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
