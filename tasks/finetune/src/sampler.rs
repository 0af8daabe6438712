//! The visiting order of a training epoch: a seeded shuffle, or DeiT's `RASampler` (repeated
//! augmentation: every index three times in a row, then the first ⌊N / 256⌋ · 256 entries on one
//! process). With N < 256 the official sampler yields an EMPTY epoch, so nothing would train;
//! the guard keeps N entries then (a labelled deviation from the official code).

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A seeded permutation of 0..n for `epoch`.
pub fn shuffled(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A17,
    );
    order.shuffle(&mut rng);
    order
}

/// `RASampler.__iter__` for one process (`num_replicas = 1`): the shuffled indices each repeated
/// 3×, then `num_selected_samples = ⌊N // 256 · 256⌋` of them — or N when `small_set_guard` is on
/// and N < 256.
pub fn repeated_augmentation(
    n: usize,
    seed: u64,
    epoch: usize,
    small_set_guard: bool,
) -> Vec<usize> {
    let perm = shuffled(n, seed, epoch);
    let repeated: Vec<usize> = perm.iter().flat_map(|&i| [i, i, i]).collect();
    let selected = if small_set_guard && n < 256 {
        n
    } else {
        n / 256 * 256
    };
    repeated.into_iter().take(selected).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ra_repeats_and_truncates_like_deit() {
        let o = repeated_augmentation(600, 1, 0, true);
        assert_eq!(o.len(), 512);
        for c in o.chunks(3).take(100) {
            if c.len() == 3 {
                assert!(c[0] == c[1] && c[1] == c[2]);
            }
        }
        assert!(repeated_augmentation(200, 1, 0, false).is_empty());
        assert_eq!(repeated_augmentation(200, 1, 0, true).len(), 200);
        assert_ne!(shuffled(50, 0, 0), shuffled(50, 0, 1));
        assert_eq!(shuffled(50, 3, 2), shuffled(50, 3, 2));
    }
}
