use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("k-means needs k ≥ 1 clusters")]
    NoClusters,
    #[error("cannot form {k} clusters from {n} samples (k must not exceed the number of samples)")]
    TooManyClusters { k: usize, n: usize },
    #[error("empty input: {rows} rows × {cols} columns")]
    Empty { rows: usize, cols: usize },
    #[error("row {row} contains NaN or infinity")]
    NonFinite { row: usize },
    #[error("initial centers have shape {got:?}, expected (k, {dim}) with k ≥ 1")]
    InitShape { got: (usize, usize), dim: usize },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Metrics(#[from] metrics::Error),
}
