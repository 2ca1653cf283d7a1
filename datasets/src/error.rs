//! The crate's one error type: every variant names the file, line or setting at fault and what to do.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Messages are complete sentences meant for the end user: they name the file (and
/// 1-based line), the image, or the setting (`plan.p`, …) that is at fault and, where
/// there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The dataset root does not exist or is not a directory.
    #[error("dataset root `{}` does not exist or is not a directory; check `dataset.root`", path.display())]
    RootMissing {
        /// The root as given.
        path: PathBuf,
    },

    /// A metadata file the adapter needs is not there.
    #[error("{kind} dataset: list file `{}` is missing; is `dataset.root` the folder that contains it?", path.display())]
    ListFileMissing {
        /// The adapter (`cub`, `sop`, …).
        kind: &'static str,
        /// Full path that was looked for.
        path: PathBuf,
    },

    /// Not enough free disk space to reserve a memory-mapped output.
    #[error("not enough disk space for `{}`: it needs {needed} bytes ({}){}; free some space or put the store on a larger disk (--store DIR or DML_STORE)", path.display(), human_bytes(*needed), available.map(|a| format!(" and the disk has {a} bytes ({}) free", human_bytes(a))).unwrap_or_default())]
    DiskFull {
        /// The file being reserved.
        path: PathBuf,
        /// Bytes it needs.
        needed: u64,
        /// Bytes free on its disk, if known.
        available: Option<u64>,
    },

    /// An I/O operation failed.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What was being done ("reading", "writing", "renaming", …).
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A dataset file in a format dml does not read, with the one-time conversion.
    #[error("{}: {reason}; convert it once (needs Python with scipy), then rerun:\n{how}", path.display())]
    NeedsConversion {
        /// The file.
        path: PathBuf,
        /// Why it is not read.
        reason: String,
        /// The commands to run.
        how: String,
    },

    /// A line of a list file does not have the expected form.
    #[error("{}:{line_no}: {reason}: `{line}`", file.display())]
    ParseLine {
        /// The list file.
        file: PathBuf,
        /// 1-based line number.
        line_no: usize,
        /// The offending line (without its line ending).
        line: String,
        /// What was expected.
        reason: String,
    },

    /// Class ids are inconsistent (out of range, an image with two classes, …).
    #[error("{}: {reason}", file.display())]
    BadClassId {
        /// The list file (or folder) the ids came from.
        file: PathBuf,
        /// What is wrong and where.
        reason: String,
    },

    /// The dataset lists no usable image, or a split that must exist is empty.
    #[error("dataset at `{}` is empty: {reason}", root.display())]
    EmptyDataset {
        /// The dataset root.
        root: PathBuf,
        /// What was missing.
        reason: String,
    },

    /// Listed images that are not on disk (from [`crate::check_files_exist`]).
    #[error("{count} listed image(s) do not exist under `{}`, e.g. {}; fix the dataset or the list file", root.display(), first.join(", "))]
    ImagesMissing {
        /// The dataset root.
        root: PathBuf,
        /// How many are missing.
        count: usize,
        /// The first few missing relative paths.
        first: Vec<String>,
    },

    /// A setting has a value that cannot work.
    #[error("setting `{setting}` = {value}: {reason}")]
    InvalidSetting {
        /// Dotted setting name, e.g. `plan.p`.
        setting: &'static str,
        /// The value given, rendered.
        value: String,
        /// Why it is rejected and what would work.
        reason: String,
    },

    /// Fewer classes than `plan.p` and repeated classes not allowed.
    #[error("setting `plan.p` = {p} but the train split has only {classes} class(es); lower `plan.p` or set `plan.allow_repeated_classes = true`")]
    TooFewClasses {
        /// Classes per batch asked for.
        p: u32,
        /// Classes available.
        classes: usize,
    },

    /// A class given to the planner has no image.
    #[error("class {class_id} has no image in the train split; leave it out of the plan input")]
    EmptyClass {
        /// The class.
        class_id: u32,
    },

    /// An image could not be decoded.
    #[error("cannot decode image `{}`: {reason}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// An image could not be encoded or written (synthetic data).
    #[error("cannot encode image `{}`: {reason}", path.display())]
    Encode {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A cache file (stat cache, decode cache) is unreadable.
    #[error("cache file `{}` is corrupt ({reason}); delete it, it is rebuilt automatically", path.display())]
    CacheCorrupt {
        /// The cache file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// A batch asked for an image the decode cache cannot give.
    #[error("batch entry {slot}: {reason}")]
    BatchImage {
        /// Position in the batch.
        slot: usize,
        /// What is wrong (index out of range, image skipped at build time, …).
        reason: String,
    },
}

impl DatasetError {
    /// True when the error is about one image that could not be opened, read or decoded:
    /// the case `--skip-bad-images` is for. A full disk, a bad setting or a failed write
    /// of the cache is not (skipping images would not help, and the hint would mislead).
    pub fn is_bad_image(&self) -> bool {
        match self {
            DatasetError::Decode { .. } => true,
            DatasetError::Io { action, source, .. } => {
                matches!(*action, "opening image" | "reading image")
                    && !matches!(
                        source.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::OutOfMemory
                    )
            }
            _ => false,
        }
    }

    /// Shorthand for [`DatasetError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DatasetError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// `1536` → `1.5 KiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_image_failures_count_as_bad_images() {
        let decode = DatasetError::Decode {
            path: "a.jpg".into(),
            reason: "bad huffman".into(),
        };
        assert!(decode.is_bad_image());
        let unreadable = DatasetError::io(
            "reading image",
            "a.jpg",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(unreadable.is_bad_image());
        let full = DatasetError::DiskFull {
            path: "images.bin".into(),
            needed: 1 << 30,
            available: Some(1 << 20),
        };
        assert!(!full.is_bad_image());
        let write = DatasetError::io(
            "flushing",
            "images.bin.partial",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert!(!write.is_bad_image());
        let setting = DatasetError::InvalidSetting {
            setting: "image.resize",
            value: "0".into(),
            reason: "must be positive".into(),
        };
        assert!(!setting.is_bad_image());
    }
}
