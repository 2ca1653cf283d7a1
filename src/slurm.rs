//! `dml run --executor slurm`, `dml status` and `dml cancel`: one `sbatch` job per stage
//! that must run, chained with `--dependency=afterok`, followed with `--wait`, and a
//! run's jobs shown or cancelled. The executor itself (submitting, following, claims,
//! where a stage stands) is `dml_pipeline::slurm`; this file hands it `[executor]`
//! and prints what it tells. Each job runs `dml exec-stage` (see `exec_stage.rs`).
use crate::run_shared::{print_reports, provenance};
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::slurm::{
    self, FollowEvent, JobResources, StageState, SubmitEvent, SubmitRequest, Submitted,
};
use dml_pipeline::{NodeStatus, Plan, RunRecord, RunStatus};
use dml_stages::config::ExecutorSettings;
use std::collections::BTreeMap;
use std::path::Path;

/// Lines of a failed job's log shown by `dml status` and `dml run --wait`.
const LOG_TAIL_LINES: usize = 12;

/// What `dml run --executor slurm` hands over after resolving the DAG.
pub struct Submission<'a> {
    /// The run name.
    pub name: &'a str,
    /// The resolved configuration, as in the run record.
    pub config: serde_json::Value,
    /// The resolved plan.
    pub plan: &'a Plan,
    /// `[executor]`.
    pub settings: &'a ExecutorSettings,
    /// Follow the jobs to the end.
    pub wait: bool,
    /// Print JSON on stdout.
    pub json: bool,
}

/// `dml run --executor slurm`: submits every stage that must run, then returns
/// (printing the job ids) or, with `--wait`, follows them and reports.
pub fn submit(store: &ArtifactStore, s: &Submission<'_>) -> Result<()> {
    let request = SubmitRequest {
        name: s.name,
        config: s.config.clone(),
        plan: s.plan,
        resources: resources(s.settings),
        exe: std::env::current_exe().context("locating the dml binary")?,
        provenance: provenance(),
    };
    let mut sub = slurm::submit(store, &request, &mut |event| match event {
        SubmitEvent::Cached(node) => eprintln!("  cached  {:<32} {}", node.id, &node.key[..12]),
        SubmitEvent::WaitingForLock => {
            eprintln!("  waiting: another dml run is submitting to Slurm")
        }
        SubmitEvent::BuiltMeanwhile(node) => {
            eprintln!("  cached  {:<32} built by another run meanwhile", node.id)
        }
        SubmitEvent::Claimed(node, c) => eprintln!(
            "  claimed {:<32} job {} (submitted by run `{}`); not submitted again",
            node.id, c.job_id, c.run
        ),
        SubmitEvent::Submitted(node, job) => {
            eprintln!("  submit  {:<32} job {job}  ({})", node.id, node.reason)
        }
    })?;
    if let Some(e) = sub.failure.take() {
        return Err(anyhow::Error::new(e).context(format!(
            "{} jobs were submitted before the failure (record: {}); `dml cancel --name {}` cancels them, and a rerun submits only what is missing",
            sub.submitted,
            sub.record_path.display(),
            s.name
        )));
    }
    if s.wait {
        return follow(store, s, &mut sub);
    }
    if s.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&nodes_json(&sub.record))?
        );
    } else {
        for (node, job) in s.plan.nodes.iter().zip(&sub.jobs) {
            if let Some(job) = job {
                println!("{job}\t{}", node.id);
            }
        }
    }
    eprintln!(
        "{} stages: {} submitted as Slurm jobs, {} already queued by another run, {} cached (record: {})",
        s.plan.nodes.len(),
        sub.submitted,
        sub.claimed,
        sub.cached,
        sub.record_path.display()
    );
    if sub.submitted + sub.claimed > 0 {
        eprintln!(
            "follow them with `dml status --name {0}`; cancel them with `dml cancel --name {0}`",
            s.name
        );
    }
    Ok(())
}

/// What each job asks Slurm for, from `[executor]`.
fn resources(settings: &ExecutorSettings) -> JobResources {
    JobResources {
        partition: settings.partition.clone(),
        gpus_per_job: settings.gpus_per_job,
        cpus_per_task: settings.cpus_per_task,
        mem: settings.mem.clone(),
        time: settings.time.clone(),
        extra_args: settings.extra_args.clone(),
    }
}

fn nodes_json(record: &RunRecord) -> serde_json::Value {
    serde_json::Value::Array(
        record
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "stage": n.stage, "id": n.id, "key": n.key, "status": n.status,
                    "reason": n.explanation(), "seconds": n.seconds, "job_id": n.job_id,
                })
            })
            .collect(),
    )
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--wait`: follows the jobs to their end, printing what changes, then reports like
/// a local run.
fn follow(store: &ArtifactStore, s: &Submission<'_>, sub: &mut Submitted) -> Result<()> {
    let followed = slurm::follow(store, sub, LOG_TAIL_LINES, &mut |event| match event {
        FollowEvent::Done { node, job, seconds } => eprintln!(
            "  done    {:<32} job {}  {seconds:.1}s",
            node.id,
            job.unwrap_or("?")
        ),
        FollowEvent::Ended {
            node,
            job,
            state,
            log_tail,
        } => {
            let word = match state {
                StageState::Failed(_) => "FAILED",
                _ => "CANCEL",
            };
            let tail = log_tail
                .map(|t| format!("\n{}", indent(t)))
                .unwrap_or_default();
            eprintln!(
                "  {word}  {:<32} job {}: {}{tail}",
                node.id,
                job.unwrap_or("?"),
                state.detail()
            );
        }
        FollowEvent::Moved { node, job, state } => eprintln!(
            "  {:<7} {:<32} job {}",
            state.word(),
            node.id,
            job.unwrap_or("?")
        ),
    })?;
    let record = &sub.record;
    if record.run_status() == RunStatus::Ok {
        crate::links::update(store, record)?;
    }
    if s.json {
        println!("{}", serde_json::to_string_pretty(&nodes_json(record))?);
    }
    if let Some(what) = followed.what_failed() {
        bail!(
            "of the run's jobs, {what}; artifacts finished are kept in {}, and running the same command again submits only what is missing (an interrupted train stage resumes from its checkpoint); `dml status --name {}` shows each stage",
            store.root().display(),
            s.name
        );
    }
    if !s.json {
        print_reports(store, s.plan);
    }
    let ran = record
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Ran)
        .count();
    eprintln!(
        "{} stages: {ran} ran as Slurm jobs, {} cached, {:.1}s (record: {})",
        record.nodes.len(),
        record.nodes.len() - ran,
        record.seconds,
        sub.record_path.display()
    );
    Ok(())
}

/// The record `dml status` / `dml cancel` look at: the newest of `name`, else the newest.
fn find_record(store: &ArtifactStore, name: Option<&str>) -> Result<RunRecord> {
    let root = store.root().display();
    slurm::find_run(store, name)?.with_context(|| match name {
        Some(name) => format!("no run named `{name}` in {root}; `ls {root}/runs` lists the runs"),
        None => format!("no run in {root} yet"),
    })
}

/// `dml status [--name RUN]`: each stage of the run: cached, queued, running,
/// failed or cancelled (with the tail of its job's log), done.
pub fn status(store_dir: &Path, name: Option<&str>, json: bool) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let record = find_record(&store, name)?;
    let rows = slurm::stage_rows(&store, &record, LOG_TAIL_LINES)?;
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.node.id, "stage": r.node.stage, "key": r.node.key,
                    "status": r.state.word(), "job_id": r.job, "detail": r.state.detail(),
                    "log_tail": r.log_tail,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("run `{}` (started {})", record.name, record.started);
    let width = rows.iter().map(|r| r.node.id.len()).max().unwrap_or(0);
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.state.word()).or_default() += 1;
        let job = r
            .job
            .as_deref()
            .map(|j| format!("job {j}"))
            .unwrap_or_default();
        let line = format!(
            "  {:<9} {:<width$}  {:<10} {}",
            r.state.word(),
            r.node.id,
            job,
            r.state.detail()
        );
        println!("{}", line.trim_end());
        if let Some(t) = &r.log_tail {
            println!("{}", indent(t));
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("{}", summary.join(", "));
    Ok(())
}

/// `dml cancel [--name RUN]`: cancels the run's queued and running jobs and releases their claims.
pub fn cancel(store_dir: &Path, name: Option<&str>) -> Result<()> {
    let store = ArtifactStore::open(store_dir)?;
    let record = find_record(&store, name)?;
    let cancelled = slurm::cancel_run(&store, &record, |node, job| {
        println!("cancelled job {job}\t{}", node.id)
    })?;
    if cancelled == 0 {
        println!("run `{}` has no queued or running job", record.name);
    }
    Ok(())
}
