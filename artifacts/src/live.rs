//! Live runs: the keys each running `dml run` resolved, so `dml gc` never removes
//! an artifact a run is about to read or has built but not yet recorded.
//!
//! Protocol. A run holds the *gc fence* shared while it resolves its plan and
//! registers its keys in `runs/live/<pid>-<rand>.json`, a file it keeps
//! exclusively locked until it exits (a killed run's lock is released by the OS).
//! `dml gc` holds the fence exclusively while it decides and removes, so every
//! run has either registered before gc reads the live files, or resolves its
//! plan after gc is done (and then sees what is gone, and rebuilds it).
use crate::store::{file_name, read_dir_sorted, remove_path};
use crate::{ArtifactStore, StoreError};
use fs4::fs_std::FileExt;
use rand::Rng;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// The gc fence, held shared (a run resolving its plan) or exclusive (gc).
#[derive(Debug)]
pub struct GcFence {
    file: File,
}

impl Drop for GcFence {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

/// A registered live run: its keys stay out of gc's reach until this is dropped
/// (or the process dies).
#[derive(Debug)]
pub struct LiveRun {
    path: PathBuf,
    file: File,
}

impl LiveRun {
    /// The registration's tag (`<pid>-<rand>`, its file name without `.json`), which the
    /// run record keeps so readers can tell a running run from a killed one.
    pub fn tag(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Where the registration lives (removed by the interrupt handler, which exits
    /// without running destructors).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = FileExt::unlock(&self.file);
    }
}

/// What gc learns from `runs/live/`.
#[derive(Debug, Default)]
pub struct LiveRuns {
    /// (stage, key) of every artifact a live run resolved.
    pub keys: BTreeSet<(String, String)>,
    /// How many runs are live.
    pub runs: usize,
    /// Registrations of runs that are gone (their lock is free).
    pub stale: Vec<PathBuf>,
}

impl ArtifactStore {
    fn fence(&self, exclusive: bool, on_wait: impl FnOnce()) -> Result<GcFence, StoreError> {
        let path = self.layout().gc_lock();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open lock file", &path))?;
        let got = match exclusive {
            true => FileExt::try_lock_exclusive(&file),
            false => FileExt::try_lock_shared(&file),
        };
        if !got.map_err(StoreError::io("lock", &path))? {
            on_wait();
            let blocked = match exclusive {
                true => FileExt::lock_exclusive(&file),
                false => FileExt::lock_shared(&file),
            };
            blocked.map_err(StoreError::io("lock", &path))?;
        }
        Ok(GcFence { file })
    }

    /// Holds gc off while a run resolves its plan and registers it (shared: runs
    /// do not wait for each other). `on_wait` is called if gc is running.
    pub fn hold_off_gc(&self, on_wait: impl FnOnce()) -> Result<GcFence, StoreError> {
        self.fence(false, on_wait)
    }

    /// Taken by gc: waits until no run is between resolving and registering.
    pub fn fence_out_runs(&self, on_wait: impl FnOnce()) -> Result<GcFence, StoreError> {
        self.fence(true, on_wait)
    }

    /// [`ArtifactStore::fence_out_runs`] for a look that changes nothing (`gc --dry-run`):
    /// the fence's lock file is opened read-only and never created, so a read-only store
    /// can be looked at; `None` when no run ever made one (none is resolving its plan).
    pub fn fence_out_runs_to_look(
        &self,
        on_wait: impl FnOnce(),
    ) -> Result<Option<GcFence>, StoreError> {
        let path = self.layout().gc_lock();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open lock file", &path)(e)),
        };
        if !FileExt::try_lock_exclusive(&file).map_err(StoreError::io("lock", &path))? {
            on_wait();
            FileExt::lock_exclusive(&file).map_err(StoreError::io("lock", &path))?;
        }
        Ok(Some(GcFence { file }))
    }

    /// Registers a running run's (stage, key) pairs; call while holding
    /// [`ArtifactStore::hold_off_gc`].
    pub fn register_live_run<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<LiveRun, StoreError> {
        let dir = self.layout().live_runs();
        fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
        let tag: u32 = rand::thread_rng().gen();
        let path = dir.join(format!("{}-{tag:08x}.json", std::process::id()));
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("create", &path))?;
        FileExt::lock_exclusive(&file).map_err(StoreError::io("lock", &path))?;
        let keys: Vec<[&str; 2]> = keys.into_iter().map(|(s, k)| [s, k]).collect();
        let text = serde_json::to_string(&serde_json::json!({
            "pid": std::process::id(),
            "keys": keys,
        }))
        .map_err(|e| StoreError::BadManifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("write", &path))?;
        Ok(LiveRun { path, file })
    }

    /// Whether the run that registered as `tag` ([`LiveRun::tag`]) is still running: its
    /// registration exists and is locked.
    pub fn is_live(&self, tag: &str) -> bool {
        let path = self.layout().live_runs().join(format!("{tag}.json"));
        match File::open(&path) {
            Ok(file) => match FileExt::try_lock_shared(&file) {
                Ok(true) => {
                    let _ = FileExt::unlock(&file);
                    false
                }
                Ok(false) => true,
                Err(_) => false,
            },
            Err(_) => false,
        }
    }

    /// Reads the registrations of live runs; a registration whose lock is free
    /// belongs to a run that is gone and is listed as stale (removed unless `dry_run`).
    /// Call while holding [`ArtifactStore::fence_out_runs`].
    pub fn live_runs(&self, dry_run: bool) -> Result<LiveRuns, StoreError> {
        let mut out = LiveRuns::default();
        for path in read_dir_sorted(&self.layout().live_runs())? {
            if !file_name(&path).ends_with(".json") {
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(_) => continue, // its run ended meanwhile
            };
            if FileExt::try_lock_shared(&file).map_err(StoreError::io("lock", &path))? {
                // Nobody holds it: the run is gone.
                let _ = FileExt::unlock(&file);
                if !dry_run {
                    remove_path(&path)?;
                }
                out.stale.push(path);
                continue;
            }
            let text = fs::read_to_string(&path).map_err(StoreError::io("read", &path))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| StoreError::BadManifest {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for pair in v["keys"].as_array().into_iter().flatten() {
                if let (Some(s), Some(k)) = (pair[0].as_str(), pair[1].as_str()) {
                    out.keys.insert((s.to_string(), k.to_string()));
                }
            }
            out.runs += 1;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_run_is_seen_until_dropped_and_a_dead_one_is_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        let live = {
            let _fence = store.hold_off_gc(|| {}).unwrap();
            store
                .register_live_run([("plan", "k1"), ("train", "k2")])
                .unwrap()
        };
        let seen = store.live_runs(false).unwrap();
        assert_eq!(seen.runs, 1);
        assert!(seen.keys.contains(&("train".to_string(), "k2".to_string())));
        drop(live);
        assert!(store.live_runs(false).unwrap().keys.is_empty());
        // A registration left by a killed run: the file is there, its lock is free.
        let dead = store.runs_dir().join("live/1-00000000.json");
        fs::write(&dead, r#"{"pid":1,"keys":[["plan","k9"]]}"#).unwrap();
        let seen = store.live_runs(false).unwrap();
        assert!(seen.keys.is_empty());
        assert_eq!(seen.stale, vec![dead.clone()]);
        assert!(!dead.exists());
    }
}
