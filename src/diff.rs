//! `dml diff RUN_A RUN_B`: which settings differ between two run records, and
//! which stages each difference invalidated.
use anyhow::{Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{changes, flatten_settings, show, RunRecord};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn resolve(store: &ArtifactStore, what: &str) -> Result<PathBuf> {
    let p = PathBuf::from(what);
    if p.exists() {
        return Ok(p);
    }
    let matches: Vec<PathBuf> = RunRecord::list(store)?
        .into_iter()
        .filter(|r| {
            r.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(what))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            anyhow::bail!("no run record `{what}` (give a path or a file name prefix under runs/)")
        }
        _ => anyhow::bail!(
            "`{what}` matches {} run records; give more of the name",
            matches.len()
        ),
    }
}

pub fn diff(store_dir: &Path, a: &str, b: &str) -> Result<()> {
    let store = ArtifactStore::open_read_only(store_dir)?;
    let (pa, pb) = (resolve(&store, a)?, resolve(&store, b)?);
    let ra = RunRecord::load(&pa).with_context(|| format!("reading {}", pa.display()))?;
    let rb = RunRecord::load(&pb).with_context(|| format!("reading {}", pb.display()))?;
    let (ca, cb) = (flatten_settings(&ra.config), flatten_settings(&rb.config));
    let keys: BTreeSet<&String> = ca.keys().chain(cb.keys()).collect();
    println!(
        "settings that differ ({} → {}):",
        pa.display(),
        pb.display()
    );
    let mut any = false;
    for k in keys {
        let (x, y) = (ca.get(k), cb.get(k));
        if x != y {
            any = true;
            let show = |v: Option<&String>| v.map_or_else(|| "(unset)".into(), |v| show(v));
            println!("  {k}: {} → {}", show(x), show(y));
        }
    }
    if !any {
        println!("  none");
    }
    println!("stages:");
    for nb in &rb.nodes {
        match ra.nodes.iter().find(|n| n.id == nb.id) {
            None => println!("  {:<28} only in B", nb.id),
            Some(na) if na.key == nb.key => {
                println!("  {:<28} same artifact {}", nb.id, &nb.key[..12])
            }
            Some(na) => {
                // The same causes `dml run --dry-run` names: every one of them.
                let why: Vec<String> = changes(
                    na,
                    nb.version,
                    &nb.settings,
                    &nb.inputs,
                    &nb.input_ids,
                    &nb.fingerprint,
                )
                .iter()
                .map(ToString::to_string)
                .collect();
                println!("  {:<28} invalidated: {}", nb.id, why.join("; "));
            }
        }
    }
    for na in &ra.nodes {
        if !rb.nodes.iter().any(|n| n.id == na.id) {
            println!("  {:<28} only in A", na.id);
        }
    }
    Ok(())
}
