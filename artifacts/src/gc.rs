//! What `dml gc` may remove, given the artifacts that must stay (the roots: what kept
//! run records, live runs and `latest/` links reach — the caller's retention policy).
use crate::layout::Layout;
use crate::store::{read_dir_sorted, remove_path};
use crate::{ArtifactStore, KeyLock, ObjectInfo, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// A set of `(stage, key)` pairs.
pub type StageKeys = BTreeSet<(String, String)>;

/// What gc may remove. While it is held (not for a dry run), the key locks of the
/// checkpoints it lists are held, so no build of those keys starts and resumes from a
/// checkpoint being removed.
#[derive(Debug)]
pub struct GcPlan {
    /// Finished artifacts that no root names, sorted by stage then key.
    pub objects: Vec<ObjectInfo>,
    /// Resume points (`cache/checkpoints/<key>/`) no root still needs — their key is named
    /// by no root, or its artifact is committed — and that no build holds.
    pub checkpoints: Vec<PathBuf>,
    held: Vec<KeyLock>,
}

impl GcPlan {
    /// Bytes the planned artifacts hold (as their manifests say).
    pub fn object_bytes(&self) -> u64 {
        self.objects
            .iter()
            .map(|o| o.manifest.as_ref().map_or(0, |m| m.total_bytes()))
            .sum()
    }

    /// How many key locks the plan holds (0 for a dry run).
    pub fn locks_held(&self) -> usize {
        self.held.len()
    }
}

impl ArtifactStore {
    /// What gc may remove when `roots` must stay. A dry run only looks: it opens no lock
    /// file for writing, so it works on a read-only store; a key whose lock a build holds
    /// keeps its checkpoints either way.
    pub fn gc_plan(&self, roots: &StageKeys, dry_run: bool) -> Result<GcPlan, StoreError> {
        let objects: Vec<ObjectInfo> = self
            .list()?
            .into_iter()
            .filter(|o| !roots.contains(&(o.stage.clone(), o.key.clone())))
            .collect();
        let layout = self.layout();
        let mut key_locks: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for lock in read_dir_sorted(&layout.locks())? {
            let name = lock
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some((_, key)) = Layout::parse_key_lock(&name) {
                key_locks.entry(key.to_string()).or_default().push(lock);
            }
        }
        let mut checkpoints = Vec::new();
        let mut held = Vec::new();
        for dir in read_dir_sorted(&layout.checkpoints())? {
            let key = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Needed while a root names the key and its artifact is not committed yet.
            let needed = roots
                .iter()
                .any(|(stage, k)| k == &key && !layout.manifest(stage, k).exists());
            if needed {
                continue;
            }
            let mut taken = Vec::new();
            let mut busy = false;
            for path in key_locks.get(&key).into_iter().flatten() {
                if dry_run {
                    busy |= KeyLock::is_held(path)?;
                    continue;
                }
                match KeyLock::try_acquire(path)? {
                    Some(lock) => taken.push(lock),
                    None => busy = true,
                }
            }
            if !busy {
                held.extend(taken);
                checkpoints.push(dir);
            }
        }
        Ok(GcPlan {
            objects,
            checkpoints,
            held,
        })
    }

    /// Removes a resume point listed by [`ArtifactStore::gc_plan`].
    pub fn remove_checkpoints(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        remove_path(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Manifest;

    fn commit(store: &ArtifactStore, stage: &str, key: &str) {
        let staging = store.begin(stage, key).unwrap();
        std::fs::write(staging.dir().join("a.bin"), b"abc").unwrap();
        staging
            .commit(Manifest {
                stage: stage.into(),
                key: key.into(),
                version: 1,
                settings: serde_json::json!({}),
                inputs: Default::default(),
                fingerprint: None,
                files: vec![],
                notes: serde_json::Value::Null,
                provenance: Default::default(),
            })
            .unwrap();
    }

    #[test]
    fn roots_keep_their_artifacts_and_unfinished_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        commit(&store, "embed", "kept");
        commit(&store, "embed", "dropped");
        commit(&store, "train", "done");
        let layout = store.layout();
        for key in ["done", "resuming", "abandoned", "busy"] {
            std::fs::create_dir_all(layout.checkpoint(key)).unwrap();
        }
        let roots: StageKeys = [("embed", "kept"), ("train", "done"), ("train", "resuming")]
            .into_iter()
            .map(|(s, k)| (s.to_string(), k.to_string()))
            .collect();
        let _build = store.lock("train", "busy", || {}).unwrap();
        for dry_run in [true, false] {
            let plan = store.gc_plan(&roots, dry_run).unwrap();
            let objects: Vec<(&str, &str)> = plan
                .objects
                .iter()
                .map(|o| (o.stage.as_str(), o.key.as_str()))
                .collect();
            assert_eq!(objects, [("embed", "dropped")]);
            assert!(plan.object_bytes() >= 3);
            // `done` is committed, `abandoned` named by no root; `resuming` is still
            // needed and `busy` is being built.
            assert_eq!(
                plan.checkpoints,
                [layout.checkpoint("abandoned"), layout.checkpoint("done")]
            );
            assert_eq!(plan.locks_held(), 0, "no lock files exist for these keys");
        }
    }

    #[test]
    fn a_planned_checkpoint_keeps_its_key_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        std::fs::create_dir_all(store.layout().checkpoint("old")).unwrap();
        drop(store.lock("train", "old", || {}).unwrap());
        let plan = store.gc_plan(&StageKeys::new(), false).unwrap();
        assert_eq!(plan.checkpoints.len(), 1);
        assert_eq!(plan.locks_held(), 1);
        let path = store.layout().key_lock("train", "old");
        assert!(
            KeyLock::try_acquire(&path).unwrap().is_none(),
            "held by the plan"
        );
        drop(plan);
        assert!(KeyLock::try_acquire(&path).unwrap().is_some());
    }
}
