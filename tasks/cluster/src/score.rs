//! Scores of a clustering against the true classes, and the confusion after Hungarian matching.

use metrics::cluster::{hungarian_match, ClusterScores, Contingency};
use serde::Serialize;

use crate::Result;

/// ACC (Hungarian), NMI, ARI, FMI as fractions, plus the matching and its confusion.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub acc: f64,
    pub nmi: f64,
    pub ari: f64,
    pub fmi: f64,
    /// Distinct true classes and distinct predicted clusters present.
    pub classes: usize,
    pub clusters: usize,
    pub confusion: Confusion,
}

/// Counts with rows = true classes (ascending) and columns = clusters, ordered so that column i is
/// the cluster matched to class i; clusters matched to nothing follow, ascending. A class with no
/// matched cluster (more classes than clusters) has no column of its own.
#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub classes: Vec<usize>,
    pub clusters: Vec<usize>,
    /// `(cluster, class)` pairs of the Hungarian matching, by cluster.
    pub matching: Vec<(usize, usize)>,
    pub counts: Vec<Vec<u64>>,
}

pub fn score(truth: &[usize], pred: &[usize]) -> Result<Scores> {
    let t: Vec<i64> = truth.iter().map(|&v| v as i64).collect();
    let p: Vec<i64> = pred.iter().map(|&v| v as i64).collect();
    let s = ClusterScores::compute(&t, &p)?;
    let c = Contingency::new(&t, &p)?;
    let matched = hungarian_match(&c)?;
    let classes: Vec<usize> = c.classes().iter().map(|&v| v as usize).collect();
    let all_clusters: Vec<usize> = c.clusters().iter().map(|&v| v as usize).collect();
    let matching: Vec<(usize, usize)> = matched
        .pairs
        .iter()
        .map(|&(cl, k)| (cl as usize, k as usize))
        .collect();
    let mut by_class = matching.clone();
    by_class.sort_by_key(|&(_, class)| class);
    let mut clusters: Vec<usize> = by_class.iter().map(|&(cl, _)| cl).collect();
    clusters.extend(
        all_clusters
            .iter()
            .filter(|cl| !matching.iter().any(|(m, _)| m == *cl)),
    );
    let col_of: std::collections::HashMap<usize, usize> = clusters
        .iter()
        .enumerate()
        .map(|(i, &cl)| (cl, i))
        .collect();
    let mut counts = vec![vec![0u64; clusters.len()]; classes.len()];
    for &(r, col, n) in c.cells() {
        let cl = all_clusters[col as usize];
        counts[r as usize][col_of[&cl]] = n;
    }
    Ok(Scores {
        acc: s.acc,
        nmi: s.nmi,
        ari: s.ari,
        fmi: s.fmi,
        classes: classes.len(),
        clusters: all_clusters.len(),
        confusion: Confusion {
            classes,
            clusters,
            matching,
            counts,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_puts_matched_clusters_on_the_diagonal() {
        let truth = [0, 0, 0, 1, 1, 2, 2, 2];
        let pred = [7, 7, 3, 3, 3, 5, 5, 9];
        let s = score(&truth, &pred).unwrap();
        assert_eq!(s.confusion.classes, vec![0, 1, 2]);
        assert_eq!(s.confusion.clusters, vec![7, 3, 5, 9]);
        assert_eq!(
            s.confusion.counts,
            vec![vec![2, 1, 0, 0], vec![0, 2, 0, 0], vec![0, 0, 2, 1]]
        );
        assert_eq!(s.acc, 6.0 / 8.0);
        assert_eq!((s.classes, s.clusters), (3, 4));
    }
}
