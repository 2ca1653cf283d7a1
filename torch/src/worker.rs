//! The `dml-torch` executable's body: `probe` answers which CUDA devices libtorch sees;
//! `run-stage` reads a [`WorkerRequest`] on stdin, runs the train or embed body against a
//! [`WorkerCtx`] and reports to `dml` with [`WorkerEvent`] lines on stdout (the protocol is
//! `dml_jobspec::protocol`).
use crate::context::{Events, WorkerCtx};
use anyhow::{anyhow, Context};
use dml_jobspec::device::Probe;
use dml_jobspec::jobs::WorkerJob;
use dml_jobspec::protocol::{WorkerEvent, WorkerRequest, LOG_VAR};
use dml_pipeline::error_chain;
use std::io::Read;

/// The worker's entry point; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("probe") => probe(),
        Some("run-stage") => return run_stage(),
        _ => Err(anyhow!(
            "usage: dml-torch probe | dml-torch run-stage (started by dml for the train and embed stages)"
        )),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dml-torch: {e:#}");
            2
        }
    }
}

fn probe() -> anyhow::Result<()> {
    let probe = Probe {
        cuda_devices: crate::train::torch_state::cuda_device_count(),
    };
    println!("{}", serde_json::to_string(&probe)?);
    Ok(())
}

fn init_tracing() {
    let directives = std::env::var(LOG_VAR).unwrap_or_else(|_| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn run_stage() -> i32 {
    init_tracing();
    let events = Events::new();
    let result = (|| -> Result<(), dml_pipeline::BoxError> {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the stage request on stdin")?;
        let request: WorkerRequest = serde_json::from_str(&text).context(
            "the stage request on stdin is not valid (is dml-torch from the same build as dml?)",
        )?;
        let job = request.job.clone();
        let mut ctx = WorkerCtx::new(request, events.clone());
        match &job {
            WorkerJob::Train(job) => crate::training::run(job, &mut ctx)?,
            WorkerJob::Embed(job) => crate::embedding::run(job, &mut ctx)?,
            WorkerJob::EmbedFiles(job) => crate::use_model::embed_files(job, &mut ctx)?,
            WorkerJob::Export(job) => crate::use_model::export(job, &mut ctx)?,
        }
        ctx.finish();
        events.send(&WorkerEvent::Notes {
            notes: std::mem::take(&mut ctx.notes),
        });
        Ok(())
    })();
    match result {
        Ok(()) => {
            events.send(&WorkerEvent::Ok);
            0
        }
        Err(e) => {
            events.send(&WorkerEvent::Error {
                message: error_chain(e.as_ref()),
            });
            1
        }
    }
}
