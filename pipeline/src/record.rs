//! Run records: which keys a run resolved, why each ran, and how long it took.
use crate::{PipelineError, Plan};
use dml_artifacts::ArtifactStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One node of a run record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordNode {
    /// Node id.
    pub id: String,
    /// Stage name.
    pub stage: String,
    /// Key.
    pub key: String,
    /// Stage code version.
    pub version: u32,
    /// Canonical settings.
    pub settings: Value,
    /// Role → input key.
    pub inputs: BTreeMap<String, String>,
    /// Role → input node id, as the user sees it.
    #[serde(default)]
    pub input_ids: BTreeMap<String, String>,
    /// Dataset fingerprint.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `cached`, `ran`, `fetched` (from the remote cache), `failed` or `not_run`.
    pub status: String,
    /// The reason, as shown by `explain`.
    pub reason: String,
    /// The reason, typed (absent in records written before it existed).
    #[serde(default)]
    pub why: Option<crate::Reason>,
    /// Wall seconds spent building (0 when cached).
    pub seconds: f64,
    /// The Slurm job that builds it, when run with `--executor slurm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Everything a run resolved; written to `runs/<timestamp>-<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run name.
    pub name: String,
    /// Start time, RFC 3339 UTC.
    pub started: String,
    /// Wall seconds.
    pub seconds: f64,
    /// `ok` or the error.
    pub outcome: String,
    /// The resolved configuration (everything needed to rebuild the run).
    pub config: Value,
    /// The nodes.
    pub nodes: Vec<RecordNode>,
    /// Versions, host, device.
    pub provenance: BTreeMap<String, Value>,
}

impl RunRecord {
    /// Builds a record from a plan; statuses are filled by the caller after execution.
    pub fn from_plan(name: &str, started: String, config: Value, plan: &Plan) -> Self {
        RunRecord {
            name: name.to_string(),
            started,
            seconds: 0.0,
            outcome: String::new(),
            config,
            nodes: plan
                .nodes
                .iter()
                .map(|n| RecordNode {
                    id: n.id.clone(),
                    stage: n.stage.clone(),
                    key: n.key.clone(),
                    version: n.version,
                    settings: n.settings.clone(),
                    inputs: n.inputs.clone(),
                    input_ids: n.input_ids.clone(),
                    fingerprint: n.fingerprint.clone(),
                    status: match n.status {
                        crate::Status::Cached => "cached".into(),
                        crate::Status::Run | crate::Status::Remote => "not_run".into(),
                    },
                    reason: n.explanation(),
                    why: Some(n.reason.clone()),
                    seconds: 0.0,
                    job_id: None,
                })
                .collect(),
            provenance: BTreeMap::new(),
        }
    }

    /// Writes the record under `runs/` and returns its path.
    pub fn save(&self, store: &ArtifactStore) -> Result<PathBuf, PipelineError> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let name = file_safe(&self.name);
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = format!("{}.{seq}", std::process::id());
        let dir = store.runs_dir();
        let path = dir.join(format!("{stamp}-{name}.json"));
        let tmp = dir.join(format!(".{stamp}-{pid}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| record_err(&path, e))?;
        std::fs::write(&tmp, text).map_err(|e| record_err(&tmp, e))?;
        // Two runs finishing in the same millisecond must not overwrite each
        // other's record: link (fails if the name is taken), else a pid-tagged name.
        if std::fs::hard_link(&tmp, &path).is_ok() {
            let _ = std::fs::remove_file(&tmp);
            return Ok(path);
        }
        let path = dir.join(format!("{stamp}.{pid}-{name}.json"));
        std::fs::rename(&tmp, &path).map_err(|e| record_err(&path, e))?;
        Ok(path)
    }

    /// Reads a record.
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| record_err(path, e))?;
        serde_json::from_str(&text).map_err(|e| record_err(path, e))
    }

    /// All record files, oldest first.
    pub fn list(store: &ArtifactStore) -> Result<Vec<PathBuf>, PipelineError> {
        let dir = store.runs_dir();
        let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        Ok(out)
    }

    /// The newest record of a run name.
    pub fn latest(store: &ArtifactStore, name: &str) -> Result<Option<RunRecord>, PipelineError> {
        let suffix = format!("-{}.json", file_safe(name));
        for path in Self::list(store)?.into_iter().rev() {
            if path.to_string_lossy().ends_with(&suffix) {
                if let Ok(r) = Self::load(&path) {
                    if r.name == name {
                        return Ok(Some(r));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// A run name made safe for a file name.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn record_err(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Record {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_saved_in_the_same_millisecond_are_all_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        let record = RunRecord {
            name: "same".into(),
            started: String::new(),
            seconds: 0.0,
            outcome: "ok".into(),
            config: serde_json::json!({}),
            nodes: vec![],
            provenance: BTreeMap::new(),
        };
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| record.save(&store).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let listed = RunRecord::list(&store).unwrap();
        assert_eq!(listed.len(), 8, "{listed:?}");
        let mut unique = paths.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 8);
        for p in &listed {
            assert!(RunRecord::load(p).is_ok(), "{}", p.display());
        }
        assert_eq!(
            RunRecord::latest(&store, "same").unwrap().unwrap().name,
            "same"
        );
    }
}
