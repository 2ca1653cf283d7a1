//! Ctrl-C and SIGTERM during `dml run`: stop cleanly, record the run as interrupted and
//! say what is kept.
//!
//! Finished artifacts are already committed, so nothing needs saving. The handler stops
//! the training workers, removes the temporary directories of the stages that were
//! running (they never become artifacts), rewrites the run record (written when the run
//! started) with status `interrupted`, so `dml runs` lists it and `dml gc` keeps the
//! checkpoints its train stages resume from, drops the live registration, says what
//! was kept and where each train stage resumes, and exits.
use dml_artifacts::ArtifactStore;
use dml_pipeline::{NodeStatus, RunRecord, RunStatus};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A node that is building now.
struct Building {
    stage: String,
    key: String,
}

struct Shared {
    /// Node id → what is building.
    running: BTreeMap<String, Building>,
    /// The record as saved when the run started, updated as nodes finish.
    record: RunRecord,
    /// The record is final: written by the handler (the main thread must not rewrite it)
    /// or by the main thread at the end (the handler must not).
    settled: bool,
}

/// The run's state, shared with the signal thread.
#[derive(Clone)]
pub struct Running {
    shared: Arc<Mutex<Shared>>,
}

impl Running {
    /// Starts the signal thread (once per process; a failure to install it only loses the
    /// clean stop, never the run).
    pub fn install(
        store: &ArtifactStore,
        record_path: &Path,
        record: RunRecord,
        live: &Path,
    ) -> Running {
        let running = Running {
            shared: Arc::new(Mutex::new(Shared {
                running: BTreeMap::new(),
                record,
                settled: false,
            })),
        };
        let shared = running.clone();
        let store = store.clone();
        let record_path = record_path.to_path_buf();
        let live = live.to_path_buf();
        let started = Instant::now();
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        let msg = shared.stop(&store, &record_path, &live, sig, started);
                        eprintln!("{msg}");
                        std::process::exit(128 + sig);
                    }
                });
            }
            Err(e) => tracing::debug!("no signal handler: {e}"),
        }
        running
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node started building.
    pub fn started(&self, id: &str, stage: &str, key: &str) {
        self.lock().running.insert(
            id.to_string(),
            Building {
                stage: stage.to_string(),
                key: key.to_string(),
            },
        );
    }

    /// A node ended (built, fetched or failed).
    pub fn finished(&self, id: &str, status: NodeStatus, seconds: f64) {
        let mut s = self.lock();
        s.running.remove(id);
        if let Some(n) = s.record.nodes.iter_mut().find(|n| n.id == id) {
            n.status = status;
            n.seconds = seconds;
        }
    }

    /// Runs `write` (the main thread's final record and links) under the lock, unless the
    /// run was interrupted meanwhile: then the handler wrote the record and the process is
    /// exiting, and `write` never runs.
    pub fn finish_with<T>(&self, write: impl FnOnce() -> T) -> Option<T> {
        let mut s = self.lock();
        if s.settled {
            return None;
        }
        let out = write();
        s.settled = true;
        Some(out)
    }

    /// Stops the run: workers, temporary directories, the record, the registration.
    /// Returns what the user is told.
    fn stop(
        &self,
        store: &ArtifactStore,
        record_path: &Path,
        live: &Path,
        sig: i32,
        started: Instant,
    ) -> String {
        let mut s = self.lock();
        dml_stages::worker::kill_workers();
        if s.settled {
            return "\ninterrupted after the run had finished: nothing was lost".into();
        }
        s.settled = true;
        for b in s.running.values() {
            for dir in staging_dirs(store, &b.stage, &b.key) {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
        let running_ids: Vec<String> = s.running.keys().cloned().collect();
        let record = &mut s.record;
        for n in record.nodes.iter_mut() {
            if running_ids.contains(&n.id) {
                n.status = NodeStatus::NotRun;
            }
        }
        record.seconds = started.elapsed().as_secs_f64();
        record.finish(RunStatus::Interrupted, format!("interrupted by {name}"));
        let saved = record.rewrite(record_path);
        let _ = std::fs::remove_file(live);
        let mut msg = format!(
            "\ninterrupted: every finished stage is kept in {}; `dml run` with the same settings continues from there",
            store.root().display()
        );
        match saved {
            Ok(()) => msg.push_str(&format!(
                "\n  run record: {} (status interrupted)",
                record_path.display()
            )),
            Err(e) => msg.push_str(&format!("\n  the run record could not be updated: {e}")),
        }
        if s.running.is_empty() {
            return msg;
        }
        msg.push_str(&format!(
            "\n  stopped while running: {} (their partial output was discarded)",
            running_ids.join(", ")
        ));
        for (id, b) in s.running.iter().filter(|(_, b)| b.stage == "train") {
            msg.push_str(&format!("\n  {id}: {}", resume_point(store, &b.key)));
        }
        msg
    }
}

/// The temporary directories a build of (stage, key) writes (`tmp/<stage>-<key>-<rand>`).
fn staging_dirs(store: &ArtifactStore, stage: &str, key: &str) -> Vec<PathBuf> {
    let prefix = format!("{stage}-{key}-");
    std::fs::read_dir(store.layout().tmp())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Where an interrupted train stage will resume: its newest checkpoint, or nowhere yet.
fn resume_point(store: &ArtifactStore, key: &str) -> String {
    let dir = store.layout().checkpoint(key);
    match dml_jobspec::resume::Checkpoints::new(dir.clone()).latest() {
        Some((step, _)) => format!(
            "resumes from its checkpoint at step {step} ({})",
            dir.display()
        ),
        None => "had written no checkpoint yet (one is written every `train.checkpoint_every` steps): it starts over".into(),
    }
}
