//! The store's error type.
use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation failed on a path. The cause is part of the message and
    /// deliberately not a `source`, so error chains (`{:#}`) do not print it twice.
    #[error("{action} `{path}`: {cause}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The store root cannot be written.
    #[error("the artifact store `{path}` is not writable ({cause}); pass --store DIR or set DML_STORE to a writable directory")]
    NotWritable {
        /// The root.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A command that only reads the store was given a path that holds none.
    #[error("there is no artifact store at `{path}` ({why}); pass --store DIR or set DML_STORE to the store `dml run` made (`dml-store` in the directory it ran in, by default)")]
    NoStore {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
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
        move |cause| StoreError::Io {
            action,
            path,
            cause,
        }
    }
}
