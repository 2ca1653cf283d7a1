//! The executor's files in the store: the request each job rebuilds its node from, the
//! claims that keep two runs from submitting one key twice (and the lock that makes
//! submitting one run at a time), and the JSON files they are written as.
use super::error::{io, SlurmError};
use crate::RecordNode;
use dml_artifacts::{ArtifactStore, KeyLock, Layout};
use serde::{Deserialize, Serialize};
use std::path::Path;

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

/// The store's layout under its absolute path, not its canonical one: the nodes mount the
/// store under the path the user gave, and the job scripts and claims name it so.
pub fn absolute_layout(store: &ArtifactStore) -> Result<Layout, SlurmError> {
    let root = std::path::absolute(store.root()).map_err(io("resolving", store.root()))?;
    Ok(Layout::new(root))
}

/// Reads a claim; a missing or unreadable one is no claim.
pub fn read_claim(path: &Path) -> Option<Claim> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `value` as JSON to `path` through a temporary file in the same folder.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<(), SlurmError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let text = serde_json::to_string_pretty(value).map_err(|e| SlurmError::Io {
        what: "serialising",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    std::fs::write(&tmp, text).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("writing", path))
}

/// Holds the claims folder: one submitter at a time, so two runs never both submit
/// the same key. `on_wait` is called if another run holds it.
pub fn lock_claims(layout: &Layout, on_wait: impl FnOnce()) -> Result<KeyLock, SlurmError> {
    Ok(KeyLock::acquire(&layout.claims().join(".lock"), on_wait)?)
}

/// Removes the claim of `stage`/`key` if it names `job` (a job releasing its own claim).
pub fn release_claim(
    store: &ArtifactStore,
    stage: &str,
    key: &str,
    job: &str,
) -> Result<(), SlurmError> {
    let layout = absolute_layout(store)?;
    let path = layout.claim(stage, key);
    if read_claim(&path).is_some_and(|c| c.job_id == job) {
        std::fs::remove_file(&path).map_err(io("removing", &path))?;
    }
    Ok(())
}

/// The job to look at for a node: the claim's (the newest submission of that
/// key, possibly by a later run), else the record's.
pub fn effective_job(layout: &Layout, node: &RecordNode) -> Option<String> {
    read_claim(&layout.claim(&node.stage, &node.key))
        .map(|c| c.job_id)
        .or_else(|| node.job_id.clone())
}
