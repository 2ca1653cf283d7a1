//! The store: lookup with verification, staging directories, atomic commit, listing.
use crate::layout::{Layout, CREATED};
use crate::{DigestCheck, FileEntry, KeyLock, Manifest, StoreError};
use rand::Rng;
use rayon::prelude::*;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A store root on disk.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    layout: Layout,
    read_only: bool,
}

/// The result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    /// A finished artifact whose files match its manifest.
    Hit(Box<Manifest>),
    /// No artifact under that key.
    Missing,
    /// An artifact exists but does not match its manifest (the reason says how).
    Corrupt(String),
}

/// One finished artifact, as listed by [`ArtifactStore::list`].
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Stage name.
    pub stage: String,
    /// Key.
    pub key: String,
    /// Directory.
    pub dir: PathBuf,
    /// The manifest, if readable.
    pub manifest: Option<Manifest>,
}

impl ArtifactStore {
    /// Opens (creating if needed) a store at `root`, checking that it can be written.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in CREATED {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|cause| StoreError::NotWritable {
                path: root.clone(),
                cause,
            })?;
        }
        // Creating directories may succeed on an existing read-only tree; probe a write.
        let layout = Layout::new(&root);
        let probe = layout.tmp().join(format!(".probe-{}", std::process::id()));
        fs::write(&probe, b"").map_err(|cause| StoreError::NotWritable {
            path: root.clone(),
            cause,
        })?;
        let _ = fs::remove_file(&probe);
        Ok(ArtifactStore {
            layout,
            read_only: false,
        })
    }

    /// Opens a store for looking only (`ls`, `show`, `path`, `run --dry-run`): nothing
    /// is created or written, so a read-only or absent store can be browsed. Locks
    /// and staging are refused; caches may be read and are written only if possible.
    pub fn open_read_only(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        if root.exists() && !root.is_dir() {
            return Err(StoreError::NotWritable {
                cause: std::io::Error::other("it is not a directory"),
                path: root,
            });
        }
        Ok(ArtifactStore {
            layout: Layout::new(root),
            read_only: true,
        })
    }

    /// Opens an existing store for looking only (`ls`, `show`, `path`, `runs`, `status`,
    /// `gc --dry-run`, …): [`ArtifactStore::open_read_only`], but a path that holds no
    /// store is an error naming it, so a mistyped `--store` reads neither as an empty
    /// store nor creates one.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let layout = Layout::new(&root);
        let why = if !root.exists() {
            Some("no such directory")
        } else if !root.is_dir() {
            Some("it is not a directory")
        } else if !layout.objects().is_dir() && !layout.runs().is_dir() {
            Some("it has neither objects/ nor runs/")
        } else {
            None
        };
        match why {
            Some(why) => Err(StoreError::NoStore { path: root, why }),
            None => Self::open_read_only(root),
        }
    }

    /// True when opened with [`ArtifactStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn refuse_if_read_only(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::NotWritable {
                path: self.root().to_path_buf(),
                cause: std::io::Error::other("it was opened read-only"),
            });
        }
        Ok(())
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Where everything lives in this store.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where a finished artifact lives.
    pub fn object_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.layout.object(stage, key)
    }

    /// The run records directory.
    pub fn runs_dir(&self) -> PathBuf {
        self.layout.runs()
    }

    /// A cache directory that is not an artifact (created if needed; in a read-only
    /// store, created only if possible: writes into it may then fail).
    pub fn cache_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.layout.cache(name);
        match fs::create_dir_all(&dir) {
            Ok(()) => Ok(dir),
            Err(_) if self.read_only => Ok(dir),
            Err(e) => Err(StoreError::io("create", &dir)(e)),
        }
    }

    /// Looks up an artifact; with `verify`, every file is re-hashed, otherwise only
    /// files whose size or mtime differ from the manifest are. The manifest must
    /// match its own digest; one without a digest (written before digests) is accepted.
    pub fn lookup(&self, stage: &str, key: &str, verify: bool) -> Result<Lookup, StoreError> {
        self.lookup_with(stage, key, verify, &|m: &Manifest| m.key.clone())
    }

    /// [`ArtifactStore::lookup`], where a manifest without a digest must also give
    /// back its key through `key_of` (the key recomputed from its settings and inputs).
    pub fn lookup_with(
        &self,
        stage: &str,
        key: &str,
        verify: bool,
        key_of: &dyn Fn(&Manifest) -> String,
    ) -> Result<Lookup, StoreError> {
        let dir = self.object_dir(stage, key);
        if !dir.exists() {
            return Ok(Lookup::Missing);
        }
        let manifest_path = dir.join("manifest.json");
        if !manifest_path.exists() {
            return Ok(Lookup::Corrupt("its manifest.json is missing".into()));
        }
        let manifest = match Manifest::read_checked(&manifest_path) {
            Ok((_, DigestCheck::Mismatch)) => return Ok(Lookup::Corrupt(
                "its manifest.json was changed after it was written (its digest does not match)"
                    .into(),
            )),
            Ok((m, DigestCheck::Absent)) => {
                let recomputed = key_of(&m);
                if recomputed != key {
                    return Ok(Lookup::Corrupt(format!(
                        "its manifest's settings and inputs give the key {recomputed}, not {key}"
                    )));
                }
                m
            }
            Ok((m, DigestCheck::Valid)) => m,
            Err(e) => return Ok(Lookup::Corrupt(e.to_string())),
        };
        if manifest.key != key || manifest.stage != stage {
            return Ok(Lookup::Corrupt(format!(
                "its manifest names {} {}",
                manifest.stage, manifest.key
            )));
        }
        let problem = manifest
            .files
            .par_iter()
            .find_map_any(|entry| check_file(&dir, entry, verify));
        Ok(match problem {
            Some(p) => Lookup::Corrupt(p),
            None => Lookup::Hit(Box::new(manifest)),
        })
    }

    /// Takes the build lock for a key; `on_wait` is called if another process holds it.
    pub fn lock(
        &self,
        stage: &str,
        key: &str,
        on_wait: impl FnOnce(),
    ) -> Result<KeyLock, StoreError> {
        self.refuse_if_read_only()?;
        KeyLock::acquire(&self.lock_path(stage, key), on_wait)
    }

    pub(crate) fn lock_path(&self, stage: &str, key: &str) -> PathBuf {
        self.layout.key_lock(stage, key)
    }

    /// Starts writing an artifact in a fresh temporary directory of this store.
    pub fn begin(&self, stage: &str, key: &str) -> Result<Staging, StoreError> {
        self.refuse_if_read_only()?;
        let tag: u64 = rand::thread_rng().gen();
        let dir = self.layout.staging(stage, key, tag);
        fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
        Ok(Staging {
            dir,
            target: self.object_dir(stage, key),
            stage: stage.to_string(),
            key: key.to_string(),
            committed: false,
        })
    }

    /// Removes a finished (or corrupt) artifact: first moved out of `objects/` into
    /// `tmp/` (one rename, so no reader ever sees it half-removed, even if this process
    /// is killed), then deleted there. What a killed removal leaves in `tmp/` is finished
    /// by [`ArtifactStore::stale_tmp`] (`dml gc`, and every `dml run` as it starts).
    pub fn remove_object(&self, stage: &str, key: &str) -> Result<(), StoreError> {
        if let Some(trash) = self.move_to_trash(stage, key)? {
            remove_path(&trash)?;
        }
        Ok(())
    }

    /// The first half of [`ArtifactStore::remove_object`]: the artifact's directory renamed
    /// to `tmp/trash.<stage>-<key>-<random>`; where it went, if it existed.
    fn move_to_trash(&self, stage: &str, key: &str) -> Result<Option<PathBuf>, StoreError> {
        self.refuse_if_read_only()?;
        let dir = self.object_dir(stage, key);
        if !dir.exists() {
            return Ok(None);
        }
        let tmp = self.layout.tmp();
        fs::create_dir_all(&tmp).map_err(StoreError::io("create", &tmp))?;
        let trash = self.layout.trash(stage, key, rand::thread_rng().gen());
        fs::rename(&dir, &trash).map_err(StoreError::io("move out of objects/", &dir))?;
        Ok(Some(trash))
    }

    /// True for what [`ArtifactStore::remove_object`] moved out of `objects/` and had not
    /// finished deleting (as listed by [`ArtifactStore::stale_tmp`]).
    pub fn is_trash(path: &Path) -> bool {
        Layout::is_trash(&file_name(path))
    }

    /// Moves an artifact that failed verification out of `objects/` into
    /// `quarantine/` (one rename, so no reader sees it half-removed), where it can be
    /// looked at until `dml gc` removes it. Returns where it went, if it existed.
    pub fn quarantine(&self, stage: &str, key: &str) -> Result<Option<PathBuf>, StoreError> {
        self.refuse_if_read_only()?;
        let dir = self.object_dir(stage, key);
        if !dir.exists() {
            return Ok(None);
        }
        let aside = self.layout.quarantine();
        fs::create_dir_all(&aside).map_err(StoreError::io("create", &aside))?;
        let target = self
            .layout
            .quarantined(stage, key, rand::thread_rng().gen());
        fs::rename(&dir, &target).map_err(StoreError::io("move aside", &dir))?;
        Ok(Some(target))
    }

    /// Artifacts moved aside by [`ArtifactStore::quarantine`]; removed unless `dry_run`.
    pub fn collect_quarantine(&self, dry_run: bool) -> Result<Vec<PathBuf>, StoreError> {
        let found = read_dir_sorted(&self.layout.quarantine())?;
        if !dry_run {
            for dir in &found {
                remove_path(dir)?;
            }
        }
        Ok(found)
    }

    /// Lists every artifact in the store, sorted by stage then key.
    pub fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let objects = self.layout.objects();
        for stage in read_dir_sorted(&objects)? {
            if !stage.is_dir() {
                continue;
            }
            let stage_name = file_name(&stage);
            for dir in read_dir_sorted(&stage)? {
                let manifest = Manifest::read(&dir.join("manifest.json")).ok();
                out.push(ObjectInfo {
                    stage: stage_name.clone(),
                    key: file_name(&dir),
                    dir,
                    manifest,
                });
            }
        }
        Ok(out)
    }

    /// Temporary directories left by builds that are no longer running (their key lock
    /// is free), and the rest of artifacts whose removal was killed
    /// ([`ArtifactStore::is_trash`]); removed unless `dry_run`. A dry run only looks:
    /// it creates and writes nothing (no lock file either), so it works on a read-only store.
    pub fn stale_tmp(&self, dry_run: bool) -> Result<Vec<PathBuf>, StoreError> {
        let mut stale = Vec::new();
        for dir in read_dir_sorted(&self.layout.tmp())? {
            if Self::is_trash(&dir) {
                // Out of objects/ already: nothing reads it, no lock guards it.
                if !dry_run {
                    remove_path(&dir)?;
                }
                stale.push(dir);
                continue;
            }
            let name = file_name(&dir);
            let Some((stage, key)) = Layout::parse_staging(&name) else {
                if !dry_run {
                    remove_path(&dir)?;
                }
                stale.push(dir);
                continue;
            };
            let lock = self.lock_path(stage, key);
            if dry_run {
                if !KeyLock::is_held(&lock)? {
                    stale.push(dir);
                }
                continue;
            }
            // Held while removing, so no build of that key starts meanwhile.
            if let Some(_lock) = KeyLock::try_acquire(&lock)? {
                remove_path(&dir)?;
                stale.push(dir);
            }
        }
        Ok(stale)
    }
}

/// Removes a file or a directory tree; one already gone is not an error.
pub(crate) fn remove_path(path: &Path) -> Result<(), StoreError> {
    let result = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::io("remove", path)(e))
        }
        _ => Ok(()),
    }
}

fn check_file(dir: &Path, entry: &FileEntry, verify: bool) -> Option<String> {
    let path = dir.join(&entry.path);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(_) => return Some(format!("its file `{}` is missing", entry.path)),
    };
    if meta.len() != entry.size {
        return Some(format!(
            "its file `{}` has {} bytes, the manifest says {}",
            entry.path,
            meta.len(),
            entry.size
        ));
    }
    if !verify && mtime_ns(&meta) == entry.mtime_ns {
        return None;
    }
    match hash_file(&path) {
        Ok(h) if h == entry.blake3 => None,
        Ok(_) => Some(format!(
            "its file `{}` does not match its recorded blake3",
            entry.path
        )),
        Err(e) => Some(format!("its file `{}` cannot be read: {e}", entry.path)),
    }
}

/// A directory an artifact is being written into. Dropped without [`Staging::commit`],
/// it is removed, so nothing half-written ever becomes visible.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    stage: String,
    key: String,
    committed: bool,
}

impl Staging {
    /// The directory to write output files into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hashes and fsyncs every file, writes `manifest.json` last, and renames the
    /// directory into `objects/`. `manifest.files`, `stage` and `key` are filled here.
    pub fn commit(mut self, mut manifest: Manifest) -> Result<Manifest, StoreError> {
        let mut files = Vec::new();
        collect_files(&self.dir, &self.dir, &mut files)?;
        files.retain(|p| p != "manifest.json");
        let entries: Result<Vec<FileEntry>, StoreError> = files
            .par_iter()
            .map(|rel| {
                let path = self.dir.join(rel);
                let file = fs::File::open(&path).map_err(StoreError::io("open", &path))?;
                file.sync_all().map_err(StoreError::io("fsync", &path))?;
                let meta = file.metadata().map_err(StoreError::io("stat", &path))?;
                Ok(FileEntry {
                    path: rel.clone(),
                    size: meta.len(),
                    blake3: hash_file(&path).map_err(StoreError::io("hash", &path))?,
                    mtime_ns: mtime_ns(&meta),
                })
            })
            .collect();
        manifest.files = entries?;
        manifest.stage = self.stage.clone();
        manifest.key = self.key.clone();
        let manifest_path = self.dir.join("manifest.json");
        let text = manifest
            .to_json_with_digest()
            .map_err(|e| StoreError::BadManifest {
                path: manifest_path.clone(),
                message: e.to_string(),
            })?;
        {
            let mut f = fs::File::create(&manifest_path)
                .map_err(StoreError::io("create", &manifest_path))?;
            f.write_all(text.as_bytes())
                .map_err(StoreError::io("write", &manifest_path))?;
            f.sync_all()
                .map_err(StoreError::io("fsync", &manifest_path))?;
        }
        sync_dir(&self.dir);
        if let Some(parent) = self.target.parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("create", parent))?;
        }
        if self.target.exists() {
            fs::remove_dir_all(&self.target).map_err(StoreError::io("replace", &self.target))?;
        }
        fs::rename(&self.dir, &self.target)
            .map_err(StoreError::io("rename into the store", &self.target))?;
        if let Some(parent) = self.target.parent() {
            sync_dir(parent);
        }
        self.committed = true;
        Ok(manifest)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// blake3 of a file's contents, hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let len = fs::metadata(path)?.len();
    if len > 1 << 24 {
        hasher.update_mmap_rayon(path)?;
    } else {
        hasher.update_reader(fs::File::open(path)?)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn mtime_ns(meta: &fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), StoreError> {
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            collect_files(base, &path, out)?;
        } else {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(StoreError::io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            stage: String::new(),
            key: String::new(),
            version: 1,
            settings: serde_json::json!({"a": 1}),
            inputs: Default::default(),
            fingerprint: None,
            files: vec![],
            notes: serde_json::Value::Null,
            provenance: Default::default(),
        }
    }

    #[test]
    fn commit_then_hit_and_corruption_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        assert!(matches!(
            store.lookup("s", "k1", false).unwrap(),
            Lookup::Missing
        ));
        let staging = store.begin("s", "k1").unwrap();
        fs::create_dir_all(staging.dir().join("sub")).unwrap();
        fs::write(staging.dir().join("a.bin"), b"hello").unwrap();
        fs::write(staging.dir().join("sub/b.bin"), b"world!").unwrap();
        let m = staging.commit(manifest()).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(
            m.files[0].blake3,
            blake3::hash(b"hello").to_hex().to_string()
        );
        assert!(matches!(
            store.lookup("s", "k1", true).unwrap(),
            Lookup::Hit(_)
        ));
        // Same size, different bytes: caught by the mtime check + re-hash.
        let path = store.object_dir("s", "k1").join("a.bin");
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&path, b"jello").unwrap();
        match store.lookup("s", "k1", false).unwrap() {
            Lookup::Corrupt(why) => assert!(why.contains("a.bin"), "{why}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        // Truncation: caught by size alone.
        fs::write(&path, b"he").unwrap();
        assert!(matches!(
            store.lookup("s", "k1", false).unwrap(),
            Lookup::Corrupt(_)
        ));
        fs::remove_file(store.object_dir("s", "k1").join("manifest.json")).unwrap();
        assert!(matches!(
            store.lookup("s", "k1", false).unwrap(),
            Lookup::Corrupt(_)
        ));
    }

    #[test]
    fn a_manifest_checks_its_own_digest_and_an_old_one_its_key() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        let staging = store.begin("s", "k1").unwrap();
        fs::write(staging.dir().join("a.bin"), b"hello").unwrap();
        let mut m = manifest();
        // A float whose shortest form is 17 digits: the digest must not depend on
        // parsing and printing it again.
        m.notes = serde_json::json!({"x": 0.1 + 0.2, "y": 1.0 / 3.0});
        staging.commit(m).unwrap();
        let path = store.object_dir("s", "k1").join("manifest.json");
        let text = fs::read_to_string(&path).unwrap();
        assert!(matches!(
            store.lookup("s", "k1", true).unwrap(),
            Lookup::Hit(_)
        ));
        // Any edit, even one that keeps the JSON valid and the same size.
        fs::write(&path, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
        match store.lookup("s", "k1", false).unwrap() {
            Lookup::Corrupt(why) => assert!(why.contains("digest"), "{why}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        // Without a digest (an older dml), the key recomputed from it decides.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("digest");
        fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        let same = |m: &Manifest| m.key.clone();
        let other = |_: &Manifest| "another".to_string();
        assert!(matches!(
            store.lookup_with("s", "k1", false, &same).unwrap(),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            store.lookup_with("s", "k1", false, &other).unwrap(),
            Lookup::Corrupt(_)
        ));
        // Quarantine moves it out of objects/ in one rename.
        let aside = store.quarantine("s", "k1").unwrap().unwrap();
        assert!(aside.join("a.bin").exists());
        assert!(matches!(
            store.lookup("s", "k1", false).unwrap(),
            Lookup::Missing
        ));
        assert_eq!(
            store.collect_quarantine(false).unwrap(),
            vec![aside.clone()]
        );
        assert!(!aside.exists());
    }

    #[test]
    fn a_read_only_store_looks_but_never_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("absent");
        let store = ArtifactStore::open_read_only(&root).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.lookup("s", "k", false).unwrap(),
            Lookup::Missing
        ));
        assert!(store.begin("s", "k").is_err());
        assert!(store.lock("s", "k", || {}).is_err());
        assert!(!root.exists());
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        let dir = {
            let staging = store.begin("s", "k").unwrap();
            fs::write(staging.dir().join("x"), b"1").unwrap();
            staging.dir().to_path_buf()
        };
        assert!(!dir.exists());
        assert!(matches!(
            store.lookup("s", "k", false).unwrap(),
            Lookup::Missing
        ));
    }

    #[test]
    fn stale_tmp_is_collected_but_locked_tmp_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        fs::create_dir_all(tmp.path().join("tmp/s-dead-0000000000000001")).unwrap();
        fs::create_dir_all(tmp.path().join("tmp/s-live-0000000000000002")).unwrap();
        let _held = store.lock("s", "live", || {}).unwrap();
        let stale = store.stale_tmp(false).unwrap();
        assert_eq!(stale.len(), 1);
        assert!(stale[0].ends_with("s-dead-0000000000000001"));
        assert!(tmp.path().join("tmp/s-live-0000000000000002").exists());
    }

    /// Commits artifact `s`/`key` with one file, `a.bin`.
    fn commit_one(store: &ArtifactStore, key: &str) {
        let staging = store.begin("s", key).unwrap();
        fs::write(staging.dir().join("a.bin"), b"abc").unwrap();
        let mut m = manifest();
        m.stage = "s".into();
        m.key = key.into();
        staging.commit(m).unwrap();
    }

    #[test]
    fn a_removal_killed_after_its_rename_shows_nothing_and_is_finished_later() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        commit_one(&store, "k1");
        commit_one(&store, "k2");
        // A gc killed between moving k1 out of objects/ and deleting it (and with half
        // its files deleted): readers see k1 as absent, never as a broken artifact.
        let trash = store.move_to_trash("s", "k1").unwrap().unwrap();
        fs::remove_file(trash.join("a.bin")).unwrap();
        assert!(ArtifactStore::is_trash(&trash));
        let listed: Vec<String> = store.list().unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(listed, vec!["k2".to_string()]);
        assert!(matches!(
            store.lookup("s", "k1", true).unwrap(),
            Lookup::Missing
        ));
        // The next gc (or run) finishes it; a dry run only names it.
        assert_eq!(store.stale_tmp(true).unwrap(), vec![trash.clone()]);
        assert!(trash.exists());
        assert_eq!(store.stale_tmp(false).unwrap(), vec![trash.clone()]);
        assert!(!trash.exists());
        // A whole removal leaves nothing behind, and k2 is untouched.
        store.remove_object("s", "k1").unwrap();
        store.remove_object("s", "k2").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(read_dir_sorted(&tmp.path().join("tmp")).unwrap().is_empty());
    }

    #[test]
    fn a_dry_run_of_stale_tmp_creates_no_lock_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(tmp.path()).unwrap();
        fs::create_dir_all(tmp.path().join("tmp/s-dead-0000000000000001")).unwrap();
        fs::create_dir_all(tmp.path().join("tmp/s-live-0000000000000002")).unwrap();
        let _held = store.lock("s", "live", || {}).unwrap();
        let stale = store.stale_tmp(true).unwrap();
        assert_eq!(stale.len(), 1);
        assert!(stale[0].ends_with("s-dead-0000000000000001"));
        assert!(!store.lock_path("s", "dead").exists());
        assert!(stale[0].exists());
    }

    #[test]
    fn only_an_existing_store_opens_for_looking() {
        let tmp = tempfile::tempdir().unwrap();
        let absent = tmp.path().join("absent");
        let err = ArtifactStore::open_existing(&absent).unwrap_err();
        assert!(err.to_string().contains("no such directory"), "{err}");
        assert!(
            err.to_string().contains(&*absent.to_string_lossy()),
            "{err}"
        );
        assert!(!absent.exists());
        let err = ArtifactStore::open_existing(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains("neither objects/ nor runs/"),
            "{err}"
        );
        ArtifactStore::open(tmp.path().join("store")).unwrap();
        assert!(ArtifactStore::open_existing(tmp.path().join("store"))
            .unwrap()
            .is_read_only());
    }

    #[test]
    fn read_only_root_is_a_clear_error() {
        // /proc refuses new directories even to root, unlike permission bits.
        let err = ArtifactStore::open("/proc/dml-test-store").unwrap_err();
        assert!(err.to_string().contains("not writable"), "{err}");
        assert!(err.to_string().contains("/proc/dml-test-store"), "{err}");
    }
}
