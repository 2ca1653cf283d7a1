//! The `train` stage: P×K batches → `model.safetensors`, `model.json`,
//! `train_log.parquet` and `loss.png`. Settings, key and checks live here; the
//! training itself runs in the worker (`dml-torch`), which links libtorch.
use crate::config::{ImageSettings, TrainSettings};
use crate::device::{self, DeviceKind};
use crate::resume::Checkpoints;
use crate::roles;
use crate::train_config::{Precision, TrainConfig};
use crate::validation::ValidationPlan;
use crate::worker;
use anyhow::{bail, Context};
use dml_datasets as ds;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

/// Everything the training worker needs besides the inputs: what [`TrainStage`] resolved.
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

/// Trains the embedding network on the planned batches (in the training worker).
pub struct TrainStage {
    job: TrainJob,
}

impl TrainStage {
    /// Validates the settings against the plan's layout and resolves the device;
    /// `validation` is [`ValidationPlan::resolve`]'s (never for the untrained baseline).
    pub fn new(
        settings: &TrainSettings,
        image: &ImageSettings,
        plan_k: u32,
        untrained: bool,
        validation: Option<ValidationPlan>,
    ) -> anyhow::Result<Arc<Self>> {
        let cfg = train_config(settings);
        cfg.validate().context("invalid [train] settings")?;
        if let Some(k) = settings.loss.required_samples_per_class() {
            if plan_k as usize != k && !untrained {
                bail!(
                    "train.loss `{}` needs batches of K = {k} images per class, but plan.k = {plan_k}; set --set plan.k={k} (the seed uses P = {} there)",
                    settings.loss.name(),
                    if k == 2 { 60 } else { 30 }
                );
            }
        }
        if image.crop > image.resize {
            bail!(
                "image.crop = {} is larger than image.resize = {}",
                image.crop,
                image.resize
            );
        }
        let augment = image.augment_policy();
        augment.validate().context("invalid [image] augmentation")?;
        let device = device::resolve_kind(&settings.device)?;
        if settings.precision == Precision::Bf16 && !untrained {
            device::check_bf16(device, device::cpu_has_bf16())?;
        }
        Ok(Arc::new(TrainStage {
            job: TrainJob {
                settings: settings.clone(),
                crop: image.crop,
                augment,
                device,
                untrained,
                validation: validation.filter(|_| !untrained),
            },
        }))
    }
}

/// The settings the network, loss and optimiser are built from (`model.json`).
pub fn train_config(s: &TrainSettings) -> TrainConfig {
    TrainConfig {
        model: s.model.clone(),
        loss: s.loss.clone(),
        optimizer: s.optimizer.clone(),
        precision: s.precision,
        deterministic: s.deterministic,
    }
}

/// The augmentation's part of the train key: only what differs from the default (so the
/// keys of runs made before these settings existed stay valid), and the random-resized
/// ranges only when that crop is used.
fn augment_key(a: &ds::AugmentPolicy) -> serde_json::Map<String, serde_json::Value> {
    let d = ds::AugmentPolicy::default();
    let mut m = serde_json::Map::new();
    if a.flip != d.flip {
        m.insert("flip".into(), json!(a.flip));
    }
    if a.crop != d.crop {
        m.insert("train_crop".into(), json!(a.crop));
    }
    if a.crop == ds::TrainCrop::RandomResized {
        m.insert("random_resized_scale".into(), json!(a.scale));
        m.insert("random_resized_ratio".into(), json!(a.ratio));
    }
    m
}

impl Stage for TrainStage {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        let job = &self.job;
        let mut t = serde_json::to_value(&job.settings).unwrap_or_default();
        if let Some(o) = t.as_object_mut() {
            // Not part of the output: where checkpoints go, and the device spelling
            // (only the resolved kind is).
            o.remove("checkpoint_every");
            o.insert("device".into(), json!(job.device.name()));
            if !job.settings.deterministic {
                o.remove("deterministic");
            }
            // Off (the default) leaves the key as it was before validation existed.
            o.remove("validation");
            if let Some(v) = &job.validation {
                o.insert("validation".into(), json!(v));
            }
            if job.untrained {
                for k in ["loss", "optimizer", "precision", "deterministic"] {
                    o.remove(k);
                }
                o.insert("untrained".into(), json!(true));
            }
        }
        let mut image = serde_json::Map::new();
        image.insert("crop".into(), json!(job.crop));
        if !job.untrained {
            image.extend(augment_key(&job.augment));
        }
        json!({ "train": t, "image": image })
    }
    fn uses_device(&self) -> bool {
        self.job.device == DeviceKind::Cuda
    }
    fn resume_note(&self, env: &dml_pipeline::PlanEnv<'_>, key: &str) -> Option<String> {
        // Read only: planning never creates the checkpoint directory.
        let dir = env.store.root().join("cache").join("checkpoints").join(key);
        if !dir.is_dir() {
            return None;
        }
        Checkpoints::new(dir)
            .latest()
            .map(|(step, _)| format!("resumes from the checkpoint at step {step}"))
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let job = serde_json::to_value(&self.job)?;
        let roles: &[&str] = if self.job.untrained {
            &[]
        } else {
            &[roles::PLAN, roles::DECODE, roles::INDEX]
        };
        worker::run_in_worker(ctx, "train", job, roles, !self.job.untrained)
    }
}

/// The settings in a train artifact's `model.json` (which also says, under `validation`,
/// which step's weights it holds when `[train.validation]` was on).
pub fn read_model_json(path: &Path) -> anyhow::Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("validation");
    }
    serde_json::from_value(v).with_context(|| format!("reading the settings in {}", path.display()))
}
