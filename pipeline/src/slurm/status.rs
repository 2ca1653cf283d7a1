//! Where a submitted run's stages stand, read from Slurm and the store (`dml status`),
//! and cancelling the jobs it still has queued or running (`dml cancel`).
use super::claims::{absolute_layout, effective_job, release_claim};
use super::error::SlurmError;
use super::jobs::{job_states, scancel, JobState};
use crate::{NodeStatus, PipelineError, RecordNode, RunRecord};
use dml_artifacts::{ArtifactStore, Layout};
use std::collections::BTreeMap;

/// Where one stage stands.
#[derive(Debug, Clone, PartialEq)]
pub enum StageState {
    /// In the store, not built by this run.
    Cached,
    /// Built by this run (its job, or a local run).
    Done,
    /// Waiting in Slurm's queue (the reason).
    Queued(String),
    /// Running.
    Running,
    /// Its job ended without building it (why).
    Failed(String),
    /// Its job was cancelled (why).
    Cancelled(String),
    /// Never submitted (a local run that stopped early).
    NotRun,
}

impl StageState {
    /// The word `dml status` shows.
    pub fn word(&self) -> &'static str {
        match self {
            StageState::Cached => "cached",
            StageState::Done => "done",
            StageState::Queued(_) => "queued",
            StageState::Running => "running",
            StageState::Failed(_) => "failed",
            StageState::Cancelled(_) => "cancelled",
            StageState::NotRun => "not run",
        }
    }
    /// What `dml status` adds after the word.
    pub fn detail(&self) -> String {
        match self {
            StageState::Queued(r) if !r.is_empty() && r != "None" => format!("waiting: {r}"),
            StageState::Failed(w) | StageState::Cancelled(w) => w.clone(),
            _ => String::new(),
        }
    }
    /// Failed or cancelled.
    pub fn ended_badly(&self) -> bool {
        matches!(self, StageState::Failed(_) | StageState::Cancelled(_))
    }
}

/// Whether the store holds the artifact of `stage`/`key`.
pub fn built(store: &ArtifactStore, stage: &str, key: &str) -> bool {
    store.layout().manifest(stage, key).is_file()
}

/// Reads Slurm's view first, then the store: an artifact is committed before
/// its job ends, so a job seen ended with no artifact really failed.
pub fn observe(
    store: &ArtifactStore,
    node: &RecordNode,
    job: Option<&str>,
    states: &BTreeMap<String, JobState>,
) -> StageState {
    if built(store, &node.stage, &node.key) {
        return if node.job_id.is_some() || node.status == NodeStatus::Ran {
            StageState::Done
        } else {
            StageState::Cached
        };
    }
    match job {
        Some(job) => unbuilt(states.get(job)),
        None => StageState::NotRun,
    }
}

/// Where a stage whose artifact is not in the store stands, from its job's state
/// (`None`: Slurm no longer knows the job).
fn unbuilt(job: Option<&JobState>) -> StageState {
    match job {
        Some(st) if st.live() => match st.state.as_str() {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "SUSPENDED" | "RESV_DEL_HOLD" => {
                StageState::Queued(st.reason.clone())
            }
            _ => StageState::Running,
        },
        Some(st) if st.reason == "DependencyNeverSatisfied" => StageState::Cancelled(
            "an input's job failed, so Slurm cancelled it (DependencyNeverSatisfied)".into(),
        ),
        Some(st) if st.state == "CANCELLED" => {
            StageState::Cancelled("cancelled (scancel, or preempted)".into())
        }
        Some(st) => StageState::Failed(format!("ended {} without building it", st.state)),
        None => StageState::Failed("no longer known to Slurm, and built nothing".into()),
    }
}

/// The last `lines` lines of a job's log, with the log's path.
pub fn log_tail(layout: &Layout, node: &RecordNode, job: &str, lines: usize) -> Option<String> {
    let path = layout.slurm_log(&node.stage, &node.key, job);
    let text = std::fs::read_to_string(&path).ok()?;
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    Some(format!("{} (last lines):\n{tail}", path.display()))
}

/// The record `dml status` / `dml cancel` look at: the newest of `name`, else the
/// newest readable record of any run (`None`: there is none).
pub fn find_run(
    store: &ArtifactStore,
    name: Option<&str>,
) -> Result<Option<RunRecord>, PipelineError> {
    match name {
        Some(name) => RunRecord::latest(store, name),
        None => Ok(RunRecord::list(store)?
            .into_iter()
            .rev()
            .find_map(|path| RunRecord::load(&path).ok())),
    }
}

/// One stage of a recorded run, as `dml status` shows it.
#[derive(Debug, Clone)]
pub struct StageRow<'a> {
    /// The stage in the record.
    pub node: &'a RecordNode,
    /// The job that builds (or built) it, if any.
    pub job: Option<String>,
    /// Where it stands.
    pub state: StageState,
    /// The tail of its job's log, when the job failed or was cancelled.
    pub log_tail: Option<String>,
}

/// Where each stage of `record` stands: Slurm asked once for every job whose
/// artifact is not in the store yet; a failed or cancelled job's log tail is read.
pub fn stage_rows<'a>(
    store: &ArtifactStore,
    record: &'a RunRecord,
    tail_lines: usize,
) -> Result<Vec<StageRow<'a>>, SlurmError> {
    let layout = absolute_layout(store)?;
    let jobs: Vec<Option<String>> = record
        .nodes
        .iter()
        .map(|n| effective_job(&layout, n))
        .collect();
    let ids: Vec<String> = record
        .nodes
        .iter()
        .zip(&jobs)
        .filter(|(n, _)| !built(store, &n.stage, &n.key))
        .filter_map(|(_, j)| j.clone())
        .collect();
    let states = job_states(&ids)?;
    Ok(record
        .nodes
        .iter()
        .zip(jobs)
        .map(|(node, job)| {
            let state = recorded(observe(store, node, job.as_deref(), &states), node.status);
            let log_tail = match (&state, &job) {
                (StageState::Failed(_) | StageState::Cancelled(_), Some(j)) => {
                    log_tail(&layout, node, j, tail_lines)
                }
                _ => None,
            };
            StageRow {
                node,
                job,
                state,
                log_tail,
            }
        })
        .collect())
}

/// What Slurm and the store say, corrected by the record: a local run's stage that
/// failed was never a job, yet it failed.
fn recorded(state: StageState, status: NodeStatus) -> StageState {
    match (&state, status) {
        (StageState::NotRun, NodeStatus::Failed) => {
            StageState::Failed("failed in a local run".into())
        }
        _ => state,
    }
}

/// Cancels `record`'s queued and running jobs (one `scancel`) and releases their
/// claims, calling `on_cancelled` with each node and job; returns how many there
/// were (0: the run has no live job, and nothing was done).
pub fn cancel_run(
    store: &ArtifactStore,
    record: &RunRecord,
    mut on_cancelled: impl FnMut(&RecordNode, &str),
) -> Result<usize, SlurmError> {
    let layout = absolute_layout(store)?;
    let jobs: Vec<(&RecordNode, String)> = record
        .nodes
        .iter()
        .filter(|n| !built(store, &n.stage, &n.key))
        .filter_map(|n| effective_job(&layout, n).map(|j| (n, j)))
        .collect();
    let ids: Vec<String> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let states = job_states(&ids)?;
    let live: Vec<&(&RecordNode, String)> = jobs
        .iter()
        .filter(|(_, j)| states.get(j).is_some_and(JobState::live))
        .collect();
    if live.is_empty() {
        return Ok(0);
    }
    let mut ids: Vec<String> = live.iter().map(|(_, j)| j.clone()).collect();
    ids.sort();
    ids.dedup();
    scancel(&ids)?;
    for (node, job) in &live {
        release_claim(store, &node.stage, &node.key, job)?;
        on_cancelled(node, job);
    }
    Ok(live.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, reason: &str) -> JobState {
        JobState {
            state: state.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn an_unbuilt_stage_stands_where_its_job_does() {
        let queued = unbuilt(Some(&job("PENDING", "Dependency")));
        assert_eq!(queued, StageState::Queued("Dependency".into()));
        assert_eq!(queued.detail(), "waiting: Dependency");
        assert_eq!(StageState::Queued("None".into()).detail(), "");
        assert_eq!(
            unbuilt(Some(&job("COMPLETING", "None"))),
            StageState::Running
        );
        let never = unbuilt(Some(&job("PENDING", "DependencyNeverSatisfied")));
        assert!(
            matches!(never, StageState::Cancelled(ref w) if w.contains("an input's job failed"))
        );
        assert_eq!(
            unbuilt(Some(&job("CANCELLED", ""))).word(),
            "cancelled",
            "scancel or preemption"
        );
        // Completed with no artifact: the job did not build it.
        assert_eq!(
            unbuilt(Some(&job("COMPLETED", ""))),
            StageState::Failed("ended COMPLETED without building it".into())
        );
        let gone = unbuilt(None);
        assert!(gone.ended_badly() && gone.word() == "failed", "{gone:?}");
    }

    #[test]
    fn a_local_failure_is_shown_failed_not_unrun() {
        assert_eq!(
            recorded(StageState::NotRun, NodeStatus::Failed),
            StageState::Failed("failed in a local run".into())
        );
        assert_eq!(
            recorded(StageState::NotRun, NodeStatus::NotRun),
            StageState::NotRun
        );
        assert_eq!(
            recorded(StageState::Running, NodeStatus::Failed),
            StageState::Running
        );
    }
}
