//! `dml ls`, `dml show`, `dml gc`: looking into and tidying the store.
use anyhow::{bail, Result};
use dml_artifacts::{tables, ArtifactStore, ObjectInfo};
use dml_pipeline::{flatten_settings, RunRecord};
use std::collections::BTreeSet;
use std::path::Path;

fn human(bytes: u64) -> String {
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
    let store = ArtifactStore::open(store_dir)?;
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

pub fn show(store_dir: &Path, what: &str, rows: usize) -> Result<()> {
    let store = ArtifactStore::open(store_dir)?;
    let objects = store.list()?;
    let o = resolve(&objects, what)?;
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
        if row(0).is_none() && col.len() > 0 {
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

pub fn gc(store_dir: &Path, keep_runs: usize, dry_run: bool) -> Result<()> {
    let store = ArtifactStore::open(store_dir)?;
    let records = RunRecord::list(&store)?;
    let mut alive: BTreeSet<(String, String)> = BTreeSet::new();
    for path in records.iter().rev().take(keep_runs) {
        let r = RunRecord::load(path)?;
        alive.extend(r.nodes.into_iter().map(|n| (n.stage, n.key)));
    }
    let mut freed = 0u64;
    let mut removed = 0usize;
    for o in store.list()? {
        if alive.contains(&(o.stage.clone(), o.key.clone())) {
            continue;
        }
        let size = o.manifest.as_ref().map(|m| m.total_bytes()).unwrap_or(0);
        println!(
            "{} {:<10} {} ({})",
            if dry_run { "would remove" } else { "removed" },
            o.stage,
            o.key,
            human(size)
        );
        if !dry_run {
            store.remove_object(&o.stage, &o.key)?;
        }
        freed += size;
        removed += 1;
    }
    let stale = store.stale_tmp(dry_run)?;
    for t in &stale {
        println!(
            "{} stale temporary {}",
            if dry_run { "would remove" } else { "removed" },
            t.display()
        );
    }
    println!(
        "{} {removed} artifacts ({}) and {} temporary directories; kept what the last {keep_runs} runs reached",
        if dry_run { "would free" } else { "freed" },
        human(freed),
        stale.len()
    );
    Ok(())
}
