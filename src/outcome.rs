//! What a run produced, per sweep point: its artifact directories and headline metrics (R@1,
//! MAP@R, NMI, training seconds, validation), read from the artifacts its run record names —
//! for `dml run --json`, `dml runs`, `dml diff` and `dml report`.
use dml_artifacts::{ArtifactStore, Manifest};
use dml_jobspec::evaluate::names::field;
use dml_jobspec::evaluate::MetricsFile;
use dml_jobspec::roles::ReportRole;
use dml_pipeline::{RecordNode, RunRecord};
use dml_stages::report::RunLabel;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The report-input roles a point is read from (the index and decode cache are found
/// through its retrieve node's embed node).
const ROLES: [ReportRole; 5] = [
    ReportRole::Retrieve,
    ReportRole::Cluster,
    ReportRole::Train,
    ReportRole::BaselineRetrieve,
    ReportRole::BaselineCluster,
];

/// One point of a run (the run itself without a sweep).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The point's name: the run name, with the sweep values for a sweep.
    pub name: String,
    /// The sweep values (`setting path` → value), empty without a sweep.
    pub point: BTreeMap<String, String>,
    /// Stage (`train`, `embed`, `retrieve`, `cluster`, `report`) → artifact directory, for
    /// the artifacts that are in the store.
    pub artifacts: BTreeMap<String, PathBuf>,
    /// Headline metrics; null where the artifact is missing.
    pub metrics: Metrics,
    /// The report's label (when the run reached its report).
    #[serde(skip)]
    pub label: Option<RunLabel>,
    /// Report-input role → the key of its artifact (of the role's stage).
    #[serde(skip)]
    pub roles: BTreeMap<ReportRole, String>,
}

/// The numbers a run is compared by.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Metrics {
    /// Recall@1 on the test split.
    pub recall_at_1: Option<f64>,
    /// MAP@R on the test split.
    pub map_at_r: Option<f64>,
    /// NMI of k-means with k = classes.
    pub nmi: Option<f64>,
    /// Wall seconds of training.
    pub train_seconds: Option<f64>,
    /// `[train.validation]`'s outcome: `on`, `keep`, `kept_step`, `recall_at_1`, `map_at_r`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Value>,
}

impl Metrics {
    /// `(label, value)` of each metric, for tables and diffs.
    pub fn rows(&self) -> Vec<(&'static str, Option<f64>)> {
        let val = |k: &str| {
            self.validation
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_f64)
        };
        let mut rows = vec![
            ("R@1", self.recall_at_1),
            ("MAP@R", self.map_at_r),
            ("NMI", self.nmi),
            ("train s", self.train_seconds),
        ];
        if self.validation.is_some() {
            rows.push(("val R@1", val(&field::recall_at(1))));
            rows.push(("val MAP@R", val(field::MAP_AT_R)));
        }
        rows
    }
}

fn object(store: &ArtifactStore, stage: &str, key: &str) -> Option<PathBuf> {
    let dir = store.object_dir(stage, key);
    dir.join("manifest.json").is_file().then_some(dir)
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn node<'a>(record: &'a RunRecord, stage: &str, key: &str) -> Option<&'a RecordNode> {
    record
        .nodes
        .iter()
        .find(|n| n.stage == stage && n.key == key)
}

/// The sweep values in a node id: `train[train.loss.name=npairs,train.seed=1]`.
fn point_of_id(id: &str) -> BTreeMap<String, String> {
    id.split_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .map(|inner| {
            inner
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every point of a record: from its report node (labels and inputs) when the run has one,
/// else (a run stopped with `--until`) one per trained network.
pub fn points(store: &ArtifactStore, record: &RunRecord) -> Vec<Point> {
    let mut out = Vec::new();
    if let Some(report) = record.nodes.iter().find(|n| n.stage == "report") {
        let labels: Vec<RunLabel> = report
            .settings
            .pointer("/report/runs")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for (i, label) in labels.into_iter().enumerate() {
            let mut roles = BTreeMap::new();
            for role in ROLES {
                if let Some(key) = report.inputs.get(&role.of(i)) {
                    roles.insert(role, key.clone());
                }
            }
            let mut p = Point {
                name: label.name.clone(),
                point: label.point.iter().cloned().collect(),
                artifacts: BTreeMap::new(),
                metrics: Metrics::default(),
                label: Some(label),
                roles,
            };
            if let Some(dir) = object(store, "report", &report.key) {
                p.artifacts.insert("report".into(), dir);
            }
            fill(store, record, &mut p);
            out.push(p);
        }
        return out;
    }
    for train in record
        .nodes
        .iter()
        .filter(|n| n.stage == "train" && !n.id.contains(":untrained"))
    {
        let point = point_of_id(&train.id);
        let name = if point.is_empty() {
            record.name.clone()
        } else {
            let values: Vec<String> = point.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}[{}]", record.name, values.join(","))
        };
        let mut roles = BTreeMap::from([(ReportRole::Train, train.key.clone())]);
        let embed = record
            .nodes
            .iter()
            .find(|n| n.stage == "embed" && n.inputs.get("train") == Some(&train.key));
        if let Some(embed) = embed {
            for role in [ReportRole::Retrieve, ReportRole::Cluster] {
                if let Some(n) = record
                    .nodes
                    .iter()
                    .find(|n| n.stage == role.stage() && n.inputs.get("embed") == Some(&embed.key))
                {
                    roles.insert(role, n.key.clone());
                }
            }
        }
        let mut p = Point {
            name,
            point,
            artifacts: BTreeMap::new(),
            metrics: Metrics::default(),
            label: None,
            roles,
        };
        fill(store, record, &mut p);
        out.push(p);
    }
    out
}

/// Artifact directories and metrics of a point whose roles are known.
fn fill(store: &ArtifactStore, record: &RunRecord, p: &mut Point) {
    // Only artifacts this run built, fetched or found: a failed run shows no metrics
    // that a later run's artifacts of the same keys would lend it.
    let dir = |role: ReportRole| {
        let stage = role.stage();
        p.roles
            .get(&role)
            .filter(|key| node(record, stage, key).is_none_or(|n| n.status.reached()))
            .and_then(|key| object(store, stage, key))
    };
    let (train, retrieve, cluster) = (
        dir(ReportRole::Train),
        dir(ReportRole::Retrieve),
        dir(ReportRole::Cluster),
    );
    let embed_key = p
        .roles
        .get(&ReportRole::Retrieve)
        .and_then(|key| node(record, "retrieve", key))
        .and_then(|n| n.inputs.get("embed").cloned())
        .or_else(|| {
            let train_key = p.roles.get(&ReportRole::Train)?;
            record
                .nodes
                .iter()
                .find(|n| n.stage == "embed" && n.inputs.get("train") == Some(train_key))
                .map(|n| n.key.clone())
        });
    if let Some(d) = embed_key.and_then(|k| object(store, "embed", &k)) {
        p.artifacts.insert("embed".into(), d);
    }
    if let Some(r) = retrieve
        .as_ref()
        .and_then(|d| read_json(&d.join("metrics.json")))
    {
        let r = MetricsFile::from_json(&r);
        p.metrics.recall_at_1 = r.recall_at(1);
        p.metrics.map_at_r = r.map_at_r;
    }
    if let Some(c) = cluster
        .as_ref()
        .and_then(|d| read_json(&d.join("metrics.json")))
    {
        p.metrics.nmi = MetricsFile::from_json(&c).nmi;
    }
    if let Some(m) = train
        .as_ref()
        .and_then(|d| Manifest::read(&d.join("manifest.json")).ok())
    {
        let notes = &m.notes;
        p.metrics.train_seconds = notes.get("train_seconds").and_then(Value::as_f64);
        if notes.get("kept_step").is_some() {
            let pick = |k: &str| notes.get(k).cloned().unwrap_or(Value::Null);
            p.metrics.validation = Some(serde_json::json!({
                "on": pick("validation_on"),
                "keep": pick("validation_keep"),
                "kept_step": pick("kept_step"),
                field::recall_at(1): pick("val_recall_at_1"),
                field::MAP_AT_R: pick("val_map_at_r"),
            }));
        }
    }
    for (stage, d) in [
        ("train", train),
        ("retrieve", retrieve),
        ("cluster", cluster),
    ] {
        if let Some(d) = d {
            p.artifacts.insert(stage.into(), d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_values_are_read_from_node_ids() {
        assert!(point_of_id("train").is_empty());
        assert!(point_of_id("train:untrained").is_empty());
        let p = point_of_id("train[train.loss.name=npairs,train.seed=1]");
        assert_eq!(p.get("train.loss.name").map(String::as_str), Some("npairs"));
        assert_eq!(p.get("train.seed").map(String::as_str), Some("1"));
    }
}
