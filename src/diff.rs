//! `dml diff RUN_A RUN_B`: which settings differ between two run records, and
//! which stages each difference invalidated.
use anyhow::{Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{flatten_settings, RunRecord};
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
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
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
                let (sa, sb) = (
                    flatten_settings(&na.settings),
                    flatten_settings(&nb.settings),
                );
                let mut why: Vec<String> = sa
                    .keys()
                    .chain(sb.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| sa.get(*k) != sb.get(*k))
                    .map(|k| {
                        format!(
                            "{k} changed {} → {}",
                            sa.get(k).map(String::as_str).unwrap_or("(unset)"),
                            sb.get(k).map(String::as_str).unwrap_or("(unset)")
                        )
                    })
                    .collect();
                if na.fingerprint != nb.fingerprint {
                    why.push("dataset files changed".into());
                }
                if na.version != nb.version {
                    why.push(format!(
                        "stage code version changed {} → {}",
                        na.version, nb.version
                    ));
                }
                let inputs: Vec<&String> = nb
                    .inputs
                    .iter()
                    .filter(|(r, k)| na.inputs.get(*r) != Some(k))
                    .map(|(r, _)| r)
                    .collect();
                if why.is_empty() && !inputs.is_empty() {
                    why.push(format!(
                        "input {} changed",
                        inputs
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
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
