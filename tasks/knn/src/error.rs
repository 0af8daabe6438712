#[derive(Debug, thiserror::Error)]
pub enum KnnError {
    #[error("the {0} feature set is empty")]
    Empty(&'static str),
    #[error("{0} train rows exceed the supported 2^32 - 1")]
    TooManyTrainRows(usize),
    #[error("{set} features have {rows} rows but {labels} labels")]
    LabelCount {
        set: &'static str,
        rows: usize,
        labels: usize,
    },
    #[error("train features have dimension {train} but test features {test}")]
    DimMismatch { train: usize, test: usize },
    #[error("{set} features row {row} is not finite (NaN or infinity)")]
    NonFinite { set: &'static str, row: usize },
    #[error("temperature must be a positive finite number, got {0}")]
    Temperature(f32),
    #[error("no k given")]
    NoK,
    #[error("k must be at least 1")]
    ZeroK,
    #[error("k = {k} exceeds the {train} train samples")]
    KTooLarge { k: usize, train: usize },
}
