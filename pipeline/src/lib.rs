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
mod record;
mod remote;
mod scheduler;
mod stage;

pub use error::{error_chain, PipelineError};
pub use explain::{changes, flatten_settings, show, Change, Plan, PlannedNode, Reason, Status};
pub use graph::{Graph, NodeId};
pub use key::{canonical_json, manifest_key, stage_key, SCHEMA_SALT};
pub use record::{file_safe, NodeStatus, RecordNode, RunRecord, RunStatus};
pub use remote::{FetchOutcome, RemoteCache, RemoteError, SharedRemote, UploadOutcome};
pub use scheduler::{
    build_one, execute, CheckFn, Event, ExecOptions, ExecSummary, NodeCheck, Outcome,
};
pub use stage::{log_progress, BoxError, PlanEnv, RunContext, Stage, SteadyEta};
