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
use crate::error::StageError;
use dml_jobspec::jobs::WorkerJob;
use dml_jobspec::protocol::{WorkerEvent, WorkerRequest, PARENT_PID_VAR};
use dml_pipeline::RunContext;
use indicatif::ProgressBar;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// Runs a stage's `job` in the worker with the inputs of `roles` and, with `checkpoints`, the
/// key's checkpoint directory; forwards its progress and notes to `ctx`.
pub fn run_in_worker(
    ctx: &mut RunContext<'_>,
    job: WorkerJob,
    roles: &[&str],
    checkpoints: bool,
) -> crate::Result<serde_json::Map<String, serde_json::Value>> {
    let mut inputs = BTreeMap::new();
    for role in roles {
        let dir = ctx.input(role).map_err(StageError::Engine)?;
        inputs.insert(role.to_string(), dir.to_path_buf());
    }
    let request = WorkerRequest {
        job,
        node: ctx.node().to_string(),
        key: ctx.key().to_string(),
        out_dir: ctx.out_dir().to_path_buf(),
        inputs,
        checkpoint_dir: if checkpoints {
            Some(
                ctx.key_cache_dir("checkpoints")
                    .map_err(StageError::Engine)?,
            )
        } else {
            None
        },
        device_index: ctx.device_index(),
    };
    let notes = run_request(&request, &mut |len, template| ctx.progress(len, template))?;
    for (k, v) in &notes {
        ctx.note(k, v.clone());
    }
    Ok(notes)
}

/// Runs `request` in the worker (`dml-torch run-stage`), drawing its progress bars with
/// `progress` (length, indicatif template); returns the notes it sent, or its error. For
/// the stages ([`run_in_worker`]) and for the commands that use a trained network
/// (`dml embed`, `dml search`, `dml export`), which have no engine context.
pub fn run_request(
    request: &WorkerRequest,
    progress: &mut dyn FnMut(u64, &str) -> ProgressBar,
) -> crate::Result<serde_json::Map<String, serde_json::Value>> {
    let worker = worker_path()?;
    let mut cmd = Command::new(&worker);
    cmd.arg("run-stage")
        .env(PARENT_PID_VAR, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(StageError::io(format!(
        "starting the training worker `{}`",
        worker.display()
    )))?;
    let _registered = Registered::new(child.id());
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        serde_json::to_writer(&mut stdin, request)
            .map_err(StageError::json("sending the job to the training worker"))?;
        stdin
            .flush()
            .map_err(StageError::io("sending the job to the training worker"))?;
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut bars: HashMap<usize, ProgressBar> = HashMap::new();
    let mut outcome: Option<Result<(), String>> = None;
    let mut notes = serde_json::Map::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(StageError::io("reading the training worker's output"))?;
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
    let status = child
        .wait()
        .map_err(StageError::io("waiting for the training worker"))?;
    match (outcome, status.success()) {
        (Some(Ok(())), true) => Ok(notes),
        (Some(Err(message)), _) => Err(StageError::Worker(message)),
        (_, _) => Err(StageError::Worker(format!(
            "the training worker `{}` {}",
            worker.display(),
            describe(status)
        ))),
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
