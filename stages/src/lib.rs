//! The stages — synth, index, plan, decode, train, embed, retrieve, cluster, report — and the
//! DAG that joins them, without libtorch: train and embed resolve their settings and key
//! here and run in the training worker (`dml-torch`, see [`worker`]). What they hand the
//! worker — settings, jobs, the protocol, the evaluation protocol — is plain data in
//! `dml_jobspec`, the crate both sides link.
#![deny(missing_docs)]
pub mod cluster;
pub mod config;
pub mod dag;
pub mod decode;
pub mod device;
pub mod embed;
pub mod error;
pub mod index;
pub mod plan;
pub mod plots;
pub mod preflight;
pub mod report;
pub mod report_html;
pub mod retrievals;
pub mod retrieve;
pub mod summary;
pub mod synth;
pub mod thumbs;
pub mod train;
pub mod worker;

pub use error::{Result, StageError};

/// The libtorch this build binds (tch 0.24.0 needs exactly this one).
pub const LIBTORCH_VERSION: &str = "2.11.0";
