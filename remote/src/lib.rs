//! A shared remote cache of dml artifacts on S3-compatible storage.
//!
//! Layout under `s3://bucket/prefix`:
//!
//! ```text
//! objects/<stage>/<key>/manifest.json          written last, only if absent (a conditional put)
//! objects/<stage>/<key>/<blake3>/<file path>   each file under its content hash
//! runs/<timestamp>-<name>.json                 run records (`dml push`, `dml run`)
//! ```
//!
//! Files live under their own hash so that two machines uploading one key at
//! once (with bitwise different outputs, as CUDA runs may be) never mix their
//! files: whichever manifest lands first names only files of its own upload.
//!
//! The engine sees this crate through [`dml_pipeline::RemoteCache`], which is
//! synchronous: the async client runs on a current-thread tokio runtime owned
//! by [`S3Remote`].
#![deny(missing_docs)]

mod s3;
mod settings;

pub use s3::{RemoteObject, S3Remote};
pub use settings::{parse_s3_url, RemoteSettings};

/// Errors opening a remote (a malformed URL or setting): these are the user's
/// to fix, unlike a remote that is merely unreachable.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL or a setting is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The S3 client could not be configured (e.g. a bad AWS_* variable).
    #[error("cannot configure the S3 client for {location}: {message}")]
    Client {
        /// The remote.
        location: String,
        /// The client's error.
        message: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the remote cache's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
