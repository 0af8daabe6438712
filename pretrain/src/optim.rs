//! AdamW exactly as PyTorch runs it for `main_ibot.py` (ibot-reference §7.1–7.2): two parameter
//! groups (decay / no decay), per-parameter step counts (a parameter whose gradient is dropped —
//! the frozen last layer in epoch 0 — keeps no state and takes no decay), and per-parameter
//! gradient-norm clipping. Written here rather than using candle-nn's AdamW, whose single global
//! step counter and private moments can neither skip parameters faithfully nor be checkpointed.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;

struct Slot {
    name: String,
    var: Var,
    /// Group 0 (weight decay): ≥ 2-D and not a bias.
    decay: bool,
    state: Option<Moments>,
}

struct Moments {
    step: u64,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    slots: Vec<Slot>,
}

/// What one optimizer step did, for logging.
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    pub clipped: usize,
    pub updated: usize,
    pub skipped_frozen: usize,
}

/// `get_params_groups`: biases and 1-D parameters take no weight decay.
pub fn takes_decay(name: &str, rank: usize) -> bool {
    rank >= 2 && !name.ends_with(".bias")
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, var)| Slot {
                decay: takes_decay(&name, var.rank()),
                name,
                var,
                state: None,
            })
            .collect();
        AdamW { slots }
    }

    /// The parameters this optimizer updates, in its (fixed) order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }

    pub fn names(&self) -> impl Iterator<Item = (&str, bool)> {
        self.slots.iter().map(|s| (s.name.as_str(), s.decay))
    }

    /// One step: clip each gradient to `clip` (0 = off), drop those of `frozen` parameters, then
    /// decoupled decay `θ ← θ(1 − lr·wd)` (group 0 only) and the Adam update.
    pub fn step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        weight_decay: f64,
        clip: f64,
        frozen: &dyn Fn(&str) -> bool,
    ) -> Result<StepStats> {
        let mut stats = StepStats::default();
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // candle leaves a variable's gradient attached to the backward graph (and through it to
            // the forward activations); a moment built from it would chain every step's graph.
            let mut g = g.detach().to_dtype(DType::F32)?;
            if clip > 0.0 {
                let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
                if norm > clip {
                    g = (g * (clip / (norm + 1e-6)))?;
                    stats.clipped += 1;
                }
            }
            if frozen(&slot.name) {
                stats.skipped_frozen += 1;
                continue;
            }
            let theta = slot.var.as_detached_tensor().to_dtype(DType::F32)?;
            let st = match &mut slot.state {
                Some(st) => st,
                None => slot.state.insert(Moments {
                    step: 0,
                    m: theta.zeros_like()?,
                    v: theta.zeros_like()?,
                }),
            };
            st.step += 1;
            let theta = if slot.decay && weight_decay != 0.0 {
                (theta * (1.0 - lr * weight_decay))?
            } else {
                theta
            };
            st.m = ((&st.m * BETA1)? + (&g * (1.0 - BETA1))?)?;
            st.v = ((&st.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let bc1 = 1.0 - BETA1.powi(st.step as i32);
            let bc2 = 1.0 - BETA2.powi(st.step as i32);
            let denom = ((st.v.sqrt()? / bc2.sqrt())? + EPS)?;
            let theta = (theta - ((&st.m / denom)? * (lr / bc1))?)?;
            slot.var.set(&theta.to_dtype(slot.var.dtype())?)?;
            stats.updated += 1;
        }
        Ok(stats)
    }

    /// Moments as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) and per-parameter steps.
    pub fn state(&self) -> (Vec<(String, Tensor)>, BTreeMap<String, u64>) {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for s in &self.slots {
            if let Some(st) = &s.state {
                tensors.push((format!("{}.exp_avg", s.name), st.m.clone()));
                tensors.push((format!("{}.exp_avg_sq", s.name), st.v.clone()));
                steps.insert(s.name.clone(), st.step);
            }
        }
        (tensors, steps)
    }

    /// Restores [`AdamW::state`]; `get` looks a moment tensor up by name.
    pub fn load_state(
        &mut self,
        steps: &BTreeMap<String, u64>,
        get: &dyn Fn(&str) -> Option<Tensor>,
    ) -> Result<()> {
        for name in steps.keys() {
            if !self.slots.iter().any(|s| &s.name == name) {
                bail!("optimizer state for unknown parameter {name}");
            }
        }
        for s in &mut self.slots {
            s.state = match steps.get(&s.name) {
                None => None,
                Some(&step) => {
                    let fetch = |suffix: &str| -> Result<Tensor> {
                        let key = format!("{}.{suffix}", s.name);
                        let t = get(&key)
                            .ok_or_else(|| anyhow::anyhow!("optimizer state {key} is missing"))?;
                        if t.dims() != s.var.dims() {
                            bail!(
                                "optimizer state {key} has shape {:?}, the parameter has {:?}",
                                t.dims(),
                                s.var.dims()
                            );
                        }
                        Ok(t.to_dtype(DType::F32)?.to_device(s.var.device())?)
                    };
                    Some(Moments {
                        step,
                        m: fetch("exp_avg")?,
                        v: fetch("exp_avg_sq")?,
                    })
                }
            };
        }
        Ok(())
    }
}
