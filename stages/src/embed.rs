//! The `embed` stage: the evaluation split(s) → `embeddings.arrow`, in the
//! training worker (`dml-torch`).
use crate::config::{DatasetKindName, EmbedSettings, ImageSettings};
use crate::device::{self, DeviceKind};
use crate::worker;
use dml_datasets::Split;
use dml_jobspec::jobs::{EmbedJob, WorkerJob};
use dml_jobspec::roles;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde::Serialize;
use std::sync::Arc;

/// The embed key's settings. `embed.splits` and `embed.device` are derived (from the
/// dataset kind and `train.device`), not settings of their own.
#[derive(Serialize)]
struct EmbedKey<'a> {
    embed: EmbedTable<'a>,
    image: CropKey,
}

#[derive(Serialize)]
struct EmbedTable<'a> {
    batch_size: u32,
    splits: &'a [Split],
    device: &'static str,
}

#[derive(Serialize)]
struct CropKey {
    crop: u32,
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
    ) -> crate::Result<Arc<Self>> {
        let splits = if kind == DatasetKindName::Inshop {
            vec![Split::Query, Split::Gallery]
        } else {
            vec![Split::Test]
        };
        Ok(Arc::new(EmbedStage {
            job: EmbedJob {
                settings: settings.clone(),
                crop: image.crop,
                splits,
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
        let j = &self.job;
        serde_json::to_value(EmbedKey {
            embed: EmbedTable {
                batch_size: j.settings.batch_size,
                splits: &j.splits,
                device: j.device.name(),
            },
            image: CropKey { crop: j.crop },
        })
        .expect("the embed key serialises")
    }
    fn uses_device(&self) -> bool {
        self.job.device == DeviceKind::Cuda
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let roles = [roles::TRAIN, roles::DECODE, roles::INDEX];
        worker::run_in_worker(ctx, WorkerJob::Embed(self.job.clone()), &roles, false)?;
        Ok(())
    }
}
