//! Top-1 / top-5 accuracy as DeiT's/BEiT's `accuracy(output, target, topk=(1, 5))` counts it (k is
//! capped at the number of classes), and the predicted class of every image.

/// Ranks by logit, ties to the lower class index (a stable descending sort).
fn ranked(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx
}

#[derive(Debug, Clone, Default)]
pub struct Accuracy {
    pub seen: usize,
    pub top1: usize,
    pub top5: usize,
    pub predictions: Vec<usize>,
}

impl Accuracy {
    /// Adds a batch of logits (row-major [n, classes]) with its labels.
    pub fn add(&mut self, logits: &[f32], classes: usize, labels: &[usize]) {
        for (row, &label) in logits.chunks(classes).zip(labels) {
            let r = ranked(row);
            self.seen += 1;
            self.top1 += usize::from(r[0] == label);
            self.top5 += usize::from(r.iter().take(5.min(classes)).any(|&c| c == label));
            self.predictions.push(r[0]);
        }
    }

    pub fn top1(&self) -> f64 {
        self.top1 as f64 / self.seen.max(1) as f64
    }

    pub fn top5(&self) -> f64 {
        self.top5 as f64 / self.seen.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ties() {
        let mut a = Accuracy::default();
        a.add(&[0.1, 0.9, 0.0, 0.5, 0.5, 0.0], 3, &[1, 1]);
        assert_eq!((a.top1, a.top5, a.seen), (1, 2, 2));
        assert_eq!(a.predictions, vec![1, 0]);
    }
}
