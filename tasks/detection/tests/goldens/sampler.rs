//! `RandomSampler`: first-k mode (the goldens' mode) and properties of the seeded random mode.
//! The first-k goldens themselves are checked in `targets` (RPN and R-CNN sampling results).

use detection::assigner::AssignResult;
use detection::sampler::{Draw, RandomSampler};
use rand::SeedableRng;

fn assignment(n: usize, pos_every: usize, ignore_every: usize) -> AssignResult {
    let gt_inds = (0..n)
        .map(|j| {
            if j % pos_every == 0 {
                (j % 3) as i64 + 1
            } else if j % ignore_every == 0 {
                -1
            } else {
                0
            }
        })
        .collect();
    AssignResult {
        num_gts: 3,
        gt_inds,
        max_overlaps: vec![0.5; n],
        labels: Some(
            (0..n)
                .map(|j| {
                    if j % pos_every == 0 {
                        (j % 3) as i64
                    } else {
                        -1
                    }
                })
                .collect(),
        ),
    }
}

fn boxes(n: usize) -> Vec<[f32; 4]> {
    (0..n)
        .map(|j| [j as f32, 0.0, j as f32 + 5.0, 5.0])
        .collect()
}

#[test]
fn random_mode_counts_subsets_and_uniformity() {
    let n = 400;
    let gts = vec![
        [0.0, 0.0, 4.0, 4.0],
        [1.0, 1.0, 6.0, 6.0],
        [2.0, 2.0, 9.0, 9.0],
    ];
    let labels = vec![0i64, 1, 2];
    let sampler = RandomSampler::rcnn(); // 512, 0.25, gts added
    let small = RandomSampler { num: 64, ..sampler };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut hits = vec![0usize; n + 3];
    let trials = 2000;
    for _ in 0..trials {
        let mut a = assignment(n, 5, 7);
        let pos_gallery: Vec<usize> = (0..n).filter(|&j| a.gt_inds[j] > 0).collect();
        let neg_gallery: Vec<usize> = (0..n).filter(|&j| a.gt_inds[j] == 0).collect();
        let r = small.sample(
            &mut a,
            &boxes(n),
            &gts,
            Some(&labels),
            &mut Draw::Random(&mut rng),
        );
        // 16 positives out of 3 gts + 80 positive candidates; the rest negatives
        assert_eq!(r.pos_inds.len(), 16);
        assert_eq!(r.neg_inds.len(), 64 - 16);
        assert!(r.pos_inds.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        assert!(r.neg_inds.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        for &p in &r.pos_inds {
            assert!(
                p < 3 || pos_gallery.contains(&(p - 3)),
                "positives come from gts or positives"
            );
            hits[p] += 1;
        }
        for &q in &r.neg_inds {
            assert!(
                q >= 3 && neg_gallery.contains(&(q - 3)),
                "negatives come from negatives"
            );
        }
        assert_eq!(
            r.pos_is_gt,
            r.pos_inds.iter().map(|&p| p < 3).collect::<Vec<_>>()
        );
        assert_eq!(r.pos_bboxes.len(), 16);
        assert_eq!(r.pos_gt_labels.as_ref().unwrap().len(), 16);
    }
    // each of the 83 positive candidates is drawn with probability 16/83
    let expect = trials as f64 * 16.0 / 83.0;
    let sd = (trials as f64 * (16.0 / 83.0) * (67.0 / 83.0)).sqrt();
    let pos_cands: Vec<usize> = (0..n + 3).filter(|&j| j < 3 || (j - 3) % 5 == 0).collect();
    for &j in &pos_cands {
        let z = (hits[j] as f64 - expect) / sd;
        assert!(
            z.abs() < 5.0,
            "candidate {j}: {} draws, expected {expect:.1} (z = {z:.1})",
            hits[j]
        );
    }
    // the random stream is reproducible from its seed
    let run = |seed| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut a = assignment(n, 5, 7);
        small
            .sample(
                &mut a,
                &boxes(n),
                &gts,
                Some(&labels),
                &mut Draw::Random(&mut rng),
            )
            .neg_inds
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn first_k_takes_the_lowest_indices_and_small_galleries_whole() {
    let n = 100;
    let sampler = RandomSampler {
        num: 40,
        pos_fraction: 0.5,
        neg_pos_ub: -1.0,
        add_gt_as_proposals: false,
    };
    let gts = vec![
        [0.0, 0.0, 4.0, 4.0],
        [1.0, 1.0, 6.0, 6.0],
        [2.0, 2.0, 9.0, 9.0],
    ];
    let mut a = assignment(n, 10, 7);
    let r = sampler.sample(&mut a, &boxes(n), &gts, None, &mut Draw::FirstK);
    // 10 positives < 20 expected: all taken; 30 negatives: the first 30
    assert_eq!(
        r.pos_inds,
        (0..n).filter(|j| j % 10 == 0).collect::<Vec<_>>()
    );
    let negs: Vec<usize> = (0..n)
        .filter(|&j| j % 10 != 0 && j % 7 != 0)
        .take(30)
        .collect();
    assert_eq!(r.neg_inds, negs);
    assert!(r.pos_is_gt.iter().all(|&g| !g));
    // neg_pos_ub bounds the negatives by ub · max(1, #pos)
    let ub = RandomSampler {
        neg_pos_ub: 2.0,
        ..sampler
    };
    let mut a = assignment(n, 10, 7);
    let r = ub.sample(&mut a, &boxes(n), &gts, None, &mut Draw::FirstK);
    assert_eq!(r.neg_inds.len(), 20);
}
