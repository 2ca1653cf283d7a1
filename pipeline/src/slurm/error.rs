//! The Slurm executor's error.
use crate::{BoxError, PipelineError};
use dml_artifacts::StoreError;
use std::path::{Path, PathBuf};

/// What went wrong talking to Slurm or writing the executor's files.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A Slurm client command is not installed or cannot start.
    #[error("cannot run `{tool}` ({source}): the Slurm executor needs Slurm's client commands (sbatch, squeue, scancel) on PATH and SLURM_CONF (or /etc/slurm/slurm.conf) naming the cluster")]
    MissingTool {
        /// `sbatch`, `squeue` or `scancel`.
        tool: &'static str,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// A Slurm command ran and failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `sbatch` succeeded but printed no job id.
    #[error("sbatch printed no job id (args: {args})")]
    NoJobId {
        /// Its arguments.
        args: String,
    },
    /// A file of the executor's could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The claims lock.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A run record could not be read or written.
    #[error(transparent)]
    Record(#[from] PipelineError),
    /// Doing `what` failed (the cause is the source).
    #[error("{what}")]
    During {
        /// What was being done (submitting a stage, locking the claims…).
        what: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

impl SlurmError {
    /// `source`, as the cause of a failure while doing `what`.
    pub(super) fn during(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SlurmError::During {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SlurmError {
    let path = path.to_path_buf();
    move |source| SlurmError::Io { what, path, source }
}

/// An error and each of its causes, joined by `: ` (what `anyhow` prints with `{:#}`).
pub(super) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
