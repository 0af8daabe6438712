//! AdamW exactly as PyTorch runs it (`torch.optim.AdamW`, decoupled decay), over named parameters
//! that each carry their group: an lr scale (layer decay) and whether weight decay applies. State
//! is per parameter — its own step count, created at its first update — so a parameter whose
//! gradient is dropped (iBOT's frozen last layer in epoch 0, PyTorch's `grad is None`) keeps no
//! moments and takes no decay, and the whole state checkpoints and resumes exactly. candle-nn's
//! AdamW has one global lr/wd/step counter and private moments, so it can do neither.
//!
//! Clipping comes before the update: per parameter (DINO/iBOT `clip_gradients`: each tensor's
//! norm ≤ max) or global (timm/BEiT `clip_grad_norm_` over all gradients).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::inplace::{is_cpu_f32, shares_storage, sum_squares, AdamWStep};
use crate::param_groups::ParamGroup;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults, which every official recipe keeps (betas (0.9, 0.999), eps 1e-8).
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Gradient clipping before the update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Clip {
    #[default]
    None,
    /// Each parameter's gradient rescaled to norm ≤ max (`clip_gradients` of DINO/iBOT):
    /// `g · max / (‖g‖ + 1e-6)` when ‖g‖ > max.
    PerParam(f64),
    /// All gradients rescaled together (`torch.nn.utils.clip_grad_norm_`): by
    /// `max / (‖g‖_total + 1e-6)` when that is < 1.
    GlobalNorm(f64),
}

impl Clip {
    /// DINO's convention: 0 turns clipping off.
    pub fn per_param(max: f64) -> Clip {
        if max > 0.0 {
            Clip::PerParam(max)
        } else {
            Clip::None
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    group: ParamGroup,
    state: Option<Moments>,
}

struct Moments {
    step: u64,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
}

/// What one optimizer step did, for logging.
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    pub clipped: usize,
    pub updated: usize,
    pub skipped_frozen: usize,
    /// Global gradient norm before clipping (only computed for [`Clip::GlobalNorm`]).
    pub grad_norm: Option<f64>,
}

impl AdamW {
    /// `params` in a fixed order (checkpoints and logs follow it), each with its group.
    pub fn new(params: Vec<(String, Var, ParamGroup)>, config: AdamWConfig) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, var, group)| Slot {
                name,
                var,
                group,
                state: None,
            })
            .collect();
        AdamW { slots, config }
    }

    /// Groups from a rule over (name, rank).
    pub fn with_rule(
        params: Vec<(String, Var)>,
        rule: impl Fn(&str, usize) -> ParamGroup,
        config: AdamWConfig,
    ) -> Self {
        let params = params
            .into_iter()
            .map(|(n, v)| {
                let g = rule(&n, v.rank());
                (n, v, g)
            })
            .collect();
        Self::new(params, config)
    }

    /// The parameters this optimizer updates, in its order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }

    /// (name, group) of every parameter, in order.
    pub fn groups(&self) -> impl Iterator<Item = (&str, ParamGroup)> {
        self.slots.iter().map(|s| (s.name.as_str(), s.group))
    }

    /// One step at base learning rate `lr` and weight decay `wd`: each parameter moves with
    /// `lr · lr_scale` and decays by `wd` when its group decays. Gradients are clipped first;
    /// `frozen` parameters then skip the step entirely (no moments, no decay).
    pub fn step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        wd: f64,
        clip: Clip,
        frozen: &dyn Fn(&str) -> bool,
    ) -> Result<StepStats> {
        let mut stats = StepStats::default();
        // candle leaves a variable's gradient attached to the backward graph (and through it to
        // the forward activations); moments built from it would chain every step's graph.
        let mut present: Vec<(usize, Tensor)> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                present.push((i, g.detach().to_dtype(DType::F32)?.contiguous()?));
            }
        }
        // Clipping as a factor per gradient, folded into the update (None: unclipped).
        let mut factors: Vec<Option<f64>> = vec![None; present.len()];
        match clip {
            Clip::None => {}
            Clip::PerParam(max) => {
                for ((_, g), factor) in present.iter().zip(&mut factors) {
                    let norm = sum_squares(g)?.sqrt();
                    if norm > max {
                        *factor = Some(max / (norm + 1e-6));
                        stats.clipped += 1;
                    }
                }
            }
            Clip::GlobalNorm(max) => {
                let mut total = 0f64;
                for (_, g) in &present {
                    total += sum_squares(g)?;
                }
                let norm = total.sqrt();
                stats.grad_norm = Some(norm);
                let coef = max / (norm + 1e-6);
                if coef < 1.0 {
                    factors.iter_mut().for_each(|f| *f = Some(coef));
                    stats.clipped = present.len();
                }
            }
        }
        let c = self.config;
        for ((i, g), factor) in present.into_iter().zip(factors) {
            let slot = &mut self.slots[i];
            if frozen(&slot.name) {
                stats.skipped_frozen += 1;
                continue;
            }
            let lr = lr * slot.group.lr_scale;
            let st = match &mut slot.state {
                Some(st) => st,
                None => {
                    let zeros = slot.var.zeros_like()?.to_dtype(DType::F32)?;
                    slot.state.insert(Moments {
                        step: 0,
                        m: zeros.clone(),
                        v: zeros.copy()?,
                    })
                }
            };
            st.step += 1;
            let decay = (slot.group.decay && wd != 0.0).then_some(1.0 - lr * wd);
            let bc1 = 1.0 - c.beta1.powi(st.step as i32);
            let bc2 = 1.0 - c.beta2.powi(st.step as i32);
            let var = slot.var.as_tensor();
            let in_place =
                [var, &st.m, &st.v, &g].iter().all(|t| is_cpu_f32(t)) && !shares_storage(var, &g);
            if in_place {
                let kernel = AdamWStep {
                    grad_scale: factor.map(|f| f as f32),
                    decay: decay.map(|d| d as f32),
                    beta1: c.beta1 as f32,
                    one_minus_beta1: (1.0 - c.beta1) as f32,
                    beta2: c.beta2 as f32,
                    one_minus_beta2: (1.0 - c.beta2) as f32,
                    inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                    eps: c.eps as f32,
                    step_size: (lr / bc1) as f32,
                };
                kernel.apply_to(var, &st.m, &st.v, &g)?;
            } else {
                // Other devices and dtypes: the same expressions as tensor ops.
                let g = match factor {
                    Some(f) => (&g * f)?,
                    None => g,
                };
                let theta = slot.var.as_detached_tensor().to_dtype(DType::F32)?;
                let theta = match decay {
                    Some(d) => (theta * d)?,
                    None => theta,
                };
                st.m = ((&st.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                st.v = ((&st.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((st.v.sqrt()? / bc2.sqrt())? + c.eps)?;
                let theta = (theta - ((&st.m / denom)? * (lr / bc1))?)?;
                slot.var.set(&theta.to_dtype(slot.var.dtype())?)?;
            }
            stats.updated += 1;
        }
        Ok(stats)
    }

    /// Moments as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) and per-parameter steps.
    pub fn state(&self) -> Result<(Vec<(String, Tensor)>, BTreeMap<String, u64>)> {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for s in &self.slots {
            if let Some(st) = &s.state {
                // Snapshots: the moments are updated in place by later steps.
                tensors.push((format!("{}.exp_avg", s.name), st.m.copy()?));
                tensors.push((format!("{}.exp_avg_sq", s.name), st.v.copy()?));
                steps.insert(s.name.clone(), st.step);
            }
        }
        Ok((tensors, steps))
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
