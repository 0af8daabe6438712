//! NCCL all-reduce across the GPUs of one process: one rank (thread) per GPU, each with its own
//! communicator bound to the CUDA stream candle uses on that GPU, so reductions are ordered with
//! the rank's kernels. NCCL permits one thread per communicator issuing collectives in the same
//! order on every rank, which is how the trainer uses it.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, ReduceOp};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::Collective;

/// One GPU's rank: its candle device and its NCCL communicator.
pub struct NcclGroup {
    comm: Arc<SendComm>,
    device: Device,
}

/// `Comm` holds a raw `ncclComm_t`. Each rank's communicator is created on the launching thread
/// and then used by exactly one rank thread, never concurrently, which NCCL allows.
struct SendComm(Comm);
unsafe impl Send for SendComm {}
unsafe impl Sync for SendComm {}

impl NcclGroup {
    /// One rank per GPU ordinal in `gpus` (ranks in that order), via `ncclCommInitAll`.
    pub fn new(gpus: &[usize]) -> Result<Vec<NcclGroup>> {
        if gpus.is_empty() {
            bail!("NCCL needs at least one GPU");
        }
        let mut devices = Vec::with_capacity(gpus.len());
        let mut streams = Vec::with_capacity(gpus.len());
        for &g in gpus {
            let device = Device::new_cuda(g).with_context(|| format!("opening CUDA device {g}"))?;
            streams.push(device.as_cuda_device()?.cuda_stream());
            devices.push(device);
        }
        let comms = Comm::from_devices(streams).map_err(|e| {
            anyhow::anyhow!(
                "initialising NCCL on GPUs {gpus:?}: {e:?} (is libnccl.so.2 installed and on the library path?)"
            )
        })?;
        Ok(comms
            .into_iter()
            .zip(devices)
            .map(|(comm, device)| NcclGroup {
                comm: Arc::new(SendComm(comm)),
                device,
            })
            .collect())
    }

    /// The CUDA device this rank trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.comm.0.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.0.world_size()
    }

    fn kind(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().same_device(&self.device) {
            bail!(
                "all_reduce_sum: tensor on {:?}, this rank's GPU is {:?}",
                t.device(),
                self.device
            );
        }
        let t = t.contiguous()?;
        Ok(t.apply_op1_no_bwd(&AllReduceSum {
            comm: self.comm.clone(),
        })?)
    }
}

struct AllReduceSum {
    comm: Arc<SendComm>,
}

impl AllReduceSum {
    fn reduce<T>(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<CudaStorage>
    where
        T: CudaDType
            + candle_core::cuda_backend::cudarc::nccl::safe::NcclType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
    {
        let (start, end) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("all_reduce needs a contiguous tensor".into())
        })?;
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        let dev = s.device().clone();
        let mut dst = dev.alloc_zeros::<T>(end - start)?;
        self.comm
            .0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all_reduce: {e:?}")))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, dev))
    }
}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL all_reduce needs CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => self.reduce::<f32>(s, l)?,
            DType::F64 => self.reduce::<f64>(s, l)?,
            other => candle_core::bail!("NCCL all_reduce: unsupported dtype {other:?}"),
        };
        Ok((out, l.shape().clone()))
    }
}
