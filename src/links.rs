//! `latest/<run name>/<node>` links to the artifacts the last run of a name
//! used, so notebooks open `dml-store/latest/synthetic/embed/embeddings.arrow`
//! without knowing keys; and `dml path`.
use crate::records::{pick_node, record_reaching};
use anyhow::{bail, Context, Result};
use dml_artifacts::{ArtifactStore, Layout};
use dml_pipeline::{file_safe, node_dir_name, RunRecord};
use std::path::{Path, PathBuf};

/// Points `latest/<name>/<node>` at every artifact of the record that exists, and, for a
/// complete run, removes every other link there: sweep points of an earlier run of that
/// name that are not in this one, and nodes this run did not produce.
pub fn update(store: &ArtifactStore, record: &RunRecord) -> Result<PathBuf> {
    let dir = store.layout().latest_run(&file_safe(&record.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut current = std::collections::BTreeSet::new();
    for node in &record.nodes {
        let object = store.object_dir(&node.stage, &node.key);
        if !object.join("manifest.json").exists() {
            continue;
        }
        current.insert(std::ffi::OsString::from(node_dir_name(&node.id)));
        let link = dir.join(node_dir_name(&node.id));
        let target = Layout::latest_target(&node.stage, &node.key);
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

/// `dml path STAGE [--name RUN]`: the artifact directory the last run that reached
/// the stage used.
pub fn path(store_dir: &Path, node: &str, name: Option<&str>) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let record = record_reaching(&store, node, name)?;
    let n = pick_node(&record, node)?;
    let link = store
        .layout()
        .latest_run(&file_safe(&record.name))
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
