//! `manifest.json`: what an artifact is, how it was made, and what its files must hash to.
use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One output file of an artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the artifact directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the contents, hex.
    pub blake3: String,
    /// Modification time (ns since the epoch) when committed; a file whose mtime
    /// still matches is trusted without re-hashing unless `--verify` is asked.
    pub mtime_ns: i128,
}

/// The record written last into every finished artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Stage name.
    pub stage: String,
    /// The artifact's key.
    pub key: String,
    /// Stage code version.
    pub version: u32,
    /// Canonical settings the key was computed from.
    pub settings: serde_json::Value,
    /// Input role → input key.
    pub inputs: BTreeMap<String, String>,
    /// Extra key material (e.g. a dataset fingerprint), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Output files.
    pub files: Vec<FileEntry>,
    /// Stage-provided notes (skipped images, final metrics…). Not part of the key.
    #[serde(default)]
    pub notes: serde_json::Value,
    /// Provenance: host, versions, wall time. Not part of the key.
    #[serde(default)]
    pub provenance: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path).map_err(StoreError::io("read manifest", path))?;
        serde_json::from_str(&text).map_err(|e| StoreError::BadManifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Total size of the output files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}
