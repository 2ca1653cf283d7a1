//! The Slurm executor: one `sbatch` job per stage that must run, chained with
//! `--dependency=afterok`, claims in the shared store so that no stage is
//! submitted twice, and `dml status` / `dml cancel` over a run's jobs.
//!
//! Slurm schedules; dml only submits, records and explains. Each job runs
//! `dml exec-stage` on one node of the DAG (see `exec_stage.rs`), reading its
//! inputs from the store and committing its artifact there.
use crate::run_shared::{print_reports, provenance};
use anyhow::{bail, Context, Result};
use dml_artifacts::{ArtifactStore, KeyLock, Manifest};
use dml_pipeline::{file_safe, NodeStatus, Plan, RecordNode, RunRecord, RunStatus, Status};
use dml_stages::config::ExecutorSettings;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where claims live: `claims/<stage>-<key>.json`, one per stage submitted and not yet built.
pub const CLAIMS_DIR: &str = "claims";
/// Requests (`slurm/requests/`) and job logs (`slurm/logs/`).
pub const SLURM_DIR: &str = "slurm";
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

/// What a job needs to rebuild its node: the run's resolved configuration.
/// Written once per submission under `slurm/requests/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// The run name.
    pub name: String,
    /// The configuration, exactly as in the run record.
    pub config: serde_json::Value,
    /// When it was submitted (RFC 3339).
    pub submitted: String,
}

/// `claims/<stage>-<key>.json`: the job that builds this key. A claim whose job
/// Slurm no longer runs or queues is dead, and the stage is submitted again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Stage name.
    pub stage: String,
    /// Key.
    pub key: String,
    /// Node id in the run that submitted it.
    pub node: String,
    /// The Slurm job id.
    pub job_id: String,
    /// The run that submitted it.
    pub run: String,
    /// When (RFC 3339).
    pub submitted: String,
}

/// Where the stages' files go, under the store root.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(store: &ArtifactStore) -> Result<Self> {
        // Absolute, not canonical: the nodes mount the store under the path the user gave.
        let root = std::path::absolute(store.root())
            .with_context(|| format!("resolving the store path {}", store.root().display()))?;
        Ok(Layout { root })
    }
    fn claims(&self) -> PathBuf {
        self.root.join(CLAIMS_DIR)
    }
    fn claim(&self, stage: &str, key: &str) -> PathBuf {
        self.claims().join(format!("{stage}-{key}.json"))
    }
    fn requests(&self) -> PathBuf {
        self.root.join(SLURM_DIR).join("requests")
    }
    fn logs(&self) -> PathBuf {
        self.root.join(SLURM_DIR).join("logs")
    }
    /// The log of a job (`%j` for sbatch's pattern).
    fn log(&self, stage: &str, key: &str, job: &str) -> PathBuf {
        self.logs().join(format!("{stage}-{key}-{job}.log"))
    }
}

/// Reads a claim; a missing or unreadable one is no claim.
fn read_claim(path: &Path) -> Option<Claim> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `value` as JSON to `path` through a temporary file in the same folder.
fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let text = serde_json::to_string_pretty(value).context("serialising JSON")?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Removes the claim of `stage`/`key` if it names `job` (a job releasing its own claim).
pub fn release_claim(store: &ArtifactStore, stage: &str, key: &str, job: &str) -> Result<()> {
    let layout = Layout::new(store)?;
    let path = layout.claim(stage, key);
    if read_claim(&path).is_some_and(|c| c.job_id == job) {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Slurm's commands.

/// A job as `squeue` (or `sacct`) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`…
    pub state: String,
    /// Slurm's reason (`Dependency`, `DependencyNeverSatisfied`, `Resources`…).
    pub reason: String,
}

impl JobState {
    /// Queued or running (a claim held by such a job is alive).
    pub fn live(&self) -> bool {
        if self.reason == "DependencyNeverSatisfied" {
            return false;
        }
        matches!(
            self.state.as_str(),
            "PENDING"
                | "CONFIGURING"
                | "RUNNING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "RESV_DEL_HOLD"
                | "STOPPED"
        )
    }
}

/// Parses `squeue -h -o "%i|%T|%r"` lines.
fn parse_squeue(text: &str) -> BTreeMap<String, JobState> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '|');
            let id = parts.next()?.trim();
            let state = parts.next()?.trim();
            let reason = parts.next().unwrap_or("").trim();
            (!id.is_empty()).then(|| {
                (
                    id.to_string(),
                    JobState {
                        state: state.to_string(),
                        reason: reason.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// Parses `sacct -n -X -P -o JobID,State` lines (`CANCELLED by 0` → `CANCELLED`).
fn parse_sacct(text: &str) -> BTreeMap<String, JobState> {
    text.lines()
        .filter_map(|line| {
            let (id, state) = line.trim().split_once('|')?;
            let state = state.split_whitespace().next()?;
            Some((
                id.trim().to_string(),
                JobState {
                    state: state.to_string(),
                    reason: String::new(),
                },
            ))
        })
        .collect()
}

fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.stdin(Stdio::null());
    c
}

fn missing_tool(name: &str, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot run `{name}` ({e}): the Slurm executor needs Slurm's client commands (sbatch, squeue, scancel) on PATH and SLURM_CONF (or /etc/slurm/slurm.conf) naming the cluster"
    )
}

/// The state of each job Slurm still knows (`squeue`, then `sacct` for jobs
/// squeue has forgotten, where accounting exists). Unknown jobs are left out.
pub fn job_states(ids: &[String]) -> Result<BTreeMap<String, JobState>> {
    let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let list = ids.join(",");
    let out = tool("squeue")
        .args(["-h", "--states=all", "-o", "%i|%T|%r", "-j", &list])
        .output()
        .map_err(|e| missing_tool("squeue", e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut states = if out.status.success() {
        parse_squeue(&String::from_utf8_lossy(&out.stdout))
    } else if stderr.contains("Invalid job id") {
        // Every job of the list has left the controller's memory.
        BTreeMap::new()
    } else {
        bail!("squeue -j {list} failed: {}", stderr.trim());
    };
    let forgotten: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !states.contains_key(*id))
        .collect();
    if !forgotten.is_empty() {
        // Accounting remembers jobs longer; without it (`accounting_storage/none`)
        // sacct fails, and those jobs stay unknown.
        if let Ok(out) = tool("sacct")
            .args([
                "-n",
                "-X",
                "-P",
                "-o",
                "JobID,State",
                "-j",
                &forgotten.join(","),
            ])
            .output()
        {
            if out.status.success() {
                for (id, st) in parse_sacct(&String::from_utf8_lossy(&out.stdout)) {
                    states.entry(id).or_insert(st);
                }
            }
        }
    }
    Ok(states)
}

/// Submits `script` (read by sbatch from stdin) and returns the job id.
fn sbatch(args: &[String], script: &str) -> Result<String> {
    let mut child = tool("sbatch")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| missing_tool("sbatch", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("writing the job script to sbatch")?;
    }
    let out = child.wait_with_output().context("waiting for sbatch")?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_parsable(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("sbatch printed no job id (args: {})", args.join(" ")))
}

/// `sbatch --parsable` prints `jobid` or `jobid;cluster`.
fn parse_parsable(stdout: &str) -> Option<String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    let id = line.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

fn scancel(ids: &[String]) -> Result<()> {
    let out = tool("scancel")
        .args(ids)
        .output()
        .map_err(|e| missing_tool("scancel", e))?;
    if !out.status.success() {
        bail!(
            "scancel {} failed: {}",
            ids.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Quotes for `/bin/sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sbatch` arguments of one stage's job.
fn sbatch_args(
    settings: &ExecutorSettings,
    job_name: &str,
    log_pattern: &Path,
    workdir: &Path,
    uses_device: bool,
    deps: &[String],
) -> Vec<String> {
    let mut a = vec![
        "--parsable".to_string(),
        format!("--job-name={job_name}"),
        format!("--output={}", log_pattern.display()),
        format!("--chdir={}", workdir.display()),
        // A job whose input failed can never run: Slurm cancels it.
        "--kill-on-invalid-dep=yes".to_string(),
    ];
    if !deps.is_empty() {
        a.push(format!("--dependency=afterok:{}", deps.join(":")));
    }
    if !settings.partition.is_empty() {
        a.push(format!("--partition={}", settings.partition));
    }
    if uses_device && settings.gpus_per_job > 0 {
        a.push(format!("--gres=gpu:{}", settings.gpus_per_job));
    }
    if settings.cpus_per_task > 0 {
        a.push(format!("--cpus-per-task={}", settings.cpus_per_task));
    }
    if !settings.mem.is_empty() {
        a.push(format!("--mem={}", settings.mem));
    }
    if !settings.time.is_empty() {
        a.push(format!("--time={}", settings.time));
    }
    a.extend(settings.extra_args.iter().cloned());
    a
}

/// The batch script: run this very binary on one node of the DAG.
fn job_script(exe: &Path, root: &Path, request: &Path, node: &str, key: &str) -> String {
    format!(
        "#!/bin/sh\n# dml: build `{}` ({}) from the shared store\nexec {} -v --store {} exec-stage --request {} --node {} --key {}\n",
        node.replace('\n', " "),
        &key[..key.len().min(12)],
        sh_quote(&exe.display().to_string()),
        sh_quote(&root.display().to_string()),
        sh_quote(&request.display().to_string()),
        sh_quote(node),
        sh_quote(key),
    )
}

// ---------------------------------------------------------------------------
// Submitting.

/// `dml run --executor slurm`: submits every stage that must run, then returns
/// (printing the job ids) or, with `--wait`, follows them and reports.
pub fn submit(store: &ArtifactStore, s: &Submission<'_>) -> Result<()> {
    let layout = Layout::new(store)?;
    let plan = s.plan;
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let to_run: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| plan.nodes[i].status == Status::Run)
        .collect();
    for node in plan.nodes.iter().filter(|n| n.status == Status::Cached) {
        eprintln!("  cached  {:<32} {}", node.id, &node.key[..12]);
    }
    let mut record = RunRecord::from_plan(s.name, started_at.clone(), s.config.clone(), plan);
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
        for dir in [layout.claims(), layout.requests(), layout.logs()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let request_path = layout.requests().join(format!(
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
        let _lock = KeyLock::acquire(&layout.claims().join(".lock"), || {
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
                s.settings,
                &format!("dml:{}", node.id),
                &layout.log(&node.stage, &node.key, "%j"),
                &layout.root,
                node.uses_device,
                &deps,
            );
            let script = job_script(&exe, &layout.root, &request_path, &node.id, &node.key);
            let job = match sbatch(&args, &script) {
                Ok(job) => job,
                Err(e) => {
                    failure = Some(e.context(format!("submitting `{}`", node.id)));
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

fn nodes_json(record: &RunRecord) -> serde_json::Value {
    serde_json::Value::Array(
        record
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "stage": n.stage, "id": n.id, "key": n.key, "status": n.status,
                    "reason": n.reason, "seconds": n.seconds, "job_id": n.job_id,
                })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Observing: `--wait`, `dml status`.

/// Where one stage stands.
#[derive(Debug, Clone, PartialEq)]
enum StageState {
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
    fn word(&self) -> &'static str {
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
    fn detail(&self) -> String {
        match self {
            StageState::Queued(r) if !r.is_empty() && r != "None" => format!("waiting: {r}"),
            StageState::Failed(w) | StageState::Cancelled(w) => w.clone(),
            _ => String::new(),
        }
    }
    fn ended_badly(&self) -> bool {
        matches!(self, StageState::Failed(_) | StageState::Cancelled(_))
    }
}

/// The job to look at for a node: the claim's (the newest submission of that
/// key, possibly by a later run), else the record's.
fn effective_job(layout: &Layout, node: &RecordNode) -> Option<String> {
    read_claim(&layout.claim(&node.stage, &node.key))
        .map(|c| c.job_id)
        .or_else(|| node.job_id.clone())
}

fn built(store: &ArtifactStore, stage: &str, key: &str) -> bool {
    store.object_dir(stage, key).join("manifest.json").is_file()
}

/// Reads Slurm's view first, then the store: an artifact is committed before
/// its job ends, so a job seen ended with no artifact really failed.
fn observe(
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
    let Some(job) = job else {
        return StageState::NotRun;
    };
    match states.get(job) {
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

fn log_tail(layout: &Layout, node: &RecordNode, job: &str, lines: usize) -> Option<String> {
    let path = layout.log(&node.stage, &node.key, job);
    let text = std::fs::read_to_string(&path).ok()?;
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    Some(format!("{} (last lines):\n{tail}", path.display()))
}

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
            Err(e) => return Err(e.context("following the jobs")),
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
    write_json_atomic(path, record)
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
    let layout = Layout::new(&store)?;
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
    let layout = Layout::new(&store)?;
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
    use super::*;

    #[test]
    fn squeue_and_sacct_lines_are_parsed() {
        let st = parse_squeue(
            "3|CANCELLED|None\n4|PENDING|DependencyNeverSatisfied\n5|RUNNING|None\n\n",
        );
        assert_eq!(st.len(), 3);
        assert!(!st["3"].live());
        assert!(!st["4"].live(), "a job whose input failed is not alive");
        assert!(st["5"].live());
        let st = parse_sacct("7|CANCELLED by 0\n8|COMPLETED\n");
        assert_eq!(st["7"].state, "CANCELLED");
        assert_eq!(st["8"].state, "COMPLETED");
    }

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

    #[test]
    fn parsable_output_gives_the_job_id() {
        assert_eq!(parse_parsable("123\n").as_deref(), Some("123"));
        assert_eq!(parse_parsable("123;cluster\n").as_deref(), Some("123"));
        assert_eq!(parse_parsable("Submitted batch job 1\n"), None);
        assert_eq!(parse_parsable(""), None);
    }

    #[test]
    fn sbatch_arguments_follow_the_settings() {
        let mut s = ExecutorSettings::default();
        let log = Path::new("/s/slurm/logs/train-k-%j.log");
        let a = sbatch_args(&s, "dml:train", log, Path::new("/s"), false, &[]);
        assert!(a.contains(&"--kill-on-invalid-dep=yes".to_string()));
        assert!(!a.iter().any(|x| x.starts_with("--dependency")));
        assert!(!a.iter().any(|x| x.starts_with("--gres")), "{a:?}");
        s.partition = "gpu".into();
        s.gpus_per_job = 2;
        s.cpus_per_task = 8;
        s.mem = "32G".into();
        s.time = "1-00:00:00".into();
        s.extra_args = vec!["--account=lab".into()];
        let a = sbatch_args(
            &s,
            "dml:train",
            log,
            Path::new("/s"),
            true,
            &["4".into(), "5".into()],
        );
        for want in [
            "--dependency=afterok:4:5",
            "--partition=gpu",
            "--gres=gpu:2",
            "--cpus-per-task=8",
            "--mem=32G",
            "--time=1-00:00:00",
            "--account=lab",
            "--output=/s/slurm/logs/train-k-%j.log",
        ] {
            assert!(a.contains(&want.to_string()), "{want} not in {a:?}");
        }
        s.gpus_per_job = 0;
        let a = sbatch_args(&s, "dml:train", log, Path::new("/s"), true, &[]);
        assert!(!a.iter().any(|x| x.starts_with("--gres")), "{a:?}");
    }

    #[test]
    fn the_job_script_quotes_every_argument() {
        let s = job_script(
            Path::new("/opt/it's/dml"),
            Path::new("/shared/store"),
            Path::new("/shared/store/slurm/requests/r.json"),
            "train[train.loss.name=npairs,plan.k=2]",
            "abcdef0123456789",
        );
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(
            s.contains(r"exec '/opt/it'\''s/dml' -v --store '/shared/store' exec-stage"),
            "{s}"
        );
        assert!(
            s.contains("--node 'train[train.loss.name=npairs,plan.k=2]' --key 'abcdef0123456789'"),
            "{s}"
        );
    }
}
