//! The end-to-end tests, as one binary: the real `dml` (and its training worker) on
//! small generated data, with a real Slurm cluster and S3 server where a feature talks
//! to one. One module per area; `common` holds the helpers.
mod common;
mod engine;
mod eval;
mod new_user;
mod notebook;
mod presets;
mod remote;
mod report_html;
mod runs;
mod slurm;
mod snapshots;
mod store;
mod sweep;
mod train;
mod use_model;
mod validation;
