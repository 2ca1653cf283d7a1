//! The crate's one error type: what can go wrong while checking settings, assembling the DAG,
//! running a stage's body here or in the training worker, and drawing plots.
//!
//! Messages are what users read and tests assert on. A variant that adds a step to a cause
//! (`reading …`, `in sweep point …`) says only the step and keeps the cause as its
//! [`source`](std::error::Error::source), so that an error chain (`{:#}`,
//! `dml_pipeline::error_chain`) reads "step: cause".
use dml_artifacts::StoreError;
use dml_datasets::DatasetError;
use dml_jobspec::evaluate::EvalError;
use dml_jobspec::train_config::ConfigError;
use std::path::PathBuf;

/// Everything that can go wrong in `dml_stages`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A setting that cannot work, found before anything runs (or against the index):
    /// [`ConfigError::setting`] names it.
    #[error(transparent)]
    Setting(#[from] ConfigError),
    /// `[train]`'s settings, checked together, refused one of theirs.
    #[error("invalid [train] settings")]
    TrainSettings(#[source] ConfigError),
    /// `[image]`'s augmentation cannot be applied.
    #[error("invalid [image] augmentation")]
    Augmentation(#[source] DatasetError),
    /// Reading, starting or waiting failed; `what` says what was being done and on which
    /// file or program.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error whose message names its file (`dml_artifacts::fsx`).
    #[error(transparent)]
    File(#[from] std::io::Error),
    /// JSON that could not be read or written; `what` says which.
    #[error("{what}")]
    Json {
        /// What was being read or written.
        what: String,
        /// Why it failed.
        #[source]
        source: serde_json::Error,
    },
    /// The artifact store or one of its tables.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dataset: listing, fingerprinting, decoding, planning batches.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Scoring embeddings.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A metric refused its input.
    #[error(transparent)]
    Metrics(#[from] dml_metrics::MetricsError),
    /// TensorBoard's event files of the report.
    #[error(transparent)]
    Events(#[from] dml_artifacts::tensorboard::EventError),
    /// A data frame of the report (polars).
    #[error(transparent)]
    Frame(#[from] polars::error::PolarsError),
    /// A data frame could not be written to `file` (the cause is part of the message, as
    /// for the store's I/O errors).
    #[error("writing {file}: {cause}")]
    WriteFrame {
        /// The file's name.
        file: &'static str,
        /// Why.
        cause: polars::error::PolarsError,
    },
    /// What the engine's run context refused: an input a stage has no edge for, the key's
    /// cache directory.
    #[error(transparent)]
    Engine(dml_pipeline::BoxError),
    /// What a stage reads (the dataset's images, an input artifact) lacks what it needs.
    #[error("{0}")]
    Input(String),
    /// Planning the P×K batches failed.
    #[error("planning P×K batches")]
    Planning(#[source] Box<StageError>),
    /// The training worker executable is not where `dml` looks for it.
    #[error("the training worker `{}` is missing: train and embed run in it (`cargo build --release` builds it beside dml; or set DML_TORCH to its path)", path.display())]
    WorkerMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The training worker reported an error or ended without finishing; the message is
    /// its own, or how it ended.
    #[error("{0}")]
    Worker(String),
    /// A plot could not be drawn or written.
    #[error("{0}")]
    Plot(String),
    /// One point of a sweep failed its checks.
    #[error("in sweep point {point}")]
    SweepPoint {
        /// The point's experiment name.
        point: String,
        /// What failed.
        #[source]
        source: Box<StageError>,
    },
}

impl StageError {
    /// A setting that cannot work: `setting` as a config file spells it, and the message.
    pub fn setting(setting: impl Into<String>, message: impl Into<String>) -> Self {
        StageError::Setting(ConfigError::new(setting, message))
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| StageError::Io { what, source }
    }

    /// A JSON error while reading or writing `what`.
    pub fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let what = what.into();
        move |source| StageError::Json { what, source }
    }

    /// The setting at fault, when this is (or was caused by) a setting that cannot work.
    pub fn setting_name(&self) -> Option<&str> {
        match self {
            StageError::Setting(e) | StageError::TrainSettings(e) => Some(&e.setting),
            StageError::SweepPoint { source, .. } | StageError::Planning(source) => {
                source.setting_name()
            }
            _ => None,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = StageError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// What `dml` prints: the message and its causes, as anyhow's `{:#}` joins them.
    fn chain(e: &StageError) -> String {
        let mut out = e.to_string();
        let mut cur = std::error::Error::source(e);
        while let Some(s) = cur {
            out.push_str(": ");
            out.push_str(&s.to_string());
            cur = s.source();
        }
        out
    }

    #[test]
    fn a_setting_error_names_its_setting_in_and_out_of_a_sweep() {
        let e = StageError::setting("plan.k", "plan.k = 1: too few");
        assert_eq!(e.setting_name(), Some("plan.k"));
        assert_eq!(chain(&e), "plan.k = 1: too few");
        let e = StageError::SweepPoint {
            point: "lr-0.1".into(),
            source: Box::new(e),
        };
        assert_eq!(e.setting_name(), Some("plan.k"));
        assert_eq!(chain(&e), "in sweep point lr-0.1: plan.k = 1: too few");
        assert!(StageError::Input("no images".into())
            .setting_name()
            .is_none());
    }

    #[test]
    fn an_io_error_reads_as_its_step_then_its_cause() {
        let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = StageError::io("reading /x/model.json")(cause);
        assert_eq!(e.to_string(), "reading /x/model.json");
        assert_eq!(chain(&e), "reading /x/model.json: no such file");
        let boxed: dml_pipeline::BoxError = e.into();
        assert_eq!(
            dml_pipeline::error_chain(boxed.as_ref()),
            "reading /x/model.json: no such file"
        );
    }

    #[test]
    fn wrapped_errors_keep_their_own_chain() {
        let e: StageError = DatasetError::RootMissing {
            path: "/nowhere".into(),
        }
        .into();
        assert!(matches!(e, StageError::Dataset(_)));
        assert_eq!(
            chain(&e),
            "dataset root `/nowhere` does not exist or is not a directory; check `dataset.root`"
        );
        let e = StageError::Planning(Box::new(e));
        assert!(chain(&e).starts_with("planning P×K batches: dataset root `/nowhere`"));
    }
}
