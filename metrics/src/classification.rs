//! Classification accuracy: top-k, mean-per-class (balanced) accuracy, confusion matrix.
//!
//! **Ranking rule** (deterministic, documented tie-breaking): classes are ranked by score, highest
//! first; equal scores rank the lower class index first; NaN ranks below every number. This is
//! `np.argsort(-scores, kind="stable")`, and equals `torch.topk` whenever scores have no ties. A
//! sample is top-k correct when its label's rank is below `min(k, num_classes)`.

use crate::numeric::pairwise_sum;
use crate::{Error, Result};

/// Whether class `a` (score `sa`) ranks before class `b` (score `sb`) under the module's rule.
fn ranks_before(sa: f64, a: usize, sb: f64, b: usize) -> bool {
    match (sa.is_nan(), sb.is_nan()) {
        (false, false) => sa > sb || (sa == sb && a < b),
        (false, true) => true,
        (true, false) => false,
        (true, true) => a < b,
    }
}

/// Position (0 = best) of class `label` in the ranking of one sample's scores.
pub fn rank_of<T: Copy + Into<f64>>(scores: &[T], label: usize) -> usize {
    let own = scores[label].into();
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &s)| ranks_before(s.into(), j, own, label))
        .count()
}

/// The highest-ranked class of one sample's scores (first maximum; NaN never wins over a number).
pub fn argmax<T: Copy + Into<f64>>(scores: &[T]) -> usize {
    let mut best = 0;
    for j in 1..scores.len() {
        if ranks_before(scores[j].into(), j, scores[best].into(), best) {
            best = j;
        }
    }
    best
}

fn check_shapes<T>(scores: &[T], num_classes: usize, labels: &[usize]) -> Result<()> {
    if num_classes == 0 {
        return Err(Error::invalid("num_classes must be at least 1"));
    }
    if scores.len() != labels.len() * num_classes {
        return Err(Error::invalid(format!(
            "scores hold {} values, expected {} samples x {} classes = {}",
            scores.len(),
            labels.len(),
            num_classes,
            labels.len() * num_classes
        )));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l >= num_classes) {
        return Err(Error::invalid(format!(
            "sample {i} has label {l}, outside 0..{num_classes}"
        )));
    }
    Ok(())
}

/// Number of samples whose label is among the `min(k, num_classes)` best-ranked classes.
/// `scores` is row-major `[samples, num_classes]`.
pub fn top_k_correct<T: Copy + Into<f64>>(
    scores: &[T],
    num_classes: usize,
    labels: &[usize],
    k: usize,
) -> Result<usize> {
    check_shapes(scores, num_classes, labels)?;
    let k = k.min(num_classes);
    Ok(scores
        .chunks_exact(num_classes)
        .zip(labels)
        .filter(|(row, &label)| rank_of(row, label) < k)
        .count())
}

/// Fraction of samples that are top-k correct (NaN for no samples).
pub fn top_k_accuracy<T: Copy + Into<f64>>(
    scores: &[T],
    num_classes: usize,
    labels: &[usize],
    k: usize,
) -> Result<f64> {
    Ok(top_k_correct(scores, num_classes, labels, k)? as f64 / labels.len() as f64)
}

/// Counts of (true class, predicted class); rows are true classes, as scikit-learn's
/// `confusion_matrix(y_true, y_pred, labels=range(C))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// From paired labels; errors on unequal lengths or labels outside `0..num_classes`.
    pub fn from_labels(truth: &[usize], pred: &[usize], num_classes: usize) -> Result<Self> {
        if truth.len() != pred.len() {
            return Err(Error::invalid(format!(
                "{} true labels but {} predictions",
                truth.len(),
                pred.len()
            )));
        }
        let mut cm = Self::new(num_classes);
        for (i, (&t, &p)) in truth.iter().zip(pred).enumerate() {
            if t >= num_classes || p >= num_classes {
                return Err(Error::invalid(format!(
                    "sample {i}: label {t} / prediction {p} outside 0..{num_classes}"
                )));
            }
            cm.add(t, p);
        }
        Ok(cm)
    }

    /// Count one sample. Panics if either index is outside `0..num_classes`.
    pub fn add(&mut self, truth: usize, pred: usize) {
        self.counts[truth * self.num_classes + pred] += 1;
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        self.counts[truth * self.num_classes + pred]
    }

    /// Row-major counts, `[truth][pred]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn rows(&self) -> impl Iterator<Item = &[u64]> {
        self.counts.chunks_exact(self.num_classes.max(1))
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of samples on the diagonal (NaN when empty).
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.num_classes).map(|c| self.get(c, c)).sum();
        correct as f64 / self.total() as f64
    }

    /// Recall of each class: correct / support; NaN for a class without support.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        (0..self.num_classes)
            .map(|c| {
                let support: u64 = self.counts[c * self.num_classes..(c + 1) * self.num_classes]
                    .iter()
                    .sum();
                self.get(c, c) as f64 / support as f64
            })
            .collect()
    }

    /// Mean over classes **with support** of their recall: scikit-learn's `balanced_accuracy_score`
    /// (classes only predicted, never true, are left out). NaN when there are no samples.
    pub fn mean_per_class_accuracy(&self) -> f64 {
        let per_class: Vec<f64> = self
            .per_class_accuracy()
            .into_iter()
            .filter(|v| !v.is_nan())
            .collect();
        pairwise_sum(&per_class) / per_class.len() as f64
    }
}

/// The usual classification summary of a score matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationReport {
    pub top1: f64,
    pub top5: f64,
    pub mean_per_class: f64,
    pub confusion: ConfusionMatrix,
}

/// Top-1, top-5 (`min(5, num_classes)`), mean-per-class accuracy and the confusion matrix of argmax
/// predictions. `scores` is row-major `[samples, num_classes]`.
pub fn evaluate<T: Copy + Into<f64>>(
    scores: &[T],
    num_classes: usize,
    labels: &[usize],
) -> Result<ClassificationReport> {
    check_shapes(scores, num_classes, labels)?;
    let preds: Vec<usize> = scores.chunks_exact(num_classes).map(argmax).collect();
    let confusion = ConfusionMatrix::from_labels(labels, &preds, num_classes)?;
    Ok(ClassificationReport {
        top1: top_k_accuracy(scores, num_classes, labels, 1)?,
        top5: top_k_accuracy(scores, num_classes, labels, 5)?,
        mean_per_class: confusion.mean_per_class_accuracy(),
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_rank_lower_class_first_and_nan_last() {
        let s = [1.0f32, 2.0, 2.0, f32::NAN];
        assert_eq!(rank_of(&s, 1), 0);
        assert_eq!(rank_of(&s, 2), 1);
        assert_eq!(rank_of(&s, 0), 2);
        assert_eq!(rank_of(&s, 3), 3);
        assert_eq!(argmax(&s), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), 1);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(top_k_correct(&[0.0f32; 5], 2, &[0, 1], 1).is_err());
        assert!(top_k_correct(&[0.0f32; 4], 2, &[0, 2], 1).is_err());
    }
}
