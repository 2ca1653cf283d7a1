//! Submitting a plan: one `sbatch` job per stage that must run, chained with
//! `--dependency=afterok` along the DAG's edges, each claimed so no other run submits
//! its key again, and the run's record written (status `submitted`).
use super::claims::{
    absolute_layout, lock_claims, read_claim, write_json_atomic, Claim, StageRequest,
};
use super::error::{with_causes, SlurmError};
use super::jobs::{job_script, job_states, sbatch, sbatch_args, JobResources, JobState};
use super::status::built;
use crate::{file_safe, NodeStatus, Plan, PlannedNode, RunRecord, RunStatus, Status};
use dml_artifacts::ArtifactStore;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// What to submit.
#[derive(Debug, Clone)]
pub struct SubmitRequest<'a> {
    /// The run name.
    pub name: &'a str,
    /// The resolved configuration, as in the run record and the jobs' request.
    pub config: serde_json::Value,
    /// The resolved plan.
    pub plan: &'a Plan,
    /// What each job asks Slurm for.
    pub resources: JobResources,
    /// The binary each job runs (`exe exec-stage …`).
    pub exe: PathBuf,
    /// Provenance of the run record (`executor` and `slurm_request` are added).
    pub provenance: BTreeMap<String, serde_json::Value>,
}

/// Something the user may want to hear about while submitting.
#[derive(Debug)]
pub enum SubmitEvent<'a> {
    /// The node was cached when the plan was resolved.
    Cached(&'a PlannedNode),
    /// Another run is submitting; waiting for the claims lock.
    WaitingForLock,
    /// Another run built the node since the plan was resolved.
    BuiltMeanwhile(&'a PlannedNode),
    /// A live job of another run claims the node: it is not submitted again.
    Claimed(&'a PlannedNode, &'a Claim),
    /// The node was submitted as this job.
    Submitted(&'a PlannedNode, &'a str),
}

/// What was submitted.
#[derive(Debug)]
pub struct Submitted {
    /// The run's record, as saved.
    pub record: RunRecord,
    /// Where it was saved.
    pub record_path: PathBuf,
    /// When submitting started.
    pub started: Instant,
    /// Per plan node: the job that builds it (this run's, or another run's claim).
    pub jobs: Vec<Option<String>>,
    /// Jobs this run submitted.
    pub submitted: usize,
    /// Nodes left to live jobs of other runs.
    pub claimed: usize,
    /// Nodes cached, when planned or by another run meanwhile.
    pub cached: usize,
    /// Why submitting stopped early: the jobs submitted before it stay queued, and
    /// the record (status `failed`) names them.
    pub failure: Option<SlurmError>,
}

/// Submits every node of the plan that must run and is neither built meanwhile nor
/// claimed by a live job, one submitter at a time (the claims lock), and saves the
/// run's record. An error before any job was submitted is returned as such; one
/// after is [`Submitted::failure`].
pub fn submit(
    store: &ArtifactStore,
    req: &SubmitRequest<'_>,
    on_event: &mut dyn FnMut(SubmitEvent<'_>),
) -> Result<Submitted, SlurmError> {
    let layout = absolute_layout(store)?;
    let plan = req.plan;
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let to_run: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| plan.nodes[i].status == Status::Run)
        .collect();
    for node in plan.nodes.iter().filter(|n| n.status == Status::Cached) {
        on_event(SubmitEvent::Cached(node));
    }
    let mut record = plan.record(req.name, started_at.clone(), req.config.clone());
    record.provenance = req.provenance.clone();
    record
        .provenance
        .insert("executor".into(), serde_json::json!("slurm"));
    let mut job_of: Vec<Option<String>> = vec![None; plan.nodes.len()];
    let mut claimed = 0usize;
    let mut built_meanwhile: Vec<usize> = Vec::new();
    let mut failure: Option<SlurmError> = None;
    if !to_run.is_empty() {
        for dir in [
            layout.claims(),
            layout.slurm_requests(),
            layout.slurm_logs(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| SlurmError::during(format!("creating {}", dir.display()), e))?;
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let request_path = layout.slurm_requests().join(format!(
            "{stamp}-{}-{}.json",
            file_safe(req.name),
            std::process::id()
        ));
        write_json_atomic(
            &request_path,
            &StageRequest {
                name: req.name.to_string(),
                config: req.config.clone(),
                submitted: started_at.clone(),
            },
        )?;
        record.provenance.insert(
            "slurm_request".into(),
            serde_json::json!(request_path.display().to_string()),
        );
        // One submitter at a time: two runs never both submit the same key.
        let _lock = lock_claims(&layout, || on_event(SubmitEvent::WaitingForLock))
            .map_err(|e| SlurmError::during("locking the claims folder", e))?;
        let claims: BTreeMap<usize, Claim> = to_run
            .iter()
            .filter_map(|&i| {
                let n = &plan.nodes[i];
                read_claim(&layout.claim(&n.stage, &n.key)).map(|c| (i, c))
            })
            .collect();
        let claim_ids: Vec<String> = claims.values().map(|c| c.job_id.clone()).collect();
        let states = job_states(&claim_ids)?;
        for &i in &to_run {
            let node = &plan.nodes[i];
            if built(store, &node.stage, &node.key) {
                on_event(SubmitEvent::BuiltMeanwhile(node));
                built_meanwhile.push(i);
                continue;
            }
            if let Some(c) = claims.get(&i) {
                if states.get(&c.job_id).is_some_and(JobState::live) {
                    on_event(SubmitEvent::Claimed(node, c));
                    job_of[i] = Some(c.job_id.clone());
                    claimed += 1;
                    continue;
                }
            }
            let args = sbatch_args(
                &req.resources,
                &format!("dml:{}", node.id),
                &layout.slurm_log(&node.stage, &node.key, "%j"),
                layout.root(),
                node.uses_device,
                &dependencies(node.input_nodes.iter().map(|(_, d)| *d), &job_of),
            );
            let script = job_script(&req.exe, layout.root(), &request_path, &node.id, &node.key);
            let job = match sbatch(&args, &script) {
                Ok(job) => job,
                Err(e) => {
                    failure = Some(SlurmError::during(format!("submitting `{}`", node.id), e));
                    break;
                }
            };
            write_json_atomic(
                &layout.claim(&node.stage, &node.key),
                &Claim {
                    stage: node.stage.clone(),
                    key: node.key.clone(),
                    node: node.id.clone(),
                    job_id: job.clone(),
                    run: req.name.to_string(),
                    submitted: started_at.clone(),
                },
            )?;
            on_event(SubmitEvent::Submitted(node, &job));
            job_of[i] = Some(job);
        }
    }
    for (n, job) in record.nodes.iter_mut().zip(&job_of) {
        n.job_id = job.clone();
        if job.is_some() {
            n.status = NodeStatus::Submitted;
        }
    }
    for &i in &built_meanwhile {
        record.nodes[i].status = NodeStatus::Cached;
    }
    match &failure {
        Some(e) => record.finish(
            RunStatus::Failed,
            format!("submission failed: {}", with_causes(e)),
        ),
        None => record.finish(RunStatus::Submitted, "submitted"),
    }
    let record_path = record.save(store)?;
    Ok(Submitted {
        record,
        record_path,
        started,
        submitted: job_of.iter().flatten().count() - claimed,
        jobs: job_of,
        claimed,
        cached: plan.nodes.len() - to_run.len() + built_meanwhile.len(),
        failure,
    })
}

/// The jobs a node's job waits for (`afterok`): those of its inputs (plan indices)
/// that have one, sorted, once each.
fn dependencies(inputs: impl IntoIterator<Item = usize>, job_of: &[Option<String>]) -> Vec<String> {
    let mut deps: Vec<String> = inputs
        .into_iter()
        .filter_map(|d| job_of[d].clone())
        .collect();
    deps.sort();
    deps.dedup();
    deps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_waits_for_its_inputs_jobs_once_each() {
        let job_of = [
            Some("12".to_string()),
            None,
            Some("9".to_string()),
            Some("12".to_string()),
        ];
        // Input 1 is cached (no job); 0 and 3 share one claimed job.
        assert_eq!(dependencies([3, 1, 2, 0], &job_of), ["12", "9"]);
        assert!(dependencies([1], &job_of).is_empty());
        assert!(dependencies([], &job_of).is_empty());
    }
}
