//! The `embed` stage: the evaluation split(s) → `embeddings.arrow`, in the
//! training worker (`dml-torch`).
use crate::config::{DatasetKindName, EmbedSettings, ImageSettings};
use crate::device::{self, DeviceKind};
use crate::roles;
use crate::worker;
use dml_datasets::Split;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// What the worker needs to embed: what [`EmbedStage`] resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedJob {
    /// `[embed]`.
    pub settings: EmbedSettings,
    /// `image.crop`.
    pub crop: u32,
    /// The index splits embedded.
    pub splits: Vec<String>,
    /// The device kind (part of the key).
    pub device: DeviceKind,
    /// `train.device` as written (`auto` picks the scheduler's device slot).
    pub device_spec: String,
}

/// Embeds the evaluation split(s) with the trained network (in the training worker).
pub struct EmbedStage {
    job: EmbedJob,
}

impl EmbedStage {
    /// Embeds `test` (or `query` + `gallery` for In-shop) on the training device.
    pub fn new(
        settings: &EmbedSettings,
        image: &ImageSettings,
        kind: DatasetKindName,
        device: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let splits = if kind == DatasetKindName::Inshop {
            vec![Split::Query, Split::Gallery]
        } else {
            vec![Split::Test]
        };
        Ok(Arc::new(EmbedStage {
            job: EmbedJob {
                settings: settings.clone(),
                crop: image.crop,
                splits: splits.iter().map(|s| s.as_str().to_string()).collect(),
                device: device::resolve_kind(device)?,
                device_spec: device.to_string(),
            },
        }))
    }
}

impl Stage for EmbedStage {
    fn name(&self) -> &'static str {
        "embed"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        json!({
            "embed": { "batch_size": self.job.settings.batch_size, "splits": self.job.splits, "device": self.job.device.name() },
            "image": { "crop": self.job.crop },
        })
    }
    fn uses_device(&self) -> bool {
        self.job.device == DeviceKind::Cuda
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let job = serde_json::to_value(&self.job)?;
        let roles = [roles::TRAIN, roles::DECODE, roles::INDEX];
        worker::run_in_worker(ctx, "embed", job, &roles, false)
    }
}
