//! Which training rows a semi-supervised split keeps.

use std::collections::HashMap;
use std::path::Path;

use data::splits::{balanced_subset, SplitSize};

use crate::SemisupError;

/// A deterministic class-balanced `percent`% of each class (rounded, at least one row per class), as
/// `data::splits::balanced_subset`; row indices ascending.
pub fn percent_split(
    labels: &[usize],
    percent: f64,
    seed: u64,
) -> Result<Vec<usize>, SemisupError> {
    if !(percent > 0.0 && percent <= 100.0) {
        return Err(SemisupError::Config(format!(
            "split percentage {percent} must be in (0, 100]"
        )));
    }
    Ok(balanced_subset(
        labels,
        SplitSize::Fraction(percent / 100.0),
        seed,
    ))
}

/// The non-empty lines of a list of file names, trimmed.
pub fn name_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Non-empty, trimmed lines of a split file (SimCLR `1percent.txt`: one train file name per line).
pub fn read_split_file(path: &Path) -> Result<Vec<String>, SemisupError> {
    let text = std::fs::read_to_string(path).map_err(|e| SemisupError::SplitFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let names = name_lines(&text);
    if names.is_empty() {
        return Err(SemisupError::SplitFile {
            path: path.display().to_string(),
            message: "no file names".into(),
        });
    }
    Ok(names)
}

/// Rows whose file name (the last path component of `row_names[i]`) is listed in `split`. Every listed
/// name must match exactly one row: a partial match would silently evaluate a different split.
pub fn names_split(
    row_names: &[String],
    split: &[String],
    split_path: &Path,
) -> Result<Vec<usize>, SemisupError> {
    let base = |s: &str| s.rsplit(['/', '\\']).next().unwrap_or(s).to_string();
    let mut by_name: HashMap<String, usize> = HashMap::with_capacity(row_names.len());
    for (i, n) in row_names.iter().enumerate() {
        if let Some(prev) = by_name.insert(base(n), i) {
            return Err(SemisupError::SplitFile {
                path: split_path.display().to_string(),
                message: format!(
                    "training rows {prev} ({}) and {i} ({n}) share a file name, so names cannot identify rows",
                    row_names[prev]
                ),
            });
        }
    }
    let mut missing = Vec::new();
    let mut rows = Vec::with_capacity(split.len());
    for name in split {
        match by_name.get(&base(name)) {
            Some(&i) => rows.push(i),
            None => missing.push(name.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(SemisupError::SplitFile {
            path: split_path.display().to_string(),
            message: format!(
                "{} of {} listed files are not in the training set (first: {})",
                missing.len(),
                split.len(),
                missing
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    rows.sort_unstable();
    rows.dedup();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_splits_are_balanced_and_deterministic() {
        let labels: Vec<usize> = (0..1000).map(|i| i % 4).collect();
        let one = percent_split(&labels, 1.0, 0).unwrap();
        // 250 rows per class · 1% = 2.5, rounded half away from zero: 3 per class.
        assert_eq!(one.len(), 12);
        for c in 0..4 {
            assert_eq!(one.iter().filter(|&&i| labels[i] == c).count(), 3);
        }
        assert_eq!(one, percent_split(&labels, 1.0, 0).unwrap());
        assert_ne!(one, percent_split(&labels, 1.0, 1).unwrap());
        assert_eq!(percent_split(&labels, 10.0, 0).unwrap().len(), 100);
        assert!(percent_split(&labels, 0.0, 0).is_err());
    }

    #[test]
    fn names_must_all_match() {
        let rows: Vec<String> = ["a/n1_1.JPEG", "a/n1_2.JPEG", "b/n2_1.JPEG"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = Path::new("split.txt");
        let got = names_split(&rows, &["n2_1.JPEG".into(), "n1_1.JPEG".into()], p).unwrap();
        assert_eq!(got, vec![0, 2]);
        let err = names_split(&rows, &["n3_1.JPEG".into()], p).unwrap_err();
        assert!(err
            .to_string()
            .contains("1 of 1 listed files are not in the training set"));
    }
}
