//! Which run record a name on the command line means: a run name, `NAME~N`, a record
//! file or its prefix, and the node of a record that a stage, id or folder name names.
//! `dml path`, `show`, `report`, `diff`, `embed` and `search` all read records through here.
use anyhow::{bail, Context, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{file_safe, node_dir_name, RecordNode, RunRecord};
use std::path::{Path, PathBuf};

/// A run named on the command line, resolved to its record file:
/// - a path to a record file;
/// - `NAME`: the newest record of that run name; with `need`, the newest one that
///   reached a node of that stage (or id), so a later `--until` run does not shadow
///   a complete one (a note on stderr says which record was taken instead);
/// - `NAME~N`: the N-th record of that name before the newest (`NAME~0` is the newest);
/// - a prefix of a record's file name (`dml runs` lists them), when it matches one.
pub fn resolve_record(store: &ArtifactStore, what: &str, need: Option<&str>) -> Result<PathBuf> {
    let p = PathBuf::from(what);
    if p.is_file() {
        return Ok(p);
    }
    let all = RunRecord::list(store)?;
    let (name, back) = split_back(what)?;
    let suffix = format!("-{}.json", file_safe(name));
    let named: Vec<(&PathBuf, RunRecord)> = all
        .iter()
        .rev()
        .filter(|path| path.to_string_lossy().ends_with(&suffix))
        .filter_map(|path| {
            RunRecord::load(path)
                .ok()
                .filter(|r| r.name == name)
                .map(|r| (path, r))
        })
        .collect();
    if let Some(n) = back {
        return match named.get(n) {
            Some((path, _)) => Ok((*path).clone()),
            None => bail!(
                "`{what}`: run `{name}` has {} record(s), so `{name}~{}` is the oldest; `dml runs` lists them",
                named.len(),
                named.len().saturating_sub(1)
            ),
        };
    }
    if let Some((newest, _)) = named.first() {
        let Some(stage) = need else {
            return Ok((*newest).clone());
        };
        return match named.iter().find(|(_, r)| r.reaches(stage)) {
            Some((path, _)) => {
                if path != newest {
                    eprintln!(
                        "note: the newest run of `{name}` ({}) stopped before `{stage}`; reading {}",
                        file_name(newest),
                        file_name(path)
                    );
                }
                Ok((*path).clone())
            }
            None => Ok((*newest).clone()),
        };
    }
    let matches: Vec<&PathBuf> = all
        .iter()
        .filter(|r| {
            r.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(what))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "no run record `{what}` in {} (give a run name, NAME~N for an earlier run of it, a path, or a file name prefix; `dml runs` lists them)",
            store.runs_dir().display()
        ),
        many => {
            let shown: Vec<String> = many.iter().take(10).map(|p| format!("  {}", file_name(p))).collect();
            let more = if many.len() > 10 {
                format!("\n  … and {} more", many.len() - 10)
            } else {
                String::new()
            };
            bail!(
                "`{what}` matches {} run records; give more of the name:\n{}{more}",
                many.len(),
                shown.join("\n")
            )
        }
    }
}

/// `NAME~N` → (`NAME`, Some(N)); anything else → (it, None).
fn split_back(what: &str) -> Result<(&str, Option<usize>)> {
    match what.rsplit_once('~') {
        Some((name, n)) if !name.is_empty() => match n.parse::<usize>() {
            Ok(n) => Ok((name, Some(n))),
            Err(_) => bail!(
                "`{what}`: after `~` give how many runs back, e.g. `{name}~1` for the run before the newest"
            ),
        },
        _ => Ok((what, None)),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Loads a record named on the command line (see [`resolve_record`]).
pub fn load_record(
    store: &ArtifactStore,
    what: &str,
    need: Option<&str>,
) -> Result<(PathBuf, RunRecord)> {
    let path = resolve_record(store, what, need)?;
    let record = RunRecord::load(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path, record))
}

/// The record a command reads `node` from (a stage, a node id, its folder name or a
/// unique id prefix): with `name` (a run name, `NAME~N` or a record file prefix), that
/// run's newest record that reached the node; without, the newest record of any name
/// that reached it. A `--until` run thus never hides the artifacts of a complete one.
pub fn record_reaching(store: &ArtifactStore, node: &str, name: Option<&str>) -> Result<RunRecord> {
    match name {
        Some(n) => Ok(load_record(store, n, Some(node))?.1),
        None => {
            let all = RunRecord::list(store)?;
            if all.is_empty() {
                bail!("no runs recorded in {} yet", store.root().display());
            }
            for path in all.iter().rev() {
                if let Ok(r) = RunRecord::load(path) {
                    if r.reaches(node) {
                        return Ok(r);
                    }
                }
            }
            let last = all.last().expect("non-empty");
            Ok(RunRecord::load(last)?)
        }
    }
}

/// The node of `record` that `node` names: an exact id (or its folder name), else the
/// one node of a stage, else the one id that starts with what was given
/// (`train[train.loss.name=npairs`).
pub fn pick_node<'a>(record: &'a RunRecord, node: &str) -> Result<&'a RecordNode> {
    let exact = record
        .nodes
        .iter()
        .find(|n| n.id == node || node_dir_name(&n.id) == node);
    let candidates: Vec<&RecordNode> = match exact {
        Some(n) => vec![n],
        None => {
            let by_stage: Vec<_> = record.nodes.iter().filter(|n| n.stage == node).collect();
            if by_stage.is_empty() {
                record
                    .nodes
                    .iter()
                    .filter(|n| n.id.starts_with(node) || node_dir_name(&n.id).starts_with(node))
                    .collect()
            } else {
                by_stage
            }
        }
    };
    match candidates.as_slice() {
        [one] => Ok(*one),
        [] => {
            let ids: Vec<&str> = record.nodes.iter().map(|n| n.id.as_str()).collect();
            bail!(
                "run `{}` has no stage `{node}`; it has: {}",
                record.name,
                ids.join(", ")
            );
        }
        many => {
            let ids: Vec<String> = many.iter().map(|n| format!("  {}", n.id)).collect();
            bail!(
                "run `{}` has {} `{node}` nodes (one per sweep point); name one, e.g. dml path '{}':\n{}",
                record.name,
                many.len(),
                many[0].id,
                ids.join("\n")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tilde_names_an_earlier_run() {
        assert_eq!(split_back("cub").unwrap(), ("cub", None));
        assert_eq!(split_back("cub~1").unwrap(), ("cub", Some(1)));
        assert_eq!(split_back("cub~0").unwrap(), ("cub", Some(0)));
        assert_eq!(split_back("~1").unwrap(), ("~1", None));
        assert!(split_back("cub~x")
            .unwrap_err()
            .to_string()
            .contains("cub~1"));
    }
}
