//! The settings the training worker is handed: `[train]` (with `[train.validation]`) and
//! `[embed]`, tables of the experiment configuration (`dml_stages::config`, which
//! re-exports them). Every struct denies unknown fields and fills defaults.
use crate::train_config::is_zero_u64;
use serde::{Deserialize, Serialize};

/// `[train]`: the network (`[train.model]`), the loss (`[train.loss]`, with `name`),
/// the optimiser (`[train.optimizer]`) and how to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Backbone, head, embedding size, normalisation, pretrained weights.
    pub model: crate::train_config::ModelConfig,
    /// The ranking loss and its parameters.
    pub loss: crate::train_config::Loss,
    /// Adam or SGD, learning rate, schedule, weight decay.
    pub optimizer: crate::train_config::OptimConfig,
    /// `f32`, or `bf16` autocast (CUDA, or a CPU with AVX512-BF16/AMX).
    pub precision: crate::train_config::Precision,
    /// cuDNN's deterministic algorithms on CUDA instead of autotuned ones. Part of the
    /// train key only when true.
    pub deterministic: bool,
    /// Train the head (and the loss's parameters) only, the backbone frozen, for the first
    /// N steps (the Proxy-Anchor warm-up). Part of the train key only when > 0.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub freeze_backbone_steps: u64,
    /// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Seed of the weight initialisation and of the augmentation.
    pub seed: u64,
    /// Steps between resumable checkpoints (kept outside the store, not part of the key).
    pub checkpoint_every: u32,
    /// Validation during training (`[train.validation]`; off by default).
    pub validation: ValidationSettings,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            model: Default::default(),
            loss: Default::default(),
            optimizer: Default::default(),
            precision: Default::default(),
            deterministic: false,
            freeze_backbone_steps: 0,
            device: "auto".into(),
            seed: 0,
            checkpoint_every: 500,
            validation: Default::default(),
        }
    }
}

/// `[embed]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedSettings {
    /// Images per forward pass.
    pub batch_size: u32,
}

impl Default for EmbedSettings {
    fn default() -> Self {
        EmbedSettings { batch_size: 128 }
    }
}

// ---- [train.validation] ----

/// Which images validation scores.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ValidationSet {
    /// A seeded share of the training classes, removed from training (class-disjoint).
    #[default]
    Holdout,
    /// The test split (the numbers the run is finally judged on: choosing weights by them
    /// overstates the result, so it is labelled "test" wherever shown).
    Test,
}

impl ValidationSet {
    /// How plots, logs and notes name it.
    pub fn label(self) -> &'static str {
        match self {
            ValidationSet::Holdout => "holdout",
            ValidationSet::Test => "test split",
        }
    }
}

/// Which weights become the artifact.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The weights after the last step.
    #[default]
    Last,
    /// The weights of the evaluation with the best Recall@1 (ties: higher MAP@R, then the
    /// earlier step).
    Best,
}

/// `[train.validation]`: part of the train key when `every > 0`; with the default `every = 0`
/// it is off and leaves every key as it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSettings {
    /// Steps between evaluations (0 = off). The last step is always evaluated too.
    pub every: u32,
    /// `holdout` or `test`.
    pub on: ValidationSet,
    /// Share of the training classes held out (`on = "holdout"`); at least 2 classes.
    pub holdout_fraction: f64,
    /// Seed of the holdout draw.
    pub seed: u64,
    /// `last` or `best`.
    pub keep: Keep,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        ValidationSettings {
            every: 0,
            on: ValidationSet::Holdout,
            holdout_fraction: 0.1,
            seed: 0,
            keep: Keep::Last,
        }
    }
}

impl ValidationSettings {
    /// Whether validation runs at all.
    pub fn enabled(&self) -> bool {
        self.every > 0
    }
}

/// The settings the network, loss and optimiser are built from (`model.json`).
pub fn train_config(s: &TrainSettings) -> crate::train_config::TrainConfig {
    crate::train_config::TrainConfig {
        model: s.model.clone(),
        loss: s.loss.clone(),
        optimizer: s.optimizer.clone(),
        precision: s.precision,
        deterministic: s.deterministic,
        freeze_backbone_steps: s.freeze_backbone_steps,
    }
}
