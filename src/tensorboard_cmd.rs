//! `dml tensorboard [--name RUN …] DIR`: a TensorBoard log directory over the store's runs,
//! one folder per run and sweep point holding links to the event files the train stage
//! (training curves) and the report stage (final test metrics) wrote: nothing is copied,
//! so `tensorboard --logdir DIR` compares the runs side by side.
use crate::outcome;
use anyhow::{bail, Context, Result};
use dml_artifacts::tensorboard::{TEST_EVENTS, TRAIN_EVENTS};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{file_safe, RunRecord};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Links `link` → `target`, replacing an earlier link of the same name.
fn link(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("replacing {}", link.display()))?;
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} → {}", link.display(), target.display()))?;
    #[cfg(not(unix))]
    std::fs::copy(target, link)
        .with_context(|| format!("copying {} → {}", target.display(), link.display()))?;
    Ok(())
}

/// `dml tensorboard [--name RUN …] DIR`: the newest record of every run name (or of the
/// names given), each point in `DIR/<point name>/`.
pub fn tensorboard(store_dir: &Path, names: &[String], dir: &Path) -> Result<()> {
    // Only reads the store: a mistyped --store is an error, never a new empty store.
    let store = ArtifactStore::open_existing(store_dir)?;
    // Newest record first, one per run name.
    let mut seen = BTreeSet::new();
    let mut records: Vec<(PathBuf, RunRecord)> = Vec::new();
    for path in RunRecord::list(&store)?.into_iter().rev() {
        let Ok(record) = RunRecord::load(&path) else {
            tracing::warn!("skipping unreadable run record {}", path.display());
            continue;
        };
        if !names.is_empty() && !names.contains(&record.name) {
            continue;
        }
        if seen.insert(record.name.clone()) {
            records.push((path, record));
        }
    }
    for n in names {
        if !seen.contains(n) {
            bail!(
                "no run named `{n}` in {} (`dml runs` lists them)",
                store.runs_dir().display()
            );
        }
    }
    if records.is_empty() {
        bail!(
            "no run records in {}: run `dml run` first",
            store.runs_dir().display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    for (path, record) in records.iter().rev() {
        for (i, p) in outcome::points(&store, record).into_iter().enumerate() {
            let train = p
                .artifacts
                .get("train")
                .map(|d| d.join(TRAIN_EVENTS))
                .filter(|f| f.is_file());
            let test = p
                .artifacts
                .get("report")
                .map(|d| d.join("tensorboard").join(i.to_string()).join(TEST_EVENTS))
                .filter(|f| f.is_file());
            if train.is_none() && test.is_none() {
                eprintln!(
                    "{}: no TensorBoard events (its artifacts are not in this store, or were made before dml wrote them; {})",
                    p.name,
                    path.display()
                );
                continue;
            }
            let folder = dir.join(file_safe(&p.name));
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("creating {}", folder.display()))?;
            for (file, name) in [(train, TRAIN_EVENTS), (test, TEST_EVENTS)] {
                if let Some(file) = file {
                    link(&file, &folder.join(name))?;
                }
            }
            println!("{}", folder.display());
            written += 1;
        }
    }
    if written == 0 {
        bail!("none of these runs has TensorBoard events in this store");
    }
    println!("(view: tensorboard --logdir {})", dir.display());
    Ok(())
}
