//! Dataset fingerprints: blake3 over (path, size, content hash) of every file, with a stat cache so unchanged files are not re-read.
//!
//! # The fingerprint
//! [`fingerprint`] hashes the content of each listed file (blake3) and combines, in
//! byte order of the relative paths (duplicates removed):
//!
//! ```text
//! blake3( "dml-dataset-fingerprint-v1\0"
//!         ‖ for each file: len(path) as u64 LE ‖ path (UTF-8) ‖ size as u64 LE ‖ blake3(content) (32 bytes) )
//! ```
//!
//! It never depends on mtimes, inodes, absolute paths or the order the caller gives.
//!
//! # The stat cache
//! [`StatCache`] remembers, per relative path, the file's size, mtime and ctime (ns),
//! inode, its content hash and when the entry was recorded. A file whose current stat
//! equals the entry's is not re-read — unless the entry is *racy*: the file's mtime or
//! ctime is at or after the recording time minus [`RACY_SLACK_NS`] (2 s, coarse
//! filesystem timestamps). Such a file could have been changed again within the same
//! timestamp tick right after it was hashed, so it is hashed again next time (after
//! which its entry is older than the file and trusted). Including ctime means a file
//! rewritten in place and given its old mtime back (`touch -d`, `cp -p`) is re-read.
//!
//! The cache file is a compact binary (magic, entry count, entries, blake3 trailer),
//! written atomically (temp file in the same folder, fsync, rename). A corrupt or
//! truncated cache is detected by the trailer; [`StatCache::load_or_empty`] then starts
//! afresh with a warning.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};

/// Entries whose file mtime/ctime is within this many nanoseconds before (or any time
/// after) the moment they were recorded are re-hashed on the next run.
pub const RACY_SLACK_NS: i64 = 2_000_000_000;

const MAGIC: &[u8; 8] = b"DMLSTAT\x01";
const DOMAIN: &[u8] = b"dml-dataset-fingerprint-v1\0";
/// Files up to this size are read in one go; larger ones are streamed.
const SMALL_FILE: u64 = 4 << 20;

/// What is known about a file's content at one stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheEntry {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    /// Wall-clock time (ns since the epoch) just before the stat that this entry records.
    recorded_ns: i64,
    hash: [u8; 32],
}

/// The stat of a file now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
}

impl CacheEntry {
    /// The cached hash, if `now` is the same file and the entry is not racy.
    fn trusted_hash(&self, now: &Stat) -> Option<[u8; 32]> {
        let same = self.size == now.size
            && self.mtime_ns == now.mtime_ns
            && self.ctime_ns == now.ctime_ns
            && self.inode == now.inode;
        let racy =
            self.mtime_ns.max(self.ctime_ns) >= self.recorded_ns.saturating_sub(RACY_SLACK_NS);
        (same && !racy).then_some(self.hash)
    }
}

/// Content hashes of files keyed by relative path and validated by stat; see the module docs.
#[derive(Debug, Default, Clone)]
pub struct StatCache {
    entries: HashMap<String, CacheEntry>,
    dirty: bool,
    loaded_from: Option<PathBuf>,
}

impl StatCache {
    /// An empty cache.
    pub fn new() -> StatCache {
        StatCache::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when entries changed since the cache was loaded or saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Drops the entries whose path is not in `keep` (files no longer in the dataset).
    pub fn retain_paths(&mut self, keep: &[String]) {
        let keep: std::collections::HashSet<&str> = keep.iter().map(String::as_str).collect();
        let before = self.entries.len();
        self.entries.retain(|k, _| keep.contains(k.as_str()));
        if self.entries.len() != before {
            self.dirty = true;
        }
    }

    /// Loads a cache file; a missing file gives an empty cache. A corrupt file is
    /// [`DatasetError::CacheCorrupt`].
    pub fn load(path: &Path) -> Result<StatCache> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StatCache {
                    loaded_from: Some(path.to_path_buf()),
                    dirty: true,
                    ..StatCache::default()
                })
            }
            Err(e) => return Err(DatasetError::io("reading the stat cache", path, e)),
        };
        let entries = decode(&bytes).map_err(|reason| DatasetError::CacheCorrupt {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(StatCache {
            entries,
            dirty: false,
            loaded_from: Some(path.to_path_buf()),
        })
    }

    /// Like [`StatCache::load`], but a corrupt or unreadable file gives an empty cache
    /// (logged as a warning): the cache only saves time, it never changes a result.
    pub fn load_or_empty(path: &Path) -> StatCache {
        match StatCache::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{e}; starting with an empty stat cache");
                StatCache {
                    loaded_from: Some(path.to_path_buf()),
                    dirty: true,
                    ..StatCache::default()
                }
            }
        }
    }

    /// Writes the cache atomically (temp file beside `path`, fsync, rename). Does
    /// nothing when the cache was loaded from `path` and has not changed since.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        if !self.dirty && self.loaded_from.as_deref() == Some(path) && path.is_file() {
            return Ok(());
        }
        let bytes = encode(&self.entries);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| DatasetError::io("creating folder", dir, e))?;
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("stat-cache");
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(DatasetError::io("writing the stat cache", path, e));
        }
        self.dirty = false;
        self.loaded_from = Some(path.to_path_buf());
        Ok(())
    }
}

fn encode(entries: &HashMap<String, CacheEntry>) -> Vec<u8> {
    let mut keys: Vec<&String> = entries.keys().collect();
    keys.sort();
    let mut out = Vec::with_capacity(16 + entries.len() * 96 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for k in keys {
        let e = &entries[k];
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.inode.to_le_bytes());
        out.extend_from_slice(&e.recorded_ns.to_le_bytes());
        out.extend_from_slice(&e.hash);
    }
    let trailer = blake3::hash(&out);
    out.extend_from_slice(trailer.as_bytes());
    out
}

/// A little-endian reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("unexpected end of file".into());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> std::result::Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
}

fn decode(bytes: &[u8]) -> std::result::Result<HashMap<String, CacheEntry>, String> {
    if bytes.len() < MAGIC.len() + 8 + 32 {
        return Err("too short".into());
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a stat cache of this version".into());
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != trailer {
        return Err("checksum mismatch (truncated or modified)".into());
    }
    let mut c = Cursor {
        buf: &body[MAGIC.len()..],
    };
    let n = c.u64()? as usize;
    if n > body.len() / 76 {
        return Err(format!("declares {n} entries, more than the file can hold"));
    }
    let mut entries = HashMap::with_capacity(n);
    for _ in 0..n {
        let len = u32::from_le_bytes(c.array()?) as usize;
        let key = std::str::from_utf8(c.take(len)?)
            .map_err(|_| "a path is not UTF-8".to_string())?
            .to_string();
        let e = CacheEntry {
            size: c.u64()?,
            mtime_ns: c.i64()?,
            ctime_ns: c.i64()?,
            inode: c.u64()?,
            recorded_ns: c.i64()?,
            hash: c.array()?,
        };
        entries.insert(key, e);
    }
    if !c.buf.is_empty() {
        return Err("trailing bytes after the entries".into());
    }
    Ok(entries)
}

/// One file of a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Path relative to the dataset root, `/` separators.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content, lowercase hex.
    pub blake3: String,
}

/// How much work a fingerprint took (not part of the fingerprint itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintStats {
    /// Files whose content was read and hashed.
    pub hashed_files: usize,
    /// Bytes read for hashing.
    pub hashed_bytes: u64,
    /// Files whose hash came from the stat cache.
    pub cache_hits: usize,
}

/// A dataset fingerprint; see the module docs for the exact definition of `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// blake3, lowercase hex, over the sorted (path, size, content hash) triples.
    pub hash: String,
    /// Every file, sorted by path.
    pub files: Vec<FileDigest>,
    /// Work done (cache hits, bytes hashed).
    pub stats: FingerprintStats,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Files are stat'ed and read relative to their folder; runs of at most this many files
/// of one folder form one parallel task.
const TASK_FILES: usize = 256;

/// An open folder whose files are stat'ed and read by name. On Linux this is a
/// directory descriptor (`fstatat`/`openat`), which spares the kernel walking the whole
/// path for every one of 120k files; elsewhere it joins paths.
struct Dir {
    path: PathBuf,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

#[cfg(target_os = "linux")]
fn c_name(name: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "file name contains NUL")
    })
}

impl Dir {
    #[cfg(target_os = "linux")]
    fn open(path: &Path) -> std::io::Result<Dir> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL")
        })?;
        // SAFETY: `c` is a valid NUL-terminated string; the returned descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Dir {
            path: path.to_path_buf(),
            // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn open(path: &Path) -> std::io::Result<Dir> {
        if !path.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "folder not found",
            ));
        }
        Ok(Dir {
            path: path.to_path_buf(),
        })
    }

    #[cfg(target_os = "linux")]
    fn stat(&self, name: &str) -> std::io::Result<Stat> {
        use std::os::fd::AsRawFd;
        let c = c_name(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid descriptor, NUL-terminated name, and `st` is written by the kernel on success.
        let rc = unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fstatat returned 0, so `st` is initialised.
        let st = unsafe { st.assume_init() };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Stat {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            inode: st.st_ino,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn stat(&self, name: &str) -> std::io::Result<Stat> {
        let m = std::fs::metadata(self.path.join(name))?;
        if !m.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let ns = |t: std::io::Result<SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0)
        };
        #[cfg(unix)]
        let (ctime_ns, inode) = {
            use std::os::unix::fs::MetadataExt;
            (m.ctime() * 1_000_000_000 + m.ctime_nsec(), m.ino())
        };
        #[cfg(not(unix))]
        let (ctime_ns, inode) = (ns(m.created()), 0);
        Ok(Stat {
            size: m.len(),
            mtime_ns: ns(m.modified()),
            ctime_ns,
            inode,
        })
    }

    #[cfg(target_os = "linux")]
    fn open_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let c = c_name(name)?;
        // SAFETY: valid descriptor and NUL-terminated name; the result is owned below.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    #[cfg(not(target_os = "linux"))]
    fn open_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        std::fs::File::open(self.path.join(name))
    }

    /// blake3 of a file's content and the number of bytes read; `buf` is scratch space.
    fn hash_file(
        &self,
        name: &str,
        size_hint: u64,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<([u8; 32], u64)> {
        let mut f = self.open_file(name)?;
        if size_hint <= SMALL_FILE {
            buf.clear();
            f.read_to_end(buf)?;
            return Ok((*blake3::hash(buf).as_bytes(), buf.len() as u64));
        }
        let mut hasher = blake3::Hasher::new();
        buf.resize(1 << 20, 0);
        let mut total = 0u64;
        loop {
            let n = f.read(buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        Ok((*hasher.finalize().as_bytes(), total))
    }
}

/// Fingerprints the files `rel_paths` (relative to `root`, `/` separators) using and
/// updating `cache`. Files are stat'ed and hashed in parallel (rayon). A missing or
/// unreadable file is an error naming it.
pub fn fingerprint(
    root: &Path,
    rel_paths: &[String],
    cache: &mut StatCache,
) -> Result<Fingerprint> {
    fingerprint_at(root, rel_paths, cache, now_ns())
}

/// What became of one file.
struct Done {
    hash: [u8; 32],
    size: u64,
    /// Some when the file was (re-)hashed: the new cache entry.
    fresh: Option<CacheEntry>,
}

/// Stats (and if needed hashes) `names`, all in folder `dir_rel` under `root`.
fn process_run(
    root: &Path,
    dir_rel: &str,
    names: &[&str],
    entries: &HashMap<String, CacheEntry>,
    recorded_ns: i64,
) -> Result<Vec<Done>> {
    let dir_path = if dir_rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir_rel)
    };
    let dir = Dir::open(&dir_path).map_err(|e| DatasetError::io("opening folder", &dir_path, e))?;
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(names.len());
    let mut key = String::new();
    for name in names {
        key.clear();
        if !dir_rel.is_empty() {
            key.push_str(dir_rel);
            key.push('/');
        }
        key.push_str(name);
        let st = dir
            .stat(name)
            .map_err(|e| DatasetError::io("reading metadata of", dir.path.join(name), e))?;
        if let Some(hash) = entries.get(key.as_str()).and_then(|e| e.trusted_hash(&st)) {
            out.push(Done {
                hash,
                size: st.size,
                fresh: None,
            });
            continue;
        }
        let (hash, read) = dir
            .hash_file(name, st.size, &mut buf)
            .map_err(|e| DatasetError::io("reading", dir.path.join(name), e))?;
        // The stat taken before reading is what gets recorded: a change during the
        // read alters mtime/ctime, so the next run sees a mismatch and re-reads.
        out.push(Done {
            hash,
            size: read,
            fresh: Some(CacheEntry {
                size: st.size,
                mtime_ns: st.mtime_ns,
                ctime_ns: st.ctime_ns,
                inode: st.inode,
                recorded_ns,
                hash,
            }),
        });
    }
    Ok(out)
}

/// [`fingerprint`] with the recording time of new cache entries given (tests move the clock).
pub(crate) fn fingerprint_at(
    root: &Path,
    rel_paths: &[String],
    cache: &mut StatCache,
    recorded_ns: i64,
) -> Result<Fingerprint> {
    let mut paths: Vec<&str> = rel_paths.iter().map(String::as_str).collect();
    paths.par_sort_unstable();
    paths.dedup();

    // Runs of consecutive paths in one folder, cut to at most TASK_FILES, in order.
    let split = |p: &str| -> (usize, usize) {
        match p.rfind('/') {
            Some(i) => (i, i + 1),
            None => (0, 0),
        }
    };
    let mut runs: Vec<(usize, usize)> = Vec::new(); // [start, end) into `paths`
    let mut start = 0;
    for i in 1..=paths.len() {
        let boundary = i == paths.len() || i - start >= TASK_FILES || {
            let (a, _) = split(paths[start]);
            let (b, _) = split(paths[i]);
            paths[start][..a] != paths[i][..b]
        };
        if boundary && i > start {
            runs.push((start, i));
            start = i;
        }
    }

    let entries = &cache.entries;
    let done: Vec<Vec<Done>> = runs
        .par_iter()
        .map(|&(s, e)| {
            let (dir_end, _) = split(paths[s]);
            let dir_rel = &paths[s][..dir_end];
            let names: Vec<&str> = paths[s..e].iter().map(|p| &p[split(p).1..]).collect();
            process_run(root, dir_rel, &names, entries, recorded_ns)
        })
        .collect::<Result<_>>()?;
    let done: Vec<Done> = done.into_iter().flatten().collect();

    let mut stats = FingerprintStats::default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN);
    for (rel, d) in paths.iter().zip(&done) {
        hasher.update(&(rel.len() as u64).to_le_bytes());
        hasher.update(rel.as_bytes());
        hasher.update(&d.size.to_le_bytes());
        hasher.update(&d.hash);
        match d.fresh {
            Some(entry) => {
                stats.hashed_files += 1;
                stats.hashed_bytes += d.size;
                cache.entries.insert((*rel).to_string(), entry);
                cache.dirty = true;
            }
            None => stats.cache_hits += 1,
        }
    }
    let files: Vec<FileDigest> = paths
        .par_iter()
        .zip(done.par_iter())
        .map(|(rel, d)| FileDigest {
            path: (*rel).to_string(),
            size: d.size,
            blake3: blake3::Hash::from_bytes(d.hash).to_hex().to_string(),
        })
        .collect();
    tracing::debug!(
        files = files.len(),
        hashed = stats.hashed_files,
        bytes = stats.hashed_bytes,
        "fingerprinted dataset"
    );
    Ok(Fingerprint {
        hash: hasher.finalize().to_hex().to_string(),
        files,
        stats,
    })
}

#[cfg(test)]
mod tests;
