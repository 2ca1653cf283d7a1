//! `latest/<run name>/<node>` links to the artifacts the last run of a name
//! used, so notebooks open `dml-store/latest/synthetic/embed/embeddings.arrow`
//! without knowing keys; and `dml path`.
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{file_safe, RunRecord};
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

/// Points `latest/<name>/<node>` at every artifact of the record that exists, and
/// removes every other link there: sweep points of an earlier run of that name
/// that are not in this one, and nodes this run did not produce.
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
    let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        // Dot files are links being written by a concurrent run; only links are ours.
        if name.to_string_lossy().starts_with('.')
            || current.contains(&name)
            || !entry.path().is_symlink()
        {
            continue;
        }
        std::fs::remove_file(entry.path())
            .with_context(|| format!("removing the stale link {}", entry.path().display()))?;
    }
    Ok(dir)
}

/// `dml path STAGE [--name RUN]`: the artifact directory the last run used.
pub fn path(store_dir: &Path, node: &str, name: Option<&str>) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let record = match name {
        Some(n) => RunRecord::latest(&store, n)?
            .with_context(|| format!("no run named `{n}` in {}", store_dir.display()))?,
        None => {
            let last = RunRecord::list(&store)?
                .pop()
                .with_context(|| format!("no runs recorded in {} yet", store_dir.display()))?;
            RunRecord::load(&last)?
        }
    };
    // An exact id (or its folder name), else the one node of a stage, else the
    // one id that starts with what was given (`train[train.loss.name=npairs`).
    let exact = record
        .nodes
        .iter()
        .find(|n| n.id == node || node_dir_name(&n.id) == node);
    let candidates: Vec<&dml_pipeline::RecordNode> = match exact {
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
    let n = match candidates.as_slice() {
        [one] => *one,
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
    };
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
    println!("{}", if link.exists() { link } else { object }.display());
    Ok(())
}
