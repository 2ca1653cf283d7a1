//! The scheduler: runs every node that is not cached, independent nodes in
//! parallel up to `jobs`, device stages at most one per device slot (one per visible
//! GPU) at a time, each under its key lock.
use crate::error::error_chain;
use crate::{Graph, PipelineError, Plan, PlannedNode, Reason, RunContext, Status};
use dml_artifacts::{ArtifactStore, Lookup, Manifest};
use indicatif::{MultiProgress, ProgressDrawTarget};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// How to execute.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Stages run at once (at least 1).
    pub jobs: usize,
    /// Device stages run at once (at least 1): the number of visible GPUs. Each running
    /// device stage holds one slot, whose index it reads from
    /// [`RunContext::device_index`].
    pub device_slots: usize,
    /// Provenance recorded in every manifest (versions, device…).
    pub provenance: BTreeMap<String, serde_json::Value>,
    /// Checked on each node's finished artifact (cached ones before anything
    /// starts, built ones before any dependant starts).
    pub check: Option<NodeCheck>,
    /// A shared cache to fetch from before building and upload to after.
    pub remote: Option<crate::SharedRemote>,
}

/// A check of settings against a finished artifact (`Err` says what to change).
#[derive(Clone)]
pub struct NodeCheck(pub Arc<CheckFn>);

/// The function a [`NodeCheck`] wraps: the node and its artifact directory.
pub type CheckFn = dyn Fn(&PlannedNode, &Path) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for NodeCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCheck")
    }
}

impl ExecOptions {
    fn run_check(&self, node: &PlannedNode, store: &ArtifactStore) -> Result<(), PipelineError> {
        match &self.check {
            Some(check) => {
                (check.0)(node, &store.object_dir(&node.stage, &node.key)).map_err(|message| {
                    PipelineError::Check {
                        node: node.id.clone(),
                        message,
                    }
                })
            }
            None => Ok(()),
        }
    }
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

    /// How many nodes came from the remote cache.
    pub fn fetched(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Fetched(_)))
            .count()
    }
}

struct State {
    pending: Vec<usize>,
    done: Vec<bool>,
    running: usize,
    /// Per device slot: is it free?
    device_free: Vec<bool>,
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
        device_free: vec![true; opts.device_slots.max(1)],
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
    // Settings that do not fit a cached artifact stop the run before anything starts.
    for node in plan.nodes.iter().filter(|n| n.status == Status::Cached) {
        if let Err(e) = opts.run_check(node, store) {
            return (
                ExecSummary {
                    outcomes: state.outcomes,
                },
                Err(e),
            );
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
                        let free_slot = st.device_free.iter().position(|f| *f);
                        let ready = st.pending.iter().position(|&i| {
                            plan.nodes[i].input_nodes.iter().all(|(_, d)| st.done[*d])
                                && !(plan.nodes[i].uses_device && free_slot.is_none())
                        });
                        if let Some(pos) = ready {
                            let i = st.pending.remove(pos);
                            st.running += 1;
                            let slot = if plan.nodes[i].uses_device {
                                free_slot
                            } else {
                                None
                            };
                            if let Some(d) = slot {
                                st.device_free[d] = false;
                            }
                            break Some((i, slot));
                        }
                        if st.running == 0 {
                            // Nothing runnable and nothing running: cannot happen in a DAG.
                            break None;
                        }
                        st = wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                };
                let Some((i, slot)) = next else {
                    wake.notify_all();
                    return;
                };
                let node = &plan.nodes[i];
                let result = build_node(graph, plan, i, slot, store, opts, &progress, on_event)
                    .and_then(|outcome| opts.run_check(node, store).map(|()| outcome));
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.running -= 1;
                if let Some(d) = slot {
                    st.device_free[d] = true;
                }
                match result {
                    Ok(outcome) => {
                        if let (Some(u), Outcome::Ran(_)) = (&uploads, &outcome) {
                            u.push(i, node, store);
                        }
                        st.done[i] = true;
                        st.outcomes[i] = outcome;
                    }
                    Err(e) => {
                        let msg = error_chain(&e);
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
            Err(e) => on_event(Event::RemoteWarning(&plan.nodes[i], &e.not_uploaded())),
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

/// Builds the one node `i` of `plan` in this process, under its key lock, its
/// inputs already in the store (`dml exec-stage`: one Slurm job per stage). A
/// device stage gets the first GPU the job was given (Slurm sets
/// `CUDA_VISIBLE_DEVICES`).
pub fn build_one(
    graph: &Graph,
    plan: &Plan,
    i: usize,
    store: &ArtifactStore,
    opts: &ExecOptions,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Outcome, PipelineError> {
    let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let slot = plan.nodes[i].uses_device.then_some(0);
    build_node(graph, plan, i, slot, store, opts, &progress, on_event)
}

#[allow(clippy::too_many_arguments)]
fn build_node(
    graph: &Graph,
    plan: &Plan,
    i: usize,
    device_slot: Option<usize>,
    store: &ArtifactStore,
    opts: &ExecOptions,
    progress: &MultiProgress,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Outcome, PipelineError> {
    let node = &plan.nodes[i];
    let _lock = store.lock(&node.stage, &node.key, || {
        progress.suspend(|| on_event(Event::Waiting(node)))
    })?;
    // Under the lock, look again: another run may have built (or repaired) it.
    // An artifact that failed verification while planning is re-hashed in full,
    // so corruption that keeps size and mtime is not taken for a fresh build.
    let failed_verification = matches!(node.reason, Reason::FailedVerification { .. });
    let suspect = matches!(node.reason, Reason::InputFailedVerification { .. });
    let aside = match crate::key::lookup(store, &node.stage, &node.key, failed_verification)? {
        Lookup::Hit(_) if !suspect => {
            progress.suspend(|| on_event(Event::BuiltElsewhere(node)));
            return Ok(Outcome::BuiltElsewhere);
        }
        Lookup::Hit(_) | Lookup::Corrupt(_) => store.quarantine(&node.stage, &node.key)?,
        Lookup::Missing => None,
    };
    if let Some(aside) = aside {
        progress.suspend(|| {
            tracing::warn!(
                "{}: moved the old artifact aside to {} (`dml gc` removes it); rebuilding",
                node.id,
                aside.display()
            )
        });
    }
    let warn = |msg: &str| progress.suspend(|| on_event(Event::RemoteWarning(node, msg)));
    if let Some(s) = crate::remote::try_fetch(opts.remote.as_ref(), node, store, progress, &warn) {
        progress.suspend(|| on_event(Event::Fetched(node, s)));
        return Ok(Outcome::Fetched(s));
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
        device_index: device_slot,
        key_dirs: Vec::new(),
    };
    graph.nodes()[i]
        .stage
        .run(&mut ctx)
        .map_err(|source| PipelineError::StageFailed {
            node: node.id.clone(),
            source,
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
    let key_dirs = std::mem::take(&mut ctx.key_dirs);
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
    // Test hook: die between the commit and the removal of the stage's per-key
    // caches (checkpoints), to prove a rerun neither rebuilds nor loses anything.
    if std::env::var("DML_FAULT_ABORT_AFTER_COMMIT").is_ok_and(|s| s == node.stage) {
        std::process::abort();
    }
    // Only now that the artifact is committed are its resumable states useless.
    for dir in key_dirs {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("{}: could not remove {}: {e}", node.id, dir.display());
        }
    }
    progress.suspend(|| on_event(Event::Finished(node, seconds)));
    Ok(Outcome::Ran(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxError, Stage};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts how many device stages run at once and which slots they got.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        peak: AtomicUsize,
        slots: Mutex<Vec<(usize, Option<usize>)>>,
        held: Mutex<Vec<usize>>,
    }

    struct FakeDeviceStage {
        n: u32,
        device: bool,
        gauge: Arc<Gauge>,
    }

    impl Stage for FakeDeviceStage {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn version(&self) -> u32 {
            1
        }
        fn settings(&self) -> serde_json::Value {
            serde_json::json!({ "fake": { "n": self.n } })
        }
        fn uses_device(&self) -> bool {
            self.device
        }
        fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
            let g = &self.gauge;
            let slot = ctx.device_index();
            g.slots.lock().unwrap().push((self.n as usize, slot));
            if let Some(d) = slot {
                let mut held = g.held.lock().unwrap();
                assert!(!held.contains(&d), "slot {d} handed out twice at once");
                held.push(d);
            }
            if self.device {
                let now = g.now.fetch_add(1, Ordering::SeqCst) + 1;
                g.peak.fetch_max(now, Ordering::SeqCst);
            }
            std::thread::sleep(std::time::Duration::from_millis(150));
            if self.device {
                g.now.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(d) = slot {
                g.held.lock().unwrap().retain(|h| *h != d);
            }
            std::fs::write(ctx.out_dir().join("out.txt"), self.n.to_string())?;
            Ok(())
        }
    }

    /// Runs six independent device stages and two CPU ones with `jobs` workers and
    /// `slots` device slots; returns the gauge.
    fn run(jobs: usize, slots: usize) -> Arc<Gauge> {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path().join("store")).unwrap();
        let gauge = Arc::new(Gauge::default());
        let mut graph = Graph::new();
        for n in 0..8 {
            let stage = Arc::new(FakeDeviceStage {
                n,
                device: n < 6,
                gauge: gauge.clone(),
            });
            graph.add(format!("fake{n}"), stage, &[]);
        }
        let plan = Plan::resolve(&graph, &store, None, false).unwrap();
        let opts = ExecOptions {
            jobs,
            device_slots: slots,
            provenance: BTreeMap::new(),
            check: None,
            remote: None,
        };
        let (summary, result) = execute(&graph, &plan, &store, &opts, &|_| {});
        result.unwrap();
        assert_eq!(summary.ran(), 8);
        gauge
    }

    #[test]
    fn device_stages_overlap_up_to_the_slot_count_each_on_its_own_slot() {
        let g = run(4, 2);
        assert_eq!(
            g.peak.load(Ordering::SeqCst),
            2,
            "two device stages ran at once"
        );
        let slots = g.slots.lock().unwrap().clone();
        for (n, slot) in &slots {
            if *n < 6 {
                assert!(matches!(slot, Some(0) | Some(1)), "stage {n}: {slot:?}");
            } else {
                assert_eq!(*slot, None, "a CPU stage holds no device slot");
            }
        }
        assert!(
            slots.iter().any(|(_, s)| *s == Some(1)),
            "the second GPU was used"
        );
    }

    #[test]
    fn one_device_slot_serialises_device_stages() {
        let g = run(4, 1);
        assert_eq!(g.peak.load(Ordering::SeqCst), 1);
        let slots = g.slots.lock().unwrap().clone();
        assert!(slots.iter().all(|(n, s)| *n >= 6 || *s == Some(0)));
    }

    /// A remote whose first upload succeeds and every later one hangs (for
    /// up to 30 s), as a server stopped mid-run does.
    #[derive(Debug, Default)]
    struct HangingRemote {
        uploads: AtomicUsize,
        given_up: std::sync::atomic::AtomicBool,
    }

    impl crate::RemoteCache for HangingRemote {
        fn location(&self) -> String {
            "s3://hung/p".into()
        }
        fn shares(&self, _: &str) -> bool {
            true
        }
        fn contains_all(
            &self,
            items: &[(String, String)],
        ) -> Result<Vec<bool>, crate::RemoteError> {
            Ok(vec![false; items.len()])
        }
        fn fetch(
            &self,
            _: &str,
            _: &str,
            _: &ArtifactStore,
            _: &MultiProgress,
        ) -> Result<crate::FetchOutcome, crate::RemoteError> {
            Ok(crate::FetchOutcome::Absent)
        }
        fn upload(
            &self,
            _: &str,
            _: &str,
            _: &Path,
            _: &MultiProgress,
        ) -> Result<crate::UploadOutcome, crate::RemoteError> {
            if self.uploads.fetch_add(1, Ordering::SeqCst) > 0 {
                std::thread::sleep(std::time::Duration::from_secs(30));
            }
            Ok(crate::UploadOutcome::Uploaded { files: 1, bytes: 1 })
        }
        fn upload_wait(&self) -> std::time::Duration {
            std::time::Duration::from_millis(300)
        }
        fn give_up(&self) {
            self.given_up.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_hung_upload_holds_the_end_of_a_run_no_longer_than_the_upload_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path().join("store")).unwrap();
        let gauge = Arc::new(Gauge::default());
        let mut graph = Graph::new();
        for n in 0..3 {
            let stage = Arc::new(FakeDeviceStage {
                n,
                device: false,
                gauge: gauge.clone(),
            });
            graph.add(format!("fake{n}"), stage, &[]);
        }
        let plan = Plan::resolve(&graph, &store, None, false).unwrap();
        let remote = Arc::new(HangingRemote::default());
        let opts = ExecOptions {
            jobs: 1,
            device_slots: 1,
            provenance: BTreeMap::new(),
            check: None,
            remote: Some(remote.clone()),
        };
        let said = Mutex::new(Vec::new());
        let started = Instant::now();
        let (summary, result) = execute(&graph, &plan, &store, &opts, &|e| match e {
            Event::Uploaded(n, _) => said.lock().unwrap().push(format!("{} pushed", n.id)),
            Event::RemoteWarning(n, msg) => said.lock().unwrap().push(format!("{} {msg}", n.id)),
            _ => {}
        });
        result.unwrap();
        assert_eq!(summary.ran(), 3);
        // Three stages of 150 ms and a wait of 300 ms; far from the hung 30 s.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(remote.given_up.load(Ordering::SeqCst));
        let said = said.into_inner().unwrap();
        assert_eq!(said.len(), 3, "{said:?}");
        assert_eq!(
            said.iter().filter(|s| s.ends_with(" pushed")).count(),
            1,
            "{said:?}"
        );
        let unfinished: Vec<&String> = said
            .iter()
            .filter(|s| s.contains("not uploaded") && s.contains("remote_upload_wait = 0.3s"))
            .collect();
        assert_eq!(unfinished.len(), 2, "{said:?}");
        assert!(
            unfinished.iter().all(|s| s.contains("dml push")),
            "{said:?}"
        );
    }
}
