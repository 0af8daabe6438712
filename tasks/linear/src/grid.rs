//! The heads of iBOT's sweep (`evaluation/eval_linear_multi.py`): every combination of learning rate,
//! weight decay and optimiser, in the official order `itertools.product(lrs, wds, optims)`.

use serde::{Deserialize, Serialize};

/// How a head turns gradients into updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// `torch.optim.SGD(momentum=0.9, weight_decay=wd)`: wd is added to the gradient of every
    /// parameter (bias included), then `buf = 0.9·buf + g`, `p -= lr·buf`.
    Sgd,
    /// iBOT's `utils.LARS` (a Barlow Twins copy): for the weight matrix `g += wd·p`, then
    /// `g *= η‖p‖/‖g‖` (η = 0.001; factor 1 when either norm is 0); the bias gets neither.
    /// Both then `mu = 0.9·mu + g`, `p -= lr·mu`.
    Lars,
}

impl Optimizer {
    pub fn name(self) -> &'static str {
        match self {
            Optimizer::Sgd => "sgd",
            Optimizer::Lars => "lars",
        }
    }
}

impl std::str::FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(Optimizer::Sgd),
            "lars" => Ok(Optimizer::Lars),
            _ => Err(format!("unknown optimizer {s:?}: expected sgd or lars")),
        }
    }
}

/// One linear classifier of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub optimizer: Optimizer,
    /// Grid learning rate before the linear scaling rule (`lr · batch / 256`).
    pub lr: f64,
    pub weight_decay: f64,
}

/// Which part of the official grid to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Sweep {
    /// 45 lrs × wd {0, 1e-6} × {SGD, LARS} = 180 heads (`--sweep_lr_only false`).
    #[default]
    Full,
    /// The 45 SGD heads with wd 0 (the official default, `--sweep_lr_only true`).
    LrOnly,
}

impl std::str::FromStr for Sweep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Sweep::Full),
            "lr-only" => Ok(Sweep::LrOnly),
            _ => Err(format!("unknown sweep {s:?}: expected full or lr-only")),
        }
    }
}

/// `[base * n for base in 10**k for k in -4..=0 for n in 1..=9]`: 1e-4, 2e-4, …, 9e-4, 1e-3, …, 9.
pub fn official_lrs() -> Vec<f64> {
    let mut lrs = Vec::with_capacity(45);
    for k in -4..=0 {
        // Python's `10**k` for k < 0 is the correctly rounded 1/10^|k|.
        let base = 1.0 / 10f64.powi(-k);
        for n in 1..=9 {
            lrs.push(base * n as f64);
        }
    }
    lrs
}

/// The sweep's heads in the official order (lr major, then weight decay, then optimiser).
pub fn official_grid(sweep: Sweep) -> Vec<HeadConfig> {
    let (wds, optims): (&[f64], &[Optimizer]) = match sweep {
        Sweep::Full => (&[0.0, 1e-6], &[Optimizer::Sgd, Optimizer::Lars]),
        Sweep::LrOnly => (&[0.0], &[Optimizer::Sgd]),
    };
    grid(&official_lrs(), wds, optims)
}

/// Any product grid, in the official nesting order.
pub fn grid(lrs: &[f64], wds: &[f64], optims: &[Optimizer]) -> Vec<HeadConfig> {
    let mut heads = Vec::with_capacity(lrs.len() * wds.len() * optims.len());
    for &lr in lrs {
        for &weight_decay in wds {
            for &optimizer in optims {
                heads.push(HeadConfig {
                    optimizer,
                    lr,
                    weight_decay,
                });
            }
        }
    }
    heads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_grid_matches_the_script() {
        let lrs = official_lrs();
        assert_eq!(lrs.len(), 45);
        assert_eq!(lrs[0], 1e-4);
        assert!((lrs[9] - 1e-3).abs() < 1e-18);
        assert_eq!(lrs[44], 9.0);
        let full = official_grid(Sweep::Full);
        assert_eq!(full.len(), 180);
        // Group index % 4 == 0 is the (wd 0, SGD) head: the script's "sweep lr only" subset.
        assert_eq!(full[4].optimizer, Optimizer::Sgd);
        assert_eq!(full[4].weight_decay, 0.0);
        assert_eq!(full[5].optimizer, Optimizer::Lars);
        assert_eq!(full[6].weight_decay, 1e-6);
        assert_eq!(full[4].lr, lrs[1]);
        let lr_only = official_grid(Sweep::LrOnly);
        assert_eq!(lr_only.len(), 45);
        assert!(lr_only
            .iter()
            .zip(full.iter().step_by(4))
            .all(|(a, b)| a == b));
    }
}
