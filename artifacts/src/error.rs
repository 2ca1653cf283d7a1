//! The store's error type.
use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation failed on a path.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store root cannot be written.
    #[error("the artifact store `{path}` is not writable ({source}); pass --store DIR or set DML_STORE to a writable directory")]
    NotWritable {
        /// The root.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest could not be parsed.
    #[error("manifest `{path}` is not valid: {message}")]
    BadManifest {
        /// Manifest path.
        path: PathBuf,
        /// Parse error.
        message: String,
    },
    /// A table could not be read or written.
    #[error("table `{path}`: {message}")]
    Table {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No artifact matches a name.
    #[error("{0}")]
    NotFound(String),
}

impl StoreError {
    /// Wraps an I/O error with the action and path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}
