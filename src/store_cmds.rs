//! `dml ls`, `dml show`, `dml gc`: looking into and tidying the store.
use anyhow::{bail, Context, Result};
use dml_artifacts::{tables, ArtifactStore, ObjectInfo, StageKeys};
use dml_pipeline::{flatten_settings, RunRecord};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Bytes in binary units (`4.2 MiB`).
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn finished(o: &ObjectInfo) -> String {
    o.manifest
        .as_ref()
        .and_then(|m| m.provenance.get("finished"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

pub fn ls(store_dir: &Path) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let objects = store.list()?;
    if objects.is_empty() {
        println!("the store `{}` holds no artifacts yet", store_dir.display());
        return Ok(());
    }
    println!(
        "{:<10} {:<34} {:>10}  {:<8} finished",
        "stage", "key", "size", "files"
    );
    for o in &objects {
        let (size, files) = o
            .manifest
            .as_ref()
            .map(|m| (human(m.total_bytes()), m.files.len().to_string()))
            .unwrap_or_else(|| ("?".into(), "no manifest".into()));
        println!(
            "{:<10} {:<34} {:>10}  {:<8} {}",
            o.stage,
            o.key,
            size,
            files,
            finished(o)
        );
    }
    Ok(())
}

fn resolve<'a>(objects: &'a [ObjectInfo], what: &str) -> Result<&'a ObjectInfo> {
    if objects.is_empty() {
        bail!("the store holds no artifacts yet, so nothing matches `{what}`; `dml run` builds them (or give --store DIR)");
    }
    let by_stage: Vec<&ObjectInfo> = objects.iter().filter(|o| o.stage == what).collect();
    if !by_stage.is_empty() {
        return Ok(by_stage
            .into_iter()
            .max_by_key(|o| finished(o))
            .expect("non-empty"));
    }
    let by_key: Vec<&ObjectInfo> = objects.iter().filter(|o| o.key.starts_with(what)).collect();
    match by_key.len() {
        1 => Ok(by_key[0]),
        0 => {
            let stages: BTreeSet<&str> = objects.iter().map(|o| o.stage.as_str()).collect();
            bail!(
                "no artifact matches `{what}`; give a stage ({}) or a key prefix (`dml ls` lists them)",
                stages.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
        n => bail!("`{what}` matches {n} keys; give more of the key"),
    }
}

/// What `dml show` names: a stage or node id is the artifact the newest run that reached
/// it used (as `dml path` reads it: the trained `train`, never its untrained baseline);
/// without a record of it, a stage's newest artifact or a key prefix.
fn resolve_shown<'a>(
    store: &ArtifactStore,
    objects: &'a [ObjectInfo],
    what: &str,
    name: Option<&str>,
) -> Result<&'a ObjectInfo> {
    let by_record = match name {
        Some(n) => Some(crate::records::record_reaching(store, what, Some(n))?),
        None => crate::records::record_reaching(store, what, None).ok(),
    };
    if let Some(record) = by_record {
        let names_a_node = record
            .nodes
            .iter()
            .any(|n| n.stage == what || n.id == what || n.id.starts_with(what));
        if names_a_node || name.is_some() {
            let node = crate::records::pick_node(&record, what)?;
            return objects
                .iter()
                .find(|o| o.stage == node.stage && o.key == node.key)
                .with_context(|| {
                    format!(
                        "the artifact of `{}` in run `{}` ({}) is not in the store (removed by gc?); rerun `{}`",
                        node.id,
                        record.name,
                        &node.key[..node.key.len().min(12)],
                        record.name
                    )
                });
        }
    }
    resolve(objects, what)
}

pub fn show(store_dir: &Path, what: &str, name: Option<&str>, rows: usize) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let objects = store.list()?;
    let o = resolve_shown(&store, &objects, what, name)?;
    println!("{} {}", o.stage, o.key);
    println!("path: {}", o.dir.display());
    let Some(m) = &o.manifest else {
        bail!("artifact {} has no readable manifest", o.key)
    };
    println!("version: {}", m.version);
    println!("settings:");
    for (k, v) in flatten_settings(&m.settings) {
        println!("  {k} = {v}");
    }
    if !m.inputs.is_empty() {
        println!("inputs:");
        for (role, key) in &m.inputs {
            println!("  {role}: {key}");
        }
    }
    if let Some(fp) = &m.fingerprint {
        println!("fingerprint: {fp}");
    }
    if m.notes.as_object().is_some_and(|n| !n.is_empty()) {
        println!("notes: {}", serde_json::to_string_pretty(&m.notes)?);
    }
    println!("files:");
    let mut shown = 0;
    for f in &m.files {
        if shown < 20 {
            println!("  {:<40} {:>10}", f.path, human(f.size));
        }
        shown += 1;
    }
    if shown > 20 {
        println!("  … and {} more", shown - 20);
    }
    for f in &m.files {
        if f.path.ends_with(".parquet") || f.path.ends_with(".arrow") {
            let path = o.dir.join(&f.path);
            let batch = tables::read_table(&path)?;
            println!("\n{} ({} rows)", f.path, batch.num_rows());
            for field in batch.schema().fields() {
                println!("  {}: {}", field.name(), field.data_type());
            }
            let head = abbreviate_lists(&batch.slice(0, rows.min(batch.num_rows())))?;
            println!("{}", arrow::util::pretty::pretty_format_batches(&[head])?);
        }
    }
    Ok(())
}

/// Values of a list cell shown before the rest is summarised.
const LIST_VALUES_SHOWN: usize = 4;

/// List columns (embeddings) as text with their first few values and the
/// length, so a row of 128 floats fits on a line.
fn abbreviate_lists(batch: &arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch> {
    use arrow::array::{Array, ArrayRef, AsArray, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use std::sync::Arc;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let row = |i: usize| -> Option<ArrayRef> {
            match col.data_type() {
                DataType::FixedSizeList(..) => Some(col.as_fixed_size_list().value(i)),
                DataType::List(_) => Some(col.as_list::<i32>().value(i)),
                DataType::LargeList(_) => Some(col.as_list::<i64>().value(i)),
                _ => None,
            }
        };
        if row(0).is_none() && !col.is_empty() {
            fields.push(field.as_ref().clone());
            columns.push(col.clone());
            continue;
        }
        let opts = FormatOptions::default();
        let text: Vec<Option<String>> = (0..col.len())
            .map(|i| {
                if col.is_null(i) {
                    return Ok(None);
                }
                let values = row(i).expect("a list column");
                let fmt = ArrayFormatter::try_new(values.as_ref(), &opts)?;
                let shown = values.len().min(LIST_VALUES_SHOWN);
                let head: Vec<String> = (0..shown).map(|j| fmt.value(j).to_string()).collect();
                Ok(Some(if values.len() > shown {
                    format!("[{}, … ({} values)]", head.join(", "), values.len())
                } else {
                    format!("[{}]", head.join(", "))
                }))
            })
            .collect::<Result<_, arrow::error::ArrowError>>()?;
        fields.push(Field::new(field.name(), DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(text)));
    }
    Ok(arrow::array::RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Temporary files of interrupted writes (`.NAME.tmp…` dot files) in `dir` that
/// nothing has touched for a minute: every writer renames them within milliseconds.
fn stale_temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let cutoff = SystemTime::now() - Duration::from_secs(60);
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with('.') && name.contains(".tmp")
        })
        .filter(|e| {
            e.path()
                .symlink_metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// (stage, key) of every artifact a `latest/<run>/<node>` link points to; links
/// whose artifact is gone are listed in `dangling`.
fn latest_links(store: &ArtifactStore) -> Result<(StageKeys, Vec<PathBuf>)> {
    let mut reached = BTreeSet::new();
    let mut dangling = Vec::new();
    let latest = store.layout().latest();
    let Ok(runs) = std::fs::read_dir(&latest) else {
        return Ok((reached, dangling));
    };
    for run in runs.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
        let links = std::fs::read_dir(run.path())
            .with_context(|| format!("listing {}", run.path().display()))?;
        for link in links.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Ok(target) = std::fs::read_link(&link) else {
                continue;
            };
            let mut parts = target.iter().rev();
            let (key, stage) = (parts.next(), parts.next());
            if let (Some(key), Some(stage)) = (key, stage) {
                let (stage, key) = (stage.to_string_lossy(), key.to_string_lossy());
                if store.object_dir(&stage, &key).exists() {
                    reached.insert((stage.into_owned(), key.into_owned()));
                    continue;
                }
            }
            if !link.exists() {
                dangling.push(link);
            }
        }
    }
    Ok((reached, dangling))
}

/// Removes artifacts that none of the last `keep_runs` runs, no `latest/` link and
/// no live run reaches, and what interrupted runs leave behind. A dry run only reads the
/// store (it works on a read-only one); neither creates a store where there is none.
pub fn gc(store_dir: &Path, keep_runs: usize, dry_run: bool) -> Result<()> {
    let looked = ArtifactStore::open_existing(store_dir)?;
    let store = if dry_run {
        looked
    } else {
        ArtifactStore::open(store_dir)?
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    // Runs resolving their plans finish registering first; runs starting now wait.
    let waiting = || eprintln!("waiting for runs that are resolving their plans to register");
    let _fence = if dry_run {
        store.fence_out_runs_to_look(waiting)?
    } else {
        Some(store.fence_out_runs(waiting)?)
    };
    let records = RunRecord::list(&store)?;
    let mut alive: StageKeys = BTreeSet::new();
    for path in records.iter().rev().take(keep_runs) {
        let r = RunRecord::load(path)?;
        alive.extend(
            r.nodes
                .into_iter()
                .map(|n| (n.identity.stage, n.identity.key)),
        );
    }
    let live = store.live_runs(dry_run)?;
    alive.extend(live.keys.iter().cloned());
    let (linked, dangling) = latest_links(&store)?;
    alive.extend(linked);
    let plan = store.gc_plan(&alive, dry_run)?;
    let freed = plan.object_bytes();
    let removed = plan.objects.len();
    for o in &plan.objects {
        let size = o.manifest.as_ref().map(|m| m.total_bytes()).unwrap_or(0);
        println!("{verb} {:<10} {} ({})", o.stage, o.key, human(size));
        if !dry_run {
            store.remove_object(&o.stage, &o.key)?;
        }
    }
    let mut leftovers = 0usize;
    let mut report = |what: &str, path: &Path| {
        println!("{verb} {what} {}", path.display());
        leftovers += 1;
    };
    for t in store.stale_tmp(dry_run)? {
        if ArtifactStore::is_trash(&t) {
            report("the rest of an artifact whose removal was interrupted", &t);
        } else {
            report("stale temporary", &t);
        }
    }
    for q in store.collect_quarantine(dry_run)? {
        report("quarantined artifact", &q);
    }
    // Resumable checkpoints: kept while a kept, live or linked run still needs them
    // (its artifact is not committed yet) and while a build of the key may run; the
    // plan holds the locks of the keys it lists until they are removed.
    for dir in &plan.checkpoints {
        if !dry_run {
            store.remove_checkpoints(dir)?;
        }
        report("checkpoints of a finished or abandoned train", dir);
    }
    drop(plan);
    for stale in &live.stale {
        report("registration of a run that is gone", stale);
    }
    for link in &dangling {
        if !dry_run {
            std::fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
        }
        report("dangling link", link);
    }
    let mut temp_files = stale_temp_files(&store.runs_dir());
    temp_files.extend(stale_temp_files(&store.layout().cache("stat")));
    if let Ok(runs) = std::fs::read_dir(store.layout().latest()) {
        for run in runs.filter_map(|e| e.ok()) {
            temp_files.extend(stale_temp_files(&run.path()));
        }
    }
    for f in temp_files {
        if !dry_run {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
        }
        report("stale temporary file", &f);
    }
    println!(
        "{} {removed} artifacts ({}) and {leftovers} leftovers; kept what the last {keep_runs} runs, \
         the latest/ links and {} live run(s) reach",
        if dry_run { "would free" } else { "freed" },
        human(freed),
        live.runs
    );
    Ok(())
}
