//! Running top-k of one query's similarities: a binary heap whose root is the worst kept neighbour.
//!
//! Order: similarity descending, then train index ascending. Rows are offered in increasing index order,
//! so a candidate equal to the root has a larger index than everything kept and is correctly rejected by
//! the strict `>` test; that test is also the fast path that skips almost every train row.

pub(crate) struct TopK {
    k: usize,
    sims: Vec<f32>,
    indices: Vec<u32>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            sims: Vec::with_capacity(k),
            indices: Vec::with_capacity(k),
        }
    }

    /// Offers `row[j]` as train index `first_index + j`, for all j.
    pub(crate) fn offer_row(&mut self, row: &[f32], first_index: u32) {
        let mut j = 0;
        while self.sims.len() < self.k && j < row.len() {
            self.push(row[j], first_index + j as u32);
            j += 1;
        }
        if j == row.len() {
            return;
        }
        let mut threshold = self.sims[0];
        for (offset, &sim) in row[j..].iter().enumerate() {
            if sim > threshold {
                self.replace_root(sim, first_index + (j + offset) as u32);
                threshold = self.sims[0];
            }
        }
    }

    /// Kept neighbours, best first.
    pub(crate) fn into_sorted(self) -> Vec<(f32, u32)> {
        let mut out: Vec<(f32, u32)> = self.sims.into_iter().zip(self.indices).collect();
        out.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        out
    }

    /// Whether slot `a` ranks below slot `b` (lower similarity, or equal similarity and larger index).
    fn worse(&self, a: usize, b: usize) -> bool {
        self.sims[a] < self.sims[b]
            || (self.sims[a] == self.sims[b] && self.indices[a] > self.indices[b])
    }

    fn push(&mut self, sim: f32, index: u32) {
        self.sims.push(sim);
        self.indices.push(index);
        let mut child = self.sims.len() - 1;
        while child > 0 {
            let parent = (child - 1) / 2;
            if !self.worse(child, parent) {
                break;
            }
            self.swap(child, parent);
            child = parent;
        }
    }

    fn replace_root(&mut self, sim: f32, index: u32) {
        self.sims[0] = sim;
        self.indices[0] = index;
        let len = self.sims.len();
        let mut parent = 0;
        loop {
            let left = 2 * parent + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let worst_child = if right < len && self.worse(right, left) {
                right
            } else {
                left
            };
            if !self.worse(worst_child, parent) {
                break;
            }
            self.swap(worst_child, parent);
            parent = worst_child;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.sims.swap(a, b);
        self.indices.swap(a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::TopK;

    fn brute(values: &[f32], k: usize) -> Vec<(f32, u32)> {
        let mut all: Vec<(f32, u32)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i as u32))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.truncate(k);
        all
    }

    #[test]
    fn matches_a_full_sort_including_ties_across_blocks() {
        // Heavy ties (values from a small set) exercise the index tie-break.
        let values: Vec<f32> = (0..1000u32)
            .map(|i| ((i * 7919 + 13) % 17) as f32 * 0.25 - 2.0)
            .collect();
        for k in [1, 5, 16, 17, 200, 1000] {
            for block in [1, 7, 64, 1000] {
                let mut top = TopK::new(k);
                for (b, chunk) in values.chunks(block).enumerate() {
                    top.offer_row(chunk, (b * block) as u32);
                }
                assert_eq!(top.into_sorted(), brute(&values, k), "k={k} block={block}");
            }
        }
    }
}
