//! The engine's error type.
use dml_artifacts::StoreError;

/// What can go wrong while planning or running a DAG.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stage failed; its own error, with its causes, is the source (print the
    /// whole chain with [`error_chain`] or anyhow's `{:#}`).
    #[error("stage `{node}` failed")]
    StageFailed {
        /// The node id.
        node: String,
        /// What the stage returned.
        #[source]
        source: crate::BoxError,
    },
    /// A setting does not fit the data an artifact holds (checked before any
    /// dependant runs; the artifact itself is fine and kept).
    #[error("{message}")]
    Check {
        /// The node whose artifact was checked.
        node: String,
        /// What does not fit, and what to change.
        message: String,
    },
    /// Computing a stage's fingerprint failed.
    #[error("cannot fingerprint the input of `{node}`: {message}")]
    Fingerprint {
        /// The node id.
        node: String,
        /// The error.
        message: String,
    },
    /// A run record could not be read or written.
    #[error("run record `{path}`: {message}")]
    Record {
        /// The record path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Joins an error and its sources into one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
