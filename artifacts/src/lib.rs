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
//! ```
//!
//! This crate knows nothing about stages: it stores directories under names.
#![deny(missing_docs)]

mod error;
mod lock;
mod manifest;
mod store;
pub mod tables;

pub use error::StoreError;
pub use lock::KeyLock;
pub use manifest::{FileEntry, Manifest};
pub use store::{ArtifactStore, Lookup, ObjectInfo, Staging};
