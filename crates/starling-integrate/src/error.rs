//! Why a source could not be built or could not read its files.

use std::path::PathBuf;

/// A source that could not be set up. Its message is one line naming the
/// setting or file.
#[derive(Debug, thiserror::Error)]
pub enum IntegrateError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key, key set or certificate could not be understood.
    #[error("{what}: {message}")]
    Key {
        /// The setting or file.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("{what}: {source}")]
    Http {
        /// The setting.
        what: &'static str,
        /// Why.
        source: reqwest::Error,
    },
}
