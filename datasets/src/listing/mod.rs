//! Dataset adapters: turn a dataset root on disk into a flat list of (image, class, split) records.
//!
//! One function, [`list`], dispatches on [`DatasetKind`]; each adapter lives in its own
//! file and reads exactly the metadata files of the published on-disk format (see the
//! adapter modules for the format and for how `class_id` is assigned). Adapters never
//! open the images: [`check_files_exist`] does that, so the caller decides whether a
//! missing image is fatal.

mod cars;
mod cub;
pub(crate) mod folder;
mod inshop;
mod sop;
mod text;

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};

/// Which part of a dataset an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used to train (sampled by the P×K planner).
    Train,
    /// Evaluated leave-one-out: query set = gallery set = the test split (CUB, SOP, Cars196, folder).
    Test,
    /// In-shop queries.
    Query,
    /// In-shop gallery.
    Gallery,
    /// The training images of the classes `train.validation` holds out: never a listing's
    /// split, only the `split` of the validation embeddings a training run keeps.
    Holdout,
}

impl Split {
    /// Every split.
    pub const ALL: [Split; 5] = [
        Split::Train,
        Split::Test,
        Split::Query,
        Split::Gallery,
        Split::Holdout,
    ];

    /// The lowercase name used in artifacts: `"train"`, `"test"`, `"query"`, `"gallery"`,
    /// `"holdout"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::Query => "query",
            Split::Gallery => "gallery",
            Split::Holdout => "holdout",
        }
    }

    /// Inverse of [`Split::as_str`].
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "test" => Some(Split::Test),
            "query" => Some(Split::Query),
            "gallery" => Some(Split::Gallery),
            "holdout" => Some(Split::Holdout),
            _ => None,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The supported on-disk dataset formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CUB-200-2011 (`images.txt`, `image_class_labels.txt`, `images/`).
    Cub,
    /// Stanford Online Products (`Ebay_train.txt`, `Ebay_test.txt`).
    Sop,
    /// DeepFashion In-shop (`list_eval_partition.txt`).
    Inshop,
    /// Stanford Cars196 (`cars_annos.txt` or a folder per class).
    Cars196,
    /// A folder per class: `root/<class>/<image>`.
    Folder,
}

impl DatasetKind {
    /// The lowercase name used in settings: `cub`, `sop`, `inshop`, `cars196`, `folder`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Cub => "cub",
            DatasetKind::Sop => "sop",
            DatasetKind::Inshop => "inshop",
            DatasetKind::Cars196 => "cars196",
            DatasetKind::Folder => "folder",
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Path relative to the dataset root, with `/` separators.
    pub path: String,
    /// Class id, stable for a given dataset (see each adapter for how it is assigned).
    pub class_id: u32,
    /// Human-readable class name.
    pub class_name: String,
    /// The split the image belongs to.
    pub split: Split,
    /// The dataset's own id of the image, where its list files have one (CUB's
    /// 1-based `images.txt` ids, SOP's `image_id`).
    #[serde(default)]
    pub dataset_id: Option<u32>,
}

/// What an adapter found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The images, in the adapter's documented order.
    pub records: Vec<Record>,
    /// Metadata files that were read, relative to the root (`/` separators). Empty for
    /// folder trees. These belong in the dataset fingerprint together with the images.
    pub list_files: Vec<String>,
    /// Image files of formats dml does not read (`.webp`, `.bmp`, `.gif`, `.tif` …)
    /// that a folder adapter passed over, relative to the root: said, never silent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread_images: Vec<String>,
}

impl Listing {
    /// The unread images as a sentence for a warning: how many of each extension, an
    /// example, and what to do; `None` when there are none.
    pub fn unread_summary(&self) -> Option<String> {
        let first = self.unread_images.first()?;
        let mut by_ext: std::collections::BTreeMap<String, usize> = Default::default();
        for f in &self.unread_images {
            let ext = f
                .rsplit_once('.')
                .map(|(_, e)| e.to_ascii_lowercase())
                .unwrap_or_default();
            *by_ext.entry(ext).or_default() += 1;
        }
        let counts: Vec<String> = by_ext.iter().map(|(e, n)| format!("{n} .{e}")).collect();
        Some(format!(
            "{} image file(s) of formats dml does not read were left out ({}), e.g. `{first}`; dml reads JPEG and PNG: convert them (e.g. `mogrify -format png *.webp`) to include them",
            self.unread_images.len(),
            counts.join(", ")
        ))
    }
}

/// Adapter options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOptions {
    /// Folder adapter only: the class (folder) names that form the train split; every
    /// other class is test. `None`: the first half of the sorted class names (rounded
    /// up) is train, the rest test. Ignored by the other adapters, whose split is fixed
    /// by the dataset's protocol.
    pub train_classes: Option<Vec<String>>,
}

/// Lists the images of the dataset of `kind` at `root`.
///
/// Errors: the root is missing, a list file is missing, a line does not parse (file,
/// 1-based line number and the line are named), class ids are inconsistent, or the
/// dataset is empty. Images are not opened; see [`check_files_exist`].
pub fn list(kind: DatasetKind, root: &Path, opts: &ListOptions) -> Result<Listing> {
    if !root.is_dir() {
        return Err(DatasetError::RootMissing {
            path: root.to_path_buf(),
        });
    }
    let listing = match kind {
        DatasetKind::Cub => cub::list(root)?,
        DatasetKind::Sop => sop::list(root)?,
        DatasetKind::Inshop => inshop::list(root)?,
        DatasetKind::Cars196 => cars::list(root)?,
        DatasetKind::Folder => folder::list(root, opts)?,
    };
    if listing.records.is_empty() {
        return Err(DatasetError::EmptyDataset {
            root: root.to_path_buf(),
            reason: format!("the {kind} adapter found no image"),
        });
    }
    tracing::debug!(
        kind = kind.as_str(),
        images = listing.records.len(),
        "listed dataset"
    );
    Ok(listing)
}

/// The relative paths among `paths` that are not regular files under `root`, in input
/// order. Checked in parallel (one `stat` per file).
pub fn missing_files(root: &Path, paths: &[String]) -> Vec<String> {
    let missing: Vec<Option<&String>> = paths
        .par_iter()
        .map(|p| {
            let full = root.join(p);
            match std::fs::metadata(&full) {
                Ok(m) if m.is_file() => None,
                _ => Some(p),
            }
        })
        .collect();
    missing.into_iter().flatten().cloned().collect()
}

/// Fails with [`DatasetError::ImagesMissing`] (count and the first ten paths) if any
/// record's image is not a regular file under `root`.
pub fn check_files_exist(root: &Path, records: &[Record]) -> Result<()> {
    let paths: Vec<String> = records.iter().map(|r| r.path.clone()).collect();
    let missing = missing_files(root, &paths);
    if missing.is_empty() {
        return Ok(());
    }
    Err(DatasetError::ImagesMissing {
        root: root.to_path_buf(),
        count: missing.len(),
        first: missing.into_iter().take(10).collect(),
    })
}

/// True for the AppleDouble `._name` files that macOS archives leave next to images.
pub(crate) fn is_stray(rel_path: &str) -> bool {
    rel_path
        .rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("._"))
}

#[cfg(test)]
mod tests;
