//! The remote cache as the engine sees it: a synchronous trait (implemented over
//! S3 by `dml-remote`, kept out of the engine so it needs no async runtime), the
//! `remote` plan status, fetch-before-build and upload-after-build.
//!
//! The remote can only ever save work: an unreachable remote, a refused
//! credential or a timeout becomes a warning and a local build, and an object
//! whose content does not match its manifest is refused and built locally.
use crate::{Outcome, Plan, PlannedNode, Status};
use dml_artifacts::{ArtifactStore, StoreError};
use indicatif::MultiProgress;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// A shared cache of finished artifacts, addressed by (stage, key).
pub trait RemoteCache: Send + Sync + std::fmt::Debug {
    /// Where the remote is (`s3://bucket/prefix`), for messages.
    fn location(&self) -> String;
    /// False for stages whose artifacts are never shared (the `remote_skip` setting).
    fn shares(&self, stage: &str) -> bool;
    /// False for a read-only remote: what this process builds is not uploaded.
    fn accepts_uploads(&self) -> bool {
        true
    }
    /// Which of `items` (stage, key) the remote holds a finished artifact for,
    /// asked all at once with a short timeout.
    fn contains_all(&self, items: &[(String, String)]) -> Result<Vec<bool>, RemoteError>;
    /// Downloads an artifact into `store` (its tmp/), verifies every file against
    /// the manifest and the manifest against the key, and commits it; or leaves
    /// nothing behind.
    fn fetch(
        &self,
        stage: &str,
        key: &str,
        store: &ArtifactStore,
        progress: &MultiProgress,
    ) -> Result<FetchOutcome, RemoteError>;
    /// Uploads the finished artifact in `dir`: files first, the manifest last
    /// and only if no other uploader's manifest is there already.
    fn upload(
        &self,
        stage: &str,
        key: &str,
        dir: &Path,
        progress: &MultiProgress,
    ) -> Result<UploadOutcome, RemoteError>;
}

/// A remote shared between the scheduler's threads.
pub type SharedRemote = Arc<dyn RemoteCache>;

/// What a fetch did.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchOutcome {
    /// Downloaded, verified and committed: so many bytes.
    Fetched {
        /// Bytes downloaded.
        bytes: u64,
    },
    /// The remote does not hold this key.
    Absent,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadOutcome {
    /// Uploaded: so many files and bytes (files already there are not sent again).
    Uploaded {
        /// Files sent.
        files: usize,
        /// Bytes sent.
        bytes: u64,
    },
    /// Another uploader's manifest for this key was there first; nothing replaced.
    AlreadyThere,
}

/// What can go wrong with a remote. None of it fails a run.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Network, credentials, timeouts, a missing bucket.
    #[error("the remote cache {location} is not usable ({message}); building locally")]
    Unavailable {
        /// The remote.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// The remote was found unusable earlier in this process; not asked again.
    #[error("the remote cache {location} was found unusable earlier in this run")]
    Offline {
        /// The remote.
        location: String,
    },
    /// The object's content does not match its manifest, or the manifest its key.
    #[error("refused {stage} {key} from the remote cache: {why}; building it locally")]
    Refused {
        /// Stage name.
        stage: String,
        /// Key.
        key: String,
        /// Which file or field did not match, and how.
        why: String,
    },
    /// The local store failed while staging a download or reading an upload.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Plan {
    /// Marks every node that must run but whose artifact the remote holds as
    /// [`Status::Remote`] (one HEAD per node, all at once). An unusable remote
    /// leaves the plan as it was and returns the error, for a warning.
    pub fn mark_remote(&mut self, remote: &dyn RemoteCache) -> Result<usize, RemoteError> {
        let asked: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.status == Status::Run && remote.shares(&n.stage)
            })
            .collect();
        if asked.is_empty() {
            return Ok(0);
        }
        let items: Vec<(String, String)> = asked
            .iter()
            .map(|&i| (self.nodes[i].stage.clone(), self.nodes[i].key.clone()))
            .collect();
        let present = remote.contains_all(&items)?;
        let mut marked = 0;
        for (&i, there) in asked.iter().zip(present) {
            if there {
                self.nodes[i].status = Status::Remote;
                marked += 1;
            }
        }
        Ok(marked)
    }
}

/// Before building `node`: fetches it if the plan found it on the remote.
/// `Some(outcome)` when it came from the remote; `None` to build it locally
/// (the remote's refusal or failure is reported through `warn`).
pub(crate) fn try_fetch(
    remote: Option<&SharedRemote>,
    node: &PlannedNode,
    store: &ArtifactStore,
    progress: &MultiProgress,
    warn: &dyn Fn(&str),
) -> Option<Outcome> {
    let remote = remote?;
    if node.status != Status::Remote {
        return None;
    }
    let started = std::time::Instant::now();
    match remote.fetch(&node.stage, &node.key, store, progress) {
        Ok(FetchOutcome::Fetched { .. }) => Some(Outcome::Fetched(started.elapsed().as_secs_f64())),
        Ok(FetchOutcome::Absent) => {
            warn("listed on the remote cache but gone when fetched; building locally");
            None
        }
        Err(RemoteError::Offline { .. }) => None,
        Err(e) => {
            warn(&e.to_string());
            None
        }
    }
}

/// Uploads built artifacts on a background thread, so the next stages need
/// not wait for the network; [`Uploads::finish`] waits for the last one.
pub(crate) struct Uploads {
    tx: Mutex<Option<mpsc::Sender<UploadJob>>>,
    handle: Option<std::thread::JoinHandle<Vec<UploadReport>>>,
}

/// One queued upload: plan index, stage, key, artifact directory.
type UploadJob = (usize, String, String, PathBuf);

/// One upload's result, by plan index.
pub(crate) type UploadReport = (usize, Result<UploadOutcome, RemoteError>);

impl Uploads {
    /// Starts the uploader (nothing when there is no remote).
    pub(crate) fn start(remote: Option<&SharedRemote>, progress: &MultiProgress) -> Option<Self> {
        let remote = remote.filter(|r| r.accepts_uploads())?.clone();
        let progress = progress.clone();
        let (tx, rx) = mpsc::channel::<UploadJob>();
        let handle = std::thread::spawn(move || {
            let mut reports = Vec::new();
            for (i, stage, key, dir) in rx {
                let r = remote.upload(&stage, &key, &dir, &progress);
                reports.push((i, r));
            }
            reports
        });
        Some(Uploads {
            tx: Mutex::new(Some(tx)),
            handle: Some(handle),
        })
    }

    /// Queues the upload of a node this process just built (if its stage is shared).
    pub(crate) fn push(
        &self,
        remote: Option<&SharedRemote>,
        i: usize,
        node: &PlannedNode,
        store: &ArtifactStore,
    ) {
        if remote.is_some_and(|r| !r.shares(&node.stage)) {
            return;
        }
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref() {
            let dir = store.object_dir(&node.stage, &node.key);
            let _ = tx.send((i, node.stage.clone(), node.key.clone(), dir));
        }
    }

    /// Waits for every queued upload; their results in queue order.
    pub(crate) fn finish(mut self) -> Vec<UploadReport> {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(reports)) => reports,
            _ => Vec::new(),
        }
    }
}
