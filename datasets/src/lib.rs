//! Datasets for the metric-learning pipeline: adapters, fingerprints, P×K plans, image decoding and batches, and a synthetic set.
//!
//! This crate knows files on disk and pixels; it knows nothing of stages, keys or the
//! artifact store. The stages call it as follows.
//!
//! # index stage
//! ```no_run
//! use dml_datasets::{list, check_files_exist, fingerprint, image_dims, DatasetKind, ListOptions, StatCache};
//! # fn main() -> Result<(), dml_datasets::DatasetError> {
//! let root = std::path::Path::new("/data/CUB_200_2011");
//! let listing = list(DatasetKind::Cub, root, &ListOptions::default())?;
//! check_files_exist(root, &listing.records)?; // or report `missing_files` and go on
//! // fingerprint the images *and* the metadata files that were read
//! let mut files: Vec<String> = listing.records.iter().map(|r| r.path.clone()).collect();
//! files.extend(listing.list_files.iter().cloned());
//! let cache_path = std::path::Path::new("store/cache/cub.statcache");
//! let mut cache = StatCache::load_or_empty(cache_path);
//! let fp = fingerprint(root, &files, &mut cache)?; // fp.hash: the source key input
//! cache.save(cache_path)?;
//! let (w, h) = image_dims(&root.join(&listing.records[0].path))?;
//! # let _ = (fp, w, h); Ok(()) }
//! ```
//! - [`list`] returns [`Record`]s `{ path, class_id, class_name, split }` in the
//!   adapter's documented order; `image_id` is the caller's choice (the position in
//!   that order is natural). Each adapter module documents its on-disk format and how
//!   `class_id` is assigned: CUB, SOP and Cars196 keep the dataset's own class numbers,
//!   In-shop the number in the item id, the folder adapter the 0-based position of the
//!   class folder in sorted order.
//! - Splits: CUB classes 1–100 train / 101–200 test; SOP by file; In-shop
//!   train/query/gallery by `list_eval_partition.txt`; Cars196 1–98 / 99–196; folder
//!   per class by [`ListOptions::train_classes`] or the first half of the sorted names.
//! - [`fingerprint`]: blake3 over sorted (relative path, size, content blake3); the
//!   [`StatCache`] makes an unchanged 120k-file dataset a sub-second no-op.
//!
//! # plan stage
//! [`PkPlanner::plan`] takes `class_id → image_ids` of the train split and returns
//! [`PlanRow`]s `{ step, slot, image_id, class_id }`, P·K per step, slots class by class
//! (the K images of the first class, then the second, …). The output for a seed is a
//! stable contract (see [`plan`]).
//!
//! # train / embed stages
//! [`DecodeCache::build`] decodes and resizes every image to S×S once
//! (`images.u8` + `index.json`); [`DecodeCache::open`] memory-maps it; [`assemble_batch`]
//! crops (random crop + flip from `(seed, step, slot)` with [`Augment::Train`], centre
//! crop with [`Augment::Test`]), scales ([`InputScaling`]) and returns NCHW f32 ready for
//! a tensor of shape `[indices.len(), 3, crop, crop]`. The seed's defaults: S = 256,
//! crop = 224. Without a decode cache, [`load_resized`] + [`Augment::params`] +
//! [`crop_into`] give the same values image by image.
//!
//! # synthetic data
//! [`generate`] writes a folder-per-class tree from a [`SyntheticSpec`], deterministic
//! from its seed; list it with [`DatasetKind::Folder`].
//!
//! # Errors
//! One enum, [`DatasetError`]; every message names the file (and 1-based line), image
//! or setting at fault.

#![deny(missing_docs)]

pub mod batch;
pub mod decode_cache;
pub mod error;
pub mod fingerprint;
pub mod holdout;
pub mod imaging;
pub mod listing;
pub mod plan;
mod raster;
mod stable_rng;
pub mod synthetic;

pub use batch::{
    assemble_batch, assemble_batch_into, crop_into, Augment, AugmentPolicy, CropParams,
    InputScaling, TrainCrop,
};
pub use decode_cache::{DecodeCache, DecodeReport};
pub use error::{DatasetError, Result};
pub use fingerprint::{fingerprint, FileDigest, Fingerprint, FingerprintStats, StatCache};
pub use holdout::holdout_classes;
pub use imaging::{decode, image_dims, load_resized, load_resized_into, resize_rgb, Rgb8Image};
pub use listing::{
    check_files_exist, list, missing_files, DatasetKind, ListOptions, Listing, Record, Split,
};
pub use plan::{steps_per_epoch, PkPlanner, PlanRow, RandomPlanner, Sampler};
pub use synthetic::{generate, SyntheticFormat, SyntheticSpec};
