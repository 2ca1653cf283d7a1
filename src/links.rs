//! `latest/<run name>/<node>` links to the artifacts the last run of a name
//! used, so notebooks open `dml-store/latest/synthetic/embed/embeddings.arrow`
//! without knowing keys; and `dml path`.
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{file_safe, RecordNode, RunRecord};
use std::path::{Path, PathBuf};

/// A node id as a folder name: `train[train.loss=npairs]` → `train@train.loss=npairs`,
/// `train:untrained` → `train@untrained`.
pub fn node_dir_name(id: &str) -> String {
    let s: String = id
        .chars()
        .filter(|c| *c != ']')
        .map(|c| match c {
            '[' | ':' => '@',
            '/' | '\\' | ' ' | '"' => '_',
            c => c,
        })
        .collect();
    s
}

/// Points `latest/<name>/<node>` at every artifact of the record that exists, and, for a
/// complete run, removes every other link there: sweep points of an earlier run of that
/// name that are not in this one, and nodes this run did not produce.
pub fn update(store: &ArtifactStore, record: &RunRecord) -> Result<PathBuf> {
    let dir = store.root().join("latest").join(file_safe(&record.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut current = std::collections::BTreeSet::new();
    for node in &record.nodes {
        let object = store.object_dir(&node.stage, &node.key);
        if !object.join("manifest.json").exists() {
            continue;
        }
        current.insert(std::ffi::OsString::from(node_dir_name(&node.id)));
        let link = dir.join(node_dir_name(&node.id));
        let target = Path::new("../../objects").join(&node.stage).join(&node.key);
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            node_dir_name(&node.id),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    // A `--until` run replaces the links of the nodes it reached and keeps the others:
    // `latest/<name>/<node>` is the node of the newest run of the name that reached it,
    // so a partial run never hides a complete one's embeddings or report.
    let reached: std::collections::BTreeSet<&str> = record
        .nodes
        .iter()
        .filter(|n| n.status.reached())
        .map(|n| n.stage.as_str())
        .collect();
    let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        // Dot files are links being written by a concurrent run; only links are ours.
        let stage = name
            .to_string_lossy()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        if name.to_string_lossy().starts_with('.')
            || current.contains(&name)
            || !entry.path().is_symlink()
            || (!record.complete() && !reached.contains(stage.as_str()))
        {
            continue;
        }
        std::fs::remove_file(entry.path())
            .with_context(|| format!("removing the stale link {}", entry.path().display()))?;
    }
    Ok(dir)
}

/// The record a command reads `node` from (a stage, a node id, its folder name or a
/// unique id prefix): with `name` (a run name, `NAME~N` or a record file prefix), that
/// run's newest record that reached the node; without, the newest record of any name
/// that reached it. A `--until` run thus never hides the artifacts of a complete one.
pub fn record_reaching(store: &ArtifactStore, node: &str, name: Option<&str>) -> Result<RunRecord> {
    match name {
        Some(n) => Ok(crate::outcome::load_record(store, n, Some(node))?.1),
        None => {
            let all = RunRecord::list(store)?;
            if all.is_empty() {
                bail!("no runs recorded in {} yet", store.root().display());
            }
            for path in all.iter().rev() {
                if let Ok(r) = RunRecord::load(path) {
                    if reaches(&r, node) {
                        return Ok(r);
                    }
                }
            }
            let last = all.last().expect("non-empty");
            Ok(RunRecord::load(last)?)
        }
    }
}

/// Whether `record` has the artifact of `node`: a stage, a node id, its folder name, or
/// (when no node is of that stage) a prefix of an id.
pub fn reaches(record: &RunRecord, node: &str) -> bool {
    let of_stage = record.nodes.iter().any(|n| n.stage == node);
    record.nodes.iter().any(|n| {
        n.status.reached()
            && (n.stage == node
                || n.id == node
                || node_dir_name(&n.id) == node
                || (!of_stage && n.id.starts_with(node)))
    })
}

/// The node of `record` that `node` names: an exact id (or its folder name), else the
/// one node of a stage, else the one id that starts with what was given
/// (`train[train.loss.name=npairs`).
pub fn pick_node<'a>(record: &'a RunRecord, node: &str) -> Result<&'a RecordNode> {
    let exact = record
        .nodes
        .iter()
        .find(|n| n.id == node || node_dir_name(&n.id) == node);
    let candidates: Vec<&RecordNode> = match exact {
        Some(n) => vec![n],
        None => {
            let by_stage: Vec<_> = record.nodes.iter().filter(|n| n.stage == node).collect();
            if by_stage.is_empty() {
                record
                    .nodes
                    .iter()
                    .filter(|n| n.id.starts_with(node) || node_dir_name(&n.id).starts_with(node))
                    .collect()
            } else {
                by_stage
            }
        }
    };
    match candidates.as_slice() {
        [one] => Ok(*one),
        [] => {
            let ids: Vec<&str> = record.nodes.iter().map(|n| n.id.as_str()).collect();
            bail!(
                "run `{}` has no stage `{node}`; it has: {}",
                record.name,
                ids.join(", ")
            );
        }
        many => {
            let ids: Vec<String> = many.iter().map(|n| format!("  {}", n.id)).collect();
            bail!(
                "run `{}` has {} `{node}` nodes (one per sweep point); name one, e.g. dml path '{}':\n{}",
                record.name,
                many.len(),
                many[0].id,
                ids.join("\n")
            );
        }
    }
}

/// `dml path STAGE [--name RUN]`: the artifact directory the last run that reached
/// the stage used.
pub fn path(store_dir: &Path, node: &str, name: Option<&str>) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let record = record_reaching(&store, node, name)?;
    let n = pick_node(&record, node)?;
    let link = store
        .root()
        .join("latest")
        .join(file_safe(&record.name))
        .join(node_dir_name(&n.id));
    let object = store.object_dir(&n.stage, &n.key);
    if !object.exists() {
        bail!(
            "the artifact of `{}` ({}) is not in the store (removed by gc?); rerun `{}`",
            n.id,
            n.key,
            record.name
        );
    }
    // The link when it is this artifact (it may be another run's after a partial run).
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    println!(
        "{}",
        if same(&link, &object) { link } else { object }.display()
    );
    Ok(())
}
