//! Per-key OS file locks, so two runs never build the same artifact twice.
use crate::StoreError;
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::path::Path;

/// An exclusive lock on one key; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct KeyLock {
    file: File,
}

impl KeyLock {
    /// Takes the lock at `path`, calling `on_wait` once if another process holds it,
    /// then blocking until it is free.
    pub fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<Self, StoreError> {
        let file = open_lock_file(path)?;
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => {}
            Ok(false) => {
                on_wait();
                FileExt::lock_exclusive(&file).map_err(StoreError::io("lock", path))?;
            }
            Err(e) => return Err(StoreError::io("lock", path)(e)),
        }
        Ok(KeyLock { file })
    }

    /// Takes the lock only if it is free right now.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>, StoreError> {
        let file = open_lock_file(path)?;
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => Ok(Some(KeyLock { file })),
            Ok(false) => Ok(None),
            Err(e) => Err(StoreError::io("lock", path)(e)),
        }
    }

    /// Whether another process holds the lock at `path` now, found without creating or
    /// writing anything (a lock file that does not exist is held by nobody), so that a
    /// read-only store can be looked at.
    pub fn is_held(path: &Path) -> Result<bool, StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("open lock file", path)(e)),
        };
        match FileExt::try_lock_shared(&file) {
            Ok(true) => {
                let _ = FileExt::unlock(&file);
                Ok(false)
            }
            Ok(false) => Ok(true),
            Err(e) => Err(StoreError::io("lock", path)(e)),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(StoreError::io("open lock file", path))
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}
