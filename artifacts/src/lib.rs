//! The content-addressed artifact store, the tables every stage writes and the TensorBoard
//! event files training and the report write.
//!
//! The layout of a store root is named once, in [`Layout`]; what `dml gc` may remove
//! given the artifacts that must stay is [`ArtifactStore::gc_plan`].
//!
//! This crate knows nothing about stages: it stores directories under names.
#![deny(missing_docs)]

mod canonical;
mod error;
pub mod fsx;
mod gc;
mod layout;
mod live;
mod lock;
mod manifest;
mod store;
pub mod tables;
pub mod tensorboard;

pub use canonical::canonical_json;
pub use error::StoreError;
pub use gc::{GcPlan, StageKeys};
pub use layout::Layout;
pub use live::{GcFence, LiveRun, LiveRuns};
pub use lock::KeyLock;
pub use manifest::{DigestCheck, FileEntry, Manifest};
pub use store::{ArtifactStore, Lookup, ObjectInfo, Staging};
