//! The remote cache as the engine sees it: a synchronous trait (implemented over
//! S3 by `dml-remote`, kept out of the engine so it needs no async runtime), the
//! `remote` plan status, fetch-before-build and upload-after-build.
//!
//! The remote can only ever save work: an unreachable remote, a refused
//! credential or a timeout becomes a warning and a local build, and an object
//! whose content does not match its manifest is refused and built locally.
use crate::{Plan, PlannedNode, Status};
use dml_artifacts::{ArtifactStore, StoreError};
use indicatif::MultiProgress;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// How long the end of a run waits, after its last stage, for the uploads
    /// still running in the background (`store.remote_upload_wait`).
    fn upload_wait(&self) -> Duration {
        Duration::from_secs(300)
    }
    /// Gives the remote up for the rest of this process: every later call
    /// answers [`RemoteError::Offline`] at once. Called when the end of a run
    /// stops waiting for its uploads.
    fn give_up(&self) {}
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
    /// The end of a run stopped waiting for this upload (`store.remote_upload_wait`).
    #[error(
        "the upload to {location} did not finish within store.remote_upload_wait = {seconds}s"
    )]
    Unfinished {
        /// The remote.
        location: String,
        /// Seconds waited after the last stage.
        seconds: f64,
    },
    /// The local store failed while staging a download or reading an upload.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RemoteError {
    /// What to tell the user about an upload that failed with this error.
    pub fn not_uploaded(&self) -> String {
        let later = "`dml push` uploads it later";
        match self {
            RemoteError::Unavailable { location, message } => format!(
                "not uploaded: the remote cache {location} is not usable ({message}); {later}"
            ),
            RemoteError::Offline { location } => format!(
                "not uploaded: the remote cache {location} was found unusable earlier in this run; {later}"
            ),
            RemoteError::Unfinished { .. } => format!("not uploaded: {self}; {later}"),
            RemoteError::Refused { .. } | RemoteError::Store(_) => format!("not uploaded: {self}"),
        }
    }
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
/// `Some(seconds)` when it came from the remote; `None` to build it locally
/// (the remote's refusal or failure is reported through `warn`).
pub(crate) fn try_fetch(
    remote: Option<&SharedRemote>,
    node: &PlannedNode,
    store: &ArtifactStore,
    progress: &MultiProgress,
    warn: &dyn Fn(&str),
) -> Option<f64> {
    let remote = remote?;
    if node.status != Status::Remote {
        return None;
    }
    let started = std::time::Instant::now();
    match remote.fetch(&node.stage, &node.key, store, progress) {
        Ok(FetchOutcome::Fetched { .. }) => Some(started.elapsed().as_secs_f64()),
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
/// not wait for the network. [`Uploads::finish`] waits for the last one, at
/// most [`RemoteCache::upload_wait`]: a remote that hangs cannot hold the end
/// of a run, and what it did not take is reported as not uploaded.
pub(crate) struct Uploads {
    remote: SharedRemote,
    tx: Mutex<Option<mpsc::Sender<UploadJob>>>,
    /// Results as uploads finish (a `Mutex` only so that `Uploads` is `Sync`).
    done: Mutex<mpsc::Receiver<UploadReport>>,
    /// Plan indices queued, in order.
    queued: Mutex<Vec<usize>>,
    /// Set when the wait is over: the uploader starts nothing more.
    stop: Arc<AtomicBool>,
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
        let (done_tx, done) = mpsc::channel::<UploadReport>();
        let stop = Arc::new(AtomicBool::new(false));
        let (uploader, stopped) = (remote.clone(), stop.clone());
        // Detached: when the wait at the end is over, a hung request must not
        // keep the process alive; it ends with the process.
        std::thread::spawn(move || {
            for (i, stage, key, dir) in rx {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let r = uploader.upload(&stage, &key, &dir, &progress);
                if done_tx.send((i, r)).is_err() {
                    break;
                }
            }
        });
        Some(Uploads {
            remote,
            tx: Mutex::new(Some(tx)),
            done: Mutex::new(done),
            queued: Mutex::new(Vec::new()),
            stop,
        })
    }

    /// Queues the upload of a node this process just built (if its stage is shared).
    pub(crate) fn push(&self, i: usize, node: &PlannedNode, store: &ArtifactStore) {
        if !self.remote.shares(&node.stage) {
            return;
        }
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref() {
            let dir = store.object_dir(&node.stage, &node.key);
            if tx
                .send((i, node.stage.clone(), node.key.clone(), dir))
                .is_ok()
            {
                self.queued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(i);
            }
        }
    }

    /// Waits for every queued upload, at most [`RemoteCache::upload_wait`];
    /// their results in the order they finished, then the uploads the wait
    /// gave up on ([`RemoteError::Unfinished`]), in queue order.
    pub(crate) fn finish(self) -> Vec<UploadReport> {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let wait = self.remote.upload_wait();
        let deadline = Instant::now() + wait;
        let done = self.done.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut reports: Vec<UploadReport> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match done.recv_timeout(left) {
                Ok(r) => reports.push(r),
                // The uploader finished the queue (or died: nothing more will come).
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.stop.store(true, Ordering::SeqCst);
                    self.remote.give_up();
                    break;
                }
            }
        }
        let queued = self.queued.into_inner().unwrap_or_else(|p| p.into_inner());
        let finished: HashSet<usize> = reports.iter().map(|(i, _)| *i).collect();
        for i in queued.into_iter().filter(|i| !finished.contains(i)) {
            reports.push((
                i,
                Err(RemoteError::Unfinished {
                    location: self.remote.location(),
                    seconds: wait.as_secs_f64(),
                }),
            ));
        }
        reports
    }
}
