//! `dml runs` (the run records, newest first, with their headline metrics) and `dml report
//! NAME…` (one combined report over several runs, from their existing artifacts only).
use crate::outcome::{self, Point};
use anyhow::{anyhow, bail, Context, Result};
use dml_artifacts::{ArtifactStore, Manifest};
use dml_jobspec::roles::ReportRole;
use dml_pipeline::{file_safe, show, RecordNode, RunRecord, RunStatus};
use dml_stages::config::ReportSettings;
use dml_stages::report::{run_settings, write_report, ReportInputs, RunLabel};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// How the run ended (`ok`, `failed`, `interrupted`, `submitted`), `running` while its
/// process holds its live registration, and `killed` for a running record whose process is
/// gone (kill -9, a lost machine).
fn status(store: &ArtifactStore, record: &RunRecord) -> &'static str {
    match record.run_status() {
        RunStatus::Running => match &record.live {
            Some(tag) if store.is_live(tag) => "running",
            _ => "killed",
        },
        other => other.as_str(),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}", 100.0 * x))
        .unwrap_or_else(|| "—".into())
}

/// `dml runs [--name NAME] [--limit N] [--json]`.
pub fn runs(
    store_dir: &Path,
    name: Option<&str>,
    limit: Option<usize>,
    as_json: bool,
) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let mut listed = Vec::new();
    for path in RunRecord::list(&store)?.into_iter().rev() {
        let Ok(record) = RunRecord::load(&path) else {
            tracing::warn!("skipping unreadable run record {}", path.display());
            continue;
        };
        if name.is_some_and(|n| n != record.name) {
            continue;
        }
        listed.push((path, record));
        if limit.is_some_and(|l| listed.len() >= l) {
            break;
        }
    }
    if as_json {
        let out: Vec<Value> = listed
            .iter()
            .map(|(path, r)| {
                json!({
                    "record": path,
                    "name": r.name,
                    "started": r.started,
                    "seconds": r.seconds,
                    "status": status(&store, r),
                    "outcome": r.outcome,
                    "points": outcome::points(&store, r),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if listed.is_empty() {
        eprintln!("no run records in {}", store.runs_dir().display());
        return Ok(());
    }
    println!(
        "{:<20} {:<40} {:<11} {:>7} {:>7} {:>6} {:>8}  record",
        "started", "run", "status", "R@1", "MAP@R", "NMI", "train s"
    );
    for (path, r) in &listed {
        let started = r.started.get(..19).unwrap_or(&r.started).replace('T', " ");
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let points = outcome::points(&store, r);
        if points.is_empty() {
            println!(
                "{started:<20} {:<40} {:<11} {:>7} {:>7} {:>6} {:>8}  {file}",
                r.name,
                status(&store, r),
                "—",
                "—",
                "—",
                "—"
            );
        }
        for p in points {
            let m = &p.metrics;
            println!(
                "{started:<20} {:<40} {:<11} {:>7} {:>7} {:>6} {:>8}  {file}",
                p.name,
                status(&store, r),
                pct(m.recall_at_1),
                pct(m.map_at_r),
                m.nmi
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "—".into()),
                m.train_seconds
                    .map(|x| format!("{x:.1}"))
                    .unwrap_or_else(|| "—".into()),
            );
        }
    }
    Ok(())
}

/// The combined report's inputs: global role (`retrieve/3`) → an artifact in the store;
/// for the index and the images, why one is not there.
struct StoreInputs {
    dirs: BTreeMap<(ReportRole, usize), PathBuf>,
    absent: BTreeMap<(ReportRole, usize), String>,
    image_roots: BTreeMap<usize, PathBuf>,
}

impl ReportInputs for StoreInputs {
    fn dir(&self, role: ReportRole, run: usize) -> dml_stages::Result<PathBuf> {
        self.dirs.get(&(role, run)).cloned().ok_or_else(|| {
            dml_stages::StageError::Input(format!("report input `{}` is missing", role.of(run)))
        })
    }
    fn optional_dir(&self, role: ReportRole, run: usize) -> Result<PathBuf, String> {
        match self.dirs.get(&(role, run)) {
            Some(d) => Ok(d.clone()),
            None => {
                Err(self.absent.get(&(role, run)).cloned().unwrap_or_else(|| {
                    format!("`{}` is not known to the run record", role.of(run))
                }))
            }
        }
    }
    fn image_root(&self, run: usize) -> Option<PathBuf> {
        self.image_roots.get(&run).cloned()
    }
    fn notes(&self, role: ReportRole, run: usize) -> Value {
        self.dirs
            .get(&(role, run))
            .and_then(|d| Manifest::read(&d.join("manifest.json")).ok())
            .map(|m| m.notes)
            .unwrap_or_default()
    }
}

/// The node of a record with this stage and key.
fn record_node<'a>(record: &'a RunRecord, stage: &str, key: &str) -> Option<&'a RecordNode> {
    record
        .nodes
        .iter()
        .find(|n| n.stage == stage && n.key == key)
}

/// The index and decode artifacts (and where the images are) of a point: the inputs of
/// the embed node its retrieve node read, for records made before the report read them.
fn image_inputs(
    store: &ArtifactStore,
    record: &RunRecord,
    retrieve_key: &str,
    i: usize,
    inputs: &mut StoreInputs,
) {
    let embed = record_node(record, "retrieve", retrieve_key)
        .and_then(|r| r.inputs.get("embed"))
        .and_then(|k| record_node(record, "embed", k));
    for role in [ReportRole::Index, ReportRole::Decode] {
        let stage = role.stage();
        let role = (role, i);
        match embed.and_then(|e| e.inputs.get(stage)) {
            Some(key) => {
                let dir = store.object_dir(stage, key);
                if dir.join("manifest.json").is_file() {
                    inputs.dirs.insert(role, dir);
                } else {
                    inputs.absent.insert(
                        role,
                        format!(
                            "the {stage} artifact {} is not in this store (pulled without it, or removed by `dml gc`)",
                            &key[..key.len().min(12)]
                        ),
                    );
                }
            }
            None => {
                inputs
                    .absent
                    .insert(role, format!("the run record names no {stage} artifact"));
            }
        }
    }
    // Without a decode cache, the images themselves: the synth artifact's, or the dataset's.
    let synth = record
        .nodes
        .iter()
        .find(|n| n.stage == "synth")
        .map(|n| store.object_dir("synth", &n.key).join("images"));
    let root = synth.or_else(|| {
        record
            .config
            .pointer("/dataset/root")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
    });
    if let Some(root) = root {
        inputs.image_roots.insert(i, root);
    }
}

/// `dml report NAME [NAME…] [--out DIR]`.
pub fn report(store_dir: &Path, names: &[String], out: Option<PathBuf>) -> Result<()> {
    // Only read: with --out elsewhere, a read-only store is enough.
    let store = ArtifactStore::open_existing(store_dir)?;
    let mut labels: Vec<RunLabel> = Vec::new();
    let mut inputs = StoreInputs {
        dirs: BTreeMap::new(),
        absent: BTreeMap::new(),
        image_roots: BTreeMap::new(),
    };
    let mut view: Option<ReportSettings> = None;
    let mut taken = BTreeSet::new();
    for what in names {
        let (path, record) = crate::records::load_record(&store, what, Some("report"))?;
        // What report.html shows: the first run's [report] settings.
        if view.is_none() {
            view = record
                .config
                .get("report")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok());
        }
        let points: Vec<Point> = outcome::points(&store, &record);
        if points.iter().all(|p| p.label.is_none()) {
            bail!(
                "run `{what}` ({}) did not reach its report stage (was it run with --until?); rerun it to the end first",
                path.display()
            );
        }
        for p in points {
            let Some(mut label) = p.label else { continue };
            for (&role, key) in &p.roles {
                if !label.baseline && role.is_baseline() {
                    continue;
                }
                let stage = role.stage();
                let dir = store.object_dir(stage, key);
                if !dir.join("manifest.json").is_file() {
                    bail!(
                        "run `{what}`: the {stage} artifact {} of `{}` is not in the store (removed by `dml gc`?); `dml run --from-record {}` rebuilds it",
                        &key[..key.len().min(12)],
                        label.name,
                        path.display()
                    );
                }
                inputs.dirs.insert((role, labels.len()), dir);
            }
            if let Some(key) = p.roles.get(&ReportRole::Retrieve) {
                image_inputs(&store, &record, key, labels.len(), &mut inputs);
            }
            // Records made before the report compared settings: the record's configuration,
            // with the point's sweep values.
            if label.settings.is_empty() {
                let mut config = record.config.clone();
                if let Some(o) = config.as_object_mut() {
                    o.remove("sweep");
                }
                label.settings = run_settings(&config);
                for (k, v) in &label.point {
                    label.settings.insert(k.clone(), show(v));
                }
            }
            if !taken.insert(label.name.clone()) {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                label.name = format!("{} ({stem})", label.name);
                taken.insert(label.name.clone());
            }
            labels.push(label);
        }
    }
    let (out, fresh) = match out {
        Some(dir) => (dir, false),
        None => {
            let joined: Vec<String> = names.iter().map(|n| file_safe(n)).collect();
            (store.root().join("reports").join(joined.join("+")), true)
        }
    };
    if fresh && out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| {
        format!(
            "creating {} (`--out DIR` writes the report elsewhere)",
            out.display()
        )
    })?;
    let view = view.unwrap_or_default();
    write_report(&out, &labels, &view, &inputs)
        .map_err(|e| anyhow!("writing the report into {}: {e}", out.display()))?;
    let md = out.join("report.md");
    let text = std::fs::read_to_string(&md).with_context(|| format!("reading {}", md.display()))?;
    println!("{text}");
    println!(
        "(report, plots and loss curves: {}; the retrievals: {})",
        out.display(),
        out.join("report.html").display()
    );
    Ok(())
}
