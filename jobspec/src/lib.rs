//! The specification of the training worker's jobs: what the stages (`dml_stages`, in
//! `dml`) and the worker (`dml_torch`, in `dml-torch`) agree on, as plain data: the
//! training settings ([`settings`], [`train_config`]), the worker's jobs ([`jobs`]) and the protocol that carries them
//! ([`protocol`]), device kinds ([`device`]), validation during training ([`validation`]),
//! the evaluation protocol and metric names ([`evaluate`]), the input roles ([`roles`]),
//! checkpoints ([`resume`]) and the tables `dml embed` writes ([`use_model`]).
//!
//! Neither side's heavy dependencies are here: the worker links this crate, not the stages
//! (polars, plotters, the report), and `dml` links it, not libtorch.
#![deny(missing_docs)]
pub mod device;
pub mod evaluate;
pub mod jobs;
pub mod protocol;
pub mod resume;
pub mod roles;
pub mod settings;
pub mod train_config;
pub mod use_model;
pub mod validation;

/// An error from a stage body or a hook (the engine's `dml_pipeline::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
