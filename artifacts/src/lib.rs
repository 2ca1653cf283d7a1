//! The content-addressed artifact store and the tables every stage writes.
//!
//! Layout of a store root:
//!
//! ```text
//! objects/<stage>/<key>/   one finished artifact: data files + manifest.json (written last)
//! tmp/<stage>-<key>-<rand>/ an artifact being written; renamed into objects/ only when complete
//! runs/<timestamp>-<name>.json  run records
//! locks/<stage>-<key>.lock      one OS file lock per key being built
//! cache/                         caches that are not artifacts (dataset stat cache, checkpoints)
//! quarantine/<stage>-<key>-<rand>/ artifacts that failed verification, moved aside; removed by gc
//! runs/live/<pid>-<rand>.json   the keys each running `dml run` resolved, locked while it runs
//! ```
//!
//! This crate knows nothing about stages: it stores directories under names.
#![deny(missing_docs)]

mod canonical;
mod error;
pub mod fsx;
mod live;
mod lock;
mod manifest;
mod store;
pub mod tables;

pub use canonical::canonical_json;
pub use error::StoreError;
pub use live::{GcFence, LiveRun, LiveRuns};
pub use lock::KeyLock;
pub use manifest::{DigestCheck, FileEntry, Manifest};
pub use store::{ArtifactStore, Lookup, ObjectInfo, Staging};
