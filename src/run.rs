//! `dml run`: load the config, assemble the DAG, explain, execute, record.
use crate::config;
use crate::interrupt;
use crate::out;
use crate::run_shared;
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{
    execute, Event, ExecOptions, NodeStatus, Outcome, Plan, RunRecord, RunStatus, Status,
    UploadOutcome,
};
use dml_stages::config::ExecutorKind;
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

pub fn run(
    store_dir: &Path,
    remote_args: &crate::remote_cmds::RemoteArgs,
    args: RunArgs,
) -> Result<()> {
    if let Some(until) = &args.until {
        if !STAGES.contains(&until.as_str()) {
            let hint = crate::suggest::nearest(until, STAGES.iter().copied())
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            bail!(
                "--until `{until}` is not a stage{hint}; stages: {}",
                STAGES.join(", ")
            );
        }
    }
    let mut sets = args.sets.clone();
    for sweep in &args.sweeps {
        sets.push(config::sweep_arg(sweep)?);
    }
    if args.skip_bad_images {
        sets.push("index.skip_bad_images=true".into());
    }
    let loaded = match &args.from_record {
        Some(path) => {
            let record = RunRecord::load(path)?;
            let raw = toml::Value::try_from(&record.config)
                .with_context(|| format!("the config in {} is not a TOML table", path.display()))?;
            config::resolve(raw)?
        }
        None => config::load(args.config.as_deref(), args.preset.as_deref(), &sets)?,
    };
    if args.show_config {
        out::println(&config::show_config(&loaded)?);
        return Ok(());
    }
    // A dry run only looks, so a read-only store can be planned against.
    let store = if args.dry_run {
        ArtifactStore::open_read_only(store_dir)?
    } else {
        ArtifactStore::open(store_dir)?
    };
    let name = loaded
        .experiments
        .first()
        .map(|e| e.config.name.clone())
        .unwrap_or_else(|| "run".into());
    let experiments = loaded.dag_experiments();
    let dag = dml_stages::dag::build_dag(&experiments).map_err(|e| loaded.locate_error(e))?;
    let users = dag.users;
    let mut graph = dag.graph;
    if let Some(until) = &args.until {
        let names: Vec<&str> = graph.nodes().iter().map(|n| n.stage.name()).collect();
        if !names.contains(&until.as_str()) {
            bail!(
                "--until `{until}` is not a stage of this run; its stages: {}",
                dedup(&names).join(", ")
            );
        }
        graph = graph.prune_to(|n| n.stage.name() == until);
    }
    let remote = crate::remote_cmds::open(remote_args, &loaded.store)?;
    let previous = RunRecord::latest(&store, &name)?;
    // gc waits while this run resolves its plan and registers the keys it reaches.
    let fence = match args.dry_run {
        true => None,
        false => Some(store.hold_off_gc(|| eprintln!("  waiting for `dml gc` to finish"))?),
    };
    let mut plan = Plan::resolve(&graph, &store, previous.as_ref(), args.verify)?;
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
    let summaries = dml_stages::summary::summarise(&store, &experiments, &users, &plan);
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
    if args.dry_run {
        if args.json {
            out::println(&serde_json::to_string_pretty(&plan.to_json())?);
        } else {
            for node in &plan.nodes {
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
            for s in &summaries {
                out::println(&s.text());
            }
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        return Ok(());
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let live = store.register_live_run(
        plan.nodes
            .iter()
            .map(|n| (n.stage.as_str(), n.key.as_str())),
    )?;
    drop(fence);
    // Builds killed earlier leave temporary directories; those whose key lock is free are stale.
    match store.stale_tmp(false) {
        Ok(stale) if !stale.is_empty() => {
            tracing::info!("removed {} stale temporary directories", stale.len())
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("stale temporary directories were not removed: {e}"),
    }
    let executor = loaded
        .experiments
        .first()
        .map(|e| e.config.executor.clone())
        .unwrap_or_default();
    let slurm = match args.executor {
        Some(e) => e == ExecutorArg::Slurm,
        None => executor.kind == ExecutorKind::Slurm,
    };
    if slurm {
        let config = serde_json::to_value(&loaded.raw).context("config as JSON")?;
        return crate::slurm::submit(
            &store,
            &crate::slurm::Submission {
                name: &name,
                config,
                plan: &plan,
                settings: &executor,
                wait: args.wait,
                json: args.json,
            },
        );
    }
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let config_json = serde_json::to_value(&loaded.raw).context("config as JSON")?;
    let mut record = RunRecord::from_plan(&name, started_at, config_json, &plan);
    record.provenance = run_shared::provenance();
    record.live = Some(live.tag());
    record.until = args.until.clone();
    // Written now (status `running`), so an interrupted or killed run has a record: `dml
    // runs` lists it and `dml gc` keeps the checkpoints it resumes from.
    let record_path = record.save(&store)?;
    let opts = ExecOptions {
        jobs: usize::from(args.jobs),
        // One device stage per visible GPU at a time (`--jobs N` with N GPUs trains N
        // sweep points at once); on the CPU device stages do not exist.
        device_slots: dml_stages::device::cuda_device_count().max(1),
        provenance: record.provenance.clone(),
        // The index checks are about evaluation: only when this run evaluates.
        check,
        remote: crate::remote_cmds::shared(&remote),
    };
    let running = interrupt::Running::install(&store, &record_path, record.clone(), live.path());
    let print = |e: Event<'_>| match e {
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
    };
    let (summary, result) = execute(&graph, &plan, &store, &opts, &print);
    for (node, outcome) in record.nodes.iter_mut().zip(&summary.outcomes) {
        let (status, seconds) = match outcome {
            Outcome::Cached => (NodeStatus::Cached, 0.0),
            Outcome::Ran(s) => (NodeStatus::Ran, *s),
            Outcome::BuiltElsewhere => {
                let why = dml_pipeline::Reason::BuiltElsewhere;
                node.reason = why.to_string();
                node.why = Some(why);
                (NodeStatus::Cached, 0.0)
            }
            Outcome::Fetched(s) => (NodeStatus::Fetched, *s),
            Outcome::Failed(_) => (NodeStatus::Failed, 0.0),
            Outcome::NotRun => (NodeStatus::NotRun, 0.0),
        };
        node.status = status;
        node.seconds = seconds;
    }
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
            crate::links::update(&store, &record)?;
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
    if let Some(r) = &remote {
        crate::remote_cmds::after_run(r, &record_path);
    }
    if args.json {
        let nodes: Vec<serde_json::Value> = record
            .nodes
            .iter()
            .map(|n| serde_json::json!({"stage": n.stage, "id": n.id, "key": n.key, "status": n.status, "reason": n.reason, "seconds": n.seconds}))
            .collect();
        // The outcome of each point: artifact directories and headline metrics.
        let points = crate::outcome::points(&store, &record);
        out::println(&serde_json::to_string_pretty(&serde_json::json!({
            "record": record_path,
            "status": record.run_status(),
            "outcome": record.outcome,
            "nodes": nodes,
            "points": points,
        }))?);
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
    if !args.json {
        run_shared::print_reports(&store, &plan);
    }
    let ran = summary.ran();
    let fetched = summary
        .outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Fetched(_)))
        .count();
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
    Ok(())
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
