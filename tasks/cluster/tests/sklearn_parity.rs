//! Parity with scikit-learn's KMeans (fixtures from tests/reference/kmeans_reference.py).

use std::path::{Path, PathBuf};

use cluster::{kmeans, kmeans_plusplus, lloyd_from, score, KmeansOptions, Stop};
use ndarray::Array2;
use ndarray_npy::ReadNpyExt;
use rand::SeedableRng;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn npy(name: &str) -> Array2<f32> {
    Array2::<f32>::read_npy(std::fs::File::open(fixtures().join(name)).unwrap()).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn lloyd_from_a_given_init_matches_sklearn() {
    let doc = json("lloyd.json");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = npy(case["x"].as_str().unwrap());
        let init = npy(case["init"].as_str().unwrap());
        let max_iter = case["max_iter"].as_u64().unwrap() as usize;
        let tol = case["tol"].as_f64().unwrap();
        let r = lloyd_from(x.view(), init.view(), max_iter, tol).unwrap();

        let labels: Vec<usize> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(r.labels, labels, "{name}: labels");
        assert_eq!(
            r.iterations,
            case["n_iter"].as_u64().unwrap() as usize,
            "{name}: n_iter"
        );
        let inertia = case["inertia"].as_f64().unwrap();
        assert!(
            rel(r.inertia, inertia) < 1e-5,
            "{name}: inertia {} vs sklearn {inertia}",
            r.inertia
        );
        // Centres to 1e-5 of the largest centre coordinate (a coordinate near 0 has no relative scale).
        let centers: Vec<Vec<f64>> = serde_json::from_value(case["centers"].clone()).unwrap();
        let scale = centers.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
        for (j, row) in centers.iter().enumerate() {
            for (p, &v) in row.iter().enumerate() {
                let ours = r.centers[[j, p]] as f64;
                assert!(
                    (ours - v).abs() <= 1e-5 * scale,
                    "{name}: centre [{j},{p}] {ours} vs sklearn {v}"
                );
            }
        }
        let expected_stop = match name {
            "overlap_tol" => Stop::Tolerance,
            "overlap_max_iter" => Stop::MaxIter,
            _ => Stop::Strict,
        };
        assert_eq!(r.restarts[0].stop, expected_stop, "{name}: stop reason");
    }
}

#[test]
fn empty_cluster_case_really_starts_empty() {
    // The far init centre attracts no point on the first E-step; without relocation it would stay
    // a dead cluster and the fit could not match sklearn's 4 populated clusters.
    let doc = json("lloyd.json");
    let case = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "empty_cluster")
        .unwrap();
    let x = npy(case["x"].as_str().unwrap());
    let init = npy(case["init"].as_str().unwrap());
    let one = lloyd_from(x.view(), init.view(), 1, 0.0).unwrap();
    assert!(x.rows().into_iter().all(|r| r.iter().all(|&v| v < 40.0)));
    assert_eq!(
        one.distinct_clusters, 4,
        "relocated cluster is populated after one step"
    );
    let far = init.row(3);
    assert!(one
        .centers
        .row(3)
        .iter()
        .zip(far)
        .all(|(a, b)| (a - b).abs() > 1.0));
}

#[test]
fn kmeans_plusplus_with_restarts_is_as_good_as_sklearn() {
    let doc = json("plusplus.json");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = npy(case["x"].as_str().unwrap());
        let k = case["k"].as_u64().unwrap() as usize;
        let truth: Vec<usize> = serde_json::from_value(case["truth"].clone()).unwrap();

        // Best of 10 restarts is itself random on overlapping data (many local minima), so compare
        // over 5 seeds each: the mean within 1e-3 of sklearn's mean, every run within 1e-3 of
        // sklearn's worst.
        let sk: Vec<f64> = serde_json::from_value(case["best_of_10_inertia"].clone()).unwrap();
        let sk_mean = sk.iter().sum::<f64>() / sk.len() as f64;
        let sk_worst = sk.iter().cloned().fold(0.0, f64::max);
        let mut ours = Vec::new();
        for seed in 0..5 {
            let opts = KmeansOptions {
                seed,
                ..KmeansOptions::default()
            };
            let r = kmeans(x.view(), k, &opts).unwrap();
            assert_eq!(r.restarts.len(), 10);
            assert_eq!(r.inertia, r.restarts[r.best_restart].inertia);
            assert!(r.restarts.iter().all(|s| s.inertia >= r.inertia));
            ours.push(r.inertia);
            if seed == 0 {
                let s = score(&truth, &r.labels).unwrap();
                let sk_scores = &case["scores_seed0"];
                for (metric, value) in [("nmi", s.nmi), ("ari", s.ari), ("fmi", s.fmi)] {
                    let reference = sk_scores[metric].as_f64().unwrap();
                    assert!(
                        value >= reference - 0.03,
                        "{name}: {metric} {value} vs sklearn {reference}"
                    );
                }
                eprintln!(
                    "{name}: ours nmi {:.4} ari {:.4} fmi {:.4} acc {:.4}; sklearn {}",
                    s.nmi, s.ari, s.fmi, s.acc, sk_scores
                );
            }
        }
        eprintln!("{name}: best-of-10 inertia ours {ours:?}, sklearn {sk:?}");
        for &o in &ours {
            assert!(
                o <= sk_worst * (1.0 + 1e-3),
                "{name}: inertia {o} vs sklearn's worst best-of-10 {sk_worst}"
            );
        }
        let mean = ours.iter().sum::<f64>() / ours.len() as f64;
        assert!(
            mean <= sk_mean * (1.0 + 1e-3),
            "{name}: mean best-of-10 inertia {mean} vs sklearn {sk_mean}"
        );
    }
}

#[test]
fn kmeans_plusplus_init_potential_follows_sklearns_distribution() {
    // The greedy seeding (2 + ⌊ln k⌋ candidates, keep the lowest potential) has a characteristic
    // mean potential; plain k-means++ (one candidate) or a wrong sampling weight is far off.
    let doc = json("plusplus.json");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = npy(case["x"].as_str().unwrap());
        let k = case["k"].as_u64().unwrap() as usize;
        let mean = x.mean_axis(ndarray::Axis(0)).unwrap();
        let xc = &x - &mean.insert_axis(ndarray::Axis(0));
        let runs = 200;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let pots: Vec<f64> = (0..runs)
            .map(|_| {
                let (c, idx) = kmeans_plusplus(xc.view(), k, &mut rng).unwrap();
                let mut sorted = idx.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), k, "{name}: duplicate seeds {idx:?}");
                xc.rows()
                    .into_iter()
                    .map(|r| {
                        c.rows()
                            .into_iter()
                            .map(|cr| {
                                r.iter()
                                    .zip(cr)
                                    .map(|(a, b)| ((a - b) as f64).powi(2))
                                    .sum::<f64>()
                            })
                            .fold(f64::INFINITY, f64::min)
                    })
                    .sum()
            })
            .collect();
        let ours = pots.iter().sum::<f64>() / runs as f64;
        let sk = &case["init_potential"];
        let (sk_mean, sk_std) = (sk["mean"].as_f64().unwrap(), sk["std"].as_f64().unwrap());
        // Two independent means of 200 draws: 4 standard errors of their difference.
        let bound = 4.0 * sk_std * (2.0 / runs as f64).sqrt();
        eprintln!("{name}: init potential ours {ours:.2} sklearn {sk_mean:.2} ± {sk_std:.2}");
        assert!(
            (ours - sk_mean).abs() <= bound,
            "{name}: mean init potential {ours} vs sklearn {sk_mean} (bound {bound})"
        );
    }
}

#[test]
fn single_runs_reach_sklearns_inertia_distribution() {
    let doc = json("plusplus.json");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = npy(case["x"].as_str().unwrap());
        let k = case["k"].as_u64().unwrap() as usize;
        let runs = 60;
        let opts = KmeansOptions {
            restarts: runs,
            seed: 5,
            ..KmeansOptions::default()
        };
        let r = kmeans(x.view(), k, &opts).unwrap();
        let mean = r.restarts.iter().map(|s| s.inertia).sum::<f64>() / runs as f64;
        let sk = &case["single_run_inertia"];
        let (sk_mean, sk_std) = (sk["mean"].as_f64().unwrap(), sk["std"].as_f64().unwrap());
        let bound = 4.0 * sk_std * (1.0 / runs as f64 + 1.0 / 100.0).sqrt();
        eprintln!("{name}: single-run inertia ours {mean:.2} sklearn {sk_mean:.2} ± {sk_std:.2}");
        assert!(
            mean <= sk_mean + bound,
            "{name}: mean single-run inertia {mean} vs sklearn {sk_mean} (bound {bound})"
        );
    }
}
