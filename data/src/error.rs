//! One error type for every reader and transform; its message always names the file and the problem.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot decode image: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn format(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub fn decode(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Decode {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The file the error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::Decode { path, .. }
            | DataError::Format { path, .. }
            | DataError::Json { path, .. } => Some(path),
            DataError::Invalid(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
