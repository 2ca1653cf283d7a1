//! The Slurm executor, a peer of the local [`crate::execute`]: each stage that must run
//! becomes one `sbatch` job, chained to its inputs' jobs with `--dependency=afterok`.
//!
//! Slurm schedules; dml only submits, records and explains. Each job runs
//! `dml exec-stage` on one node of the DAG, reading its inputs from the store and
//! committing its artifact there. The parts:
//! - `jobs`: Slurm's commands (`sbatch`, `squeue`, `sacct`, `scancel`), what they
//!   print, and one stage's job arguments and batch script;
//! - `claims`: the request each job reads, the claims that keep two runs from
//!   submitting one key twice, and the lock that makes submitters take turns;
//! - `submit`: a plan's stages submitted as chained jobs, and the run's record;
//! - `follow`: a submission polled until every job has ended, and its record finished;
//! - `status`: where a recorded run's stages stand, and cancelling its live jobs.
//!
//! Nothing here prints: submitting and following tell what happens through an event
//! callback ([`SubmitEvent`], [`FollowEvent`]), as [`crate::execute`] does; `dml run
//! --executor slurm`, `dml status` and `dml cancel` (in the binary) print it.
mod claims;
mod error;
mod follow;
mod jobs;
mod status;
mod submit;

pub use claims::{release_claim, Claim, StageRequest};
pub use error::SlurmError;
pub use follow::{follow, FollowEvent, Followed};
pub use jobs::JobResources;
pub use status::{cancel_run, find_run, stage_rows, StageRow, StageState};
pub use submit::{submit, SubmitEvent, SubmitRequest, Submitted};
