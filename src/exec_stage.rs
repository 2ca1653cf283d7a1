//! `dml exec-stage` (hidden): builds exactly one node of a submitted run in
//! this process, from the store — what each Slurm job runs.
//!
//! The job re-resolves the run's DAG from the request the submitter wrote,
//! checks that the node still resolves to the key it was submitted with (a
//! different binary or a device that resolves differently on this host would
//! build something else), and builds it through the scheduler's build path,
//! under the key's lock, its inputs already in the store.
use crate::config;
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::slurm::{release_claim, StageRequest};
use dml_pipeline::{build_one, Event, ExecOptions, Plan, Status};
use std::path::{Path, PathBuf};

/// Arguments of `dml exec-stage`.
#[derive(Debug, clap::Args)]
pub struct ExecStageArgs {
    /// The request `dml run --executor slurm` wrote (`slurm/requests/…json`).
    #[arg(long)]
    pub request: PathBuf,
    /// The node id to build (`train[train.loss.name=npairs]`).
    #[arg(long)]
    pub node: String,
    /// The key it was submitted with.
    #[arg(long)]
    pub key: String,
}

pub fn exec_stage(store_dir: &Path, args: ExecStageArgs) -> Result<()> {
    let store = ArtifactStore::open(store_dir)?;
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("reading the stage request {}", args.request.display()))?;
    let request: StageRequest = serde_json::from_str(&text)
        .with_context(|| format!("the stage request {} is not valid", args.request.display()))?;
    let raw = toml::Value::try_from(&request.config).with_context(|| {
        format!(
            "the config in {} is not a TOML table",
            args.request.display()
        )
    })?;
    let loaded = config::resolve(raw)?;
    let experiments = loaded.dag_experiments();
    let graph = dml_stages::dag::build(&experiments)?.prune_to(|n| n.id == args.node);
    let Some(i) = graph.nodes().iter().position(|n| n.id == args.node) else {
        bail!(
            "run `{}` has no stage `{}` (request {})",
            request.name,
            args.node,
            args.request.display()
        );
    };
    let plan = Plan::resolve(&graph, &store, None, false)?;
    let node = &plan.nodes[i];
    if node.key != args.key {
        bail!(
            "`{}` resolves here to key {} but was submitted as {}: this host builds something else than the submitting one (a `train.device = \"auto\"` that finds CUDA on one and not the other, or another dml version); set train.device explicitly and resubmit",
            node.id,
            &node.key[..12],
            &args.key[..args.key.len().min(12)]
        );
    }
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    if node.status == Status::Cached {
        eprintln!("  cached  {} is already in the store", node.id);
        release_claim(&store, &node.stage, &node.key, &job)?;
        return Ok(());
    }
    for (role, d) in &node.input_nodes {
        let input = &plan.nodes[*d];
        if input.status != Status::Cached {
            bail!(
                "input `{role}` of `{}` ({} {}) is not in the store: its job has not built it (submit with `--dependency=afterok` on it, as `dml run --executor slurm` does)",
                node.id,
                input.id,
                &input.key[..12]
            );
        }
    }
    let mut provenance = crate::run_shared::provenance();
    provenance.insert("executor".into(), serde_json::json!("slurm"));
    if !job.is_empty() {
        provenance.insert("job_id".into(), serde_json::json!(job));
    }
    if let Ok(host) = std::env::var("SLURMD_NODENAME") {
        provenance.insert("slurm_node".into(), serde_json::json!(host));
    }
    let opts = ExecOptions {
        jobs: 1,
        provenance,
        check: None,
        // One stage per job: it uses the first GPU Slurm gave the job.
        device_slots: 1,
        // A Slurm job builds what it was given; the submitting run shares the cache.
        remote: None,
    };
    let print = |e: Event<'_>| match e {
        Event::Cached(n) => eprintln!("  cached  {}", n.id),
        Event::Started(n) => eprintln!("  run     {} {}  ({})", n.id, &n.key[..12], n.reason),
        Event::Waiting(n) => eprintln!(
            "  waiting {} another dml process is building it; blocking on its lock",
            n.id
        ),
        Event::BuiltElsewhere(n) => {
            eprintln!("  cached  {} built by another process meanwhile", n.id)
        }
        Event::Finished(n, s) => eprintln!("  done    {} {s:.1}s", n.id),
        Event::Failed(n, msg) => eprintln!("  FAILED  {} {msg}", n.id),
        // A Slurm job runs without a remote cache (`remote: None`): none of these happen.
        Event::Fetched(..) | Event::Uploaded(..) | Event::RemoteWarning(..) => {}
    };
    build_one(&graph, &plan, i, &store, &opts, &print)
        .with_context(|| format!("building `{}` (job {job})", node.id))?;
    release_claim(&store, &node.stage, &node.key, &job)?;
    Ok(())
}
