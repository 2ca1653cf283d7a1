//! Stage implementations: index, plan, train, embed, cluster, retrieve, report.
pub mod config;
pub mod dag;
pub mod data_stages;
pub mod eval_stages;
pub mod evaluate;
pub mod loader;
pub mod model_stages;
pub mod plots;
pub mod preflight;
pub mod report;
mod resume;
pub mod train;
pub mod validation;

/// The libtorch this build binds (tch 0.24.0 needs exactly this one).
pub const LIBTORCH_VERSION: &str = "2.11.0";
