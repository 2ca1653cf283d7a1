//! `manifest.json`: what an artifact is, how it was made, and what its files must hash to.
//!
//! A manifest carries its own `digest`: the blake3 of its canonical JSON without
//! that field, so an edit into other valid JSON (a flipped hash digit, edited
//! settings, a file dropped from `files`) is detected on its own.
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

/// How a manifest's digest line starts: it is always the first member.
const DIGEST_PREFIX: &str = "{\n  \"digest\": \"";

/// What a manifest's own digest says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestCheck {
    /// The digest matches the rest of the manifest.
    Valid,
    /// No digest: written by a dml from before manifests carried one.
    Absent,
    /// The manifest was changed after it was written.
    Mismatch,
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Splits a manifest's text into (digest, the text it was computed from): the
/// digest is the blake3 of the manifest's text with its digest line removed,
/// so checking it needs no re-encoding (and no float parsing and printing).
fn split_digest(text: &str) -> Option<(&str, String)> {
    let rest = text.strip_prefix(DIGEST_PREFIX)?;
    let digest = rest.get(..64)?;
    let body = rest.get(64..)?.strip_prefix("\",\n")?;
    Some((digest, format!("{{\n{body}")))
}

impl Manifest {
    /// Reads a manifest file (without checking its digest; see [`Manifest::read_checked`]).
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::read_checked(path)?.0)
    }

    /// Reads a manifest file and checks its digest.
    pub fn read_checked(path: &Path) -> Result<(Self, DigestCheck), StoreError> {
        let text = std::fs::read_to_string(path).map_err(StoreError::io("read manifest", path))?;
        Self::parse_checked(&text).map_err(|e| StoreError::BadManifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Parses a manifest's text (a file's, or one downloaded) and checks its digest.
    pub fn parse_checked(text: &str) -> Result<(Self, DigestCheck), serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let check = match (value.get("digest"), split_digest(text)) {
            (None, _) => DigestCheck::Absent,
            (Some(_), Some((digest, body))) if blake3_hex(body.as_bytes()) == digest => {
                DigestCheck::Valid
            }
            (Some(_), _) => DigestCheck::Mismatch,
        };
        Ok((serde_json::from_value(value)?, check))
    }

    /// The manifest as pretty JSON whose first member is its digest.
    pub fn to_json_with_digest(&self) -> Result<String, serde_json::Error> {
        let body = serde_json::to_string_pretty(self)?;
        let digest = blake3_hex(body.as_bytes());
        let members = body.strip_prefix("{\n").unwrap_or(&body);
        Ok(format!("{DIGEST_PREFIX}{digest}\",\n{members}"))
    }

    /// Total size of the output files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}
