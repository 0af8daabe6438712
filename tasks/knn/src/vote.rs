//! Weighted class votes of one test row's neighbours and the rank of its true label.

/// Vote accumulator over the classes present in the train labels (dense slots, reused across rows).
#[derive(Clone)]
pub(crate) struct Votes {
    /// Dense slot of each train row's class.
    slot_of_train: Vec<u32>,
    /// Original label id of each dense slot.
    label_of_slot: Vec<usize>,
    score: Vec<f32>,
    touched: Vec<u32>,
}

impl Votes {
    pub(crate) fn new(train_labels: &[usize]) -> Self {
        let mut label_of_slot = train_labels.to_vec();
        label_of_slot.sort_unstable();
        label_of_slot.dedup();
        let slot_of_train = train_labels
            .iter()
            .map(|l| label_of_slot.binary_search(l).expect("label present") as u32)
            .collect();
        Votes {
            slot_of_train,
            score: vec![0.0; label_of_slot.len()],
            label_of_slot,
            touched: Vec::new(),
        }
    }

    /// Adds the neighbours' votes in order (best first) and, each time the count reaches one of `ks`
    /// (ascending), reports `(position in ks, rank of label)`. The rank is the number of voted classes
    /// ahead of `label` by (summed vote desc, class id asc); a label without votes gets `usize::MAX`,
    /// since only classes that received a vote are predictions.
    pub(crate) fn rank_label_at_each_k(
        &mut self,
        neighbours: &[(f32, u32)],
        label: usize,
        ks: &[usize],
        temperature: f32,
        mut report: impl FnMut(usize, usize),
    ) {
        let mut next = 0;
        for (n, &(sim, index)) in neighbours.iter().enumerate() {
            let slot = self.slot_of_train[index as usize];
            if self.score[slot as usize] == 0.0 && !self.touched.contains(&slot) {
                self.touched.push(slot);
            }
            self.score[slot as usize] += (sim / temperature).exp();
            while next < ks.len() && ks[next] == n + 1 {
                report(next, self.rank(label));
                next += 1;
            }
        }
        for &slot in &self.touched {
            self.score[slot as usize] = 0.0;
        }
        self.touched.clear();
    }

    fn rank(&self, label: usize) -> usize {
        let label_score = self
            .touched
            .iter()
            .find(|&&s| self.label_of_slot[s as usize] == label)
            .map_or(0.0, |&s| self.score[s as usize]);
        if label_score <= 0.0 {
            return usize::MAX;
        }
        self.touched
            .iter()
            .filter(|&&slot| {
                let (id, score) = (self.label_of_slot[slot as usize], self.score[slot as usize]);
                score > label_score || (score == label_score && id < label)
            })
            .count()
    }
}
