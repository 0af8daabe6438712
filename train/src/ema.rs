//! Exponential moving average of parameters: `target ← m·target + (1 − m)·source`, in f32 on the
//! device. The iBOT teacher (momentum from a cosine schedule, ibot-reference §7.1) and timm's
//! `ModelEma` (decay 0.99996, kept and saved by the DeiT-style fine-tuning) are both this.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};

use crate::inplace::{ema_update, is_cpu_f32, shares_storage, with_f32, with_f32_mut};

pub struct Ema {
    /// (target, source) pairs.
    pairs: Vec<(Var, Var)>,
}

impl Ema {
    /// Pairs every target variable with the source of the same name; a target without a
    /// source is an error, sources without a target are ignored (e.g. iBOT's masked_embed).
    pub fn pair_by_name(targets: &[(String, Var)], sources: &[(String, Var)]) -> Result<Self> {
        let by_name: HashMap<&str, &Var> = sources.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let mut pairs = Vec::with_capacity(targets.len());
        for (name, t) in targets {
            let Some(s) = by_name.get(name.as_str()) else {
                bail!("EMA target {name} has no source parameter of that name");
            };
            if s.dims() != t.dims() {
                bail!("EMA {name}: target {:?} vs source {:?}", t.dims(), s.dims());
            }
            pairs.push((t.clone(), (*s).clone()));
        }
        Ok(Ema { pairs })
    }

    /// Only the pairs whose target name passes `keep`.
    pub fn pair_by_name_filtered(
        targets: &[(String, Var)],
        sources: &[(String, Var)],
        keep: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let kept: Vec<(String, Var)> = targets.iter().filter(|(n, _)| keep(n)).cloned().collect();
        Self::pair_by_name(&kept, sources)
    }

    pub fn update(&self, momentum: f64) -> Result<()> {
        for (t, s) in &self.pairs {
            let (target, source) = (t.as_tensor(), s.as_tensor());
            if is_cpu_f32(target) && is_cpu_f32(source) && !shares_storage(target, source) {
                // The same f32 expression, in place.
                let (m, rest) = (momentum as f32, (1.0 - momentum) as f32);
                with_f32(source, |src| {
                    with_f32_mut(target, |dst| ema_update(dst, src, m, rest))
                })??;
                continue;
            }
            let updated: Tensor = ((t.as_detached_tensor() * momentum)?
                + (s.as_detached_tensor() * (1.0 - momentum))?)?;
            t.set(&updated)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}
