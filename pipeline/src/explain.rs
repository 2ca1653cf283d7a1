//! Resolving a graph against the store: each node's key, whether it is cached,
//! and, when it must run, why (a typed [`Reason`]); and the run record a plan starts.
use crate::record::{NodeStatus, RecordNode, RunRecord, RunStatus};
use crate::{stage_key, Change, Graph, NodeId, NodeIdentity, PipelineError, PlanEnv, Reason};
use dml_artifacts::{ArtifactStore, Lookup};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Cached or to be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The artifact is in the store and matches its manifest.
    Cached,
    /// The stage will run.
    Run,
    /// Missing here, found on the remote cache: it will be fetched (or built
    /// if the fetch fails).
    Remote,
}

/// One resolved node: its identity (id, stage, key and what the key was computed from,
/// read through `Deref`), whether it is cached, and why.
#[derive(Debug, Clone)]
pub struct PlannedNode {
    /// What the key was computed from.
    pub identity: NodeIdentity,
    /// Role → input node.
    pub input_nodes: Vec<(String, NodeId)>,
    /// What an interrupted build left to continue from (`resumes from step 400`).
    pub resume: Option<String>,
    /// Cached or run.
    pub status: Status,
    /// Why.
    pub reason: Reason,
    /// Runs on the accelerator.
    pub uses_device: bool,
}

impl std::ops::Deref for PlannedNode {
    type Target = NodeIdentity;
    fn deref(&self) -> &NodeIdentity {
        &self.identity
    }
}

impl PlannedNode {
    /// The reason as one sentence, with what an interrupted build resumes from.
    pub fn explanation(&self) -> String {
        self.reason.sentence(self.resume_note())
    }

    /// What an interrupted build resumes from, when the node will run (a node found in
    /// the store or on the remote resumes nothing).
    pub fn resume_note(&self) -> Option<&str> {
        match self.status {
            Status::Run => self.resume.as_deref(),
            Status::Cached | Status::Remote => None,
        }
    }
}

/// A resolved graph.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes in topological order (same indices as the graph).
    pub nodes: Vec<PlannedNode>,
}

impl Plan {
    /// Computes every key top-down and checks the store. `previous` is the last
    /// run record of the same name, used to say what changed.
    pub fn resolve(
        graph: &Graph,
        store: &ArtifactStore,
        previous: Option<&RunRecord>,
        verify: bool,
    ) -> Result<Plan, PipelineError> {
        let env = PlanEnv { store };
        let mut nodes: Vec<PlannedNode> = Vec::with_capacity(graph.nodes().len());
        for node in graph.nodes() {
            let stage = &node.stage;
            let settings = stage.settings();
            let inputs: BTreeMap<String, String> = node
                .inputs
                .iter()
                .map(|(role, n)| (role.clone(), nodes[*n].key.clone()))
                .collect();
            let fingerprint = stage
                .fingerprint(&env)
                .map_err(|e| PipelineError::Fingerprint {
                    node: node.id.clone(),
                    message: crate::error::error_chain(e.as_ref()),
                })?;
            let key = stage_key(
                stage.name(),
                stage.version(),
                &settings,
                &inputs,
                fingerprint.as_deref(),
            );
            let input_ids: BTreeMap<String, String> = node
                .inputs
                .iter()
                .map(|(role, n)| (role.clone(), nodes[*n].id.clone()))
                .collect();
            // Inputs that failed verification, or were built from one that did.
            let suspect_inputs: Vec<String> = node
                .inputs
                .iter()
                .filter(|(_, n)| {
                    matches!(
                        nodes[*n].reason,
                        Reason::FailedVerification { .. } | Reason::InputFailedVerification { .. }
                    )
                })
                .map(|(_, n)| nodes[*n].id.clone())
                .collect();
            let identity = NodeIdentity {
                id: node.id.clone(),
                stage: stage.name().to_string(),
                key,
                version: stage.version(),
                settings,
                inputs,
                input_ids,
                fingerprint,
            };
            let lookup = crate::key::lookup(store, stage.name(), &identity.key, verify)?;
            let (status, reason) = match lookup {
                Lookup::Hit(_) if !suspect_inputs.is_empty() => (
                    Status::Run,
                    Reason::InputFailedVerification {
                        inputs: suspect_inputs,
                    },
                ),
                Lookup::Hit(_) => (Status::Cached, Reason::Cached),
                Lookup::Corrupt(why) => (Status::Run, Reason::FailedVerification { why }),
                Lookup::Missing => {
                    let prev = previous.and_then(|r| r.nodes.iter().find(|n| n.id == node.id));
                    let mut reason = why_missing(prev, &identity);
                    // Name the files when the stage can tell which changed.
                    if let (Reason::Changed { changes }, Some(prev)) = (&mut reason, prev) {
                        for c in changes.iter_mut() {
                            if let Change::Data { files } = c {
                                *files = stage.changed_files(&env, &prev.key);
                            }
                        }
                    }
                    (Status::Run, reason)
                }
            };
            let resume = match status {
                Status::Run => stage.resume_note(&env, &identity.key),
                Status::Cached | Status::Remote => None,
            };
            nodes.push(PlannedNode {
                identity,
                input_nodes: node.inputs.clone(),
                resume,
                status,
                reason,
                uses_device: stage.uses_device(),
            });
        }
        Ok(Plan { nodes })
    }

    /// The plan as JSON objects with `stage`, `id`, `key`, `status`, `reason`.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "stage": n.stage,
                        "id": n.id,
                        "key": n.key,
                        "status": n.status,
                        "reason": n.explanation(),
                        "why": n.reason,
                    })
                })
                .collect(),
        )
    }
}

/// A run record of this plan, as written when the run starts: status `running`, the
/// cached nodes `cached` and the others `not_run` until the executor fills them in.
impl Plan {
    /// The record a run of this plan starts with.
    pub fn record(&self, name: &str, started: String, config: Value) -> RunRecord {
        RunRecord {
            name: name.to_string(),
            started,
            seconds: 0.0,
            outcome: RunStatus::Running.as_str().into(),
            status: Some(RunStatus::Running),
            live: None,
            until: None,
            config,
            nodes: self
                .nodes
                .iter()
                .map(|n| RecordNode {
                    identity: n.identity.clone(),
                    status: match n.status {
                        Status::Cached => NodeStatus::Cached,
                        Status::Run | Status::Remote => NodeStatus::NotRun,
                    },
                    reason: n.reason.clone(),
                    resume: n.resume_note().map(str::to_owned),
                    seconds: 0.0,
                    job_id: None,
                })
                .collect(),
            provenance: BTreeMap::new(),
        }
    }
}

fn why_missing(prev: Option<&RecordNode>, now: &NodeIdentity) -> Reason {
    let Some(prev) = prev else {
        return Reason::NoArtifact;
    };
    if prev.key == now.key {
        // Built then and gone now, or never built because that run stopped first.
        return if prev.status.reached() {
            Reason::Removed
        } else {
            Reason::NotBuiltYet
        };
    }
    let mut changes = prev.identity.changes(now);
    if changes.is_empty() {
        changes.push(Change::Salt);
    }
    Reason::Changed { changes }
}
