//! Resolving a graph against the store: each node's key, whether it is cached,
//! and, when it must run, why — in one sentence, from a typed reason.
use crate::{stage_key, Graph, NodeId, PipelineError, PlanEnv, RunRecord};
use dml_artifacts::{ArtifactStore, Lookup};
use serde::Serialize;
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

/// Why a node is cached or must run.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Found in the store.
    Cached,
    /// Never built (no earlier run of this name to compare with).
    NoArtifact,
    /// Settings of this stage changed since the last run of this name: (path, old, new).
    SettingsChanged(Vec<(String, String, String)>),
    /// An input's key changed (roles).
    InputChanged(Vec<String>),
    /// The stage's code version changed.
    VersionChanged {
        /// Before.
        old: u32,
        /// Now.
        new: u32,
    },
    /// The files the stage reads from outside the store changed.
    DataChanged,
    /// The artifact exists but does not match its manifest.
    FailedVerification(String),
    /// Same key as last time, but the artifact is gone (gc, or removed by hand).
    Removed,
    /// The key changed for a reason not visible in settings (e.g. the schema salt).
    KeyChanged,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Cached => write!(f, "artifact found"),
            Reason::NoArtifact => write!(f, "no artifact yet"),
            Reason::SettingsChanged(changes) => {
                let parts: Vec<String> = changes
                    .iter()
                    .map(|(path, old, new)| format!("{path} changed {old} → {new}"))
                    .collect();
                write!(f, "{}", parts.join(", "))
            }
            Reason::InputChanged(roles) => write!(f, "input {} changed", roles.join(", ")),
            Reason::VersionChanged { old, new } => {
                write!(f, "stage code version changed {old} → {new}")
            }
            Reason::DataChanged => write!(f, "dataset files changed"),
            Reason::FailedVerification(why) => write!(f, "artifact failed verification: {why}"),
            Reason::Removed => write!(f, "artifact was removed from the store"),
            Reason::KeyChanged => write!(f, "key changed (a new schema salt)"),
        }
    }
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
    /// Dataset fingerprint, if any.
    pub fingerprint: Option<String>,
    /// Cached or run.
    pub status: Status,
    /// Why.
    pub reason: Reason,
    /// Runs on the accelerator.
    pub uses_device: bool,
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
            let (status, reason) = match store.lookup(stage.name(), &key, verify)? {
                Lookup::Hit(_) => (Status::Cached, Reason::Cached),
                Lookup::Corrupt(why) => (Status::Run, Reason::FailedVerification(why)),
                Lookup::Missing => (
                    Status::Run,
                    why_missing(
                        previous,
                        &node.id,
                        &key,
                        stage.version(),
                        &settings,
                        &inputs,
                        &fingerprint,
                    ),
                ),
            };
            nodes.push(PlannedNode {
                id: node.id.clone(),
                stage: stage.name().to_string(),
                key,
                version: stage.version(),
                settings,
                inputs,
                input_nodes: node.inputs.clone(),
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
                        "reason": n.reason.to_string(),
                    })
                })
                .collect(),
        )
    }
}

fn why_missing(
    previous: Option<&RunRecord>,
    id: &str,
    key: &str,
    version: u32,
    settings: &Value,
    inputs: &BTreeMap<String, String>,
    fingerprint: &Option<String>,
) -> Reason {
    let Some(prev) = previous.and_then(|r| r.nodes.iter().find(|n| n.id == id)) else {
        return Reason::NoArtifact;
    };
    if prev.key == key {
        return Reason::Removed;
    }
    let changes = diff_settings(&prev.settings, settings);
    if !changes.is_empty() {
        return Reason::SettingsChanged(changes);
    }
    if prev.version != version {
        return Reason::VersionChanged {
            old: prev.version,
            new: version,
        };
    }
    if &prev.fingerprint != fingerprint {
        return Reason::DataChanged;
    }
    let roles: Vec<String> = inputs
        .iter()
        .filter(|(role, k)| prev.inputs.get(*role) != Some(k))
        .map(|(role, _)| role.clone())
        .collect();
    if !roles.is_empty() {
        return Reason::InputChanged(roles);
    }
    Reason::KeyChanged
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
        let r = Reason::SettingsChanged(d);
        assert_eq!(r.to_string(), "train.lr changed 0.0003 → 0.0001");
        assert_eq!(
            Reason::InputChanged(vec!["index".into()]).to_string(),
            "input index changed"
        );
    }
}
