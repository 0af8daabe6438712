//! Unsupervised classification of frozen features.
//!
//! * [`kmeans`] — scikit-learn's `KMeans(algorithm="lloyd", init="k-means++")` semantics: data centred
//!   on its mean, greedy k-means++ seeding, Lloyd iterations with GEMM distances, sklearn's
//!   convergence rule (strict label stability, else squared centre shift ≤ tol · mean feature
//!   variance), empty clusters relocated to the farthest points, best of `restarts` by inertia.
//!   The init draws from our own seeded stream, so labels match sklearn statistically, not bit for bit;
//!   from a given init ([`lloyd_from`]) they match exactly.
//! * [`argmax_rows`] — iBOT's protocol: cluster = argmax of the projection head's logits.
//! * [`score`] — ACC (Hungarian), NMI, ARI, FMI from the `metrics` crate, plus the matched confusion.

mod error;
mod gemm_block;
mod head;
mod kmeans;
mod lloyd;
mod plusplus;
mod score;
pub mod synthetic;

pub use error::ClusterError;
pub use head::argmax_rows;
pub use kmeans::{
    kmeans, kmeans_with_progress, lloyd_from, KmeansOptions, KmeansResult, Restart, Stop,
};
pub use plusplus::kmeans_plusplus;
pub use score::{score, Confusion, Scores};

pub type Result<T> = std::result::Result<T, ClusterError>;
