//! The `train` stage: P×K batches → `model.safetensors`, `model.json`,
//! `train_log.parquet` and `loss.png`. Settings, key and checks live here; the
//! training itself runs in the worker (`dml-torch`), which links libtorch.
use crate::config::{ImageSettings, TrainSettings};
use crate::device::{self, DeviceKind};
use crate::error::StageError;
use crate::{plots, worker};
use dml_artifacts::tables;
use dml_datasets as ds;
use dml_jobspec::jobs::{TrainJob, WorkerJob};
use dml_jobspec::resume::Checkpoints;
use dml_jobspec::roles;
use dml_jobspec::settings::train_config;
use dml_jobspec::train_config::{Loss, ModelConfig, OptimConfig, Precision};
use dml_jobspec::validation::{Keep, ValidationPlan};
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
    ) -> crate::Result<Arc<Self>> {
        let cfg = train_config(settings);
        cfg.validate().map_err(StageError::TrainSettings)?;
        if let Some(k) = settings.loss.required_samples_per_class() {
            if plan_k as usize != k && !untrained {
                return Err(StageError::setting("plan.k", format!("train.loss `{}` needs batches of K = {k} images per class, but plan.k = {plan_k}; set --set plan.k={k} (the seed uses P = {} there)",
                    settings.loss.name(),
                    seed_p(k))));
            }
        }
        if image.crop > image.resize {
            return Err(StageError::setting(
                "image.crop",
                format!(
                    "image.crop = {} is larger than image.resize = {}",
                    image.crop, image.resize
                ),
            ));
        }
        let augment = image.augment_policy();
        augment.validate().map_err(StageError::Augmentation)?;
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

/// What the train key hashes of a job.
fn train_key(job: &TrainJob) -> TrainKey<'_> {
    let s = &job.settings;
    let trained = !job.untrained;
    let d = ds::AugmentPolicy::default();
    let a = &job.augment;
    let resized = a.crop == ds::TrainCrop::RandomResized;
    TrainKey {
        train: TrainTable {
            model: &s.model,
            seed: s.seed,
            device: job.device.name(),
            loss: trained.then_some(&s.loss),
            optimizer: trained.then_some(&s.optimizer),
            precision: trained.then_some(s.precision),
            deterministic: (trained && s.deterministic).then_some(true),
            freeze_backbone_steps: (trained && s.freeze_backbone_steps > 0)
                .then_some(s.freeze_backbone_steps),
            validation: job.validation.as_ref(),
            untrained: job.untrained.then_some(true),
        },
        image: ImageKey {
            crop: job.crop,
            flip: (trained && a.flip != d.flip).then_some(a.flip),
            train_crop: (trained && a.crop != d.crop).then_some(a.crop),
            random_resized_scale: (trained && resized).then_some(a.scale),
            random_resized_ratio: (trained && resized).then_some(a.ratio),
        },
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
        serde_json::to_value(train_key(&self.job)).expect("the train key serialises")
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
        let notes = worker::run_in_worker(ctx, job, roles, !self.job.untrained)?;
        if self.job.untrained {
            return Ok(());
        }
        let kept_step = notes.get("kept_step").and_then(serde_json::Value::as_f64);
        draw_curves(ctx.out_dir(), ctx.node(), &self.job, kept_step)
    }
}

/// `loss.png` from the worker's `train_log.parquet`: the loss per step and, when validating,
/// the validation panel (with the kept step when `keep = "best"`). Drawn here rather than
/// in the worker, which links no plotting.
fn draw_curves(
    out: &Path,
    node: &str,
    job: &TrainJob,
    kept_step: Option<f64>,
) -> Result<(), BoxError> {
    let log = tables::read_train_log(&out.join("train_log.parquet"))?;
    let curve: Vec<(f64, f64)> = log.iter().map(|r| (f64::from(r.step), r.loss)).collect();
    let title = format!("{node} — {}", job.settings.loss.name());
    match (&job.validation, kept_step) {
        (Some(v), Some(kept_step)) => {
            let val: Vec<(f64, f64, f64)> = log
                .iter()
                .filter_map(|r| Some((f64::from(r.step), r.val_recall_at_1?, r.val_map_at_r?)))
                .collect();
            plots::training_curves(
                &out.join("loss.png"),
                &title,
                &curve,
                &plots::ValidationCurve {
                    label: v.on.label(),
                    points: &val,
                    kept_step: (v.keep == Keep::Best).then_some(kept_step),
                },
            )?;
        }
        _ => plots::loss_curve(&out.join("loss.png"), &title, &curve)?,
    }
    Ok(())
}
