//! Data-parallel communication (ibot-reference §7: DDP gradient averaging, all-reduced centres).
//!
//! A [`Collective`] is one rank's handle on its group. Three implementations:
//! - [`SingleProcess`]: world size 1, every reduction is the identity (the ordinary run);
//! - [`ThreadGroup`]: N ranks as N threads of one process, summing on the host behind a barrier —
//!   the CPU stand-in that makes data-parallel equivalence testable without GPUs;
//! - `nccl::NcclGroup` (feature `nccl`): one thread per GPU, NCCL all-reduce on each GPU's stream.
//!
//! Every rank must issue the same collectives in the same order with the same shapes; the trainer
//! guarantees that by running the identical code path on every rank.

use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

#[cfg(feature = "nccl")]
pub mod nccl;

pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum of `t` over all ranks (same shape and dtype everywhere, f32 or f64); every
    /// rank receives the same values.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Short name for logs: `single`, `threads` or `nccl`.
    fn kind(&self) -> &'static str;

    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// The ordinary one-process run.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn kind(&self) -> &'static str {
        "single"
    }
}

/// Rows of every rank stacked in rank order: [n, …] on each rank → [world·n, …] (all_gather,
/// built from a sum over zero-padded slots so that every backend gets it for free).
pub fn all_gather(comm: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    let world = comm.world_size();
    if world == 1 {
        return Ok(t.clone());
    }
    let rank = comm.rank();
    let mut parts = Vec::with_capacity(world);
    for r in 0..world {
        parts.push(if r == rank {
            t.clone()
        } else {
            t.zeros_like()?
        });
    }
    comm.all_reduce_sum(&Tensor::cat(&parts, 0)?)
}

/// Mean over ranks of a few host scalars (reduced in f64).
pub fn mean_scalars(
    comm: &dyn Collective,
    values: &[f64],
    device: &candle_core::Device,
) -> Result<Vec<f64>> {
    let world = comm.world_size();
    if world == 1 {
        return Ok(values.to_vec());
    }
    let t = Tensor::from_slice(values, values.len(), device)?;
    let sum = comm.all_reduce_sum(&t)?.to_vec1::<f64>()?;
    Ok(sum.into_iter().map(|v| v / world as f64).collect())
}

struct Round {
    /// Completed rounds; a waiter whose round number moved on reads `result`.
    generation: u64,
    pending: Vec<Option<Vec<f64>>>,
    arrived: usize,
    result: Option<Arc<Vec<f64>>>,
    /// Set when a rank leaves (finished or failed): later collectives fail instead of hanging.
    aborted: Option<String>,
}

struct Shared {
    world: usize,
    round: Mutex<Round>,
    wake: Condvar,
}

/// One rank of an in-process thread group (create with [`ThreadGroup::new`]).
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    /// The `world` rank handles of a new group; hand one to each thread.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        assert!(world > 0, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            world,
            round: Mutex::new(Round {
                generation: 0,
                pending: vec![None; world],
                arrived: 0,
                result: None,
                aborted: None,
            }),
            wake: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        let mut round = self.shared.round.lock().unwrap_or_else(|e| e.into_inner());
        if round.aborted.is_none() {
            round.aborted = Some(format!(
                "rank {} left the group (it finished or failed; its own error is reported separately)",
                self.rank
            ));
        }
        self.shared.wake.notify_all();
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn kind(&self) -> &'static str {
        "threads"
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let dtype = t.dtype();
        if !matches!(dtype, DType::F32 | DType::F64) {
            bail!("all_reduce_sum supports f32 and f64 tensors, got {dtype:?}");
        }
        let mine = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let n = mine.len();
        let shared = &self.shared;
        let mut round = shared.round.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &round.aborted {
            bail!("all_reduce on rank {}: {why}", self.rank);
        }
        if let Some(len) = round.pending.iter().flatten().map(Vec::len).next() {
            if len != n {
                let why = format!(
                    "ranks reduce different sizes ({len} and {n} elements): the ranks diverged"
                );
                round.aborted = Some(why.clone());
                shared.wake.notify_all();
                bail!("all_reduce on rank {}: {why}", self.rank);
            }
        }
        round.pending[self.rank] = Some(mine);
        round.arrived += 1;
        let my_generation = round.generation;
        let values = if round.arrived == shared.world {
            // Summed in rank order by whichever rank arrives last: every rank gets the same bits.
            let mut sum = vec![0f64; n];
            for part in round.pending.iter_mut() {
                let part = part.take().expect("every rank arrived");
                for (s, v) in sum.iter_mut().zip(part) {
                    *s += v;
                }
            }
            let sum = Arc::new(sum);
            round.result = Some(sum.clone());
            round.arrived = 0;
            round.generation += 1;
            shared.wake.notify_all();
            sum
        } else {
            while round.generation == my_generation && round.aborted.is_none() {
                round = shared.wake.wait(round).unwrap_or_else(|e| e.into_inner());
            }
            if round.generation == my_generation {
                let why = round.aborted.clone().unwrap_or_default();
                bail!("all_reduce on rank {}: {why}", self.rank);
            }
            // No later round can complete before this rank joins it, so `result` is still ours.
            round
                .result
                .clone()
                .expect("a completed round leaves its result")
        };
        drop(round);
        Tensor::from_slice(values.as_slice(), t.shape(), t.device())?
            .to_dtype(dtype)
            .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn threads_sum_gather_and_fail_instead_of_hanging() -> Result<()> {
        let ranks = ThreadGroup::new(3);
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                std::thread::spawn(move || -> Result<(Vec<f32>, Vec<f32>)> {
                    let r = comm.rank() as f32;
                    let t = Tensor::new(&[r, 10.0 * r + 1.0], &Device::Cpu)?;
                    let sum = comm.all_reduce_sum(&t)?.to_vec1::<f32>()?;
                    let g = all_gather(&comm, &Tensor::new(&[r], &Device::Cpu)?)?;
                    Ok((sum, g.to_vec1::<f32>()?))
                })
            })
            .collect();
        for h in handles {
            let (sum, gathered) = h.join().unwrap()?;
            assert_eq!(sum, vec![3.0, 33.0]);
            assert_eq!(gathered, vec![0.0, 1.0, 2.0]);
        }

        // A rank that leaves makes the others' next collective an error, not a deadlock.
        let mut ranks = ThreadGroup::new(2);
        let second = ranks.pop().unwrap();
        let first = ranks.pop().unwrap();
        let waiter = std::thread::spawn(move || {
            first.all_reduce_sum(&Tensor::new(&[1f32], &Device::Cpu).unwrap())
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(second);
        let err = waiter.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("rank 1 left the group"), "{err}");
        Ok(())
    }
}
