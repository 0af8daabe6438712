use std::path::PathBuf;

/// Everything that can go wrong computing a metric: bad input, named precisely enough to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that cannot be evaluated (wrong lengths, unknown ids, malformed records, ...).
    #[error("{0}")]
    Invalid(String),
    /// A file that could not be read or parsed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

impl Error {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
