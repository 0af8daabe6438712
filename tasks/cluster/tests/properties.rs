//! Behaviour beyond the sklearn goldens: determinism, edge cases, errors.

use cluster::{kmeans, lloyd_from, synthetic, ClusterError, KmeansOptions};
use ndarray::{array, Array2};

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn same_seed_same_result_whatever_the_thread_count() {
    // 20,000 rows span many row segments, so a thread-dependent reduction order would show.
    let (x, _) = synthetic::blobs(3, 20_000, 24, 7, 3.0, true);
    let opts = KmeansOptions {
        restarts: 3,
        seed: 9,
        ..Default::default()
    };
    let one = in_pool(1, || kmeans(x.view(), 7, &opts).unwrap());
    let three = in_pool(3, || kmeans(x.view(), 7, &opts).unwrap());
    assert_eq!(one.labels, three.labels);
    assert_eq!(one.inertia.to_bits(), three.inertia.to_bits());
    assert_eq!(one.centers, three.centers);
    let other_seed = kmeans(
        x.view(),
        7,
        &KmeansOptions {
            seed: 10,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_ne!(
        other_seed
            .restarts
            .iter()
            .map(|r| r.inertia)
            .collect::<Vec<_>>(),
        one.restarts.iter().map(|r| r.inertia).collect::<Vec<_>>()
    );
}

#[test]
fn recovers_well_separated_blobs() {
    let (x, truth) = synthetic::blobs(1, 3000, 32, 6, 0.5, true);
    let r = kmeans(x.view(), 6, &KmeansOptions::default()).unwrap();
    let s = cluster::score(&truth, &r.labels).unwrap();
    assert_eq!((s.acc, s.ari), (1.0, 1.0));
    assert!((s.nmi - 1.0).abs() < 1e-12);
    assert_eq!(r.distinct_clusters, 6);
    // Centres are the class means.
    for j in 0..6 {
        let members: Vec<usize> = (0..3000).filter(|&i| r.labels[i] == j).collect();
        for p in 0..32 {
            let mean =
                members.iter().map(|&i| x[[i, p]] as f64).sum::<f64>() / members.len() as f64;
            assert!((r.centers[[j, p]] as f64 - mean).abs() < 1e-6);
        }
    }
}

#[test]
fn k_equal_to_n_puts_every_point_alone() {
    let x = array![[0.0f32, 1.0], [2.0, 3.0], [-1.0, 5.0], [4.0, 4.0]];
    let r = kmeans(x.view(), 4, &KmeansOptions::default()).unwrap();
    let mut labels = r.labels.clone();
    labels.sort();
    assert_eq!(labels, vec![0, 1, 2, 3]);
    assert!(r.inertia.abs() < 1e-9);
}

#[test]
fn fewer_distinct_points_than_clusters_does_not_fail() {
    let mut x = Array2::<f32>::zeros((50, 3));
    for i in 25..50 {
        x[[i, 0]] = 1.0;
    }
    let r = kmeans(x.view(), 4, &KmeansOptions::default()).unwrap();
    assert_eq!(r.distinct_clusters, 2);
    assert!(r.inertia.abs() < 1e-9);
    assert!(r.labels[..25].iter().all(|&l| l == r.labels[0]));
    assert!(r.labels[25..].iter().all(|&l| l == r.labels[25]));
}

#[test]
fn one_cluster_is_the_mean() {
    let x = array![[1.0f32, 2.0], [3.0, 6.0], [5.0, 1.0]];
    let r = kmeans(x.view(), 1, &KmeansOptions::default()).unwrap();
    assert_eq!(r.labels, vec![0, 0, 0]);
    assert!((r.centers[[0, 0]] - 3.0).abs() < 1e-6 && (r.centers[[0, 1]] - 3.0).abs() < 1e-6);
    assert!((r.inertia - (4.0 + 1.0 + 0.0 + 9.0 + 4.0 + 4.0)).abs() < 1e-6);
}

#[test]
fn bad_inputs_are_errors() {
    let x = array![[0.0f32, 1.0], [2.0, 3.0]];
    let opts = KmeansOptions::default();
    assert!(matches!(
        kmeans(x.view(), 3, &opts),
        Err(ClusterError::TooManyClusters { k: 3, n: 2 })
    ));
    assert!(matches!(
        kmeans(x.view(), 0, &opts),
        Err(ClusterError::NoClusters)
    ));
    let nan = array![[0.0f32, 1.0], [f32::NAN, 3.0]];
    assert!(matches!(
        kmeans(nan.view(), 1, &opts),
        Err(ClusterError::NonFinite { row: 1 })
    ));
    let empty = Array2::<f32>::zeros((0, 4));
    assert!(matches!(
        kmeans(empty.view(), 1, &opts),
        Err(ClusterError::Empty { .. })
    ));
    let no_restarts = KmeansOptions {
        restarts: 0,
        ..Default::default()
    };
    assert!(kmeans(x.view(), 1, &no_restarts).is_err());
    let wrong_dim = array![[0.0f32, 1.0, 2.0]];
    assert!(matches!(
        lloyd_from(x.view(), wrong_dim.view(), 10, 1e-4),
        Err(ClusterError::InitShape { .. })
    ));
    let msg = kmeans(x.view(), 3, &opts).unwrap_err().to_string();
    assert!(
        msg.contains("3 clusters") && msg.contains("2 samples"),
        "{msg}"
    );
}

#[test]
fn strided_input_is_accepted() {
    let (x, _) = synthetic::blobs(2, 500, 8, 3, 0.5, false);
    let t = x.t().to_owned();
    let r1 = kmeans(x.view(), 3, &KmeansOptions::default()).unwrap();
    let r2 = kmeans(t.t(), 3, &KmeansOptions::default()).unwrap();
    assert_eq!(r1.labels, r2.labels);
}
