//! The error type of the training core: bad batches, bad settings, weight files and checkpoints.

use std::path::PathBuf;

/// Everything that can go wrong while building, running or saving a training step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A batch that a loss cannot be computed on (shape, layout, labels).
    #[error("{loss}: {reason}")]
    InvalidBatch {
        /// The loss that refused the batch.
        loss: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting that cannot be honoured.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The loss came out NaN or infinite.
    #[error("non-finite loss {value} at step {step}")]
    NonFiniteLoss {
        /// The training step (as passed to `Trainer::step`).
        step: u64,
        /// The offending value.
        value: f64,
    },
    /// A weight file lacks a tensor the model needs.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The file read.
        path: PathBuf,
        /// The tensor name the model expects.
        name: String,
    },
    /// A timm or pretrainedmodels weight file holds a tensor the backbone has no place for
    /// (another architecture's weights).
    #[error("{path}: tensor `{name}` has no counterpart in the {backbone} backbone (weights of another architecture? export them with {script} for the configured backbone)")]
    UnexpectedTensor {
        /// The file read.
        path: PathBuf,
        /// The tensor name in the file.
        name: String,
        /// The backbone being loaded.
        backbone: String,
        /// The script that exports weights for it.
        script: &'static str,
    },
    /// A weight file holds a tensor of the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The file read.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the model wants.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A tensor about to be written, or just read, holds NaN or infinite values.
    #[error("{path}: tensor `{tensor}` holds NaN or infinite values")]
    NonFiniteTensor {
        /// The weights or checkpoint file.
        path: PathBuf,
        /// The first such tensor.
        tensor: String,
    },
    /// A checkpoint that cannot be resumed from.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// libtorch refused an operation.
    #[error("{context}: {source}")]
    Torch {
        /// What was being done.
        context: String,
        /// The libtorch error.
        #[source]
        source: tch::TchError,
    },
}

impl TrainError {
    /// Wraps a libtorch error with what was being attempted.
    pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> TrainError {
        let context = context.into();
        move |source| TrainError::Torch { context, source }
    }

    /// Wraps an I/O error with the path involved.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}

/// Shorthand for results of the training core.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl From<dml_jobspec::train_config::ConfigError> for TrainError {
    fn from(e: dml_jobspec::train_config::ConfigError) -> Self {
        TrainError::Config(e.message)
    }
}
