//! The `index` stage: a dataset listed, fingerprinted and written as `index.parquet`.
use crate::config::{DatasetKindName, DatasetSettings, ExperimentConfig, IndexSettings};
use crate::error::StageError;
use dml_artifacts::tables::{self, IndexRow};
use dml_datasets as ds;
use dml_jobspec::roles;
use dml_pipeline::{BoxError, PlanEnv, RunContext, Stage};
use rayon::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Lists a dataset, fingerprints its files, and writes `index.parquet`.
pub struct IndexStage {
    dataset: DatasetSettings,
    index: IndexSettings,
    /// The listing and fingerprint computed while keys were resolved, reused by `run`.
    scanned: Mutex<Option<(ds::Listing, ds::Fingerprint)>>,
}

impl IndexStage {
    /// An index stage for an experiment's dataset.
    pub fn new(c: &ExperimentConfig) -> crate::Result<Self> {
        if c.dataset.kind != DatasetKindName::Synthetic && c.dataset.root.is_empty() {
            return Err(StageError::setting("dataset.root", format!("dataset.root is not set for a {:?} dataset: pass --set dataset.root=/path/to/the/dataset",
                c.dataset.kind)));
        }
        Ok(IndexStage {
            dataset: c.dataset.clone(),
            index: c.index.clone(),
            scanned: Mutex::new(None),
        })
    }

    fn kind(&self) -> ds::DatasetKind {
        dataset_kind(self.dataset.kind)
    }

    fn list(&self, root: &Path) -> Result<ds::Listing, BoxError> {
        let opts = ds::ListOptions {
            train_classes: (!self.dataset.train_classes.is_empty())
                .then(|| self.dataset.train_classes.clone()),
        };
        Ok(ds::list(self.kind(), root, &opts)?)
    }
}

/// The adapter that lists a dataset kind (the synthetic set is a folder per class).
pub fn dataset_kind(kind: DatasetKindName) -> ds::DatasetKind {
    match kind {
        DatasetKindName::Cub => ds::DatasetKind::Cub,
        DatasetKindName::Sop => ds::DatasetKind::Sop,
        DatasetKindName::Inshop => ds::DatasetKind::Inshop,
        DatasetKindName::Cars196 => ds::DatasetKind::Cars196,
        DatasetKindName::Folder | DatasetKindName::Synthetic => ds::DatasetKind::Folder,
    }
}

/// The files a listing reads: its list files, then its images.
fn listed_files(listing: &ds::Listing) -> Vec<String> {
    listing
        .list_files
        .iter()
        .cloned()
        .chain(listing.records.iter().map(|r| r.path.clone()))
        .collect()
}

impl Stage for IndexStage {
    fn name(&self) -> &'static str {
        "index"
    }
    fn version(&self) -> u32 {
        // 2: `dataset_image_id` column; truncated images caught at index.
        2
    }
    fn settings(&self) -> serde_json::Value {
        json!({
            "dataset": { "kind": self.dataset.kind, "train_classes": self.dataset.train_classes },
            "index": self.index,
        })
    }
    fn identity(&self) -> String {
        self.dataset.root.clone()
    }
    fn fingerprint(&self, env: &PlanEnv<'_>) -> Result<Option<String>, BoxError> {
        if self.dataset.kind == DatasetKindName::Synthetic {
            // Its input is the synth artifact, already content-addressed.
            return Ok(None);
        }
        let root = PathBuf::from(&self.dataset.root);
        if !root.is_dir() {
            return Err(StageError::setting(
                "dataset.root",
                format!(
                    "dataset.root `{}` does not exist or is not a directory",
                    root.display()
                ),
            )
            .into());
        }
        let listing = self.list(&root)?;
        let mut files = listed_files(&listing);
        // The fingerprint stats every file anyway and names a missing one; only
        // when missing images may be skipped is a separate pass needed.
        if self.index.skip_bad_images {
            let missing: std::collections::HashSet<String> =
                ds::missing_files(&root, &files).into_iter().collect();
            files.retain(|f| !missing.contains(f));
        }
        let abs = std::fs::canonicalize(&root).unwrap_or(root.clone());
        // One stat cache per dataset root, named by a short hash of its absolute path.
        const NAME_HEX_DIGITS: usize = 16;
        let cache_name =
            blake3::hash(abs.to_string_lossy().as_bytes()).to_hex()[..NAME_HEX_DIGITS].to_string();
        let cache_path = env
            .store
            .cache_dir("stat")?
            .join(format!("{cache_name}.bin"));
        let mut cache = ds::StatCache::load(&cache_path)?;
        let fp = ds::fingerprint(&root, &files, &mut cache)?;
        // Only a speed-up: a store that cannot be written (browsed read-only with
        // `run --dry-run`) re-hashes changed files next time instead of failing.
        if let Err(e) = cache.save(&cache_path) {
            if env.store.is_read_only() {
                tracing::debug!("the dataset stat cache was not saved: {e}");
            } else {
                tracing::warn!("the dataset stat cache was not saved ({e}); unchanged files will be re-hashed next time");
            }
        }
        let hash = fp.hash.clone();
        *self.scanned.lock().unwrap_or_else(|p| p.into_inner()) = Some((listing, fp));
        Ok(Some(hash))
    }

    fn changed_files(&self, env: &PlanEnv<'_>, previous_key: &str) -> Vec<String> {
        let previous = env
            .store
            .object_dir(self.name(), previous_key)
            .join("index.parquet");
        let Ok(rows) = tables::read_index(&previous) else {
            return Vec::new();
        };
        let scanned = self.scanned.lock().unwrap_or_else(|p| p.into_inner());
        let Some((listing, fp)) = scanned.as_ref() else {
            return Vec::new();
        };
        changed_images(&rows, listing, fp)
    }

    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let synthetic = self.dataset.kind == DatasetKindName::Synthetic;
        let root = if synthetic {
            ctx.input(roles::SYNTH)?.join("images")
        } else {
            PathBuf::from(&self.dataset.root)
        };
        // Sizes and hashes: from the fingerprint, or from the synth artifact's manifest.
        let (listing, digests): (ds::Listing, HashMap<String, (u64, String)>) = if synthetic {
            let listing = self.list(&root)?;
            let manifest = ctx
                .input_manifest(roles::SYNTH)
                .ok_or_else(|| StageError::Input("synth manifest missing".into()))?;
            let digests = manifest
                .files
                .iter()
                .filter_map(|f| {
                    f.path
                        .strip_prefix("images/")
                        .map(|p| (p.to_string(), (f.size, f.blake3.clone())))
                })
                .collect();
            (listing, digests)
        } else {
            let scanned = self
                .scanned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let (listing, fp) = match scanned {
                Some(s) => s,
                None => {
                    let listing = self.list(&root)?;
                    let mut cache = ds::StatCache::default();
                    let fp = ds::fingerprint(&root, &listed_files(&listing), &mut cache)?;
                    (listing, fp)
                }
            };
            let digests = fp
                .files
                .into_iter()
                .map(|f| (f.path, (f.size, f.blake3)))
                .collect();
            (listing, digests)
        };
        if let Some(w) = listing.unread_summary() {
            tracing::warn!("{}: {w}", root.display());
            ctx.note("unread_images", json!(listing.unread_images));
        }
        let checked: Vec<Result<IndexRow, (String, String)>> = listing
            .records
            .par_iter()
            .map(|r| {
                let Some((bytes, hash)) = digests.get(&r.path) else {
                    return Err((r.path.clone(), "listed but not found".to_string()));
                };
                let (width, height) = ds::image_dims(&root.join(&r.path))
                    .map_err(|e| (r.path.clone(), e.to_string()))?;
                Ok(IndexRow {
                    image_id: 0,
                    path: r.path.clone(),
                    class_id: r.class_id,
                    class_name: r.class_name.clone(),
                    split: r.split,
                    width,
                    height,
                    bytes: *bytes,
                    blake3: hash.clone(),
                    dataset_image_id: r.dataset_id,
                })
            })
            .collect();
        let mut rows = Vec::with_capacity(checked.len());
        let mut skipped = Vec::new();
        for c in checked {
            match c {
                Ok(row) => rows.push(row),
                Err((path, why)) if self.index.skip_bad_images => skipped.push(json!({"path": path, "reason": why})),
                Err((path, why)) => {
                    return Err(StageError::Input(format!(
                        "image `{}` in {}: {why}; fix or remove it, or pass --skip-bad-images to go on without it",
                        path,
                        root.display()
                    ))
                    .into())
                }
            }
        }
        for (i, row) in rows.iter_mut().enumerate() {
            row.image_id = i as u32;
        }
        if rows.is_empty() {
            return Err(StageError::Input(format!(
                "dataset at {} lists no images",
                root.display()
            ))
            .into());
        }
        tables::write_parquet(
            &ctx.out_dir().join("index.parquet"),
            &tables::index_to_batch(&rows),
        )?;
        let mut per_split: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rows {
            *per_split.entry(r.split.as_str()).or_default() += 1;
        }
        ctx.note("images", json!(rows.len()));
        ctx.note("per_split", json!(per_split));
        if !skipped.is_empty() {
            let first: Vec<String> = skipped
                .iter()
                .take(3)
                .map(|s| {
                    format!(
                        "{} ({})",
                        s["path"].as_str().unwrap_or(""),
                        s["reason"].as_str().unwrap_or("")
                    )
                })
                .collect();
            tracing::warn!(
                "--skip-bad-images: left out {} image(s) that could not be read, e.g. {}; `dml show index` lists them all (its notes' skipped_images)",
                skipped.len(),
                first.join("; ")
            );
        }
        ctx.note("skipped_images", json!(skipped));
        ctx.note("dataset_root", json!(root.display().to_string()));
        Ok(())
    }
}

/// How many changed files an explanation names.
const CHANGED_FILES_SHOWN: usize = 3;

/// The images that differ between a previous index and the current listing:
/// changed content, new, or gone; the first few, then how many more.
fn changed_images(
    previous: &[IndexRow],
    listing: &ds::Listing,
    fp: &ds::Fingerprint,
) -> Vec<String> {
    let before: HashMap<&str, &str> = previous
        .iter()
        .map(|r| (r.path.as_str(), r.blake3.as_str()))
        .collect();
    let now: HashMap<&str, &str> = fp
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.blake3.as_str()))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for r in &listing.records {
        match (before.get(r.path.as_str()), now.get(r.path.as_str())) {
            (Some(a), Some(b)) if a != b => out.push(format!("{} (content)", r.path)),
            (None, Some(_)) => out.push(format!("{} (new)", r.path)),
            _ => {}
        }
    }
    let listed: std::collections::HashSet<&str> =
        listing.records.iter().map(|r| r.path.as_str()).collect();
    out.extend(
        previous
            .iter()
            .filter(|r| !listed.contains(r.path.as_str()))
            .map(|r| format!("{} (gone)", r.path)),
    );
    if out.is_empty() {
        // Same images: a list file (a split or label file) changed.
        return vec![listing.list_files.join(", ")];
    }
    let more = out.len().saturating_sub(CHANGED_FILES_SHOWN);
    out.truncate(CHANGED_FILES_SHOWN);
    if more > 0 {
        out.push(format!("and {more} more"));
    }
    out
}
