//! What a stage body sees in the worker ([`WorkerCtx`]): the engine's `RunContext` questions
//! answered from the request, with progress and notes sent back to `dml` as
//! [`WorkerEvent`] lines on stdout.
use anyhow::{anyhow, bail};
use dml_jobspec::protocol::{WorkerEvent, WorkerRequest};
use indicatif::ProgressBar;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often progress is sent to `dml`.
const TICK: Duration = Duration::from_millis(100);

/// The event stream on stdout, shared by the stage and the progress thread.
#[derive(Clone)]
pub(crate) struct Events(Arc<Mutex<std::io::Stdout>>);

impl Events {
    pub(crate) fn new() -> Self {
        Events(Arc::new(Mutex::new(std::io::stdout())))
    }

    pub(crate) fn send(&self, e: &WorkerEvent) {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A closed pipe means dml is gone; the worker dies with it anyway.
        if let Ok(line) = serde_json::to_string(e) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// A bar the progress thread watches: what it last sent.
struct Watched {
    bar: ProgressBar,
    pos: u64,
    msg: String,
    done: bool,
}

/// What a stage body sees in the worker: the same questions as the engine's `RunContext`
/// answers, from the request, with progress and notes sent back to `dml`.
pub struct WorkerCtx {
    pub(crate) request: WorkerRequest,
    pub(crate) notes: serde_json::Map<String, serde_json::Value>,
    events: Events,
    bars: Arc<Mutex<Vec<Watched>>>,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl WorkerCtx {
    pub(crate) fn new(request: WorkerRequest, events: Events) -> Self {
        let bars: Arc<Mutex<Vec<Watched>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (bars, stop, events) = (bars.clone(), stop.clone(), events.clone());
            std::thread::spawn(move || loop {
                let last = stop.load(Ordering::Acquire);
                send_changes(&bars, &events);
                if last {
                    return;
                }
                // `finish` unparks it, so the stage's end waits for no tick.
                std::thread::park_timeout(TICK);
            })
        };
        WorkerCtx {
            request,
            notes: serde_json::Map::new(),
            events,
            bars,
            stop,
            ticker: Some(ticker),
        }
    }

    /// Stops the progress thread after a last update of every bar.
    pub(crate) fn finish(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }

    /// The directory to write outputs into (the engine's temporary directory).
    pub fn out_dir(&self) -> &Path {
        &self.request.out_dir
    }

    /// The directory of an input artifact, by role.
    pub fn input(&self, role: &str) -> anyhow::Result<&Path> {
        self.request
            .inputs
            .get(role)
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                anyhow!(
                    "stage `{}` was sent no input `{role}` (a DAG assembly bug)",
                    self.request.node
                )
            })
    }

    /// This artifact's key.
    pub fn key(&self) -> &str {
        &self.request.key
    }

    /// The node id.
    pub fn node(&self) -> &str {
        &self.request.node
    }

    /// The scheduler's device slot.
    pub fn device_index(&self) -> Option<usize> {
        self.request.device_index
    }

    /// The key's cache directory `name` (only `checkpoints`, which `dml` created and the
    /// engine removes once the artifact is committed).
    pub fn key_cache_dir(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        match (&self.request.checkpoint_dir, name) {
            (Some(dir), "checkpoints") => Ok(dir.clone()),
            _ => bail!(
                "stage `{}` was sent no `{name}` directory (a worker protocol bug)",
                self.request.node
            ),
        }
    }

    /// Records a note for the artifact's manifest.
    pub fn note(&mut self, key: &str, value: serde_json::Value) {
        self.notes.insert(key.to_string(), value);
    }

    /// A progress bar, drawn (or logged) by `dml`.
    pub fn progress(&self, len: u64, template: &str) -> ProgressBar {
        let bar = ProgressBar::hidden();
        bar.set_length(len);
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        self.events.send(&WorkerEvent::Bar {
            id: bars.len(),
            len,
            template: template.to_string(),
        });
        bars.push(Watched {
            bar: bar.clone(),
            pos: 0,
            msg: String::new(),
            done: false,
        });
        bar
    }
}

impl Drop for WorkerCtx {
    fn drop(&mut self) {
        self.finish();
    }
}

fn send_changes(bars: &Mutex<Vec<Watched>>, events: &Events) {
    let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
    for (id, w) in bars.iter_mut().enumerate() {
        if w.done {
            continue;
        }
        let (pos, msg) = (w.bar.position(), w.bar.message());
        if pos != w.pos || msg != w.msg {
            events.send(&WorkerEvent::Tick {
                id,
                pos,
                msg: msg.clone(),
            });
            (w.pos, w.msg) = (pos, msg);
        }
        if w.bar.is_finished() {
            events.send(&WorkerEvent::Done { id });
            w.done = true;
        }
    }
}

/// `std::fs::write` whose error names the file.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    Ok(dml_artifacts::fsx::write(path, contents)?)
}
