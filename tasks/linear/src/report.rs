//! Choosing the reported head and summarising the sweep.
//!
//! iBOT reports the best validation top-1 over all heads and epochs: the model is selected on the
//! evaluation set. Here the reported number comes from the (head, epoch) with the best top-1 on a hold-out
//! slice of TRAIN; the iBOT-style number is kept as `best_on_val`, labelled as selected on the
//! evaluation set. Ties: higher top-1, then the earlier epoch, then the lower head index (grid order).

use serde::Serialize;

use crate::grid::{HeadConfig, Optimizer};
use crate::train::EpochScores;

pub const BEST_ON_VAL_NOTE: &str =
    "selected on the evaluation set (max over heads and epochs, as iBOT/DINO report), for comparison with papers";

/// The head and epoch a number comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selected {
    pub optimizer: Optimizer,
    pub lr: f64,
    /// `lr · batch / 256`, the learning rate actually used at epoch 0.
    pub lr_scaled: f64,
    pub weight_decay: f64,
    pub epoch: usize,
    /// `None` when no hold-out was used (then the selection is on the validation set).
    pub holdout_top1: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BestOnVal {
    pub top1: f64,
    pub top5: Option<f64>,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub weight_decay: f64,
    pub epoch: usize,
    pub note: &'static str,
}

/// One head of the sweep at its best hold-out epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadSummary {
    pub optimizer: Optimizer,
    pub lr: f64,
    pub weight_decay: f64,
    pub holdout_top1: Option<f64>,
    /// Epoch of the head's best hold-out top-1 (best val top-1 without a hold-out).
    pub epoch: usize,
    /// Val top-1 at that epoch.
    pub val_top1: f64,
    /// Best val top-1 over epochs.
    pub best_val_top1: f64,
}

/// Per evaluated epoch, the selected head's scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curves {
    pub epoch: Vec<usize>,
    pub val_top1: Vec<f64>,
    pub holdout_top1: Vec<Option<f64>>,
    pub train_loss: Vec<f32>,
}

/// The `linear` object of result.json.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Val top-1 of the selected head at the selected epoch.
    pub top1: f64,
    /// `None` with fewer than 5 classes (iBOT skips top-5 there too).
    pub top5: Option<f64>,
    /// `holdout` (the default) or `val` (no hold-out requested).
    pub selected_on: &'static str,
    pub selected: Selected,
    pub best_on_val: BestOnVal,
    pub sweep: Vec<HeadSummary>,
    pub curves: Curves,
}

impl Report {
    /// `history` must be non-empty, with hold-out scores either in every entry or in none.
    pub fn new(
        heads: &[HeadConfig],
        batch_size: usize,
        classes: usize,
        history: &[EpochScores],
    ) -> Report {
        assert!(!history.is_empty(), "at least one evaluated epoch");
        let has_holdout = history[0].holdout.is_some();
        let top5 = |c: &crate::heads::Correct| (classes >= 5).then(|| c.top5());
        let holdout_top1 = |e: &EpochScores, h: usize| e.holdout.as_ref().map(|s| s[h].top1());

        // (epoch index, head) maximising `key`, ties to the earlier epoch then the lower head.
        let argmax = |key: &dyn Fn(&EpochScores, usize) -> usize| {
            let mut best = (0, 0);
            let mut best_key = None;
            for (e, scores) in history.iter().enumerate() {
                for h in 0..heads.len() {
                    let k = key(scores, h);
                    if best_key.is_none_or(|b| k > b) {
                        best_key = Some(k);
                        best = (e, h);
                    }
                }
            }
            best
        };
        let by_val = |s: &EpochScores, h: usize| s.val[h].top1;
        let by_holdout = |s: &EpochScores, h: usize| s.holdout.as_ref().map_or(0, |v| v[h].top1);
        let (ve, vh) = argmax(&by_val);
        let (se, sh) = if has_holdout {
            argmax(&by_holdout)
        } else {
            (ve, vh)
        };

        let scale = batch_size as f64 / 256.0;
        let chosen = &history[se];
        let sweep = (0..heads.len())
            .map(|h| {
                let mut best_e = 0;
                for (e, s) in history.iter().enumerate() {
                    let better = if has_holdout {
                        by_holdout(s, h) > by_holdout(&history[best_e], h)
                    } else {
                        by_val(s, h) > by_val(&history[best_e], h)
                    };
                    if better {
                        best_e = e;
                    }
                }
                HeadSummary {
                    optimizer: heads[h].optimizer,
                    lr: heads[h].lr,
                    weight_decay: heads[h].weight_decay,
                    holdout_top1: holdout_top1(&history[best_e], h),
                    epoch: history[best_e].epoch,
                    val_top1: history[best_e].val[h].top1(),
                    best_val_top1: history.iter().map(|s| s.val[h].top1()).fold(0.0, f64::max),
                }
            })
            .collect();
        Report {
            top1: chosen.val[sh].top1(),
            top5: top5(&chosen.val[sh]),
            selected_on: if has_holdout { "holdout" } else { "val" },
            selected: Selected {
                optimizer: heads[sh].optimizer,
                lr: heads[sh].lr,
                lr_scaled: heads[sh].lr * scale,
                weight_decay: heads[sh].weight_decay,
                epoch: chosen.epoch,
                holdout_top1: holdout_top1(chosen, sh),
            },
            best_on_val: BestOnVal {
                top1: history[ve].val[vh].top1(),
                top5: top5(&history[ve].val[vh]),
                optimizer: heads[vh].optimizer,
                lr: heads[vh].lr,
                weight_decay: heads[vh].weight_decay,
                epoch: history[ve].epoch,
                note: BEST_ON_VAL_NOTE,
            },
            sweep,
            curves: Curves {
                epoch: history.iter().map(|s| s.epoch).collect(),
                val_top1: history.iter().map(|s| s.val[sh].top1()).collect(),
                holdout_top1: history.iter().map(|s| holdout_top1(s, sh)).collect(),
                train_loss: history.iter().map(|s| s.train_loss[sh]).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::official_grid;
    use crate::heads::Correct;

    fn c(top1: usize) -> Correct {
        Correct {
            top1,
            top5: top1,
            total: 10,
        }
    }

    #[test]
    fn reports_the_holdout_choice_and_labels_the_val_choice() {
        let heads = &official_grid(crate::Sweep::LrOnly)[..3];
        let history = vec![
            EpochScores {
                epoch: 1,
                train_loss: vec![1.0; 3],
                holdout: Some(vec![c(5), c(7), c(7)]),
                val: vec![c(9), c(4), c(3)],
            },
            EpochScores {
                epoch: 2,
                train_loss: vec![0.5; 3],
                holdout: Some(vec![c(6), c(7), c(2)]),
                val: vec![c(8), c(6), c(2)],
            },
        ];
        let r = Report::new(heads, 512, 10, &history);
        // Hold-out best 7 first reached by head 1 at epoch 1 (ties: earlier epoch, lower head).
        assert_eq!(r.selected.epoch, 1);
        assert_eq!(r.selected.lr, heads[1].lr);
        assert_eq!(r.selected.lr_scaled, heads[1].lr * 2.0);
        assert_eq!(r.top1, 0.4);
        assert_eq!(r.selected_on, "holdout");
        assert_eq!(r.best_on_val.top1, 0.9);
        assert_eq!(r.best_on_val.lr, heads[0].lr);
        assert_eq!(r.curves.val_top1, vec![0.4, 0.6]);
        assert_eq!(r.sweep[0].epoch, 2);
        assert_eq!(r.sweep[0].best_val_top1, 0.9);
        let no_holdout: Vec<_> = history
            .into_iter()
            .map(|mut e| {
                e.holdout = None;
                e
            })
            .collect();
        let r = Report::new(heads, 256, 3, &no_holdout);
        assert_eq!((r.top1, r.top5, r.selected_on), (0.9, None, "val"));
    }
}
