//! The decode cache: every image decoded and resized to S×S once, stored as one memory-mapped `images.u8`.
//!
//! Layout of a cache folder:
//! - `images.u8`: N images back to back, each S×S×3 bytes, HWC, RGB, rows top to bottom;
//!   image `i` starts at byte `i·S·S·3`. An image skipped at build time is all zeros.
//! - `index.json`: `{"format": "dml-decode-cache-v1", "count": N, "size": S,
//!   "channels": 3, "layout": "NHWC u8 RGB", "paths": [...], "missing": [i, ...]}` —
//!   `paths` are the relative paths in cache order, `missing` the skipped indices.
//!
//! [`DecodeCache::build`] decodes in parallel (rayon) straight into a memory map of a
//! temporary file, renames it to `images.u8` when complete and writes `index.json` last
//! (also via rename), so a folder with an `index.json` always holds a complete cache.
//! The file's blocks are reserved before it is mapped: writing through a map into a
//! file the disk cannot hold would kill the process with SIGBUS instead of an error.

use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::imaging::load_resized_into;

const FORMAT: &str = "dml-decode-cache-v1";
/// File holding the pixels.
pub const IMAGES_FILE: &str = "images.u8";
/// File describing them.
pub const INDEX_FILE: &str = "index.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    format: String,
    count: usize,
    size: u32,
    channels: u32,
    layout: String,
    paths: Vec<String>,
    missing: Vec<usize>,
}

/// What [`DecodeCache::build`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeReport {
    /// Images written.
    pub images: usize,
    /// Images that could not be read or decoded and were skipped (`skip_bad`):
    /// (relative path, reason), in cache order.
    pub skipped: Vec<(String, String)>,
}

/// A built decode cache, memory-mapped read-only.
#[derive(Debug)]
pub struct DecodeCache {
    map: Option<Mmap>,
    size: u32,
    stride: usize,
    paths: Vec<String>,
    missing: Vec<bool>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.partial");
    let run = || -> std::io::Result<()> {
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    run().map_err(|e| DatasetError::io("writing", path, e))
}

/// Sizes `file` to `len` bytes with every block allocated on disk, so that
/// writing through a memory map cannot fail later; a full disk is a
/// [`DatasetError::DiskFull`] naming the bytes needed.
pub fn reserve(file: &std::fs::File, path: &Path, len: u64) -> Result<()> {
    #[cfg(target_os = "linux")]
    if len > 0 {
        use std::os::fd::AsRawFd;
        let Ok(off_len) = libc::off_t::try_from(len) else {
            return Err(DatasetError::io(
                "reserving",
                path,
                std::io::Error::other(format!("{len} bytes is too large a file")),
            ));
        };
        // SAFETY: a valid open descriptor; posix_fallocate only allocates blocks.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
        match rc {
            0 => return Ok(()),
            libc::ENOSPC | libc::EFBIG => {
                return Err(DatasetError::DiskFull {
                    path: path.to_path_buf(),
                    needed: len,
                    available: available_bytes(file),
                })
            }
            // The file system cannot reserve: fall back to a sparse file.
            libc::EOPNOTSUPP | libc::EINVAL => {
                tracing::warn!(
                    "{}: the file system cannot reserve space; a full disk will end the process",
                    path.display()
                );
            }
            e => {
                return Err(DatasetError::io(
                    "reserving",
                    path,
                    std::io::Error::from_raw_os_error(e),
                ))
            }
        }
    }
    file.set_len(len)
        .map_err(|e| DatasetError::io("sizing", path, e))
}

/// Free bytes on the disk holding `file`, if the OS says.
#[cfg(target_os = "linux")]
fn available_bytes(file: &std::fs::File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a properly sized out-parameter.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    (rc == 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

impl DecodeCache {
    /// Decodes `rel_paths` (relative to `root`), resizes each to `size`×`size` and writes
    /// the cache into `out_dir` (created if needed). With `skip_bad`, an image that cannot
    /// be read or decoded is recorded in the report and left as zeros; without it, the
    /// first such image is the error (naming it) and nothing is left behind.
    pub fn build(
        root: &Path,
        rel_paths: &[String],
        size: u32,
        out_dir: &Path,
        skip_bad: bool,
    ) -> Result<DecodeReport> {
        if size == 0 {
            return Err(DatasetError::InvalidSetting {
                setting: "image.resize",
                value: "0".into(),
                reason: "the decode cache image size must be positive".into(),
            });
        }
        std::fs::create_dir_all(out_dir)
            .map_err(|e| DatasetError::io("creating folder", out_dir, e))?;
        let stride = size as usize * size as usize * 3;
        let total =
            stride
                .checked_mul(rel_paths.len())
                .ok_or_else(|| DatasetError::InvalidSetting {
                    setting: "image.resize",
                    value: size.to_string(),
                    reason: "the cache would not fit in memory addresses".into(),
                })?;
        let partial = out_dir.join(format!("{IMAGES_FILE}.partial"));
        let final_path = out_dir.join(IMAGES_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| DatasetError::io("creating", &partial, e))?;
        let cleanup = |e: DatasetError| {
            let _ = std::fs::remove_file(&partial);
            e
        };
        reserve(&file, &partial, total as u64).map_err(cleanup)?;
        let mut failures: Vec<(usize, String)> = Vec::new();
        if total > 0 {
            // SAFETY: the file was just created by us and is not shared; nothing else
            // truncates it while the map is alive.
            let mut map = unsafe { MmapMut::map_mut(&file) }
                .map_err(|e| cleanup(DatasetError::io("mapping", &partial, e)))?;
            let chunks = map
                .par_chunks_mut(stride)
                .zip(rel_paths.par_iter())
                .enumerate();
            if skip_bad {
                let mut f: Vec<(usize, String)> = chunks
                    .filter_map(|(i, (dst, rel))| {
                        match load_resized_into(&root.join(rel), size, dst) {
                            Ok(()) => None,
                            Err(e) => {
                                dst.fill(0);
                                Some((i, e.to_string()))
                            }
                        }
                    })
                    .collect();
                f.sort_unstable_by_key(|(i, _)| *i);
                failures = f;
            } else {
                chunks
                    .try_for_each(|(_, (dst, rel))| load_resized_into(&root.join(rel), size, dst))
                    .map_err(cleanup)?;
            }
            map.flush()
                .map_err(|e| cleanup(DatasetError::io("flushing", &partial, e)))?;
        }
        drop(file);
        std::fs::rename(&partial, &final_path)
            .map_err(|e| cleanup(DatasetError::io("renaming", &partial, e)))?;

        let index = Index {
            format: FORMAT.into(),
            count: rel_paths.len(),
            size,
            channels: 3,
            layout: "NHWC u8 RGB".into(),
            paths: rel_paths.to_vec(),
            missing: failures.iter().map(|(i, _)| *i).collect(),
        };
        let json = serde_json::to_vec(&index)
            .map_err(|e| DatasetError::io("encoding", out_dir.join(INDEX_FILE), e.into()))?;
        write_atomic(&out_dir.join(INDEX_FILE), &json)?;
        for (i, reason) in &failures {
            tracing::warn!(path = %rel_paths[*i], "skipped: {reason}");
        }
        Ok(DecodeReport {
            images: rel_paths.len() - failures.len(),
            skipped: failures
                .into_iter()
                .map(|(i, reason)| (rel_paths[i].clone(), reason))
                .collect(),
        })
    }

    /// Opens a cache built by [`DecodeCache::build`] (memory-maps `images.u8`).
    pub fn open(dir: &Path) -> Result<DecodeCache> {
        let index_path = dir.join(INDEX_FILE);
        let corrupt = |path: PathBuf, reason: String| DatasetError::CacheCorrupt { path, reason };
        let bytes =
            std::fs::read(&index_path).map_err(|e| DatasetError::io("reading", &index_path, e))?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(index_path.clone(), e.to_string()))?;
        if index.format != FORMAT || index.channels != 3 || index.size == 0 {
            return Err(corrupt(
                index_path,
                format!(
                    "format `{}` with {} channels and size {} is not {FORMAT}",
                    index.format, index.channels, index.size
                ),
            ));
        }
        if index.paths.len() != index.count {
            return Err(corrupt(
                index_path,
                format!("count {} but {} paths", index.count, index.paths.len()),
            ));
        }
        let mut missing = vec![false; index.count];
        for &i in &index.missing {
            match missing.get_mut(i) {
                Some(m) => *m = true,
                None => {
                    return Err(corrupt(
                        index_path,
                        format!("missing index {i} is out of range"),
                    ))
                }
            }
        }
        let stride = index.size as usize * index.size as usize * 3;
        let images = dir.join(IMAGES_FILE);
        let file =
            std::fs::File::open(&images).map_err(|e| DatasetError::io("opening", &images, e))?;
        let len = file
            .metadata()
            .map_err(|e| DatasetError::io("reading metadata of", &images, e))?
            .len();
        if len != (stride * index.count) as u64 {
            return Err(corrupt(
                images,
                format!("{len} bytes, expected {} images of {stride}", index.count),
            ));
        }
        let map = if len > 0 {
            // SAFETY: cache files are immutable once built (written under a new name
            // and renamed into place); nothing truncates them while mapped.
            Some(unsafe { Mmap::map(&file) }.map_err(|e| DatasetError::io("mapping", &images, e))?)
        } else {
            None
        };
        Ok(DecodeCache {
            map,
            size: index.size,
            stride,
            paths: index.paths,
            missing,
        })
    }

    /// Number of images (including skipped ones).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when the cache holds no image.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Side length S of the stored images.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Relative path of image `i`.
    pub fn path(&self, i: usize) -> Option<&str> {
        self.paths.get(i).map(String::as_str)
    }

    /// All relative paths, in cache order.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// True when image `i` was skipped at build time (its pixels are zeros).
    pub fn is_missing(&self, i: usize) -> bool {
        self.missing.get(i).copied().unwrap_or(false)
    }

    /// Pixels of image `i` (S×S×3 HWC RGB), zeros for a skipped image.
    ///
    /// # Panics
    /// If `i >= self.len()`, like slice indexing; see [`DecodeCache::try_get`].
    pub fn get(&self, i: usize) -> &[u8] {
        assert!(
            i < self.len(),
            "decode cache index {i} out of range (len {})",
            self.len()
        );
        self.raw(i)
    }

    /// Pixels of image `i`, or `None` if `i` is out of range or the image was skipped.
    pub fn try_get(&self, i: usize) -> Option<&[u8]> {
        (i < self.len() && !self.missing[i]).then(|| self.raw(i))
    }

    fn raw(&self, i: usize) -> &[u8] {
        match &self.map {
            Some(m) => &m[i * self.stride..(i + 1) * self.stride],
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests;
