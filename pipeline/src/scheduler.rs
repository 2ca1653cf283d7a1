//! The scheduler: runs every node that is not cached, independent nodes in
//! parallel up to `jobs`, device stages one at a time, each under its key lock.
use crate::error::error_chain;
use crate::{Graph, PipelineError, Plan, PlannedNode, RunContext, Status};
use dml_artifacts::{ArtifactStore, Lookup, Manifest};
use indicatif::{MultiProgress, ProgressDrawTarget};
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// How to execute.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Stages run at once (at least 1).
    pub jobs: usize,
    /// Provenance recorded in every manifest (versions, device…).
    pub provenance: BTreeMap<String, serde_json::Value>,
    /// A shared cache to fetch from before building and upload to after.
    pub remote: Option<crate::SharedRemote>,
}

/// Something the user may want to hear about.
#[derive(Debug)]
pub enum Event<'a> {
    /// The node is cached.
    Cached(&'a PlannedNode),
    /// The node starts building.
    Started(&'a PlannedNode),
    /// Another process holds the node's lock; waiting.
    Waiting(&'a PlannedNode),
    /// Another process built it while we waited.
    BuiltElsewhere(&'a PlannedNode),
    /// Finished in so many seconds.
    Finished(&'a PlannedNode, f64),
    /// Failed.
    Failed(&'a PlannedNode, &'a str),
    /// Fetched from the remote cache in so many seconds.
    Fetched(&'a PlannedNode, f64),
    /// Uploaded to the remote cache (or found there already).
    Uploaded(&'a PlannedNode, &'a crate::UploadOutcome),
    /// The remote cache could not help with this node; it is built or kept locally.
    RemoteWarning(&'a PlannedNode, &'a str),
}

/// What happened to each node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Was cached.
    Cached,
    /// Built, in seconds.
    Ran(f64),
    /// Built by another process meanwhile.
    BuiltElsewhere,
    /// Fetched from the remote cache, in seconds.
    Fetched(f64),
    /// Failed.
    Failed(String),
    /// Not started because something else failed.
    NotRun,
}

/// The outcome of every node, in plan order.
#[derive(Debug, Clone)]
pub struct ExecSummary {
    /// Per node.
    pub outcomes: Vec<Outcome>,
}

impl ExecSummary {
    /// Number of nodes actually built by this process.
    pub fn ran(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Ran(_)))
            .count()
    }
}

struct State {
    pending: Vec<usize>,
    done: Vec<bool>,
    running: usize,
    device_busy: bool,
    failed: bool,
    outcomes: Vec<Outcome>,
}

/// Runs the plan. Artifacts finished before a failure stay in the store.
pub fn execute(
    graph: &Graph,
    plan: &Plan,
    store: &ArtifactStore,
    opts: &ExecOptions,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> (ExecSummary, Result<(), PipelineError>) {
    let n = plan.nodes.len();
    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let mut state = State {
        pending: Vec::new(),
        done: vec![false; n],
        running: 0,
        device_busy: false,
        failed: false,
        outcomes: vec![Outcome::NotRun; n],
    };
    for (i, node) in plan.nodes.iter().enumerate() {
        match node.status {
            Status::Cached => {
                state.done[i] = true;
                state.outcomes[i] = Outcome::Cached;
                progress.suspend(|| on_event(Event::Cached(node)));
            }
            Status::Run | Status::Remote => state.pending.push(i),
        }
    }
    let state = Mutex::new(state);
    let wake = Condvar::new();
    let first_error: Mutex<Option<PipelineError>> = Mutex::new(None);
    let workers = opts.jobs.max(1).min(n.max(1));
    let uploads = crate::remote::Uploads::start(opts.remote.as_ref(), &progress);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        if st.failed || (st.pending.is_empty()) {
                            break None;
                        }
                        let ready = st.pending.iter().position(|&i| {
                            plan.nodes[i].input_nodes.iter().all(|(_, d)| st.done[*d])
                                && !(plan.nodes[i].uses_device && st.device_busy)
                        });
                        if let Some(pos) = ready {
                            let i = st.pending.remove(pos);
                            st.running += 1;
                            if plan.nodes[i].uses_device {
                                st.device_busy = true;
                            }
                            break Some(i);
                        }
                        if st.running == 0 {
                            // Nothing runnable and nothing running: cannot happen in a DAG.
                            break None;
                        }
                        st = wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                };
                let Some(i) = next else {
                    wake.notify_all();
                    return;
                };
                let node = &plan.nodes[i];
                let result = build_node(graph, plan, i, store, opts, &progress, on_event);
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.running -= 1;
                if node.uses_device {
                    st.device_busy = false;
                }
                match result {
                    Ok(outcome) => {
                        if let (Some(u), Outcome::Ran(_)) = (&uploads, &outcome) {
                            u.push(opts.remote.as_ref(), i, node, store);
                        }
                        st.done[i] = true;
                        st.outcomes[i] = outcome;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        progress.suspend(|| on_event(Event::Failed(node, &msg)));
                        st.outcomes[i] = Outcome::Failed(msg);
                        st.failed = true;
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                }
                drop(st);
                wake.notify_all();
            });
        }
    });
    for (i, report) in uploads.map(|u| u.finish()).unwrap_or_default() {
        match report {
            Ok(done) => on_event(Event::Uploaded(&plan.nodes[i], &done)),
            Err(crate::RemoteError::Offline { .. }) => {}
            Err(e) => on_event(Event::RemoteWarning(&plan.nodes[i], &e.to_string())),
        }
    }
    let state = state.into_inner().unwrap_or_else(|p| p.into_inner());
    let summary = ExecSummary {
        outcomes: state.outcomes,
    };
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => (summary, Err(e)),
        None => (summary, Ok(())),
    }
}

fn build_node(
    graph: &Graph,
    plan: &Plan,
    i: usize,
    store: &ArtifactStore,
    opts: &ExecOptions,
    progress: &MultiProgress,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Outcome, PipelineError> {
    let node = &plan.nodes[i];
    let _lock = store.lock(&node.stage, &node.key, || {
        progress.suspend(|| on_event(Event::Waiting(node)))
    })?;
    match store.lookup(&node.stage, &node.key, false)? {
        Lookup::Hit(_) => {
            progress.suspend(|| on_event(Event::BuiltElsewhere(node)));
            return Ok(Outcome::BuiltElsewhere);
        }
        Lookup::Corrupt(_) => store.remove_object(&node.stage, &node.key)?,
        Lookup::Missing => {}
    }
    let warn = |msg: &str| progress.suspend(|| on_event(Event::RemoteWarning(node, msg)));
    if let Some(fetched) =
        crate::remote::try_fetch(opts.remote.as_ref(), node, store, progress, &warn)
    {
        if let Outcome::Fetched(s) = fetched {
            progress.suspend(|| on_event(Event::Fetched(node, s)));
        }
        return Ok(fetched);
    }
    let mut inputs = BTreeMap::new();
    for (role, d) in &node.input_nodes {
        let up = &plan.nodes[*d];
        let dir = store.object_dir(&up.stage, &up.key);
        let manifest = Manifest::read(&dir.join("manifest.json"))?;
        inputs.insert(role.clone(), (dir, manifest));
    }
    progress.suspend(|| on_event(Event::Started(node)));
    let staging = store.begin(&node.stage, &node.key)?;
    let started = Instant::now();
    let mut ctx = RunContext {
        out_dir: staging.dir(),
        inputs,
        key: &node.key,
        node: &node.id,
        store,
        notes: serde_json::Map::new(),
        progress,
    };
    graph.nodes()[i]
        .stage
        .run(&mut ctx)
        .map_err(|e| PipelineError::StageFailed {
            node: node.id.clone(),
            message: error_chain(e.as_ref()),
        })?;
    // Test hook: die after the outputs are written and before the commit, as a
    // killed process would, to prove that nothing half-written becomes visible.
    if std::env::var("DML_FAULT_ABORT_BEFORE_COMMIT").is_ok_and(|s| s == node.stage) {
        std::process::abort();
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut provenance = opts.provenance.clone();
    provenance.insert("seconds".into(), serde_json::json!(seconds));
    provenance.insert(
        "finished".into(),
        serde_json::json!(chrono::Utc::now().to_rfc3339()),
    );
    let notes = std::mem::take(&mut ctx.notes);
    drop(ctx);
    staging.commit(Manifest {
        stage: node.stage.clone(),
        key: node.key.clone(),
        version: node.version,
        settings: node.settings.clone(),
        inputs: node.inputs.clone(),
        fingerprint: node.fingerprint.clone(),
        files: Vec::new(),
        notes: serde_json::Value::Object(notes),
        provenance,
    })?;
    progress.suspend(|| on_event(Event::Finished(node, seconds)));
    Ok(Outcome::Ran(seconds))
}
