//! What identifies a resolved node (its id, stage, key and everything the key was
//! computed from), shared by the plan and the run record, and the typed reason a node is
//! cached or must run, with every cause of a rebuild — rendered to a sentence in one place.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// A node's identity: what its key was computed from. The plan and the run record both
/// carry one (the record's JSON keeps these fields at its top level), and
/// [`NodeIdentity::changes`] compares two of them for `--dry-run`, `explain` and `dml diff`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
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
    /// Role → input node id, as the user sees it.
    #[serde(default)]
    pub input_ids: BTreeMap<String, String>,
    /// Dataset fingerprint.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl NodeIdentity {
    /// Every cause that separates this (earlier) node from `now` (empty when nothing that
    /// enters the key differs). Shared by `explain` and `dml diff`.
    pub fn changes(&self, now: &NodeIdentity) -> Vec<Change> {
        let mut out = settings_diff(&self.settings, &now.settings);
        if self.version != now.version {
            out.push(Change::Version {
                old: self.version,
                new: now.version,
            });
        }
        if self.fingerprint != now.fingerprint {
            out.push(Change::Data { files: Vec::new() });
        }
        for (role, k) in &now.inputs {
            if self.inputs.get(role) != Some(k) {
                let input = now
                    .input_ids
                    .get(role)
                    .or_else(|| self.input_ids.get(role))
                    .cloned()
                    .unwrap_or_else(|| role.clone());
                out.push(Change::Input { input });
            }
        }
        out
    }
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
    /// The sentence of a run record written before reasons were typed, kept verbatim.
    Recorded {
        /// The sentence as that run showed it.
        sentence: String,
    },
}

impl Reason {
    /// The reason as one sentence, followed by what an interrupted build resumes from
    /// when it has such a note (`no artifact yet; resumes from the checkpoint at step
    /// 400`): what `dml run` and its `--json` show for a node, from a plan or a
    /// run record alike.
    pub fn sentence(&self, resume: Option<&str>) -> String {
        match resume {
            Some(r) => format!("{self}; {r}"),
            None => self.to_string(),
        }
    }
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
            Reason::Recorded { sentence } => f.write_str(sentence),
        }
    }
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

/// Every setting path whose value differs between two settings trees, with both values
/// (canonical JSON; `(unset)` when absent), sorted by path.
pub fn settings_diff(old: &Value, new: &Value) -> Vec<Change> {
    let (a, b) = (flatten_settings(old), flatten_settings(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k), b.get(k));
            (x != y).then(|| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
                Change::Setting {
                    path: k.clone(),
                    old: show(x),
                    new: show(y),
                }
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
        let d = settings_diff(
            &json!({"train": {"lr": 0.0003, "loss": "npairs"}}),
            &json!({"train": {"lr": 0.0001, "loss": "npairs"}}),
        );
        assert_eq!(
            d,
            vec![Change::Setting {
                path: "train.lr".to_string(),
                old: "0.0003".to_string(),
                new: "0.0001".to_string()
            }]
        );
        let changes = d
            .into_iter()
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
