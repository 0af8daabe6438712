//! Checks of a labelled feature set (one row per sample, one label per row) before a protocol
//! trains on it; shared by the linear probe and the semi-supervised logistic regression so both
//! reject the same inputs with the same messages.

/// What is wrong with a labelled feature set; `set` names it ("train", "val", …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelledSetError {
    #[error("{set} features have {rows} rows but {labels} labels")]
    LabelCount {
        set: &'static str,
        rows: usize,
        labels: usize,
    },
    #[error("train features have dimension {train} but {set} features {other}")]
    DimMismatch {
        set: &'static str,
        train: usize,
        other: usize,
    },
    #[error("{0} set is empty")]
    Empty(&'static str),
    #[error("{set} features: row {row} contains NaN or infinity")]
    NonFinite { set: &'static str, row: usize },
}

/// Checks `rows × cols` features (`values` in row-major order) against `labels` labels and, for
/// a set scored against the training set, the training dimension `train_dim`.
pub fn check_labelled_set(
    set: &'static str,
    (rows, cols): (usize, usize),
    values: impl IntoIterator<Item = f32>,
    labels: usize,
    train_dim: Option<usize>,
) -> Result<(), LabelledSetError> {
    if rows == 0 {
        return Err(LabelledSetError::Empty(set));
    }
    if rows != labels {
        return Err(LabelledSetError::LabelCount { set, rows, labels });
    }
    if let Some(train) = train_dim {
        if cols != train {
            return Err(LabelledSetError::DimMismatch {
                set,
                train,
                other: cols,
            });
        }
    }
    if let Some(i) = values.into_iter().position(|v| !v.is_finite()) {
        return Err(LabelledSetError::NonFinite {
            set,
            row: i / cols.max(1),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_problem_is_named() {
        let ok = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(check_labelled_set("train", (2, 2), ok, 2, None), Ok(()));
        assert_eq!(
            check_labelled_set("val", (0, 2), [], 0, None),
            Err(LabelledSetError::Empty("val"))
        );
        assert_eq!(
            check_labelled_set("train", (2, 2), ok, 3, None)
                .unwrap_err()
                .to_string(),
            "train features have 2 rows but 3 labels"
        );
        assert_eq!(
            check_labelled_set("val", (2, 2), ok, 2, Some(3))
                .unwrap_err()
                .to_string(),
            "train features have dimension 3 but val features 2"
        );
        let bad = [1.0f32, 2.0, 3.0, f32::NAN];
        assert_eq!(
            check_labelled_set("val", (2, 2), bad, 2, None)
                .unwrap_err()
                .to_string(),
            "val features: row 1 contains NaN or infinity"
        );
    }
}
