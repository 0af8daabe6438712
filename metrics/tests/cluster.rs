//! Clustering scores against scikit-learn / scipy goldens.

mod common;

use common::*;
use metrics::cluster::{ari, fmi, hungarian_match, nmi, ClusterScores, Contingency};

#[test]
fn scores_match_scikit_learn() {
    let g = golden("cluster.json");
    let (mut exact, mut total) = (0, 0);
    for (i, case) in cases(&g).iter().enumerate() {
        let truth = i64s(&case["truth"]);
        let pred = i64s(&case["pred"]);
        let c = Contingency::new(&truth, &pred).unwrap();
        let got = [nmi(&c), ari(&c), fmi(&c)];
        for (name, got) in ["nmi", "ari", "fmi"].into_iter().zip(got) {
            let want = case[name].as_f64().unwrap();
            // NMI goes through `log`, whose last bit may differ between numpy and libm.
            assert_close(&format!("case {i} {name}"), got, want, 1e-12);
            exact += (got == want) as usize;
            total += 1;
        }
        match case["acc"].as_f64() {
            Some(acc) => {
                assert_eq!(hungarian_match(&c).unwrap().accuracy, acc, "case {i} acc");
                let all = ClusterScores::compute(&truth, &pred).unwrap();
                assert_eq!(all.acc, acc);
                assert_eq!(all.nmi, got[0]);
            }
            None => assert!(
                ClusterScores::compute(&truth, &pred).is_err(),
                "case {i}: empty"
            ),
        }
    }
    assert!(total > 200, "too few golden cases: {total}");
    // All bit-identical with glibc (checked); the slack is for a libm whose `log` rounds differently.
    assert!(
        exact * 10 >= total * 9,
        "only {exact}/{total} bit-identical"
    );
}

#[test]
fn reference_table_b7() {
    // evaluation-reference.md B.7 (scikit-learn 1.9.1).
    let s = ClusterScores::compute(&[0, 0, 1, 2], &[0, 0, 1, 1]).unwrap();
    assert_eq!(s.nmi, 0.7999999999999999);
    assert_eq!(s.ari, 0.5714285714285714);
    assert_eq!(s.fmi, 0.7071067811865476);
    assert_eq!(s.acc, 0.75);
    let s = ClusterScores::compute(&[0, 1, 2, 3], &[3, 2, 1, 0]).unwrap();
    assert_eq!((s.nmi, s.ari, s.fmi, s.acc), (1.0, 1.0, 0.0, 1.0));
    let s = ClusterScores::compute(&[0], &[0]).unwrap();
    assert_eq!((s.nmi, s.ari, s.fmi, s.acc), (1.0, 1.0, 0.0, 1.0));
}

#[test]
fn extra_clusters_count_as_errors() {
    // Three clusters for two classes: the third cluster's samples cannot be matched.
    let m =
        hungarian_match(&Contingency::new(&[0, 0, 1, 1, 1], &[0, 0, 1, 1, 2]).unwrap()).unwrap();
    assert_eq!(m.accuracy, 0.8);
    assert_eq!(m.pairs, vec![(0, 0), (1, 1)]);
}
