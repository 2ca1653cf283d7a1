//! Following a submission (`dml run --executor slurm --wait`): Slurm and the store
//! polled until every job has built its stage or ended, then the run's record finished.
use super::claims::{absolute_layout, effective_job, write_json_atomic};
use super::error::SlurmError;
use super::jobs::job_states;
use super::status::{log_tail, observe, StageState};
use super::submit::Submitted;
use crate::{NodeStatus, RecordNode, RunStatus};
use dml_artifacts::{ArtifactStore, Manifest};
use std::time::Duration;

/// The first pause between two polls; each next one is half as long again.
const FIRST_POLL: Duration = Duration::from_millis(500);
/// The longest pause between two polls of `squeue` and the store.
const MAX_POLL: Duration = Duration::from_secs(5);
/// `squeue` failures in a row tolerated (each followed by the longest pause).
const SQUEUE_RETRIES: u32 = 10;

/// Something the user may want to hear about while following.
#[derive(Debug)]
pub enum FollowEvent<'a> {
    /// The stage's artifact is in the store; building it took `seconds` (its manifest's).
    Done {
        /// The stage.
        node: &'a RecordNode,
        /// Its job.
        job: Option<&'a str>,
        /// Seconds, 0 if the manifest does not say.
        seconds: f64,
    },
    /// Its job ended without building it (failed or cancelled).
    Ended {
        /// The stage.
        node: &'a RecordNode,
        /// Its job.
        job: Option<&'a str>,
        /// [`StageState::Failed`] or [`StageState::Cancelled`].
        state: &'a StageState,
        /// The tail of the job's log, if there is one.
        log_tail: Option<&'a str>,
    },
    /// It now stands elsewhere than last told (queued, running).
    Moved {
        /// The stage.
        node: &'a RecordNode,
        /// Its job.
        job: Option<&'a str>,
        /// Where it stands.
        state: &'a StageState,
    },
}

/// How a followed run ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Followed {
    /// Each stage whose job failed or was cancelled (node id, state), as seen.
    pub failed: Vec<(String, StageState)>,
}

impl Followed {
    /// What went wrong, `None` when every job built its stage:
    /// ``2 failed (`a`, `b`) and 1 were cancelled (`c`)``.
    pub fn what_failed(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let (broken, cancelled): (Vec<_>, Vec<_>) = self
            .failed
            .iter()
            .partition(|(_, st)| matches!(st, StageState::Failed(_)));
        let names = |v: &[&(String, StageState)]| {
            v.iter()
                .map(|(id, _)| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut what = Vec::new();
        if !broken.is_empty() {
            what.push(format!("{} failed ({})", broken.len(), names(&broken)));
        }
        if !cancelled.is_empty() {
            what.push(format!(
                "{} were cancelled ({})",
                cancelled.len(),
                names(&cancelled)
            ));
        }
        Some(what.join(" and "))
    }

    /// The run's status and the record's outcome sentence.
    fn outcome(&self) -> (RunStatus, String) {
        if self.failed.is_empty() {
            return (RunStatus::Ok, "ok".into());
        }
        let names: Vec<String> = self
            .failed
            .iter()
            .map(|(id, why)| format!("{id}: {}", why.detail()))
            .collect();
        (RunStatus::Failed, format!("failed: {}", names.join("; ")))
    }
}

/// What one poll makes of a followed stage.
#[derive(Debug, PartialEq)]
enum Step {
    /// Its artifact is in the store: it ran.
    Built,
    /// Its job ended without building it, leaving it so.
    Ended(NodeStatus),
    /// Queued or running: poll it again.
    Waiting,
}

fn step(state: &StageState) -> Step {
    match state {
        StageState::Done | StageState::Cached => Step::Built,
        StageState::Cancelled(_) => Step::Ended(NodeStatus::Cancelled),
        StageState::Failed(_) => Step::Ended(NodeStatus::Failed),
        StageState::Queued(_) | StageState::Running | StageState::NotRun => Step::Waiting,
    }
}

/// The pause after `pause`: half as long again, at most [`MAX_POLL`].
fn next_pause(pause: Duration) -> Duration {
    (pause * 3 / 2).min(MAX_POLL)
}

/// The seconds a built artifact's manifest records (0 if it does not say).
fn built_seconds(store: &ArtifactStore, node: &RecordNode) -> f64 {
    Manifest::read(
        &store
            .object_dir(&node.stage, &node.key)
            .join("manifest.json"),
    )
    .ok()
    .and_then(|m| m.provenance.get("seconds").and_then(|v| v.as_f64()))
    .unwrap_or(0.0)
}

/// Polls Slurm and the store (every 0.5 s, backing off to 5 s) until every job of
/// `sub` has built its stage or ended, telling `on_event` what changes (submission
/// already told that every job is queued), then finishes the record (status `ok` or
/// `failed`, the run's seconds) and rewrites it in place. `tail_lines`: how much of a
/// failed job's log [`FollowEvent::Ended`] carries.
pub fn follow(
    store: &ArtifactStore,
    sub: &mut Submitted,
    tail_lines: usize,
    on_event: &mut dyn FnMut(FollowEvent<'_>),
) -> Result<Followed, SlurmError> {
    let layout = absolute_layout(store)?;
    let record = &mut sub.record;
    let mut pending: Vec<usize> = (0..record.nodes.len())
        .filter(|&i| record.nodes[i].job_id.is_some())
        .collect();
    let mut shown: Vec<&'static str> = vec!["queued"; record.nodes.len()];
    let mut failed = Vec::new();
    let mut pause = FIRST_POLL;
    let mut squeue_errors = 0;
    while !pending.is_empty() {
        let jobs: Vec<Option<String>> = record
            .nodes
            .iter()
            .map(|n| effective_job(&layout, n))
            .collect();
        let ids: Vec<String> = pending.iter().filter_map(|&i| jobs[i].clone()).collect();
        let states = match job_states(&ids) {
            Ok(st) => {
                squeue_errors = 0;
                st
            }
            Err(e) if squeue_errors < SQUEUE_RETRIES => {
                squeue_errors += 1;
                tracing::warn!("{e:#}; trying again");
                std::thread::sleep(MAX_POLL);
                continue;
            }
            Err(e) => return Err(SlurmError::during("following the jobs", e)),
        };
        let mut still = Vec::new();
        for i in pending {
            let node = &record.nodes[i];
            let job = jobs[i].as_deref();
            let state = observe(store, node, job, &states);
            match step(&state) {
                Step::Built => {
                    let seconds = built_seconds(store, node);
                    on_event(FollowEvent::Done { node, job, seconds });
                    record.nodes[i].status = NodeStatus::Ran;
                    record.nodes[i].seconds = seconds;
                }
                Step::Ended(status) => {
                    let tail = job.and_then(|j| log_tail(&layout, node, j, tail_lines));
                    on_event(FollowEvent::Ended {
                        node,
                        job,
                        state: &state,
                        log_tail: tail.as_deref(),
                    });
                    failed.push((node.id.clone(), state));
                    record.nodes[i].status = status;
                }
                Step::Waiting => {
                    if shown[i] != state.word() {
                        shown[i] = state.word();
                        on_event(FollowEvent::Moved {
                            node,
                            job,
                            state: &state,
                        });
                    }
                    still.push(i);
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(pause);
            pause = next_pause(pause);
        }
    }
    record.seconds = sub.started.elapsed().as_secs_f64();
    let followed = Followed { failed };
    let (status, outcome) = followed.outcome();
    record.finish(status, outcome);
    write_json_atomic(&sub.record_path, record)?;
    Ok(followed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_ends_a_stage_only_when_built_or_its_job_ended() {
        assert_eq!(step(&StageState::Done), Step::Built);
        assert_eq!(
            step(&StageState::Cached),
            Step::Built,
            "built by another run"
        );
        assert_eq!(
            step(&StageState::Failed("ended FAILED".into())),
            Step::Ended(NodeStatus::Failed)
        );
        assert_eq!(
            step(&StageState::Cancelled("scancel".into())),
            Step::Ended(NodeStatus::Cancelled)
        );
        assert_eq!(
            step(&StageState::Queued("Dependency".into())),
            Step::Waiting
        );
        assert_eq!(step(&StageState::Running), Step::Waiting);
    }

    #[test]
    fn polls_back_off_to_five_seconds() {
        let mut p = FIRST_POLL;
        let mut seen = vec![p];
        for _ in 0..8 {
            p = next_pause(p);
            seen.push(p);
        }
        assert_eq!(seen[1], Duration::from_millis(750));
        assert_eq!(seen[2], Duration::from_millis(1125));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), MAX_POLL);
    }

    #[test]
    fn a_failed_run_says_which_stages_failed_and_which_were_cancelled() {
        let ok = Followed::default();
        assert_eq!(ok.what_failed(), None);
        assert_eq!(ok.outcome(), (RunStatus::Ok, "ok".to_string()));
        let run = Followed {
            failed: vec![
                ("train".into(), StageState::Failed("ended FAILED".into())),
                ("embed".into(), StageState::Cancelled("input failed".into())),
                ("eval".into(), StageState::Cancelled("input failed".into())),
            ],
        };
        assert_eq!(
            run.what_failed().as_deref(),
            Some("1 failed (`train`) and 2 were cancelled (`embed`, `eval`)")
        );
        let (status, outcome) = run.outcome();
        assert_eq!(status, RunStatus::Failed);
        assert_eq!(
            outcome,
            "failed: train: ended FAILED; embed: input failed; eval: input failed"
        );
        let cancelled = Followed {
            failed: vec![("plan".into(), StageState::Cancelled("scancel".into()))],
        };
        assert_eq!(
            cancelled.what_failed().as_deref(),
            Some("1 were cancelled (`plan`)")
        );
    }
}
