//! The worker protocol: what `dml` sends the training worker (`dml-torch run-stage`) on its
//! stdin — a [`WorkerRequest`], one JSON object — and what the worker answers on its stdout,
//! one [`WorkerEvent`] per line. `dml_stages::worker` is the `dml` side; `dml_torch::worker`
//! the worker's.
use crate::jobs::WorkerJob;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
