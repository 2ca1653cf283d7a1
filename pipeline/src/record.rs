//! Run records: which keys a run resolved, why each ran, and how long it took.
use crate::scheduler::{ExecSummary, Outcome};
use crate::{NodeIdentity, PipelineError, Reason};
use dml_artifacts::ArtifactStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

impl std::ops::Deref for RecordNode {
    type Target = NodeIdentity;
    fn deref(&self) -> &NodeIdentity {
        &self.identity
    }
}

/// One node of a run record: its identity (whose fields the JSON keeps at the top level
/// of the node, read through `Deref`) and what happened to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "StoredNode")]
pub struct RecordNode {
    /// What the key was computed from.
    #[serde(flatten)]
    pub identity: NodeIdentity,
    /// What happened to it in this run.
    pub status: NodeStatus,
    /// Why it was cached or had to run (`why` in the record's JSON; the sentence is
    /// [`RecordNode::explanation`]).
    #[serde(rename = "why")]
    pub reason: Reason,
    /// What an interrupted build resumed from, for a node the run had to build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// Wall seconds spent building (0 when cached).
    pub seconds: f64,
    /// The Slurm job that builds it, when run with `--executor slurm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl RecordNode {
    /// Why it was cached or ran, as one sentence: what `dml run` said of it (with what an
    /// interrupted build resumed from), `dml run --json`'s `reason` (with or without Slurm).
    pub fn explanation(&self) -> String {
        self.reason.sentence(self.resume.as_deref())
    }
}

/// A record node as any version wrote it: today the typed reason (`why`) and the resume
/// note (`resume`); before, the sentence (`reason`) beside the typed reason, whose tail
/// was the resume note; before reasons were typed, the sentence alone.
#[derive(Deserialize)]
struct StoredNode {
    #[serde(flatten)]
    identity: NodeIdentity,
    status: NodeStatus,
    #[serde(default)]
    why: Option<Reason>,
    #[serde(default)]
    resume: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    seconds: f64,
    #[serde(default)]
    job_id: Option<String>,
}

impl TryFrom<StoredNode> for RecordNode {
    type Error = String;

    fn try_from(n: StoredNode) -> Result<Self, String> {
        let (reason, resume) = match (n.why, n.reason) {
            (Some(why), sentence) => {
                let tail =
                    sentence.and_then(|s| s.strip_prefix(&format!("{why}; ")).map(str::to_owned));
                let resume = n.resume.or(tail);
                (why, resume)
            }
            (None, Some(sentence)) => (Reason::Recorded { sentence }, n.resume),
            (None, None) => return Err("missing field `why`".into()),
        };
        Ok(RecordNode {
            identity: n.identity,
            status: n.status,
            reason,
            resume,
            seconds: n.seconds,
            job_id: n.job_id,
        })
    }
}

/// What happened to one node in a run (the same words in every record, `--json` and
/// `dml status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Found in the store (or built by another run while this one waited).
    Cached,
    /// Built by this run.
    Ran,
    /// Fetched from the remote cache.
    Fetched,
    /// Its build failed.
    Failed,
    /// Submitted as a Slurm job (`dml run --executor slurm` without `--wait`).
    Submitted,
    /// Its Slurm job was cancelled.
    Cancelled,
    /// Not built: the run failed, was interrupted or was killed first (or is still running).
    /// (Also what an unknown word in a record from another version reads as.)
    #[serde(other)]
    NotRun,
}

impl NodeStatus {
    /// The word records and `--json` use.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Cached => "cached",
            NodeStatus::Ran => "ran",
            NodeStatus::Fetched => "fetched",
            NodeStatus::Failed => "failed",
            NodeStatus::NotRun => "not_run",
            NodeStatus::Submitted => "submitted",
            NodeStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the run had this node's artifact (built, fetched or found), so that what
    /// the record says of it can be read from the store.
    pub fn reached(self) -> bool {
        matches!(
            self,
            NodeStatus::Cached | NodeStatus::Ran | NodeStatus::Fetched
        )
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended (or that it has not ended yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still running, or killed (`kill -9`, a crash, a power cut): a record is written when
    /// a run starts, and a killed run never rewrites it. [`RunRecord::live`] tells the two
    /// apart.
    Running,
    /// Every node finished.
    Ok,
    /// A node failed, or a check stopped the run.
    Failed,
    /// Stopped by Ctrl-C or SIGTERM.
    Interrupted,
    /// Handed to Slurm and not followed (`--executor slurm` without `--wait`).
    Submitted,
}

impl RunStatus {
    /// The word `dml runs` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Submitted => "submitted",
        }
    }
}

/// Everything a run resolved; written to `runs/<timestamp>-<name>.json` when the run
/// starts (status `running`) and rewritten in place when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run name.
    pub name: String,
    /// Start time, RFC 3339 UTC.
    pub started: String,
    /// Wall seconds.
    pub seconds: f64,
    /// `ok`, `interrupted`, `running` or the error, as a sentence.
    pub outcome: String,
    /// How the run ended (absent in records written before it existed: see
    /// [`RunRecord::run_status`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// The live registration (`runs/live/<tag>.json`) the run held while it ran: a record
    /// still `running` whose registration is gone or unlocked was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// The stage `--until` stopped the run after, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The resolved configuration (everything needed to rebuild the run).
    pub config: Value,
    /// The nodes.
    pub nodes: Vec<RecordNode>,
    /// Versions, host, device.
    pub provenance: BTreeMap<String, Value>,
}

impl RunRecord {
    /// Fills in what the executor did to each node (its summary is in plan order, as the
    /// record's nodes are): the status, the seconds, and for a node another process built
    /// meanwhile, that reason.
    pub fn apply(&mut self, summary: &ExecSummary) {
        for (node, outcome) in self.nodes.iter_mut().zip(&summary.outcomes) {
            let (status, seconds) = match outcome {
                Outcome::Cached => (NodeStatus::Cached, 0.0),
                Outcome::Ran(s) => (NodeStatus::Ran, *s),
                Outcome::BuiltElsewhere => {
                    node.reason = Reason::BuiltElsewhere;
                    node.resume = None;
                    (NodeStatus::Cached, 0.0)
                }
                Outcome::Fetched(s) => (NodeStatus::Fetched, *s),
                Outcome::Failed(_) => (NodeStatus::Failed, 0.0),
                Outcome::NotRun => (NodeStatus::NotRun, 0.0),
            };
            node.status = status;
            node.seconds = seconds;
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

    /// The run's status; records written before statuses existed say it in `outcome`.
    pub fn run_status(&self) -> RunStatus {
        self.status.unwrap_or(match self.outcome.as_str() {
            "ok" => RunStatus::Ok,
            "submitted" => RunStatus::Submitted,
            _ => RunStatus::Failed,
        })
    }

    /// Sets how the run ended, with `outcome` as its sentence.
    pub fn finish(&mut self, status: RunStatus, outcome: impl Into<String>) {
        self.status = Some(status);
        self.outcome = outcome.into();
    }

    /// Whether the run reached every node it planned (none failed, was skipped or is
    /// pending) and was not stopped early by `--until`: what `latest/` links and the
    /// commands that read a run by its name use.
    pub fn complete(&self) -> bool {
        self.run_status() == RunStatus::Ok
            && self.until.is_none()
            && self.nodes.iter().all(|n| n.status.reached())
    }

    /// Whether the run had the artifact of `node`: a stage, a node id, its folder name
    /// (see [`node_dir_name`]), or (when no node is of that stage) a prefix of an id.
    pub fn reaches(&self, node: &str) -> bool {
        let of_stage = self.nodes.iter().any(|n| n.stage == node);
        self.nodes.iter().any(|n| {
            n.status.reached()
                && (n.stage == node
                    || n.id == node
                    || node_dir_name(&n.id) == node
                    || (!of_stage && n.id.starts_with(node)))
        })
    }

    /// Rewrites a saved record in place (atomically: a reader sees the old or the new one).
    pub fn rewrite(&self, path: &Path) -> Result<(), PipelineError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let text = serde_json::to_string_pretty(self).map_err(|e| record_err(path, e))?;
        std::fs::write(&tmp, text).map_err(|e| record_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| record_err(path, e))
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

/// A node id as a folder name: `train[train.loss=npairs]` → `train@train.loss=npairs`,
/// `train:untrained` → `train@untrained`.
pub fn node_dir_name(id: &str) -> String {
    let s: String = id
        .chars()
        .filter(|c| *c != ']')
        .map(|c| match c {
            '[' | ':' => '@',
            '/' | '\\' | ' ' | '"' => '_',
            c => c,
        })
        .collect();
    s
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
    fn the_executors_outcomes_become_statuses_seconds_and_reasons() {
        let node = |id: &str| RecordNode {
            identity: NodeIdentity {
                id: id.into(),
                stage: id.into(),
                key: "k".repeat(64),
                version: 1,
                settings: serde_json::json!({}),
                inputs: BTreeMap::new(),
                input_ids: BTreeMap::new(),
                fingerprint: None,
            },
            status: NodeStatus::NotRun,
            reason: Reason::NoArtifact,
            resume: Some("resumes from the checkpoint at step 4".into()),
            seconds: 0.0,
            job_id: None,
        };
        let ids = ["a", "b", "c", "d", "e", "f"];
        let mut record = RunRecord {
            name: "r".into(),
            started: String::new(),
            seconds: 0.0,
            outcome: "running".into(),
            status: Some(RunStatus::Running),
            live: None,
            until: None,
            config: serde_json::json!({}),
            nodes: ids.iter().map(|id| node(id)).collect(),
            provenance: BTreeMap::new(),
        };
        record.apply(&ExecSummary {
            outcomes: vec![
                Outcome::Cached,
                Outcome::Ran(2.5),
                Outcome::BuiltElsewhere,
                Outcome::Fetched(0.5),
                Outcome::Failed("boom".into()),
                Outcome::NotRun,
            ],
        });
        let got: Vec<(NodeStatus, f64)> =
            record.nodes.iter().map(|n| (n.status, n.seconds)).collect();
        assert_eq!(
            got,
            [
                (NodeStatus::Cached, 0.0),
                (NodeStatus::Ran, 2.5),
                (NodeStatus::Cached, 0.0),
                (NodeStatus::Fetched, 0.5),
                (NodeStatus::Failed, 0.0),
                (NodeStatus::NotRun, 0.0),
            ]
        );
        // Only the node another process built changes its reason.
        assert_eq!(record.nodes[2].reason, Reason::BuiltElsewhere);
        assert_eq!(
            record.nodes[2].explanation(),
            "built by another dml run while this one waited for it"
        );
        assert_eq!(record.nodes[1].reason, Reason::NoArtifact);
        assert_eq!(
            record.nodes[1].explanation(),
            "no artifact yet; resumes from the checkpoint at step 4"
        );
    }

    /// A `train` node as a record stores it, with `reason` (the reason's fields) inside.
    fn stored(reason: &str) -> String {
        let key = "k".repeat(64);
        format!(
            r#"{{"id": "train", "stage": "train", "key": "{key}", "version": 3,
                "settings": {{"plan": {{"seed": 1}}}}, "inputs": {{"data": "abc"}},
                "input_ids": {{"data": "index"}}, "fingerprint": null, "status": "ran",
                {reason}, "seconds": 12.5}}"#
        )
    }

    fn seed_changed() -> Reason {
        Reason::Changed {
            changes: vec![crate::Change::Setting {
                path: "plan.seed".into(),
                old: "0".into(),
                new: "1".into(),
            }],
        }
    }

    const SEED_WHY: &str = r#""why": {"kind": "changed", "changes":
        [{"kind": "setting", "path": "plan.seed", "old": "0", "new": "1"}]}"#;

    #[test]
    fn records_written_before_typed_reasons_keep_their_sentence() {
        let sentence = "input index changed; resumes from the checkpoint at step 400";
        let text = stored(&format!(r#""reason": "{sentence}""#));
        let n: RecordNode = serde_json::from_str(&text).unwrap();
        assert_eq!(
            n.reason,
            Reason::Recorded {
                sentence: sentence.into()
            }
        );
        assert_eq!(n.resume, None);
        assert_eq!(n.explanation(), sentence);
        assert_eq!(
            (n.id.as_str(), n.status, n.seconds),
            ("train", NodeStatus::Ran, 12.5)
        );
        assert_eq!(n.input_ids["data"], "index");
        // Written again, it keeps the sentence (typed as recorded) and reads back the same.
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["why"]["kind"], "recorded");
        assert!(v.get("reason").is_none(), "{v}");
        let back: RecordNode = serde_json::from_value(v).unwrap();
        assert_eq!(back.explanation(), sentence);
    }

    #[test]
    fn records_with_the_sentence_beside_the_typed_reason_read_the_typed_one() {
        let sentence = "plan.seed changed 0 → 1; resumes from the checkpoint at step 4";
        let text = stored(&format!(r#""reason": "{sentence}", {SEED_WHY}"#));
        let n: RecordNode = serde_json::from_str(&text).unwrap();
        assert_eq!(n.reason, seed_changed());
        assert_eq!(
            n.resume.as_deref(),
            Some("resumes from the checkpoint at step 4")
        );
        assert_eq!(n.explanation(), sentence);

        let text = stored(&format!(
            r#""reason": "plan.seed changed 0 → 1", {SEED_WHY}"#
        ));
        let n: RecordNode = serde_json::from_str(&text).unwrap();
        assert_eq!(n.reason, seed_changed());
        assert_eq!(n.resume, None);
        assert_eq!(n.explanation(), "plan.seed changed 0 → 1");
    }

    #[test]
    fn records_store_the_typed_reason_and_the_resume_note_only() {
        let text = stored(&format!(
            r#"{SEED_WHY}, "resume": "resumes from the checkpoint at step 4""#
        ));
        let n: RecordNode = serde_json::from_str(&text).unwrap();
        assert_eq!(n.reason, seed_changed());
        let v = serde_json::to_value(&n).unwrap();
        assert!(v.get("reason").is_none(), "{v}");
        assert_eq!(v["resume"], "resumes from the checkpoint at step 4");
        assert_eq!(v["why"], serde_json::to_value(seed_changed()).unwrap());
        let back: RecordNode = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
        assert_eq!(
            back.explanation(),
            "plan.seed changed 0 → 1; resumes from the checkpoint at step 4"
        );

        // No note, no key; and a node with no reason at all is not a record node.
        let n: RecordNode = serde_json::from_str(&stored(r#""why": {"kind": "cached"}"#)).unwrap();
        let v = serde_json::to_value(&n).unwrap();
        assert!(v.get("resume").is_none(), "{v}");
        assert_eq!(n.explanation(), "artifact found");
        let missing = serde_json::from_str::<RecordNode>(&stored(r#""job_id": "7""#));
        assert!(missing.unwrap_err().to_string().contains("why"));
    }

    #[test]
    fn records_saved_in_the_same_millisecond_are_all_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        let record = RunRecord {
            name: "same".into(),
            started: String::new(),
            seconds: 0.0,
            outcome: "ok".into(),
            status: Some(RunStatus::Ok),
            live: None,
            until: None,
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
