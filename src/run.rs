//! `dml run`: its flags resolved once into a [`Request`], then plan → dry-run, submit to
//! Slurm, or execute here → record → print.
use crate::config;
use crate::interrupt;
use crate::out;
use crate::run_shared;
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{
    execute, Event, ExecOptions, ExecSummary, NodeStatus, Plan, RunRecord, RunStatus, Status,
    UploadOutcome,
};
use dml_stages::config::{ExecutorKind, ExecutorSettings};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `dml run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A TOML config (one table per stage). Without one, the synthetic preset.
    pub config: Option<PathBuf>,
    /// Start from a built-in preset (`dml presets` lists them).
    #[arg(long)]
    pub preset: Option<String>,
    /// Override a setting, e.g. `--set train.optimizer.learning_rate=0.0001` or
    /// `--set train.loss=npairs --set plan.k=2` (repeatable; a value is read as the
    /// setting's type: `retrieve.ks=1,5` is a list).
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Sweep a setting over values, e.g. `--sweep train.loss.name=npairs,angular`
    /// (repeatable: each is one axis of the grid; `[sweep]` in the TOML does the same).
    #[arg(long = "sweep", value_name = "STAGE.KEY=V1,V2,…")]
    pub sweeps: Vec<String>,
    /// Stop after this stage (and what it needs).
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Print the resolved configuration (every setting, defaults filled in) as TOML, and
    /// run nothing.
    #[arg(long)]
    pub show_config: bool,
    /// Only say what would run and why.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan (with --dry-run, an array of nodes) or the outcome as JSON: an object
    /// with the record, `nodes` and `points` (each point's artifact directories and metrics).
    #[arg(long)]
    pub json: bool,
    /// Stages to run at once (GPU stages never share the device).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Re-hash every cached artifact's files instead of trusting size + mtime.
    #[arg(long)]
    pub verify: bool,
    /// Leave out unreadable or truncated images instead of failing (recorded in the manifest).
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Rebuild exactly the run a record describes (reusing the cache).
    #[arg(long, value_name = "RECORD.json", conflicts_with_all = ["config", "preset", "sets", "sweeps"])]
    pub from_record: Option<PathBuf>,
    /// Where the stages run: in this process, or one Slurm job each (default: `[executor] kind`).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// With `--executor slurm`: follow the jobs to the end and report like a local run.
    #[arg(long)]
    pub wait: bool,
}

/// `--executor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorArg {
    /// In this process (`--jobs` at once).
    Local,
    /// One `sbatch` job per stage; the store must be on storage the nodes share.
    Slurm,
}

/// The stages a run can stop after (`--until`), in DAG order.
const STAGES: [&str; 9] = [
    "synth", "index", "plan", "decode", "train", "embed", "retrieve", "cluster", "report",
];

/// What `dml run` was asked to do: every flag resolved and checked once, before the
/// store is opened or anything is planned.
struct Request {
    loaded: config::Loaded,
    /// The run's name (its first experiment's).
    name: String,
    /// The stage `--until` stops after (one of [`STAGES`]).
    until: Option<&'static str>,
    /// `--verify`: re-hash every cached artifact.
    verify: bool,
    /// `--json`.
    json: bool,
    mode: Mode,
}

/// How the planned stages run.
enum Mode {
    /// `--show-config`: print the resolved configuration; plan nothing.
    ShowConfig,
    /// `--dry-run`: say what would run and why.
    DryRun,
    /// In this process, `jobs` stages at once.
    Local { jobs: usize },
    /// One Slurm job per stage; with `wait`, followed to the end.
    Slurm {
        settings: ExecutorSettings,
        wait: bool,
    },
}

impl Request {
    fn resolve(args: RunArgs) -> Result<Request> {
        let until = match &args.until {
            None => None,
            Some(until) => Some(STAGES.iter().copied().find(|s| s == until).ok_or_else(|| {
                let hint = crate::suggest::nearest(until, STAGES.iter().copied())
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "--until `{until}` is not a stage{hint}; stages: {}",
                    STAGES.join(", ")
                )
            })?),
        };
        let flags = config::FlagSettings {
            skip_bad_images: args.skip_bad_images,
        };
        let loaded = match &args.from_record {
            Some(path) => {
                let record = RunRecord::load(path)?;
                let mut raw = toml::Value::try_from(&record.config).with_context(|| {
                    format!("the config in {} is not a TOML table", path.display())
                })?;
                flags.apply(&mut raw)?;
                config::resolve(raw)?
            }
            None => {
                let mut sets = args.sets.clone();
                for sweep in &args.sweeps {
                    sets.push(config::sweep_arg(sweep)?);
                }
                config::load_with_flags(
                    args.config.as_deref(),
                    args.preset.as_deref(),
                    &sets,
                    flags,
                )?
            }
        };
        let name = loaded
            .experiments
            .first()
            .map(|e| e.config.name.clone())
            .unwrap_or_else(|| "run".into());
        let mode = if args.show_config {
            Mode::ShowConfig
        } else if args.dry_run {
            Mode::DryRun
        } else {
            let settings = loaded
                .experiments
                .first()
                .map(|e| e.config.executor.clone())
                .unwrap_or_default();
            let slurm = match args.executor {
                Some(e) => e == ExecutorArg::Slurm,
                None => settings.kind == ExecutorKind::Slurm,
            };
            if slurm {
                Mode::Slurm {
                    settings,
                    wait: args.wait,
                }
            } else {
                Mode::Local {
                    jobs: usize::from(args.jobs),
                }
            }
        };
        Ok(Request {
            loaded,
            name,
            until,
            verify: args.verify,
            json: args.json,
            mode,
        })
    }
}

/// A request resolved against the store: the graph, its plan, and what to say first.
struct Planned {
    graph: dml_pipeline::Graph,
    plan: Plan,
    /// The settings checks against the index, when the run evaluates.
    check: Option<dml_pipeline::NodeCheck>,
    summaries: Vec<dml_stages::summary::RunSummary>,
    warnings: Vec<String>,
    remote: Option<std::sync::Arc<dml_remote::S3Remote>>,
    /// Holds `dml gc` off until the run has registered the keys it reaches.
    fence: Option<dml_artifacts::GcFence>,
}

impl Planned {
    fn new(
        req: &Request,
        store: &ArtifactStore,
        remote_args: &crate::remote_cmds::RemoteArgs,
    ) -> Result<Planned> {
        let loaded = &req.loaded;
        let experiments = loaded.dag_experiments();
        let dag =
            dml_stages::dag::build_dag(&experiments).map_err(|e| loaded.locate_error(e.into()))?;
        let users = dag.users;
        let mut graph = dag.graph;
        if let Some(until) = req.until {
            let names: Vec<&str> = graph.nodes().iter().map(|n| n.stage.name()).collect();
            if !names.contains(&until) {
                bail!(
                    "--until `{until}` is not a stage of this run; its stages: {}",
                    dedup(&names).join(", ")
                );
            }
            graph = graph.prune_to(|n| n.stage.name() == until);
        }
        let remote = crate::remote_cmds::open(remote_args, &loaded.store)?;
        let previous = RunRecord::latest(store, &req.name)?;
        // gc waits while this run resolves its plan and registers the keys it reaches.
        let fence = match req.mode {
            Mode::DryRun | Mode::ShowConfig => None,
            Mode::Local { .. } | Mode::Slurm { .. } => {
                Some(store.hold_off_gc(|| eprintln!("  waiting for `dml gc` to finish"))?)
            }
        };
        let mut plan = Plan::resolve(&graph, store, previous.as_ref(), req.verify)?;
        if let Some(r) = &remote {
            crate::remote_cmds::mark_plan(&mut plan, r);
        }
        // What needs the index is checked now if the index is cached (a dry run too), so a
        // setting the data cannot serve fails before anything runs.
        let check = graph
            .nodes()
            .iter()
            .any(|n| n.stage.name() == "retrieve")
            .then(|| index_check(experiments.clone(), users.clone()));
        if let Some(check) = &check {
            for node in plan
                .nodes
                .iter()
                .filter(|n| n.stage == "index" && n.status == Status::Cached)
            {
                (check.0)(node, &store.object_dir(&node.stage, &node.key))
                    .map_err(|message| anyhow::anyhow!("{message}"))?;
            }
        }
        let summaries = dml_stages::summary::summarise(store, &experiments, &users, &plan);
        let mut warnings: Vec<String> = Vec::new();
        if let Some(file) = &loaded.without_preset {
            warnings.push(format!(
                "{} has no `preset = …` line: every setting it does not give takes its built-in default (`dml config --defaults` lists them; `--show-config` prints this run's)",
                file.display()
            ));
        }
        for w in summaries.iter().flat_map(|s| &s.warnings) {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
        Ok(Planned {
            graph,
            plan,
            check,
            summaries,
            warnings,
            remote,
            fence,
        })
    }

    /// `--dry-run`: each node's status, key and reason, and each experiment's summary.
    fn print_dry_run(&self, json: bool) -> Result<()> {
        if json {
            out::println(&serde_json::to_string_pretty(&self.plan.to_json())?);
        } else {
            for node in &self.plan.nodes {
                let status = match node.status {
                    Status::Cached => "cached",
                    Status::Run => "run",
                    Status::Remote => "remote",
                };
                out::println(&format!(
                    "{status:<7} {:<32} {}  {}",
                    node.id,
                    &node.key[..12],
                    node.explanation()
                ));
            }
            for s in &self.summaries {
                out::println(&s.text());
            }
        }
        self.print_warnings();
        Ok(())
    }

    fn print_warnings(&self) {
        for w in &self.warnings {
            eprintln!("warning: {w}");
        }
    }
}

pub fn run(
    store_dir: &Path,
    remote_args: &crate::remote_cmds::RemoteArgs,
    args: RunArgs,
) -> Result<()> {
    let req = Request::resolve(args)?;
    if let Mode::ShowConfig = req.mode {
        out::println(&config::show_config(&req.loaded)?);
        return Ok(());
    }
    // A dry run only looks, so a read-only store can be planned against.
    let store = match req.mode {
        Mode::DryRun => ArtifactStore::open_read_only(store_dir)?,
        _ => ArtifactStore::open(store_dir)?,
    };
    let mut planned = Planned::new(&req, &store, remote_args)?;
    if let Mode::DryRun = req.mode {
        return planned.print_dry_run(req.json);
    }
    planned.print_warnings();
    let live = store.register_live_run(
        planned
            .plan
            .nodes
            .iter()
            .map(|n| (n.stage.as_str(), n.key.as_str())),
    )?;
    drop(planned.fence.take());
    // Builds killed earlier leave temporary directories; those whose key lock is free are stale.
    match store.stale_tmp(false) {
        Ok(stale) if !stale.is_empty() => {
            tracing::info!("removed {} stale temporary directories", stale.len())
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("stale temporary directories were not removed: {e}"),
    }
    let config = serde_json::to_value(&req.loaded.raw).context("config as JSON")?;
    match &req.mode {
        Mode::Slurm { settings, wait } => crate::slurm::submit(
            &store,
            &crate::slurm::Submission {
                name: &req.name,
                config,
                plan: &planned.plan,
                settings,
                wait: *wait,
                json: req.json,
            },
        ),
        Mode::Local { jobs } => execute_here(&req, &store, &planned, live, config, *jobs),
        Mode::ShowConfig | Mode::DryRun => unreachable!("handled above"),
    }
}

/// Runs the plan in this process: the record written first (status `running`) and
/// rewritten as the run ends, `latest/` moved when it ended ok, the outcome printed.
fn execute_here(
    req: &Request,
    store: &ArtifactStore,
    planned: &Planned,
    live: dml_artifacts::LiveRun,
    config: serde_json::Value,
    jobs: usize,
) -> Result<()> {
    let plan = &planned.plan;
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let mut record = plan.record(&req.name, started_at, config);
    record.provenance = run_shared::provenance();
    record.live = Some(live.tag());
    record.until = req.until.map(str::to_string);
    // Written now (status `running`), so an interrupted or killed run has a record: `dml
    // runs` lists it and `dml gc` keeps the checkpoints it resumes from.
    let record_path = record.save(store)?;
    let opts = ExecOptions {
        jobs,
        // One device stage per visible GPU at a time (`--jobs N` with N GPUs trains N
        // sweep points at once); on the CPU device stages do not exist.
        device_slots: dml_stages::device::cuda_device_count().max(1),
        provenance: record.provenance.clone(),
        // The index checks are about evaluation: only when this run evaluates.
        check: planned.check.clone(),
        remote: crate::remote_cmds::shared(&planned.remote),
    };
    let running = interrupt::Running::install(store, &record_path, record.clone(), live.path());
    let (summary, result) = execute(&planned.graph, plan, store, &opts, &|e| {
        print_event(&running, e)
    });
    record.apply(&summary);
    record.seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => record.finish(RunStatus::Ok, "ok"),
        Err(e) => record.finish(RunStatus::Failed, dml_pipeline::error_chain(e)),
    }
    let written = running.finish_with(|| -> Result<()> {
        record.rewrite(&record_path)?;
        // Only a run that ended ok moves `latest/<name>/` (a failed or interrupted one never
        // replaces the links of the last good run).
        if record.run_status() == RunStatus::Ok {
            crate::links::update(store, &record)?;
        }
        Ok(())
    });
    match written {
        Some(w) => w?,
        // Interrupted at the very end: the handler is exiting.
        None => loop {
            std::thread::park();
        },
    }
    drop(live);
    if let Some(r) = &planned.remote {
        crate::remote_cmds::after_run(r, &record_path);
    }
    if req.json {
        print_json(store, &record, &record_path)?;
    }
    if let Err(e) = result {
        // A stage that failed may succeed on a rerun (a full disk, a kill); a setting
        // that does not fit the data will not, so only the former says "rerun".
        return Err(match e {
            dml_pipeline::PipelineError::StageFailed { .. } => {
                anyhow::Error::new(e).context(format!(
                "artifacts finished before the failure are kept in {}; a rerun continues from them",
                store.root().display()
            ))
            }
            other => other.into(),
        });
    }
    if !req.json {
        run_shared::print_reports(store, plan);
    }
    print_summary(plan, &summary, &record, &record_path);
    Ok(())
}

/// One line on stderr per scheduler event, and the live record kept up to date (so that
/// an interrupt writes what had finished).
fn print_event(running: &interrupt::Running, e: Event<'_>) {
    match e {
        Event::Cached(n) => eprintln!("  cached  {:<32} {}", n.id, &n.key[..12]),
        Event::Started(n) => {
            running.started(&n.id, &n.stage, &n.key);
            eprintln!(
                "  run     {:<32} {}  ({})",
                n.id,
                &n.key[..12],
                n.explanation()
            )
        }
        Event::Waiting(n) => eprintln!(
            "  waiting {:<32} another dml run is building it; blocking on its lock",
            n.id
        ),
        Event::BuiltElsewhere(n) => {
            running.finished(&n.id, NodeStatus::Cached, 0.0);
            eprintln!(
                "  cached  {:<32} {}",
                n.id,
                dml_pipeline::Reason::BuiltElsewhere
            )
        }
        Event::Finished(n, s) => {
            running.finished(&n.id, NodeStatus::Ran, s);
            eprintln!("  done    {:<32} {:.1}s", n.id, s)
        }
        Event::Failed(n, msg) => {
            running.finished(&n.id, NodeStatus::Failed, 0.0);
            eprintln!("  FAILED  {:<32} {msg}", n.id)
        }
        Event::Fetched(n, s) => {
            running.finished(&n.id, NodeStatus::Fetched, s);
            eprintln!(
                "  fetched {:<32} {}  from the remote cache, {s:.1}s",
                n.id,
                &n.key[..12]
            )
        }
        Event::Uploaded(n, UploadOutcome::Uploaded { files, bytes }) => {
            eprintln!(
                "  pushed  {:<32} {files} files, {bytes} bytes to the remote cache",
                n.id
            )
        }
        Event::Uploaded(n, UploadOutcome::AlreadyThere) => {
            eprintln!("  pushed  {:<32} already on the remote cache", n.id)
        }
        Event::RemoteWarning(n, msg) => eprintln!("  warning {:<32} {msg}", n.id),
    }
}

/// `dml run --json`'s output: the record's path and status, each node, and each point's
/// artifact paths and headline metrics.
fn print_json(store: &ArtifactStore, record: &RunRecord, record_path: &Path) -> Result<()> {
    let nodes: Vec<serde_json::Value> = record
        .nodes
        .iter()
        .map(|n| serde_json::json!({"stage": n.stage, "id": n.id, "key": n.key, "status": n.status, "reason": n.explanation(), "seconds": n.seconds}))
        .collect();
    let points = crate::outcome::points(store, record);
    out::println(&serde_json::to_string_pretty(&serde_json::json!({
        "record": record_path,
        "status": record.run_status(),
        "outcome": record.outcome,
        "nodes": nodes,
        "points": points,
    }))?);
    Ok(())
}

/// The last line of a run: how many stages ran, were fetched or cached, and the record.
fn print_summary(plan: &Plan, summary: &ExecSummary, record: &RunRecord, record_path: &Path) {
    let (ran, fetched) = (summary.ran(), summary.fetched());
    let fetched_text = if fetched > 0 {
        format!(" {fetched} fetched,")
    } else {
        String::new()
    };
    eprintln!(
        "{} stages: {ran} ran,{fetched_text} {} cached, {:.1}s (record: {})",
        plan.nodes.len(),
        plan.nodes.len() - ran - fetched,
        record.seconds,
        record_path.display()
    );
}

fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n);
        }
    }
    out
}

/// Checks each experiment's settings against its index as soon as the index
/// artifact exists (cached or just built), before any stage that reads it.
fn index_check(
    experiments: Vec<dml_stages::dag::Experiment>,
    users: std::collections::HashMap<String, Vec<usize>>,
) -> dml_pipeline::NodeCheck {
    dml_pipeline::NodeCheck(std::sync::Arc::new(move |node, dir| {
        if node.stage != "index" {
            return Ok(());
        }
        let rows = dml_artifacts::tables::read_index(&dir.join("index.parquet"))
            .map_err(|e| e.to_string())?;
        for &e in users.get(&node.id).into_iter().flatten() {
            let exp = &experiments[e];
            dml_stages::preflight::check_index(&exp.config, &rows).map_err(|err| {
                // The message and its causes, as `dml` prints every error.
                let err = anyhow::Error::from(err);
                if experiments.len() > 1 {
                    format!("{err:#} (sweep point {})", exp.name)
                } else {
                    format!("{err:#}")
                }
            })?;
        }
        Ok(())
    }))
}
