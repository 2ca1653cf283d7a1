//! Running a stage in the training worker, the one executable that links libtorch.
//!
//! `dml` never loads libtorch: browsing, planning, `eval` and the data and evaluation stages
//! start in milliseconds. The train and embed stages hand their resolved job to
//! `dml-torch run-stage` (see [`crate::device::worker_path`]): a [`WorkerRequest`] as JSON
//! on its stdin; it answers with one [`WorkerEvent`] per line on its stdout (progress bars,
//! the manifest notes, then `ok` or `error`) and logs to the shared stderr. It writes the
//! artifact's files straight into the engine's temporary directory, so the engine commits
//! them as for any other stage. The worker dies with `dml` (`PR_SET_PDEATHSIG`), and a
//! fault hook in the worker takes `dml` down with it ([`fault_abort`]), so an interrupted
//! run leaves what a killed single process would have left.
use crate::device::worker_path;
use crate::jobs::WorkerJob;
use anyhow::{anyhow, Context};
use dml_pipeline::{BoxError, RunContext};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Environment variable holding the pid of the `dml` that started a worker.
pub const PARENT_PID_VAR: &str = "DML_PARENT_PID";
/// Environment variable holding the log filter the worker uses (`dml`'s own).
pub const LOG_VAR: &str = "DML_WORKER_LOG";

/// What `dml` sends on the worker's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRequest {
    /// The job: on the wire `"stage"` (`train`, `embed`, `embed-files`, `export`) beside
    /// `"job"`, the resolved settings.
    #[serde(flatten)]
    pub job: WorkerJob,
    /// The node id (`train[train.loss.name=npairs]`), for messages.
    pub node: String,
    /// The artifact's key.
    pub key: String,
    /// Where to write the artifact's files.
    pub out_dir: PathBuf,
    /// Input artifact directories by role.
    pub inputs: BTreeMap<String, PathBuf>,
    /// The per-key checkpoint directory (train only), removed by the engine on commit.
    pub checkpoint_dir: Option<PathBuf>,
    /// The scheduler's device slot (the GPU index), for stages on the accelerator.
    pub device_index: Option<usize>,
}

/// One line the worker writes on its stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// A progress bar starts (`ctx.progress(len, template)`).
    Bar {
        /// The worker's number for it.
        id: usize,
        /// Its length.
        len: u64,
        /// Its indicatif template.
        template: String,
    },
    /// A bar moved or its message changed.
    Tick {
        /// Which bar.
        id: usize,
        /// Position.
        pos: u64,
        /// Message.
        msg: String,
    },
    /// A bar finished (and is cleared).
    Done {
        /// Which bar.
        id: usize,
    },
    /// The manifest notes, sent once before `ok`.
    Notes {
        /// Note name → value.
        notes: serde_json::Map<String, serde_json::Value>,
    },
    /// The stage failed; the message carries the whole cause chain.
    Error {
        /// What went wrong.
        message: String,
    },
    /// The artifact's files are written.
    Ok,
}

/// Runs a stage's `job` in the worker with the inputs of `roles` and, with `checkpoints`, the
/// key's checkpoint directory; forwards its progress and notes to `ctx`.
pub fn run_in_worker(
    ctx: &mut RunContext<'_>,
    job: WorkerJob,
    roles: &[&str],
    checkpoints: bool,
) -> Result<(), BoxError> {
    let mut inputs = BTreeMap::new();
    for role in roles {
        inputs.insert(role.to_string(), ctx.input(role)?.to_path_buf());
    }
    let request = WorkerRequest {
        job,
        node: ctx.node().to_string(),
        key: ctx.key().to_string(),
        out_dir: ctx.out_dir().to_path_buf(),
        inputs,
        checkpoint_dir: if checkpoints {
            Some(ctx.key_cache_dir("checkpoints")?)
        } else {
            None
        },
        device_index: ctx.device_index(),
    };
    let notes = run_request(&request, &mut |len, template| ctx.progress(len, template))?;
    for (k, v) in notes {
        ctx.note(&k, v);
    }
    Ok(())
}

/// Runs `request` in the worker (`dml-torch run-stage`), drawing its progress bars with
/// `progress` (length, indicatif template); returns the notes it sent, or its error. For
/// the stages ([`run_in_worker`]) and for the commands that use a trained network
/// (`dml embed`, `dml search`, `dml export`), which have no engine context.
pub fn run_request(
    request: &WorkerRequest,
    progress: &mut dyn FnMut(u64, &str) -> ProgressBar,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let worker = worker_path()?;
    let mut cmd = Command::new(&worker);
    cmd.arg("run-stage")
        .env(PARENT_PID_VAR, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the training worker `{}`", worker.display()))?;
    let _registered = Registered::new(child.id());
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        serde_json::to_writer(&mut stdin, request)?;
        stdin.flush()?;
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut bars: HashMap<usize, ProgressBar> = HashMap::new();
    let mut outcome: Option<Result<(), String>> = None;
    let mut notes = serde_json::Map::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the training worker's output")?;
        let event: WorkerEvent = match serde_json::from_str(&line) {
            Ok(e) => e,
            // Something else printed on stdout (a library): pass it on.
            Err(_) => {
                eprintln!("{line}");
                continue;
            }
        };
        match event {
            WorkerEvent::Bar { id, len, template } => {
                bars.insert(id, progress(len, &template));
            }
            WorkerEvent::Tick { id, pos, msg } => {
                if let Some(b) = bars.get(&id) {
                    b.set_position(pos);
                    b.set_message(msg);
                }
            }
            WorkerEvent::Done { id } => {
                if let Some(b) = bars.remove(&id) {
                    b.finish_and_clear();
                }
            }
            WorkerEvent::Notes { notes: sent } => notes.extend(sent),
            WorkerEvent::Error { message } => outcome = Some(Err(message)),
            WorkerEvent::Ok => outcome = Some(Ok(())),
        }
    }
    for b in bars.into_values() {
        b.finish_and_clear();
    }
    let status = child.wait().context("waiting for the training worker")?;
    match (outcome, status.success()) {
        (Some(Ok(())), true) => Ok(notes),
        (Some(Err(message)), _) => Err(anyhow!(message)),
        (_, _) => Err(anyhow!(
            "the training worker `{}` {}",
            worker.display(),
            describe(status)
        )),
    }
}

/// The workers running now, so that an interrupted `dml run` can stop them before it
/// removes their half-written outputs.
static WORKERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// A worker's place in [`WORKERS`] while it runs.
struct Registered(u32);

impl Registered {
    fn new(pid: u32) -> Registered {
        WORKERS.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
        Registered(pid)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        WORKERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| *p != self.0);
    }
}

/// Kills every running worker and waits (up to two seconds) until none is running any
/// more, so nothing writes into its stage's temporary directory afterwards. For the
/// interrupt handler: the workers' own threads reap them.
pub fn kill_workers() {
    let pids: Vec<u32> = WORKERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for &pid in &pids {
        // SAFETY: sending a signal has no memory effects here.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let gone = |pid: u32| {
        // Gone, or a zombie waiting to be reaped: either way it no longer writes.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !pids.iter().all(|&p| gone(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// "was killed by signal 9 (SIGKILL)" or "exited with status 3".
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c} without saying why"),
        (None, Some(s)) => {
            let name = match s {
                libc::SIGKILL => " (SIGKILL: out of memory?)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                _ => "",
            };
            format!("was killed by signal {s}{name}")
        }
        _ => format!("ended with {status}"),
    }
}

/// The child gets SIGKILL when the thread that started it (hence `dml`) dies, so a killed
/// `dml` never leaves a worker training on.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A test hook's crash: in a worker, `dml` is killed first (as `kill -9` of the run
/// would), then this process aborts.
pub fn fault_abort() -> ! {
    if let Some(pid) = std::env::var(PARENT_PID_VAR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        // SAFETY: sending a signal has no memory effects here.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_a_line() {
        let events = [
            WorkerEvent::Bar {
                id: 0,
                len: 400,
                template: "{prefix} {pos}/{len}".into(),
            },
            WorkerEvent::Tick {
                id: 0,
                pos: 3,
                msg: "loss 0.5".into(),
            },
            WorkerEvent::Done { id: 0 },
            WorkerEvent::Error {
                message: "a\nb".into(),
            },
            WorkerEvent::Ok,
        ];
        for e in events {
            let line = serde_json::to_string(&e).unwrap();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(serde_json::from_str::<WorkerEvent>(&line).unwrap(), e);
        }
        assert_eq!(
            serde_json::to_string(&WorkerEvent::Ok).unwrap(),
            r#"{"event":"ok"}"#
        );
    }

    /// The job travels as `"stage"` beside `"job"`, as when the stage was a string and the
    /// job a JSON value, and an unknown stage is refused when the request is read.
    #[test]
    fn a_request_carries_its_job_as_stage_and_job() {
        let request = WorkerRequest {
            job: WorkerJob::Export(crate::use_model::ExportJob {
                crop: 224,
                torchscript: true,
                safetensors: false,
            }),
            node: "export".into(),
            key: "k".into(),
            out_dir: "/out".into(),
            inputs: BTreeMap::from([("train".to_string(), PathBuf::from("/t"))]),
            checkpoint_dir: None,
            device_index: None,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "stage": "export",
                "job": {"crop": 224, "torchscript": true, "safetensors": false},
                "node": "export",
                "key": "k",
                "out_dir": "/out",
                "inputs": {"train": "/t"},
                "checkpoint_dir": null,
                "device_index": null,
            })
        );
        let back: WorkerRequest = serde_json::from_value(json.clone()).unwrap();
        assert!(matches!(back.job, WorkerJob::Export(ref j) if j.crop == 224 && j.torchscript));
        let mut other = json;
        other["stage"] = "embed-files".into();
        let err = serde_json::from_value::<WorkerRequest>(other).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
        let mut unknown = serde_json::to_value(&request).unwrap();
        unknown["stage"] = "cluster".into();
        let err = serde_json::from_value::<WorkerRequest>(unknown).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `cluster`"),
            "{err}"
        );
    }
}
