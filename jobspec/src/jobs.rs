//! What the training worker runs: a [`WorkerJob`], one variant per kind of work — the train
//! and embed stages' resolved jobs ([`TrainJob`], [`EmbedJob`], plain data, here below both
//! the stages and the worker protocol that carry them) and the jobs of `dml embed` / `dml
//! search` and `dml export` ([`EmbedFilesJob`], [`ExportJob`]).
use crate::device::DeviceKind;
use crate::settings::{EmbedSettings, TrainSettings};
use crate::use_model::{EmbedFilesJob, ExportJob};
use crate::validation::ValidationPlan;
use dml_datasets::{self as ds, Split};
use serde::{Deserialize, Serialize};

/// One job for the worker. On the wire (inside a [`crate::protocol::WorkerRequest`]) it is
/// `"stage": "train" | "embed" | "embed-files" | "export"` beside `"job": {…}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "stage", content = "job", rename_all = "kebab-case")]
pub enum WorkerJob {
    /// The train stage (boxed: it is the largest by far).
    Train(Box<TrainJob>),
    /// The embed stage.
    Embed(EmbedJob),
    /// `dml embed` and the queries of `dml search`.
    EmbedFiles(EmbedFilesJob),
    /// `dml export`.
    Export(ExportJob),
}

/// Everything the training worker needs besides the inputs: what
/// the train stage (`dml_stages::train`) resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainJob {
    /// `[train]`.
    pub settings: TrainSettings,
    /// `image.crop`.
    pub crop: u32,
    /// Crop kind, flips and ranges (`[image]`; train key only).
    pub augment: ds::AugmentPolicy,
    /// The device kind (part of the key); the GPU is the scheduler's slot.
    pub device: DeviceKind,
    /// Build the initialised network only (the untrained baseline).
    pub untrained: bool,
    /// `[train.validation]`, resolved (`None` when off).
    pub validation: Option<ValidationPlan>,
}

/// What the worker needs to embed: what the embed stage (`dml_stages::embed`) resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedJob {
    /// `[embed]`.
    pub settings: EmbedSettings,
    /// `image.crop`.
    pub crop: u32,
    /// The index splits embedded.
    pub splits: Vec<Split>,
    /// The device kind (part of the key).
    pub device: DeviceKind,
    /// `train.device` as written (`auto` picks the scheduler's device slot).
    pub device_spec: String,
}
