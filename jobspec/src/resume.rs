//! The train stage's resumable checkpoints in `cache/checkpoints/<key>/`: each one
//! a directory `step-<N>/` holding the weights and optimiser state and the loss log
//! up to step N, written under a temporary name, fsynced and renamed, so a kill
//! leaves a whole checkpoint or none. Older ones are removed only once a newer one
//! is in place, and the whole folder only once the train artifact is committed
//! (by the engine, see `RunContext::key_cache_dir`).
use crate::BoxError;
use dml_artifacts::fsx;
use std::path::{Path, PathBuf};

/// Weights, batch-norm statistics and optimiser state (`Trainer::save`).
pub const STATE_FILE: &str = "checkpoint.safetensors";
/// The rows of `train_log.parquet` up to the checkpoint, as JSON.
pub const LOG_FILE: &str = "log.json";

/// The checkpoints of one train key.
pub struct Checkpoints {
    dir: PathBuf,
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

fn sync(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl Checkpoints {
    /// The checkpoints kept in `dir` (which exists).
    pub fn new(dir: PathBuf) -> Self {
        Checkpoints { dir }
    }

    /// The newest published checkpoint: its step and directory.
    pub fn latest(&self) -> Option<(u64, PathBuf)> {
        std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| Some((step_of(&e.file_name().to_string_lossy())?, e.path())))
            .max_by_key(|(step, _)| *step)
    }

    /// Publishes the checkpoint taken after `step` updates: `write` fills a fresh
    /// temporary directory, which is fsynced and renamed to `step-<step>`; then
    /// every other entry (older checkpoints, leftovers of killed writes) is removed.
    /// If `write` fails, nothing changes.
    pub fn publish(
        &self,
        step: u64,
        write: impl FnOnce(&Path) -> Result<(), BoxError>,
    ) -> Result<PathBuf, BoxError> {
        let tmp = self
            .dir
            .join(format!(".step-{step}.tmp-{}", std::process::id()));
        if tmp.exists() {
            fsx::remove_dir_all(&tmp)?;
        }
        fsx::create_dir_all(&tmp)?;
        let written = write(&tmp).and_then(|()| {
            for entry in std::fs::read_dir(&tmp)? {
                sync(&entry?.path())?;
            }
            sync(&tmp)?;
            Ok(())
        });
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Test hook: die with the checkpoint written but not yet published.
        if std::env::var("DML_FAULT_ABORT_IN_CHECKPOINT").is_ok_and(|s| s == step.to_string()) {
            crate::protocol::fault_abort();
        }
        let target = self.dir.join(format!("step-{step}"));
        if target.exists() {
            fsx::remove_dir_all(&target)?;
        }
        fsx::rename(&tmp, &target)?;
        sync(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)?.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path == target {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(
                    "could not remove the old checkpoint {}: {e}",
                    path.display()
                );
            }
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_previous_checkpoint_and_a_new_one_replaces_it() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(tmp.path().to_path_buf());
        assert!(c.latest().is_none());
        c.publish(2, |d| Ok(std::fs::write(d.join(LOG_FILE), "[2]")?))
            .unwrap();
        let failed = c.publish(4, |d| {
            std::fs::write(d.join(LOG_FILE), "[4]")?;
            Err("disk full".into())
        });
        assert!(failed.is_err());
        let (step, dir) = c.latest().unwrap();
        assert_eq!(step, 2);
        assert_eq!(std::fs::read_to_string(dir.join(LOG_FILE)).unwrap(), "[2]");
        // A leftover of a killed write, and a file of the old layout.
        std::fs::create_dir_all(tmp.path().join(".step-6.tmp-1")).unwrap();
        std::fs::write(tmp.path().join(STATE_FILE), "old").unwrap();
        c.publish(6, |d| Ok(std::fs::write(d.join(LOG_FILE), "[6]")?))
            .unwrap();
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["step-6".to_string()]);
        assert_eq!(c.latest().unwrap().0, 6);
    }
}
