//! `dml run --executor slurm`, `dml status` and `dml cancel`: one `sbatch` job per stage
//! that must run, chained with `--dependency=afterok`, followed with `--wait`, and a
//! run's jobs shown or cancelled. The executor's plumbing (Slurm's commands, job
//! scripts, claims, where a stage stands) is `dml_pipeline::slurm`; this file drives it
//! and prints what it finds. Each job runs `dml exec-stage` (see `exec_stage.rs`).
use crate::run_shared::{print_reports, provenance};
use anyhow::{bail, Context, Result};
use dml_artifacts::{ArtifactStore, Layout, Manifest};
use dml_pipeline::slurm::{
    absolute_layout, built, effective_job, job_script, job_states, lock_claims, log_tail, observe,
    read_claim, release_claim, sbatch, sbatch_args, scancel, write_json_atomic, Claim,
    JobResources, JobState, StageRequest, StageState,
};
use dml_pipeline::{file_safe, NodeStatus, Plan, RecordNode, RunRecord, RunStatus, Status};
use dml_stages::config::ExecutorSettings;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Lines of a failed job's log shown by `dml status` and `dml run --wait`.
const LOG_TAIL_LINES: usize = 12;
/// The longest pause between two polls of `squeue` and the store with `--wait`.
const MAX_POLL: Duration = Duration::from_secs(5);

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

// ---------------------------------------------------------------------------
// Submitting.

/// `dml run --executor slurm`: submits every stage that must run, then returns
/// (printing the job ids) or, with `--wait`, follows them and reports.
pub fn submit(store: &ArtifactStore, s: &Submission<'_>) -> Result<()> {
    let layout = absolute_layout(store)?;
    let plan = s.plan;
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let to_run: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| plan.nodes[i].status == Status::Run)
        .collect();
    for node in plan.nodes.iter().filter(|n| n.status == Status::Cached) {
        eprintln!("  cached  {:<32} {}", node.id, &node.key[..12]);
    }
    let mut record = plan.record(s.name, started_at.clone(), s.config.clone());
    record.provenance = provenance();
    record
        .provenance
        .insert("executor".into(), serde_json::json!("slurm"));
    let mut job_of: Vec<Option<String>> = vec![None; plan.nodes.len()];
    let mut claimed_by_others = 0usize;
    let mut built_meanwhile: Vec<usize> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    if !to_run.is_empty() {
        let exe = std::env::current_exe().context("locating the dml binary")?;
        for dir in [
            layout.claims(),
            layout.slurm_requests(),
            layout.slurm_logs(),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let request_path = layout.slurm_requests().join(format!(
            "{stamp}-{}-{}.json",
            file_safe(s.name),
            std::process::id()
        ));
        write_json_atomic(
            &request_path,
            &StageRequest {
                name: s.name.to_string(),
                config: s.config.clone(),
                submitted: started_at.clone(),
            },
        )?;
        record.provenance.insert(
            "slurm_request".into(),
            serde_json::json!(request_path.display().to_string()),
        );
        // One submitter at a time: two runs never both submit the same key.
        let _lock = lock_claims(&layout, || {
            eprintln!("  waiting: another dml run is submitting to Slurm");
        })
        .context("locking the claims folder")?;
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
                // Another run built it since the plan was resolved.
                eprintln!("  cached  {:<32} built by another run meanwhile", node.id);
                built_meanwhile.push(i);
                continue;
            }
            if let Some(c) = claims.get(&i) {
                if states.get(&c.job_id).is_some_and(JobState::live) {
                    eprintln!(
                        "  claimed {:<32} job {} (submitted by run `{}`); not submitted again",
                        node.id, c.job_id, c.run
                    );
                    job_of[i] = Some(c.job_id.clone());
                    claimed_by_others += 1;
                    continue;
                }
            }
            let mut deps: Vec<String> = node
                .input_nodes
                .iter()
                .filter_map(|(_, d)| job_of[*d].clone())
                .collect();
            deps.sort();
            deps.dedup();
            let args = sbatch_args(
                &resources(s.settings),
                &format!("dml:{}", node.id),
                &layout.slurm_log(&node.stage, &node.key, "%j"),
                layout.root(),
                node.uses_device,
                &deps,
            );
            let script = job_script(&exe, layout.root(), &request_path, &node.id, &node.key);
            let job = match sbatch(&args, &script) {
                Ok(job) => job,
                Err(e) => {
                    failure =
                        Some(anyhow::Error::new(e).context(format!("submitting `{}`", node.id)));
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
                    run: s.name.to_string(),
                    submitted: started_at.clone(),
                },
            )?;
            eprintln!("  submit  {:<32} job {job}  ({})", node.id, node.reason);
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
        Some(e) => record.finish(RunStatus::Failed, format!("submission failed: {e:#}")),
        None => record.finish(RunStatus::Submitted, "submitted"),
    }
    let record_path = record.save(store)?;
    let submitted = job_of.iter().flatten().count() - claimed_by_others;
    if let Some(e) = failure {
        return Err(e.context(format!(
            "{submitted} jobs were submitted before the failure (record: {}); `dml cancel --name {}` cancels them, and a rerun submits only what is missing",
            record_path.display(),
            s.name
        )));
    }
    if s.json && !s.wait {
        println!("{}", serde_json::to_string_pretty(&nodes_json(&record))?);
    } else if !s.wait {
        for (node, job) in plan.nodes.iter().zip(&job_of) {
            if let Some(job) = job {
                println!("{job}\t{}", node.id);
            }
        }
    }
    if !s.wait {
        eprintln!(
            "{} stages: {submitted} submitted as Slurm jobs, {claimed_by_others} already queued by another run, {} cached (record: {})",
            plan.nodes.len(),
            plan.nodes.len() - to_run.len() + built_meanwhile.len(),
            record_path.display()
        );
        if submitted + claimed_by_others > 0 {
            eprintln!(
                "follow them with `dml status --name {0}`; cancel them with `dml cancel --name {0}`",
                s.name
            );
        }
        return Ok(());
    }
    follow(store, &layout, s, &mut record, &record_path, started)
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

// ---------------------------------------------------------------------------
// Observing: `--wait`, `dml status`.

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--wait`: polls Slurm and the store (every 0.5 s, backing off to 5 s) until
/// every job has built its stage or ended, then finishes the run record and
/// reports like a local run.
fn follow(
    store: &ArtifactStore,
    layout: &Layout,
    s: &Submission<'_>,
    record: &mut RunRecord,
    record_path: &Path,
    started: Instant,
) -> Result<()> {
    let mut pending: Vec<usize> = (0..record.nodes.len())
        .filter(|&i| record.nodes[i].job_id.is_some())
        .collect();
    // Submission already said every job is queued: only changes are shown.
    let mut shown: Vec<Option<&'static str>> = vec![Some("queued"); record.nodes.len()];
    let mut failed: Vec<(usize, StageState)> = Vec::new();
    let mut pause = Duration::from_millis(500);
    let mut squeue_errors = 0;
    while !pending.is_empty() {
        let jobs: Vec<Option<String>> = record
            .nodes
            .iter()
            .map(|n| effective_job(layout, n))
            .collect();
        let ids: Vec<String> = pending.iter().filter_map(|&i| jobs[i].clone()).collect();
        let states = match job_states(&ids) {
            Ok(st) => {
                squeue_errors = 0;
                st
            }
            Err(e) if squeue_errors < 10 => {
                squeue_errors += 1;
                tracing::warn!("{e:#}; trying again");
                std::thread::sleep(MAX_POLL);
                continue;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("following the jobs")),
        };
        let mut still = Vec::new();
        for i in pending {
            let node = &record.nodes[i];
            let job = jobs[i].as_deref();
            let state = observe(store, node, job, &states);
            let job_label = job.unwrap_or("?");
            match &state {
                StageState::Done | StageState::Cached => {
                    let seconds = Manifest::read(
                        &store
                            .object_dir(&node.stage, &node.key)
                            .join("manifest.json"),
                    )
                    .ok()
                    .and_then(|m| m.provenance.get("seconds").and_then(|v| v.as_f64()))
                    .unwrap_or(0.0);
                    eprintln!("  done    {:<32} job {job_label}  {seconds:.1}s", node.id);
                    record.nodes[i].status = NodeStatus::Ran;
                    record.nodes[i].seconds = seconds;
                }
                st if st.ended_badly() => {
                    let tail = job
                        .and_then(|j| log_tail(layout, node, j, LOG_TAIL_LINES))
                        .map(|t| format!("\n{}", indent(&t)))
                        .unwrap_or_default();
                    let word = if matches!(st, StageState::Failed(_)) {
                        "FAILED"
                    } else {
                        "CANCEL"
                    };
                    eprintln!(
                        "  {word}  {:<32} job {job_label}: {}{tail}",
                        node.id,
                        st.detail()
                    );
                    record.nodes[i].status = if matches!(st, StageState::Cancelled(_)) {
                        NodeStatus::Cancelled
                    } else {
                        NodeStatus::Failed
                    };
                    failed.push((i, st.clone()));
                }
                st => {
                    if shown[i] != Some(st.word()) {
                        shown[i] = Some(st.word());
                        eprintln!("  {:<7} {:<32} job {job_label}", st.word(), node.id);
                    }
                    still.push(i);
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(pause);
            pause = (pause * 3 / 2).min(MAX_POLL);
        }
    }
    record.seconds = started.elapsed().as_secs_f64();
    if failed.is_empty() {
        record.finish(RunStatus::Ok, "ok");
    } else {
        let names: Vec<String> = failed
            .iter()
            .map(|(i, why)| format!("{}: {}", record.nodes[*i].id, why.detail()))
            .collect();
        record.finish(RunStatus::Failed, format!("failed: {}", names.join("; ")));
    }
    rewrite_record(record_path, record)?;
    if record.run_status() == RunStatus::Ok {
        crate::links::update(store, record)?;
    }
    if s.json {
        println!("{}", serde_json::to_string_pretty(&nodes_json(record))?);
    }
    if !failed.is_empty() {
        let (broken, cancelled): (Vec<_>, Vec<_>) = failed
            .iter()
            .partition(|(_, st)| matches!(st, StageState::Failed(_)));
        let names = |v: &[&(usize, StageState)]| {
            v.iter()
                .map(|(i, _)| format!("`{}`", record.nodes[*i].id))
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
        bail!(
            "of the run's jobs, {}; artifacts finished are kept in {}, and running the same command again submits only what is missing (an interrupted train stage resumes from its checkpoint); `dml status --name {}` shows each stage",
            what.join(" and "),
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
        record_path.display()
    );
    Ok(())
}

/// Rewrites a record in place (the submission's record, finished by `--wait`).
fn rewrite_record(path: &Path, record: &RunRecord) -> Result<()> {
    Ok(write_json_atomic(path, record)?)
}

/// The record `dml status` / `dml cancel` look at: the newest of `name`, else the newest.
fn find_record(store: &ArtifactStore, name: Option<&str>) -> Result<RunRecord> {
    match name {
        Some(name) => RunRecord::latest(store, name)?.with_context(|| {
            format!(
                "no run named `{name}` in {}; `ls {}/runs` lists the runs",
                store.root().display(),
                store.root().display()
            )
        }),
        None => {
            for path in RunRecord::list(store)?.into_iter().rev() {
                if let Ok(r) = RunRecord::load(&path) {
                    return Ok(r);
                }
            }
            bail!("no run in {} yet", store.root().display())
        }
    }
}

/// `dml status [--name RUN]`: each stage of the run: cached, queued, running,
/// failed or cancelled (with the tail of its job's log), done.
pub fn status(store_dir: &Path, name: Option<&str>, json: bool) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let layout = absolute_layout(&store)?;
    let record = find_record(&store, name)?;
    let jobs: Vec<Option<String>> = record
        .nodes
        .iter()
        .map(|n| effective_job(&layout, n))
        .collect();
    let ids: Vec<String> = record
        .nodes
        .iter()
        .zip(&jobs)
        .filter(|(n, _)| !built(&store, &n.stage, &n.key))
        .filter_map(|(_, j)| j.clone())
        .collect();
    let states = job_states(&ids)?;
    let mut rows = Vec::new();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (node, job) in record.nodes.iter().zip(&jobs) {
        let state = observe(&store, node, job.as_deref(), &states);
        let state = match (&state, node.status) {
            // A local run's stage that failed or never started.
            (StageState::NotRun, NodeStatus::Failed) => {
                StageState::Failed("failed in a local run".into())
            }
            _ => state,
        };
        *counts.entry(state.word()).or_default() += 1;
        let tail = match (&state, job) {
            (StageState::Failed(_) | StageState::Cancelled(_), Some(j)) => {
                log_tail(&layout, node, j, LOG_TAIL_LINES)
            }
            _ => None,
        };
        rows.push((node, job.clone(), state, tail));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, job, st, tail)| {
                serde_json::json!({
                    "id": n.id, "stage": n.stage, "key": n.key, "status": st.word(),
                    "job_id": job, "detail": st.detail(), "log_tail": tail,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("run `{}` (started {})", record.name, record.started);
    let width = rows.iter().map(|(n, ..)| n.id.len()).max().unwrap_or(0);
    for (node, job, state, tail) in &rows {
        let job = job
            .as_deref()
            .map(|j| format!("job {j}"))
            .unwrap_or_default();
        let line = format!(
            "  {:<9} {:<width$}  {:<10} {}",
            state.word(),
            node.id,
            job,
            state.detail()
        );
        println!("{}", line.trim_end());
        if let Some(t) = tail {
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
    let layout = absolute_layout(&store)?;
    let record = find_record(&store, name)?;
    let jobs: Vec<(&RecordNode, String)> = record
        .nodes
        .iter()
        .filter(|n| !built(&store, &n.stage, &n.key))
        .filter_map(|n| effective_job(&layout, n).map(|j| (n, j)))
        .collect();
    let ids: Vec<String> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let states = job_states(&ids)?;
    let live: Vec<&(&RecordNode, String)> = jobs
        .iter()
        .filter(|(_, j)| states.get(j).is_some_and(JobState::live))
        .collect();
    if live.is_empty() {
        println!("run `{}` has no queued or running job", record.name);
        return Ok(());
    }
    let mut ids: Vec<String> = live.iter().map(|(_, j)| j.clone()).collect();
    ids.sort();
    ids.dedup();
    scancel(&ids)?;
    for (node, job) in &live {
        release_claim(&store, &node.stage, &node.key, job)?;
        println!("cancelled job {job}\t{}", node.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_executor_table_is_typed_and_checked() {
        let l = crate::config::load(
            None,
            None,
            &[
                r#"executor.kind="slurm""#.into(),
                "executor.gpus_per_job=2".into(),
                r#"executor.extra_args=["--account=lab"]"#.into(),
            ],
        )
        .unwrap();
        let e = &l.experiments[0].config.executor;
        assert_eq!(e.kind, dml_stages::config::ExecutorKind::Slurm);
        assert_eq!(e.gpus_per_job, 2);
        assert_eq!(e.extra_args, ["--account=lab"]);
        let err = crate::config::load(None, None, &["executor.partiton=gpu".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `executor.partition`?"), "{err}");
        let err = format!(
            "{:#}",
            crate::config::load(None, None, &[r#"executor.kind="pbs""#.into()]).unwrap_err()
        );
        assert!(err.contains("local") && err.contains("slurm"), "{err}");
    }
}
