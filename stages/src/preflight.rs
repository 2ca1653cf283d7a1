//! Checks of an experiment's settings before anything expensive runs: those
//! the settings alone decide (at DAG assembly), and those that need the index
//! (split sizes, against the Ks), run on the index artifact before any stage
//! that reads it starts.
use crate::config::{DatasetKindName, ExperimentConfig, ResolvedConfig, REPORT_LIMITS};
use crate::error::{Result, StageError};
use dml_artifacts::tables::IndexRow;
use dml_datasets::Split;
use dml_jobspec::evaluate::Protocol;
use std::collections::BTreeSet;
use std::io::Read;

/// Checks what the settings alone decide: a plan that trains, batches a ranking
/// loss can learn from, a readable `pretrained` file.
pub fn check_settings(c: &ExperimentConfig) -> Result<()> {
    check_run_name(&c.name)?;
    check_sizes(c)?;
    let p = &c.plan;
    if p.steps == 0 {
        return Err(StageError::setting(
            "plan.steps",
            "plan.steps = 0: there is nothing to train; set e.g. --set plan.steps=1000",
        ));
    }
    // Warm-up, a frozen backbone and a delayed memory must end before training does.
    dml_jobspec::settings::train_config(&c.train).validate_steps(u64::from(p.steps))?;
    if p.k < 2 {
        return Err(StageError::setting("plan.k", format!("plan.k = {}: a ranking loss needs at least two images of a class in a batch (positives); set --set plan.k=2 or more",
            p.k)));
    }
    if p.p < 2 {
        return Err(StageError::setting("plan.p", format!("plan.p = {}: a ranking loss needs at least two classes in a batch (negatives); set --set plan.p=2 or more",
            p.p)));
    }
    if let Some(path) = &c.train.model.pretrained {
        let mut magic = [0u8; 8];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(|source| StageError::Io {
                what: format!(
                    "train.model.pretrained `{}` cannot be read (export it with {}, or unset it to start from random weights)",
                    path.display(),
                    c.train
                        .model
                        .backbone
                        .weights_script()
                        .unwrap_or("scripts/export_torchvision.py")
                ),
                source,
            })?;
    }
    check_report(c)
}

/// `[report]`: counts within [`REPORT_LIMITS`], so that `report.html` stays small. (A
/// `report.k` above `retrieve.neighbors` shows the neighbours saved, and the page says so.)
fn check_report(c: &ExperimentConfig) -> Result<()> {
    let r = &c.report;
    let l = REPORT_LIMITS;
    for (name, value, max) in [
        ("queries", r.queries, l.queries),
        ("worst_queries", r.worst_queries, l.queries),
        ("classes", r.classes, l.classes),
        ("class_images", r.class_images, l.class_images),
        ("confused_pairs", r.confused_pairs, l.confused_pairs),
    ] {
        if value > max {
            return Err(StageError::setting(format!("report.{name}"), format!("report.{name} = {value} is more than report.html shows (at most {max}); lower it")));
        }
    }
    if r.k == 0 || r.k > l.k {
        return Err(StageError::setting(
            "report.k",
            format!(
                "report.k = {}: the neighbours shown per query must be 1 to {}",
                r.k, l.k
            ),
        ));
    }
    let (lo, hi) = l.thumbnail_px;
    if !(lo..=hi).contains(&r.thumbnail_px) {
        return Err(StageError::setting(
            "report.thumbnail_px",
            format!(
                "report.thumbnail_px = {}: thumbnails are {lo} to {hi} pixels",
                r.thumbnail_px
            ),
        ));
    }
    Ok(())
}

/// The longest run name (it is a file name in `runs/` and a folder in `latest/`).
const MAX_NAME: usize = 100;

/// A run name is one path component of ASCII letters, digits, `_`, `-` and `.`, not
/// starting with a dot: every file dml writes for it stays inside the store's own folders.
pub fn check_run_name(name: &str) -> Result<()> {
    let fits = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
    if !fits {
        return Err(StageError::setting("name", format!("name = {name:?} is not a usable run name: a run name is 1 to {MAX_NAME} of the characters A-Z a-z 0-9 _ - . and does not start with a dot (it names a folder of `latest/`); e.g. --set name=cub-margin")));
    }
    Ok(())
}

/// The largest sizes accepted (far beyond any real use, small enough that no allocation
/// they imply can abort a worker).
const MAX_SIDE: u32 = 4096;
const MAX_DIM: i64 = 65_536;
const MAX_BATCH: u64 = 65_536;

/// Sizes and cut-offs that the settings alone make impossible, named before anything runs.
fn check_sizes(c: &ExperimentConfig) -> Result<()> {
    let img = &c.image;
    for (setting, v) in [("image.resize", img.resize), ("image.crop", img.crop)] {
        if v == 0 || v > MAX_SIDE {
            return Err(StageError::setting(setting, format!("{setting} = {v}: image sides are 1 to {MAX_SIDE} px; e.g. --set image.resize=256 --set image.crop=224")));
        }
    }
    c.train.model.backbone.check_crop(img.crop)?;
    if img.crop > img.resize {
        return Err(StageError::setting("image.crop", format!("image.crop = {} is larger than image.resize = {}: the crop is taken from the resized image; set image.crop ≤ image.resize",
            img.crop,
            img.resize)));
    }
    let dim = c.train.model.embedding_dim;
    if dim <= 0 || dim > MAX_DIM {
        return Err(StageError::setting("train.model.embedding_dim", format!("train.model.embedding_dim = {dim}: embeddings have 1 to {MAX_DIM} dimensions (the papers use 64 to 2048); e.g. --set train.model.embedding_dim=512")));
    }
    let batch = u64::from(c.plan.p) * u64::from(c.plan.k);
    if batch > MAX_BATCH {
        return Err(StageError::setting("plan.p", format!("plan.p × plan.k = {} × {} = {batch} images per batch: at most {MAX_BATCH}; lower plan.p (classes per batch) or plan.k (images per class)",
            c.plan.p,
            c.plan.k)));
    }
    let embed = u64::from(c.embed.batch_size);
    if embed == 0 || embed > MAX_BATCH {
        return Err(StageError::setting(
            "embed.batch_size",
            format!(
                "embed.batch_size = {embed}: 1 to {MAX_BATCH}; e.g. --set embed.batch_size=128"
            ),
        ));
    }
    if let Some(k) = c.retrieve.ks.iter().find(|&&k| k == 0) {
        return Err(StageError::setting("retrieve.ks", format!("retrieve.ks holds {k}: Recall@K cut-offs start at 1; e.g. --set retrieve.ks=1,2,4,8")));
    }
    Ok(())
}

/// The experiments' checks against their index: test images to evaluate, and
/// Recall@K cut-offs the gallery can serve.
pub fn check_index(c: &ResolvedConfig, rows: &[IndexRow]) -> Result<()> {
    let count = |split: Split| rows.iter().filter(|r| r.split == split).count();
    let (queries, available) = match c.retrieve.protocol {
        Protocol::QueryGallery => {
            let (q, g) = (count(Split::Query), count(Split::Gallery));
            if q == 0 || g == 0 {
                return Err(StageError::setting("retrieve.protocol", format!("retrieve.protocol = query_gallery needs `query` and `gallery` images, but the index has {q} query and {g} gallery images{}",
                    if c.dataset.kind == DatasetKindName::Inshop {
                        ""
                    } else {
                        "; use --set retrieve.protocol=leave_one_out"
                    })));
            }
            (q, g)
        }
        _ => {
            let test = if c.retrieve.protocol == Protocol::InshopMerged {
                count(Split::Query) + count(Split::Gallery)
            } else {
                count(Split::Test)
            };
            if test == 0 {
                return Err(StageError::Input(format!("the index has no test images to evaluate on (splits: {}); check the dataset's test list or, for a folder dataset, dataset.train_classes",
                    splits(rows))));
            }
            (test, test - 1)
        }
    };
    let ks = &c.retrieve.ks;
    if let Some(&k) = ks.iter().max().filter(|&&k| k > available) {
        let fitting: Vec<String> = ks
            .iter()
            .filter(|&&k| k <= available)
            .map(|k| k.to_string())
            .collect();
        let suggestion = if fitting.is_empty() {
            format!("--set retrieve.ks={}", available.max(1))
        } else {
            format!("--set retrieve.ks={}", fitting.join(","))
        };
        return Err(StageError::setting("retrieve.ks", format!("retrieve.ks includes K = {k}, but each of the {queries} queries can retrieve only {available} gallery images{}; use e.g. {suggestion}",
            if c.retrieve.ks.is_empty() {
                " (the dataset's default Ks)"
            } else {
                ""
            })));
    }
    check_classes_per_batch(c, rows)
}

/// `plan.p` against the training classes the plan will see (after the validation
/// holdout): the plan stage's own check, made as soon as the index exists so that a
/// dry-run reports it and a run fails before decoding.
fn check_classes_per_batch(c: &ResolvedConfig, rows: &[IndexRow]) -> Result<()> {
    if c.plan.sampler != dml_datasets::Sampler::Pk || c.plan.allow_repeated_classes {
        return Ok(());
    }
    let train: BTreeSet<u32> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .map(|r| r.class_id)
        .collect();
    if train.is_empty() {
        return Err(StageError::Input(format!(
            "the index has no train split to plan batches from (splits: {})",
            splits(rows)
        )));
    }
    let held = match dml_jobspec::validation::Holdout::of(&c.train.validation) {
        Some(h) => h.classes(rows)?,
        None => BTreeSet::new(),
    };
    let left = train.len() - held.len();
    if (c.plan.p as usize) > left {
        let holdout = if held.is_empty() {
            String::new()
        } else {
            format!(
                ", after train.validation held out {} of the {} training classes for validation (or set --set train.validation.every=0 to train on all of them)",
                held.len(),
                train.len()
            )
        };
        return Err(StageError::setting("plan.p", format!("setting `plan.p` = {} but the train split has only {left} class(es){holdout}; lower `plan.p` (e.g. --set plan.p={}) or set `plan.allow_repeated_classes = true`",
            c.plan.p,
            left.max(1))));
    }
    Ok(())
}

fn splits(rows: &[IndexRow]) -> String {
    let names: BTreeSet<&str> = rows.iter().map(|r| r.split.as_str()).collect();
    names.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_up_as_long_as_training_is_refused_with_the_setting_named() {
        let mut c = ExperimentConfig::default();
        assert!(check_settings(&c).is_ok());
        c.train.optimizer.warmup_steps = u64::from(c.plan.steps);
        let e = check_settings(&c).unwrap_err().to_string();
        assert!(
            e.contains("train.optimizer.warmup_steps") && e.contains("plan.steps"),
            "{e}"
        );
        c.train.optimizer.warmup_steps = u64::from(c.plan.steps) - 1;
        assert!(check_settings(&c).is_ok());
        c.train.freeze_backbone_steps = u64::from(c.plan.steps) + 5;
        let e = check_settings(&c).unwrap_err().to_string();
        assert!(e.contains("train.freeze_backbone_steps"), "{e}");
    }

    fn row(split: Split, class_id: u32) -> IndexRow {
        IndexRow {
            image_id: 0,
            path: String::new(),
            class_id,
            class_name: String::new(),
            split,
            width: 1,
            height: 1,
            bytes: 1,
            blake3: String::new(),
            dataset_image_id: None,
        }
    }

    #[test]
    fn ks_beyond_the_gallery_name_the_fitting_ones() {
        let mut c = ExperimentConfig::default();
        c.dataset.kind = DatasetKindName::Sop;
        let rows: Vec<IndexRow> = (0..60).map(|i| row(Split::Test, i / 3)).collect();
        let err = check_index(&c.clone().resolve(), &rows)
            .unwrap_err()
            .to_string();
        assert!(err.contains("K = 1000"), "{err}");
        assert!(err.contains("only 59 gallery images"), "{err}");
        assert!(err.contains("--set retrieve.ks=1,10"), "{err}");
        c.retrieve.ks = vec![1, 10];
        let mut rows = rows;
        rows.extend((0..200).map(|i| row(Split::Train, 100 + i / 4)));
        check_index(&c.clone().resolve(), &rows).unwrap();
    }

    #[test]
    fn more_classes_per_batch_than_training_classes_is_an_error_before_planning() {
        let mut c = ExperimentConfig::default();
        c.retrieve.ks = vec![1];
        let mut rows: Vec<IndexRow> = (0..40).map(|i| row(Split::Test, i / 4)).collect();
        rows.extend((0..60).map(|i| row(Split::Train, 100 + i / 4)));
        c.plan.p = 16;
        let err = check_index(&c.clone().resolve(), &rows)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`plan.p` = 16"), "{err}");
        assert!(err.contains("only 15 class(es)"), "{err}");
        assert!(err.contains("--set plan.p=15"), "{err}");
        c.plan.allow_repeated_classes = true;
        check_index(&c.clone().resolve(), &rows).unwrap();
        c.plan.allow_repeated_classes = false;
        c.plan.p = 15;
        check_index(&c.clone().resolve(), &rows).unwrap();
        // With a validation holdout, the held-out classes are not there to plan from.
        c.train.validation.every = 10;
        let err = check_index(&c.clone().resolve(), &rows)
            .unwrap_err()
            .to_string();
        assert!(err.contains("held out"), "{err}");
        assert!(err.contains("train.validation.every=0"), "{err}");
    }

    #[test]
    fn no_test_images_is_an_error() {
        let c = ExperimentConfig::default();
        let rows = vec![row(Split::Train, 0), row(Split::Train, 1)];
        let err = check_index(&c.clone().resolve(), &rows)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no test images"), "{err}");
    }

    #[test]
    fn names_that_would_leave_the_store_are_refused() {
        for bad in ["..", ".", "", "a/b", "../x", ".hidden", "a b", "ü"] {
            assert!(check_run_name(bad).is_err(), "{bad:?}");
        }
        for good in ["cub", "cub-margin_2.1", "A9"] {
            check_run_name(good).unwrap();
        }
    }

    #[test]
    fn sizes_are_bounded_before_anything_runs() {
        let bad: [fn(&mut ExperimentConfig); 6] = [
            |c| c.image.crop = 0,
            |c| c.image.resize = 0,
            |c| c.train.model.embedding_dim = 4_000_000_000,
            |c| c.plan.p = 100_000,
            |c| c.retrieve.ks = vec![1, 0],
            |c| c.embed.batch_size = 0,
        ];
        for (i, set) in bad.into_iter().enumerate() {
            let mut c = ExperimentConfig::default();
            set(&mut c);
            assert!(check_settings(&c).is_err(), "case {i}");
        }
        check_settings(&ExperimentConfig::default()).unwrap();
    }

    /// The message of the first check `set` makes the default experiment fail.
    fn refused(set: impl FnOnce(&mut ExperimentConfig)) -> String {
        let mut c = ExperimentConfig::default();
        set(&mut c);
        check_settings(&c).unwrap_err().to_string()
    }

    #[test]
    fn report_counts_beyond_what_the_page_shows_are_refused() {
        assert_eq!(
            refused(|c| c.report.worst_queries = 101),
            "report.worst_queries = 101 is more than report.html shows (at most 100); lower it"
        );
        assert_eq!(
            refused(|c| c.report.class_images = 21),
            "report.class_images = 21 is more than report.html shows (at most 20); lower it"
        );
        assert_eq!(
            refused(|c| c.report.k = 0),
            "report.k = 0: the neighbours shown per query must be 1 to 50"
        );
        assert_eq!(
            refused(|c| c.report.thumbnail_px = 300),
            "report.thumbnail_px = 300: thumbnails are 16 to 256 pixels"
        );
        let mut c = ExperimentConfig::default();
        c.report.queries = REPORT_LIMITS.queries;
        c.report.k = REPORT_LIMITS.k;
        c.report.thumbnail_px = REPORT_LIMITS.thumbnail_px.0;
        check_settings(&c).unwrap();
    }

    #[test]
    fn batches_and_crops_that_cannot_work_say_what_to_set() {
        assert_eq!(
            refused(|c| c.plan.p = 1),
            "plan.p = 1: a ranking loss needs at least two classes in a batch (negatives); set --set plan.p=2 or more"
        );
        assert_eq!(
            refused(|c| {
                c.image.resize = 64;
                c.image.crop = 65;
            }),
            "image.crop = 65 is larger than image.resize = 64: the crop is taken from the resized image; set image.crop ≤ image.resize"
        );
        assert_eq!(
            refused(|c| c.image.resize = 5000),
            "image.resize = 5000: image sides are 1 to 4096 px; e.g. --set image.resize=256 --set image.crop=224"
        );
        assert_eq!(
            refused(|c| c.embed.batch_size = 0),
            "embed.batch_size = 0: 1 to 65536; e.g. --set embed.batch_size=128"
        );
    }

    #[test]
    fn a_query_gallery_protocol_needs_both_splits_in_the_index() {
        let mut c = ExperimentConfig::default();
        c.retrieve.protocol = Protocol::QueryGallery;
        c.retrieve.ks = vec![1];
        // (The training classes are not what this test is about.)
        c.plan.allow_repeated_classes = true;
        let mut rows: Vec<IndexRow> = (0..8).map(|i| row(Split::Train, i / 2)).collect();
        rows.extend((0..4).map(|i| row(Split::Gallery, 10 + i / 2)));
        let err = check_index(&c.clone().resolve(), &rows)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "retrieve.protocol = query_gallery needs `query` and `gallery` images, but the index has 0 query and 4 gallery images; use --set retrieve.protocol=leave_one_out"
        );
        rows.extend((0..4).map(|i| row(Split::Query, 10 + i / 2)));
        check_index(&c.clone().resolve(), &rows).unwrap();
        // No test split for leave-one-out: the splits the index has are named.
        c.retrieve.protocol = Protocol::LeaveOneOut;
        let err = check_index(&c.clone().resolve(), &rows)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no test images to evaluate on (splits: gallery, query, train)"),
            "{err}"
        );
    }

    #[test]
    fn settings_that_cannot_train() {
        let mut c = ExperimentConfig::default();
        c.plan.steps = 0;
        assert!(check_settings(&c)
            .unwrap_err()
            .to_string()
            .contains("plan.steps = 0"));
        c.plan.steps = 5;
        c.plan.k = 1;
        assert!(check_settings(&c)
            .unwrap_err()
            .to_string()
            .contains("--set plan.k=2"));
        c.plan.k = 2;
        c.train.model.pretrained = Some("/nonexistent/w.safetensors".into());
        let err = format!("{:#}", check_settings(&c).unwrap_err());
        assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
    }
}
