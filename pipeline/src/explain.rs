//! Resolving a graph against the store: each node's key, whether it is cached,
//! and, when it must run, why — in one sentence, from a typed reason.
use crate::{stage_key, Graph, NodeId, PipelineError, PlanEnv, RunRecord};
use dml_artifacts::{ArtifactStore, Lookup};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

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

/// Why a node is cached or must run: one typed reason, rendered to a sentence
/// in one place ([`fmt::Display`]) and carried as is in `--json` and run records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Found in the store.
    Cached,
    /// Never built (no earlier run of this name to compare with).
    NoArtifact,
    /// The last run of this name resolved the same key but stopped before building it.
    NotBuiltYet,
    /// What changed since the last run of this name: every cause, not the first.
    Changed {
        /// The causes.
        changes: Vec<Change>,
    },
    /// The artifact exists but does not match its manifest.
    FailedVerification {
        /// What did not match.
        why: String,
    },
    /// The artifact exists, but an input it was built from failed verification:
    /// it may have been computed from the corrupt file, so it is rebuilt.
    InputFailedVerification {
        /// The inputs' node ids.
        inputs: Vec<String>,
    },
    /// Same key as last time, and it was built then, but the artifact is gone
    /// (gc, or removed by hand).
    Removed,
    /// Another process built it while this one waited for its lock.
    BuiltElsewhere,
}

/// One cause of a rebuild.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A setting this stage reads changed.
    Setting {
        /// Its config path.
        path: String,
        /// Before (canonical JSON; `(unset)` when absent).
        old: String,
        /// Now.
        new: String,
    },
    /// An input artifact changed.
    Input {
        /// The input's node id, as `dml run` shows it.
        input: String,
    },
    /// The stage's code version changed.
    Version {
        /// Before.
        old: u32,
        /// Now.
        new: u32,
    },
    /// The files the stage reads from outside the store changed.
    Data {
        /// The first few files that changed, when the stage can tell.
        files: Vec<String>,
    },
    /// The key changed for no visible reason (a new schema salt).
    Salt,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Setting { path, old, new } => {
                write!(f, "{path} changed {} → {}", show(old), show(new))
            }
            Change::Input { input } => write!(f, "input {input} changed"),
            Change::Version { old, new } => write!(f, "stage code version changed {old} → {new}"),
            Change::Data { files } if files.is_empty() => write!(f, "dataset files changed"),
            Change::Data { files } => write!(f, "dataset files changed: {}", files.join(", ")),
            Change::Salt => write!(f, "key changed (a new schema salt)"),
        }
    }
}

/// A canonical JSON value as a person reads it: strings unquoted, lists comma-separated.
pub fn show(canonical: &str) -> String {
    match serde_json::from_str::<Value>(canonical) {
        // An empty value is named, never shown as nothing (`changed  → 5`).
        Ok(Value::String(s)) if s.is_empty() => "\"\"".to_string(),
        Ok(Value::Array(items)) if items.is_empty() => "(none)".to_string(),
        Ok(Value::Null) => "(unset)".to_string(),
        Ok(Value::String(s)) => s,
        Ok(Value::Array(items)) => items
            .iter()
            .map(|v| show(&crate::canonical_json(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => canonical.to_string(),
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Cached => write!(f, "artifact found"),
            Reason::NoArtifact => write!(f, "no artifact yet"),
            Reason::NotBuiltYet => write!(f, "not built yet (the last run stopped before it)"),
            Reason::Changed { changes } => {
                let parts: Vec<String> = changes.iter().map(Change::to_string).collect();
                write!(f, "{}", parts.join("; "))
            }
            Reason::FailedVerification { why } => {
                write!(f, "artifact failed verification: {why}")
            }
            Reason::InputFailedVerification { inputs } => write!(
                f,
                "input {} failed verification; rebuilding what was computed from it",
                inputs.join(", ")
            ),
            Reason::Removed => write!(f, "artifact was removed from the store"),
            Reason::BuiltElsewhere => {
                write!(f, "built by another dml run while this one waited for it")
            }
        }
    }
}

/// Every cause that separates a node's previous state from its current one
/// (empty when the keys agree). Shared by `explain` and `dml diff`.
pub fn changes(
    prev: &crate::RecordNode,
    version: u32,
    settings: &Value,
    inputs: &BTreeMap<String, String>,
    input_ids: &BTreeMap<String, String>,
    fingerprint: &Option<String>,
) -> Vec<Change> {
    let mut out: Vec<Change> = diff_settings(&prev.settings, settings)
        .into_iter()
        .map(|(path, old, new)| Change::Setting { path, old, new })
        .collect();
    if prev.version != version {
        out.push(Change::Version {
            old: prev.version,
            new: version,
        });
    }
    if &prev.fingerprint != fingerprint {
        out.push(Change::Data { files: Vec::new() });
    }
    for (role, k) in inputs {
        if prev.inputs.get(role) != Some(k) {
            let input = input_ids
                .get(role)
                .or_else(|| prev.input_ids.get(role))
                .cloned()
                .unwrap_or_else(|| role.clone());
            out.push(Change::Input { input });
        }
    }
    out
}

/// One resolved node.
#[derive(Debug, Clone)]
pub struct PlannedNode {
    /// Node id.
    pub id: String,
    /// Stage name.
    pub stage: String,
    /// Key.
    pub key: String,
    /// Stage code version.
    pub version: u32,
    /// Canonical settings.
    pub settings: Value,
    /// Role → input key.
    pub inputs: BTreeMap<String, String>,
    /// Role → input node.
    pub input_nodes: Vec<(String, NodeId)>,
    /// Role → input node id (as shown to the user).
    pub input_ids: BTreeMap<String, String>,
    /// What an interrupted build left to continue from (`resumes from step 400`).
    pub resume: Option<String>,
    /// Dataset fingerprint, if any.
    pub fingerprint: Option<String>,
    /// Cached or run.
    pub status: Status,
    /// Why.
    pub reason: Reason,
    /// Runs on the accelerator.
    pub uses_device: bool,
}

impl PlannedNode {
    /// The reason as one sentence, with what an interrupted build resumes from.
    pub fn explanation(&self) -> String {
        match (&self.resume, self.status) {
            (Some(r), Status::Run) => format!("{}; {r}", self.reason),
            _ => self.reason.to_string(),
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
            let (status, reason) = match crate::key::lookup(store, stage.name(), &key, verify)? {
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
                    let mut reason = why_missing(
                        prev,
                        &key,
                        stage.version(),
                        &settings,
                        &inputs,
                        &input_ids,
                        &fingerprint,
                    );
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
                Status::Run => stage.resume_note(&env, &key),
                Status::Cached | Status::Remote => None,
            };
            nodes.push(PlannedNode {
                id: node.id.clone(),
                stage: stage.name().to_string(),
                key,
                version: stage.version(),
                settings,
                inputs,
                input_nodes: node.inputs.clone(),
                input_ids,
                resume,
                fingerprint,
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

fn why_missing(
    prev: Option<&crate::RecordNode>,
    key: &str,
    version: u32,
    settings: &Value,
    inputs: &BTreeMap<String, String>,
    input_ids: &BTreeMap<String, String>,
    fingerprint: &Option<String>,
) -> Reason {
    let Some(prev) = prev else {
        return Reason::NoArtifact;
    };
    if prev.key == key {
        // Built then and gone now, or never built because that run stopped first.
        return if prev.status.reached() {
            Reason::Removed
        } else {
            Reason::NotBuiltYet
        };
    }
    let mut changes = changes(prev, version, settings, inputs, input_ids, fingerprint);
    if changes.is_empty() {
        changes.push(Change::Salt);
    }
    Reason::Changed { changes }
}

/// Flattens `{"train": {"lr": 0.1}}` into `[("train.lr", "0.1")]`, sorted.
pub fn flatten_settings(v: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), crate::canonical_json(other));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

fn diff_settings(old: &Value, new: &Value) -> Vec<(String, String, String)> {
    let (a, b) = (flatten_settings(old), flatten_settings(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            (x != y).then(|| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
                (k.clone(), show(x), show(y))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_values_are_named() {
        assert_eq!(show("[]"), "(none)");
        assert_eq!(show("\"\""), "\"\"");
        assert_eq!(show("null"), "(unset)");
        assert_eq!(show("[3,4]"), "3,4");
        let c = Change::Setting {
            path: "dataset.train_classes".into(),
            old: "[]".into(),
            new: "[1,2]".into(),
        };
        assert_eq!(c.to_string(), "dataset.train_classes changed (none) → 1,2");
    }

    #[test]
    fn settings_diff_names_the_path_and_both_values() {
        let d = diff_settings(
            &json!({"train": {"lr": 0.0003, "loss": "npairs"}}),
            &json!({"train": {"lr": 0.0001, "loss": "npairs"}}),
        );
        assert_eq!(
            d,
            vec![(
                "train.lr".to_string(),
                "0.0003".to_string(),
                "0.0001".to_string()
            )]
        );
        let changes = d
            .into_iter()
            .map(|(path, old, new)| Change::Setting { path, old, new })
            .chain([Change::Input {
                input: "retrieve:untrained".into(),
            }])
            .collect();
        let r = Reason::Changed { changes };
        assert_eq!(
            r.to_string(),
            "train.lr changed 0.0003 → 0.0001; input retrieve:untrained changed"
        );
        let lists = Change::Setting {
            path: "retrieve.ks".into(),
            old: "[1,2,4,8]".into(),
            new: "[1,2]".into(),
        };
        assert_eq!(lists.to_string(), "retrieve.ks changed 1,2,4,8 → 1,2");
        let names = Change::Setting {
            path: "train.loss.name".into(),
            old: "\"npairs\"".into(),
            new: "\"angular\"".into(),
        };
        assert_eq!(
            names.to_string(),
            "train.loss.name changed npairs → angular"
        );
    }
}
