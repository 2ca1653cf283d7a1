//! Ctrl-C and SIGTERM during `dml run`: say what is kept before exiting.
//!
//! Nothing needs saving at that moment: finished artifacts are already
//! committed, a stage being written lives in `tmp/` and never becomes visible
//! (gc removes it), and training resumes from its last checkpoint. The handler
//! only tells the user so, naming the stages that were running.
use signal_hook::consts::{SIGINT, SIGTERM};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The stages running now, shared with the signal thread.
#[derive(Clone)]
pub struct Running {
    nodes: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Running {
    /// Starts the signal thread (once per process; a failure to install it only
    /// loses the message, never the run).
    pub fn install(store: &Path) -> Running {
        let running = Running {
            nodes: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let shared = running.clone();
        let store = store.to_path_buf();
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        eprintln!("{}", shared.message(&store));
                        std::process::exit(128 + sig);
                    }
                });
            }
            Err(e) => tracing::debug!("no signal handler: {e}"),
        }
        running
    }

    /// A node started.
    pub fn started(&self, id: &str, stage: &str) {
        self.lock().insert(id.to_string(), stage.to_string());
    }

    /// A node finished or failed.
    pub fn finished(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the user is told on an interrupt.
    pub fn message(&self, store: &Path) -> String {
        let nodes = self.lock();
        let mut msg = format!(
            "\ninterrupted: every finished stage is kept in {}; `dml run` with the same settings continues from there",
            store.display()
        );
        if nodes.is_empty() {
            return msg;
        }
        let ids: Vec<&str> = nodes.keys().map(String::as_str).collect();
        msg.push_str(&format!(
            "\n  stopped while running: {} (their partial output in tmp/ is discarded)",
            ids.join(", ")
        ));
        for (id, stage) in nodes.iter().filter(|(_, s)| s.as_str() == "train") {
            let _ = stage;
            msg.push_str(&format!(
                "\n  {id}: resumes from its last checkpoint (every train.checkpoint_every steps) in {}",
                checkpoints(store).display()
            ));
        }
        msg
    }
}

fn checkpoints(store: &Path) -> PathBuf {
    store.join("cache").join("checkpoints")
}
