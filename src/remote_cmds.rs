//! The shared remote cache from the command line: `--remote` / `DML_REMOTE` /
//! `[store]`, the remote step of `dml run`, and `dml push`, `dml pull`,
//! `dml remote ls`.
use crate::store_cmds::human;
use anyhow::{bail, Context, Result};
use dml_artifacts::{ArtifactStore, Lookup};
use dml_pipeline::{FetchOutcome, Plan, RemoteCache, RunRecord, SharedRemote, UploadOutcome};
use dml_remote::{RemoteSettings, S3Remote};
use indicatif::{MultiProgress, ProgressDrawTarget};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// The global remote flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// A remote cache shared with a team, `s3://bucket/prefix` (overrides
    /// `[store] remote`); credentials and endpoint come from the AWS_* variables.
    #[arg(
        long,
        global = true,
        env = "DML_REMOTE",
        value_name = "s3://BUCKET/PREFIX"
    )]
    pub remote: Option<String>,
    /// Use no remote cache in this command, whatever the config or DML_REMOTE say.
    #[arg(long, global = true)]
    pub no_remote: bool,
}

/// `dml remote …`.
#[derive(Debug, clap::Subcommand)]
pub enum RemoteCommand {
    /// List the artifacts the remote cache holds.
    Ls,
}

/// Splits `[store]` (the remote settings) from the experiment's tables.
pub fn split_store_table(root: &toml::Value) -> Result<(RemoteSettings, toml::Value)> {
    let mut rest = root.clone();
    let table = rest.as_table_mut().and_then(|t| t.remove("store"));
    let settings = match table {
        None => RemoteSettings::default(),
        Some(v) => v.try_into::<RemoteSettings>().map_err(|e| {
            anyhow::anyhow!(
                "[store]: {}; the table takes remote, remote_skip, remote_timeout, remote_transfer_timeout, remote_upload_wait, remote_upload",
                e.message()
            )
        })?,
    };
    settings.validate().map_err(anyhow::Error::msg)?;
    check_skip(&settings.remote_skip)?;
    Ok((settings, rest))
}

/// Opens the remote the flags or `[store]` name, if any.
pub fn open(args: &RemoteArgs, settings: &RemoteSettings) -> Result<Option<Arc<S3Remote>>> {
    if args.no_remote {
        return Ok(None);
    }
    let url = args
        .remote
        .as_deref()
        .filter(|u| !u.is_empty())
        .or(settings.remote.as_deref().filter(|u| !u.is_empty()));
    let Some(url) = url else { return Ok(None) };
    let remote = S3Remote::open(url, settings).with_context(|| {
        format!("remote cache `{url}` (from --remote, DML_REMOTE or [store] remote)")
    })?;
    Ok(Some(Arc::new(remote)))
}

/// Every `remote_skip` entry must name a stage dml has; one this run does not
/// reach (`--until plan` and the default `["decode"]`) is fine.
fn check_skip(skip: &[String]) -> Result<()> {
    use dml_stages::dag::STAGE_NAMES;
    for s in skip {
        if !STAGE_NAMES.contains(&s.as_str()) {
            let hint = crate::suggest::nearest(s, STAGE_NAMES.iter().copied())
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            bail!(
                "[store] remote_skip: `{s}` is not a stage{hint}; stages: {}",
                STAGE_NAMES.join(", ")
            );
        }
    }
    Ok(())
}

/// Marks the plan's nodes the remote holds; an unusable remote is a warning.
pub fn mark_plan(plan: &mut Plan, remote: &S3Remote) {
    if let Err(e) = plan.mark_remote(remote) {
        eprintln!("warning: {e}");
    }
}

/// The remote as the engine takes it.
pub fn shared(remote: &Option<Arc<S3Remote>>) -> Option<SharedRemote> {
    remote.clone().map(|r| r as SharedRemote)
}

/// After a run: shares its record, so `dml pull --run NAME` works on a fresh store.
pub fn after_run(remote: &S3Remote, record_path: &Path) {
    if !remote.uploads() {
        return;
    }
    let (Some(name), Ok(bytes)) = (
        record_path.file_name().and_then(|n| n.to_str()),
        std::fs::read(record_path),
    ) else {
        return;
    };
    match remote.put_record(name, bytes) {
        Ok(()) | Err(dml_pipeline::RemoteError::Offline { .. }) => {}
        Err(e) => eprintln!("warning: the run record was not shared: {e}"),
    }
}

fn progress() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
}

fn required(args: &RemoteArgs, settings: &RemoteSettings) -> Result<Arc<S3Remote>> {
    open(args, settings)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no remote cache: pass --remote s3://bucket/prefix, set DML_REMOTE, or add `[store] remote = \"s3://…\"` to the run's config"
        )
    })
}

/// The settings a record's config carries in `[store]`.
fn record_settings(record: &RunRecord) -> RemoteSettings {
    toml::Value::try_from(&record.config)
        .ok()
        .and_then(|v| split_store_table(&v).ok())
        .map(|(s, _)| s)
        .unwrap_or_default()
}

/// The local record of run `name` (the most recent run without a name).
fn local_record(
    store: &ArtifactStore,
    name: Option<&str>,
) -> Result<Option<(std::path::PathBuf, RunRecord)>> {
    let mut paths = RunRecord::list(store)?;
    paths.reverse();
    for p in paths {
        let r = RunRecord::load(&p)?;
        if name.is_none_or(|n| r.name == n) {
            return Ok(Some((p, r)));
        }
    }
    Ok(None)
}

/// `dml push [--run NAME]`: uploads a run's artifacts and its record.
pub fn push(store_dir: &Path, args: &RemoteArgs, run: Option<&str>) -> Result<()> {
    let store = ArtifactStore::open(store_dir)?;
    let Some((record_path, record)) = local_record(&store, run)? else {
        bail!(
            "no run record{} in {}; `dml run` first",
            run.map(|n| format!(" named `{n}`")).unwrap_or_default(),
            store.runs_dir().display()
        );
    };
    let remote = required(args, &record_settings(&record))?;
    let progress = progress();
    let (mut sent, mut there, mut bytes) = (0, 0, 0u64);
    let mut seen = BTreeSet::new();
    for node in &record.nodes {
        if !seen.insert((node.stage.clone(), node.key.clone())) {
            continue;
        }
        let short = &node.key[..node.key.len().min(12)];
        if !remote.shares(&node.stage) {
            println!("skipped {:<32} {short}  (store.remote_skip)", node.id);
            continue;
        }
        if !matches!(store.lookup(&node.stage, &node.key, false)?, Lookup::Hit(_)) {
            println!(
                "missing {:<32} {short}  not in the local store (gc'd or never built)",
                node.id
            );
            continue;
        }
        let dir = store.object_dir(&node.stage, &node.key);
        match remote.upload(&node.stage, &node.key, &dir, &progress) {
            Ok(UploadOutcome::Uploaded { files, bytes: b }) => {
                sent += 1;
                bytes += b;
                println!(
                    "pushed  {:<32} {short}  {files} files, {}",
                    node.id,
                    human(b)
                );
            }
            Ok(UploadOutcome::AlreadyThere) => {
                there += 1;
                println!("there   {:<32} {short}  already on the remote", node.id);
            }
            Err(e) => bail!("{e}"),
        }
    }
    if let Some(name) = record_path.file_name().and_then(|n| n.to_str()) {
        let text = std::fs::read(&record_path)
            .with_context(|| format!("reading {}", record_path.display()))?;
        remote.put_record(name, text)?;
    }
    println!(
        "{sent} artifacts pushed ({}), {there} already on {}; run record `{}` shared",
        human(bytes),
        remote.location(),
        record.name
    );
    Ok(())
}

/// `dml pull [--run NAME]`: fetches a run's artifacts (the record comes from
/// the local store, else from the remote).
pub fn pull(store_dir: &Path, args: &RemoteArgs, run: Option<&str>) -> Result<()> {
    let store = ArtifactStore::open(store_dir)?;
    let record = match local_record(&store, run)? {
        Some((_, record)) => record,
        None => {
            let remote = required(args, &RemoteSettings::default())?;
            let Some((file, bytes)) = remote.latest_record(run)? else {
                bail!(
                    "no run record{} here or on {}",
                    run.map(|n| format!(" named `{n}`")).unwrap_or_default(),
                    remote.location()
                );
            };
            let record: RunRecord = serde_json::from_slice(&bytes)
                .with_context(|| format!("the remote run record `{file}` is not valid"))?;
            let path = store.runs_dir().join(&file);
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            record
        }
    };
    // What is shared is the run's own `[store]` setting.
    let remote = required(args, &record_settings(&record))?;
    let progress = progress();
    let (mut fetched, mut cached, mut missing, mut bytes) = (0, 0, 0, 0u64);
    let mut seen = BTreeSet::new();
    for node in &record.nodes {
        if !seen.insert((node.stage.clone(), node.key.clone())) {
            continue;
        }
        let short = &node.key[..node.key.len().min(12)];
        if matches!(store.lookup(&node.stage, &node.key, false)?, Lookup::Hit(_)) {
            cached += 1;
            continue;
        }
        if !remote.shares(&node.stage) {
            missing += 1;
            println!(
                "skipped {:<32} {short}  (store.remote_skip; `dml run` rebuilds it)",
                node.id
            );
            continue;
        }
        let _lock = store.lock(&node.stage, &node.key, || {
            eprintln!("waiting for another dml on {} {short}", node.id)
        })?;
        if matches!(store.lookup(&node.stage, &node.key, false)?, Lookup::Hit(_)) {
            cached += 1;
            continue;
        }
        if let Lookup::Corrupt(_) = store.lookup(&node.stage, &node.key, false)? {
            store.remove_object(&node.stage, &node.key)?;
        }
        match remote.fetch(&node.stage, &node.key, &store, &progress) {
            Ok(FetchOutcome::Fetched { bytes: b }) => {
                fetched += 1;
                bytes += b;
                println!("fetched {:<32} {short}  {}", node.id, human(b));
            }
            Ok(FetchOutcome::Absent) => {
                missing += 1;
                println!("absent  {:<32} {short}  not on the remote", node.id);
            }
            Err(e @ dml_pipeline::RemoteError::Refused { .. }) => {
                missing += 1;
                println!("refused {:<32} {short}  {e}", node.id);
            }
            Err(e) => bail!("{e}"),
        }
    }
    crate::links::update(&store, &record)?;
    println!(
        "{fetched} artifacts fetched ({}) from {}, {cached} already here, {missing} not fetched",
        human(bytes),
        remote.location()
    );
    Ok(())
}

/// `dml remote ls`.
pub fn ls(args: &RemoteArgs) -> Result<()> {
    let remote = required(args, &RemoteSettings::default())?;
    let objects = remote.list()?;
    if objects.is_empty() {
        println!("{} holds no artifacts yet", remote.location());
        return Ok(());
    }
    println!("{:<10} {:<34} {:>10}  uploaded", "stage", "key", "size");
    for o in &objects {
        println!(
            "{:<10} {:<34} {:>10}  {}",
            o.stage,
            o.key,
            human(o.bytes),
            o.uploaded
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_stages::dag::STAGE_NAMES;

    fn store_table(text: &str) -> Result<(RemoteSettings, toml::Value)> {
        split_store_table(&toml::from_str::<toml::Value>(text).unwrap())
    }

    #[test]
    fn remote_skip_names_a_stage_of_dml_not_necessarily_one_of_this_run() {
        // The default names `decode`, which a `--until plan` run does not reach.
        assert!(store_table("").is_ok());
        assert!(store_table("[store]\nremote_skip = [\"decode\", \"synth\", \"report\"]").is_ok());
        let err = store_table("[store]\nremote_skip = [\"decod\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`decod` is not a stage")
                && err.contains("did you mean `decode`")
                && err.contains(&STAGE_NAMES.join(", ")),
            "{err}"
        );
    }

    #[test]
    fn the_stage_names_are_those_of_a_synthetic_run() {
        let loaded = crate::config::load(None, Some("synthetic"), &[]).unwrap();
        let dag = dml_stages::dag::build_dag(&loaded.dag_experiments()).unwrap();
        let names: BTreeSet<&str> = dag.graph.nodes().iter().map(|n| n.stage.name()).collect();
        assert_eq!(names, STAGE_NAMES.iter().copied().collect());
    }
}
