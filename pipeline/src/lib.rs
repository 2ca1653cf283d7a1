//! The engine: stages, the DAG, stage keys, explain, the scheduler and run records.
//!
//! The engine never names a stage: it sees them through the [`Stage`] trait. A
//! stage's key is the blake3 of everything that changes its output (its name and
//! code version, its canonical settings, its inputs' keys, an optional dataset
//! fingerprint, and a global schema salt) and nothing else.
#![deny(missing_docs)]

mod error;
mod explain;
mod graph;
mod key;
mod node;
mod record;
mod remote;
mod scheduler;
pub mod slurm;
mod stage;

pub use error::{error_chain, PipelineError};
pub use explain::{Plan, PlannedNode, Status};
pub use graph::{Graph, NodeId};
pub use key::{canonical_json, manifest_key, stage_key, SCHEMA_SALT};
pub use node::{flatten_settings, settings_diff, show, Change, NodeIdentity, Reason};
pub use record::{file_safe, node_dir_name, NodeStatus, RecordNode, RunRecord, RunStatus};
pub use remote::{FetchOutcome, RemoteCache, RemoteError, SharedRemote, UploadOutcome};
pub use scheduler::{
    build_one, execute, CheckFn, Event, ExecOptions, ExecSummary, NodeCheck, Outcome,
};
pub use stage::{log_progress, BoxError, PlanEnv, RunContext, Stage, SteadyEta};
