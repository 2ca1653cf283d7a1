//! `dml run`: load the config, assemble the DAG, explain, execute, record.
use crate::config;
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{execute, Event, ExecOptions, Outcome, Plan, RunRecord, Status};
use std::collections::BTreeMap;
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
    /// Override a setting, e.g. `--set train.lr=0.0001` (repeatable).
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Stop after this stage (and what it needs).
    #[arg(long)]
    pub until: Option<String>,
    /// Only say what would run and why.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan (with --dry-run, an array of nodes) or the outcome as JSON: an object
    /// with the record, `nodes` and `points` (each point's artifact directories and metrics).
    #[arg(long)]
    pub json: bool,
    /// Stages to run at once (GPU stages never share the device).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Re-hash every cached artifact's files instead of trusting size + mtime.
    #[arg(long)]
    pub verify: bool,
    /// Leave out unreadable or truncated images instead of failing (recorded in the manifest).
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Rebuild exactly the run a record describes (reusing the cache).
    #[arg(long, value_name = "RECORD.json", conflicts_with_all = ["config", "preset", "sets"])]
    pub from_record: Option<PathBuf>,
}

pub fn run(store_dir: &Path, args: RunArgs) -> Result<()> {
    let mut sets = args.sets.clone();
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
    let store = ArtifactStore::open(store_dir)?;
    let name = loaded
        .experiments
        .first()
        .map(|e| e.config.name.clone())
        .unwrap_or_else(|| "run".into());
    let experiments: Vec<dml_stages::dag::Experiment> = loaded
        .experiments
        .iter()
        .map(|e| dml_stages::dag::Experiment {
            name: e.name.clone(),
            point: e.point.clone(),
            config: e.config.clone(),
        })
        .collect();
    let mut graph = dml_stages::dag::build(&experiments)?;
    if let Some(until) = &args.until {
        let names: Vec<&str> = graph.nodes().iter().map(|n| n.stage.name()).collect();
        if !names.contains(&until.as_str()) {
            let hint = config::nearest(until, names.iter().copied())
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            bail!(
                "--until `{until}` is not a stage of this run{hint}; stages: {}",
                dedup(&names).join(", ")
            );
        }
        graph = graph.prune_to(|n| n.stage.name() == until);
    }
    let previous = RunRecord::latest(&store, &name)?;
    let plan = Plan::resolve(&graph, &store, previous.as_ref(), args.verify)?;
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
        } else {
            for node in &plan.nodes {
                let status = match node.status {
                    Status::Cached => "cached",
                    Status::Run => "run",
                };
                println!(
                    "{status:<7} {:<32} {}  {}",
                    node.id,
                    &node.key[..12],
                    node.reason
                );
            }
        }
        return Ok(());
    }
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let config_json = serde_json::to_value(&loaded.raw).context("config as JSON")?;
    let mut record = RunRecord::from_plan(&name, started_at, config_json, &plan);
    record.provenance = provenance();
    let opts = ExecOptions {
        jobs: args.jobs,
        provenance: record.provenance.clone(),
    };
    let print = |e: Event<'_>| match e {
        Event::Cached(n) => eprintln!("  cached  {:<32} {}", n.id, &n.key[..12]),
        Event::Started(n) => eprintln!("  run     {:<32} {}  ({})", n.id, &n.key[..12], n.reason),
        Event::Waiting(n) => eprintln!(
            "  waiting {:<32} another dml run is building it; blocking on its lock",
            n.id
        ),
        Event::BuiltElsewhere(n) => {
            eprintln!("  cached  {:<32} built by another run meanwhile", n.id)
        }
        Event::Finished(n, s) => eprintln!("  done    {:<32} {:.1}s", n.id, s),
        Event::Failed(n, msg) => eprintln!("  FAILED  {:<32} {msg}", n.id),
    };
    let (summary, result) = execute(&graph, &plan, &store, &opts, &print);
    for (node, outcome) in record.nodes.iter_mut().zip(&summary.outcomes) {
        let (status, seconds) = match outcome {
            Outcome::Cached => ("cached", 0.0),
            Outcome::Ran(s) => ("ran", *s),
            Outcome::BuiltElsewhere => ("cached", 0.0),
            Outcome::Failed(_) => ("failed", 0.0),
            Outcome::NotRun => ("not_run", 0.0),
        };
        node.status = status.into();
        node.seconds = seconds;
    }
    record.seconds = started.elapsed().as_secs_f64();
    record.outcome = match &result {
        Ok(()) => "ok".into(),
        Err(e) => e.to_string(),
    };
    let record_path = record.save(&store)?;
    crate::links::update(&store, &record)?;
    if args.json {
        let nodes: Vec<serde_json::Value> = record
            .nodes
            .iter()
            .map(|n| serde_json::json!({"stage": n.stage, "id": n.id, "key": n.key, "status": n.status, "reason": n.reason, "seconds": n.seconds}))
            .collect();
        // The outcome of each point: artifact directories and headline metrics.
        let points = crate::outcome::points(&store, &record);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "record": record_path,
                "outcome": record.outcome,
                "nodes": nodes,
                "points": points,
            }))?
        );
    }
    result.with_context(|| {
        format!(
            "artifacts finished before the failure are kept in {}; rerun to continue",
            store.root().display()
        )
    })?;
    for node in plan
        .nodes
        .iter()
        .filter(|n| n.stage == "report" && !args.json)
    {
        let md = store.object_dir(&node.stage, &node.key).join("report.md");
        if let Ok(text) = std::fs::read_to_string(&md) {
            println!("{text}");
            println!(
                "(report, plots and loss curves: {})",
                md.parent().unwrap_or(&md).display()
            );
        }
    }
    let ran = summary.ran();
    eprintln!(
        "{} stages: {ran} ran, {} cached, {:.1}s (record: {})",
        plan.nodes.len(),
        plan.nodes.len() - ran,
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

/// Versions and host, recorded in manifests and run records (never in keys).
pub fn provenance() -> BTreeMap<String, serde_json::Value> {
    let mut p = BTreeMap::new();
    p.insert("dml".into(), env!("CARGO_PKG_VERSION").into());
    p.insert("libtorch".into(), dml_stages::LIBTORCH_VERSION.into());
    p.insert(
        "host".into(),
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
            .into(),
    );
    p.insert("cuda_available".into(), tch::Cuda::is_available().into());
    p.insert("threads".into(), rayon::current_num_threads().into());
    p
}
