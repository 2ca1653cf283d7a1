//! The `train` stage: P×K batches → `model.safetensors`, `model.json`,
//! `train_log.parquet` and `loss.png`. Settings, key and checks live here; the
//! training itself runs in the worker (`dml-torch`), which links libtorch.
use crate::config::{ImageSettings, TrainSettings};
use crate::device::{self, DeviceKind};
use crate::jobs::{TrainJob, WorkerJob};
use crate::resume::Checkpoints;
use crate::roles;
use crate::train_config::{Loss, ModelConfig, OptimConfig, Precision, TrainConfig};
use crate::validation::ValidationPlan;
use crate::worker;
use anyhow::{bail, Context};
use dml_datasets as ds;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// The P (classes per batch) the seed trains with when a loss fixes K: 60 pairs for N-pairs
/// and angular (K = 2), 30 quadruplets for contrastive (K = 4): 120 images either way.
fn seed_p(k: usize) -> usize {
    const SEED_BATCH: usize = 120;
    SEED_BATCH / k
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
                    seed_p(k)
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
        freeze_backbone_steps: s.freeze_backbone_steps,
    }
}

/// The train key's settings: `[train]` as it shapes the weights, and the `[image]` crop and
/// augmentation. Serialised to the JSON the key hashes; a field that is `None` is left out,
/// so settings that did not exist when older artifacts were made leave their keys as
/// they were.
#[derive(Serialize)]
struct TrainKey<'a> {
    train: TrainTable<'a>,
    image: ImageKey,
}

#[derive(Serialize)]
struct TrainTable<'a> {
    model: &'a ModelConfig,
    seed: u64,
    /// The resolved device kind (not its spelling: `auto` and `cpu` agree on a CPU host).
    device: &'static str,
    /// The untrained baseline has no loss, optimiser or precision.
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<&'a Loss>,
    #[serde(skip_serializing_if = "Option::is_none")]
    optimizer: Option<&'a OptimConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<Precision>,
    /// Only when true.
    #[serde(skip_serializing_if = "Option::is_none")]
    deterministic: Option<bool>,
    /// Only when > 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    freeze_backbone_steps: Option<u64>,
    /// Only when validating.
    #[serde(skip_serializing_if = "Option::is_none")]
    validation: Option<&'a ValidationPlan>,
    /// Only for the untrained baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    untrained: Option<bool>,
}

/// `image.crop`, and of the augmentation only what differs from the default (the
/// random-resized ranges only when that crop is used).
#[derive(Serialize)]
struct ImageKey {
    crop: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    flip: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    train_crop: Option<ds::TrainCrop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    random_resized_scale: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    random_resized_ratio: Option<[f64; 2]>,
}

impl TrainJob {
    fn key(&self) -> TrainKey<'_> {
        let s = &self.settings;
        let trained = !self.untrained;
        let d = ds::AugmentPolicy::default();
        let a = &self.augment;
        let resized = a.crop == ds::TrainCrop::RandomResized;
        TrainKey {
            train: TrainTable {
                model: &s.model,
                seed: s.seed,
                device: self.device.name(),
                loss: trained.then_some(&s.loss),
                optimizer: trained.then_some(&s.optimizer),
                precision: trained.then_some(s.precision),
                deterministic: (trained && s.deterministic).then_some(true),
                freeze_backbone_steps: (trained && s.freeze_backbone_steps > 0)
                    .then_some(s.freeze_backbone_steps),
                validation: self.validation.as_ref(),
                untrained: self.untrained.then_some(true),
            },
            image: ImageKey {
                crop: self.crop,
                flip: (trained && a.flip != d.flip).then_some(a.flip),
                train_crop: (trained && a.crop != d.crop).then_some(a.crop),
                random_resized_scale: (trained && resized).then_some(a.scale),
                random_resized_ratio: (trained && resized).then_some(a.ratio),
            },
        }
    }
}

impl Stage for TrainStage {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self.job.key()).expect("the train key serialises")
    }
    fn uses_device(&self) -> bool {
        self.job.device == DeviceKind::Cuda
    }
    fn resume_note(&self, env: &dml_pipeline::PlanEnv<'_>, key: &str) -> Option<String> {
        // Read only: planning never creates the checkpoint directory.
        let dir = env.store.layout().checkpoint(key);
        if !dir.is_dir() {
            return None;
        }
        Checkpoints::new(dir)
            .latest()
            .map(|(step, _)| format!("resumes from the checkpoint at step {step}"))
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let roles: &[&str] = if self.job.untrained {
            &[]
        } else {
            &[roles::PLAN, roles::DECODE, roles::INDEX]
        };
        let job = WorkerJob::Train(Box::new(self.job.clone()));
        worker::run_in_worker(ctx, job, roles, !self.job.untrained)
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
