//! The `report` stage: one row per run in the seed's table columns (method,
//! normalised, margin, NMI, R@1, R@4, P, K) plus R@K for the dataset's Ks,
//! MAP@R, R-precision and training time; mean ± std over seeds when a seed
//! axis is swept (aggregated with polars), and a column for every setting that differs
//! between the runs; `report.md`, `report.json`, `report.parquet`, `recall.png`, `r1.png`,
//! each run's loss curve, `report.html` (the same, with what each run retrieved: see
//! [`crate::report_html`]) and `tensorboard/<i>/` (each run's final test metrics as a
//! TensorBoard event file, for `dml tensorboard`).
use crate::config::{ExperimentConfig, ReportSettings};
use crate::error::StageError;
use crate::plots;
use crate::report_html::{self, Cells, Page, RunRetrievals, RunSection};
use crate::retrievals::{Catalogue, Gallery, Neighbours};
use crate::thumbs::{ImageSource, Thumbnails};
use dml_artifacts::tensorboard;
use dml_artifacts::{fsx, tables};
use dml_jobspec::evaluate::{names, MetricsFile};
use dml_jobspec::roles::ReportRole;
use dml_pipeline::{flatten_settings, show, BoxError, RunContext, Stage};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the report says about one run, fixed when the DAG is built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunLabel {
    /// Run name (with the sweep point).
    pub name: String,
    /// Sweep point (path, value).
    pub point: Vec<(String, String)>,
    /// Dataset kind.
    pub dataset: String,
    /// Backbone.
    pub backbone: String,
    /// Loss name.
    pub method: String,
    /// L2-normalised embeddings.
    pub normalized: bool,
    /// Margin as the seed's table shows it (`N/A` for losses without one).
    pub margin: String,
    /// Classes per batch.
    pub p: u32,
    /// Images per class.
    pub k: u32,
    /// Whether an untrained baseline was scored.
    pub baseline: bool,
    /// Every setting of the run (`dataset.kind` → `"sop"`, shown as `dml diff` shows them),
    /// but its name and executor: the report shows those that differ between its runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

impl RunLabel {
    /// The label of an experiment.
    pub fn new(name: &str, point: &[(String, String)], c: &ExperimentConfig) -> Self {
        let loss = serde_json::to_value(&c.train.loss).unwrap_or_default();
        let margin = match loss.get("margin") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => "N/A".into(),
        };
        RunLabel {
            name: name.to_string(),
            point: point.to_vec(),
            dataset: serde_json::to_value(c.dataset.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            backbone: c.train.model.backbone.name().to_string(),
            method: c.train.loss.name().to_string(),
            normalized: c.train.model.normalizes(&c.train.loss),
            margin,
            p: c.plan.p,
            k: c.plan.k,
            baseline: c.report.untrained_baseline,
            settings: run_settings(&serde_json::to_value(c).unwrap_or_default()),
        }
    }

    /// The sweep point without seed axes: runs that differ only by seed are one group.
    fn group(&self) -> String {
        let parts: Vec<String> = self
            .point
            .iter()
            .filter(|(k, _)| !k.ends_with("seed"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if parts.is_empty() {
            self.name
                .split('[')
                .next()
                .unwrap_or(&self.name)
                .to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// A run's settings as the report compares them: flattened (`train.loss.name`), shown as
/// `dml diff` shows them, without the run's name and the executor (which never change
/// what a run computes).
pub fn run_settings(config: &Value) -> BTreeMap<String, String> {
    let flat = flatten_settings(config);
    // With validation off, its other settings change nothing (and no key), so they
    // neither make a column nor change the report's key.
    let validation_off = flat.get("train.validation.every").is_none_or(|v| v == "0");
    flat.into_iter()
        .filter(|(k, _)| {
            k != "name"
                && k != "dataset.root"
                && !k.starts_with("executor.")
                && !k.starts_with("store.")
                && !(validation_off
                    && k.starts_with("train.validation.")
                    && k != "train.validation.every")
        })
        .map(|(k, v)| (k, show(&v)))
        .collect()
}

/// The settings whose values differ between the runs (a setting a run lacks counts as
/// differing), in order.
pub fn differing_settings(runs: &[RunLabel]) -> Vec<String> {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
    keys.into_iter()
        .filter(|k| {
            let first = runs.first().and_then(|r| r.settings.get(*k));
            runs.iter().any(|r| r.settings.get(*k) != first)
        })
        .cloned()
        .collect()
}

/// Collects every run's metrics into one report.
pub struct ReportStage {
    runs: Vec<RunLabel>,
    view: ReportSettings,
}

impl ReportStage {
    /// A report over `runs`; its inputs are `retrieve/i`, `cluster/i`, `train/i`, `index/i`,
    /// `decode/i` (and `baseline_retrieve/i`, `baseline_cluster/i` when a baseline was
    /// scored). `view` says what `report.html` shows.
    pub fn new(runs: Vec<RunLabel>, view: ReportSettings) -> Self {
        ReportStage { runs, view }
    }
}

/// The `metrics.json` of an input artifact.
fn read_metrics(dir: &Path) -> crate::Result<MetricsFile> {
    Ok(MetricsFile::read(&dir.join("metrics.json"))?)
}

/// A metric, NaN where the file lacks it.
fn or_nan(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

impl Stage for ReportStage {
    fn name(&self) -> &'static str {
        "report"
    }
    fn version(&self) -> u32 {
        // 2: loss plots linked to their runs; untrained curves in recall.png.
        // 3: the validation R@1 of the kept weights (report.md, val_r@1 in report.parquet).
        // 4: report.html, the settings that differ between runs, TensorBoard test metrics,
        //    legends beside the plots.
        4
    }
    fn settings(&self) -> Value {
        json!({ "report": { "runs": self.runs, "html": self.view } })
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let out = ctx.out_dir().to_path_buf();
        Ok(write_report(
            &out,
            &self.runs,
            &self.view,
            &StageInputs(ctx),
        )?)
    }
}

/// Where a report finds its inputs: the artifact directory of each [`ReportRole`] of each
/// run of its table (the DAG's inputs `retrieve/0`, `cluster/0`, …), and the train
/// artifacts' manifest notes.
pub trait ReportInputs {
    /// The artifact directory of a role of run `run`.
    fn dir(&self, role: ReportRole, run: usize) -> crate::Result<PathBuf>;
    /// The manifest notes of a role's artifact (empty when it has none).
    fn notes(&self, role: ReportRole, run: usize) -> Value;
    /// The directory of a role the report can do without (the index and the images), or
    /// why it is not there.
    fn optional_dir(&self, role: ReportRole, run: usize) -> Result<PathBuf, String> {
        self.dir(role, run).map_err(|e| e.to_string())
    }
    /// Where the images are when there is no decode cache: the dataset's root (the synth
    /// artifact's `images/` for the synthetic set), if known.
    fn image_root(&self, _run: usize) -> Option<PathBuf> {
        None
    }
}

struct StageInputs<'a, 'b>(&'a RunContext<'b>);

impl ReportInputs for StageInputs<'_, '_> {
    fn dir(&self, role: ReportRole, run: usize) -> crate::Result<PathBuf> {
        self.0
            .input(&role.of(run))
            .map(Path::to_path_buf)
            .map_err(StageError::Engine)
    }
    fn notes(&self, role: ReportRole, run: usize) -> Value {
        self.0
            .input_manifest(&role.of(run))
            .map(|m| m.notes.clone())
            .unwrap_or_default()
    }
}

/// Writes a report over `runs` into `out` (`report.md`, `report.json`, `report.parquet`,
/// `recall.png`, `r1.png`, `loss_<i>.png`, `report.html`, `tensorboard/<i>/`) from existing
/// artifacts only: the report stage's body, and `dml report` over several runs. `view`
/// says what `report.html` shows.
pub fn write_report(
    out: &Path,
    runs: &[RunLabel],
    view: &ReportSettings,
    inputs: &dyn ReportInputs,
) -> crate::Result<()> {
    let differing = differing_settings(runs);
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut finals = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let r = read_metrics(&inputs.dir(ReportRole::Retrieve, i)?)?;
        let c = read_metrics(&inputs.dir(ReportRole::Cluster, i)?)?;
        let train_dir = inputs.dir(ReportRole::Train, i)?;
        let train_notes = inputs.notes(ReportRole::Train, i);
        let recall = r.recall.clone();
        curves.push(plots::RecallCurve {
            label: run.name.clone(),
            points: recall.clone(),
            untrained: false,
            shared: false,
        });
        let mut untrained_metrics = None;
        let baseline = if run.baseline {
            let br = read_metrics(&inputs.dir(ReportRole::BaselineRetrieve, i)?)?;
            let bc = read_metrics(&inputs.dir(ReportRole::BaselineCluster, i)?)?;
            let points: Vec<(usize, f64)> = recall
                .iter()
                .filter_map(|&(k, _)| Some((k, br.recall_at(k)?)))
                .collect();
            // Sweep points that start from the same untrained network share its curve:
            // drawn once, not once per run on top of each other.
            match curves
                .iter_mut()
                .find(|c| c.untrained && c.points == points)
            {
                Some(same) => same.shared = true,
                None => curves.push(plots::RecallCurve {
                    label: run.name.clone(),
                    points,
                    untrained: true,
                    shared: false,
                }),
            }
            let b = (or_nan(br.recall_at(1)), or_nan(bc.nmi));
            untrained_metrics = Some((br, bc));
            Some(b)
        } else {
            None
        };
        finals.push(((r.clone(), c.clone()), untrained_metrics));
        let loss_png = train_dir.join("loss.png");
        let loss_file = format!("loss_{i}.png");
        if loss_png.exists() {
            fsx::copy(&loss_png, &out.join(&loss_file))?;
        }
        let settings: serde_json::Map<String, Value> = differing
            .iter()
            .map(|k| (k.clone(), json!(run.settings.get(k))))
            .collect();
        rows.push(json!({
            "run": run.name,
            "group": run.group(),
            "dataset": run.dataset,
            "backbone": run.backbone,
            "method": run.method,
            "normalized": run.normalized,
            "margin": run.margin,
            "p": run.p,
            "k": run.k,
            names::field::NMI: or_nan(c.nmi),
            "recall": recall.iter().map(|(k, v)| json!({"k": k, "value": v})).collect::<Vec<_>>(),
            names::field::MAP_AT_R: or_nan(r.map_at_r),
            names::field::R_PRECISION: or_nan(r.r_precision),
            "train_seconds": train_notes.get("train_seconds").and_then(Value::as_f64).unwrap_or(f64::NAN),
            "untrained_recall@1": baseline.map(|b| b.0),
            "untrained_nmi": baseline.map(|b| b.1),
            "loss_plot": loss_png.exists().then_some(loss_file),
            // [train.validation]: the kept weights' validation R@1, where and at which step.
            "val_recall_at_1": train_notes.get("val_recall_at_1").and_then(Value::as_f64),
            "validation_on": train_notes.get("validation_on").and_then(Value::as_str),
            "kept_step": train_notes.get("kept_step").and_then(Value::as_u64),
            // The settings that differ between the report's runs (18.25).
            "settings": settings,
        }));
    }
    let table = build_frame(&rows, &differing)?;
    let groups = aggregate(&table, &differing)?;
    let run_table = run_cells(&rows, &differing);
    let group_table = group_cells(&rows, &groups)?;
    let md = markdown(&run_table, group_table.as_ref(), &rows);
    fsx::write(&out.join("report.md"), &md)?;
    fsx::write(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json!({
            "runs": rows,
            "groups": frame_to_json(&groups)?,
            "differing_settings": differing,
        }))
        .map_err(StageError::json("writing report.json"))?,
    )?;
    let mut table = table;
    let file = fsx::create(&out.join("report.parquet"))?;
    ParquetWriter::new(file)
        .finish(&mut table)
        .map_err(|cause| StageError::WriteFrame {
            file: "report.parquet",
            cause,
        })?;
    plots::recall_curves(&out.join("recall.png"), "Recall@K", &curves)?;
    let bars = bar_rows(&groups)?;
    plots::bars(&out.join("r1.png"), "Recall@1 per run", "R@1 (%)", &bars)?;
    write_test_events(out, inputs, &finals)?;
    let page = html_page(out, runs, view, inputs, run_table, group_table, &rows)?;
    fsx::write(&out.join("report.html"), report_html::render(&page))?;
    Ok(())
}

/// `tensorboard/<i>/events…`: run `i`'s test metrics at its last training step, and the
/// untrained network's at step 0, so that TensorBoard draws what training changed.
#[allow(clippy::type_complexity)]
fn write_test_events(
    out: &Path,
    inputs: &dyn ReportInputs,
    finals: &[(
        (MetricsFile, MetricsFile),
        Option<(MetricsFile, MetricsFile)>,
    )],
) -> crate::Result<()> {
    let scalars = |(r, c): &(MetricsFile, MetricsFile)| -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = r
            .recall
            .iter()
            .map(|&(k, x)| (format!("test/{}", names::recall_at(k)), x))
            .collect();
        let test = |name: &str| format!("test/{name}");
        v.extend(r.map_at_r.map(|x| (test(names::MAP_AT_R), x)));
        v.extend(r.r_precision.map(|x| (test(names::R_PRECISION), x)));
        v.extend(c.nmi.map(|x| (test(names::NMI), x)));
        v
    };
    let now = tensorboard::now();
    for (i, (trained, untrained)) in finals.iter().enumerate() {
        let log = inputs.dir(ReportRole::Train, i)?.join("train_log.parquet");
        let last = if log.is_file() {
            tables::read_train_log(&log)?
                .last()
                .map(|r| i64::from(r.step))
        } else {
            None
        };
        let dir = out.join("tensorboard").join(i.to_string());
        fsx::create_dir_all(&dir)?;
        let mut w = tensorboard::EventWriter::create(&dir.join(tensorboard::TEST_EVENTS), now)?;
        if let Some(u) = untrained {
            let v = scalars(u);
            let refs: Vec<(&str, f64)> = v.iter().map(|(t, x)| (t.as_str(), *x)).collect();
            w.scalars(0, now, &refs)?;
        }
        let v = scalars(trained);
        let refs: Vec<(&str, f64)> = v.iter().map(|(t, x)| (t.as_str(), *x)).collect();
        w.scalars(last.unwrap_or(0), now, &refs)?;
        w.finish()?;
    }
    Ok(())
}

/// Everything `report.html` shows, read from the artifacts.
fn html_page(
    out: &Path,
    runs: &[RunLabel],
    view: &ReportSettings,
    inputs: &dyn ReportInputs,
    table: Cells,
    groups: Option<Cells>,
    rows: &[Value],
) -> crate::Result<Page> {
    // One catalogue and one image source per index (the runs of a sweep share theirs).
    let mut catalogues: HashMap<PathBuf, Arc<Catalogue>> = HashMap::new();
    let mut sources: Vec<(PathBuf, ImageSource)> = Vec::new();
    let mut analysed = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let a = analyse_run(i, run, view, inputs, &mut catalogues, &mut sources)?;
        analysed.push(a);
    }
    // Every image a run shows, per index; then each thumbnail once.
    let mut wanted: HashMap<PathBuf, BTreeSet<u32>> = HashMap::new();
    for (index, r) in analysed.iter().flatten() {
        wanted
            .entry(index.clone())
            .or_default()
            .extend(r.images(view.classes));
    }
    let mut thumbs: HashMap<PathBuf, Arc<Thumbnails>> = HashMap::new();
    for (index, source) in &sources {
        let ids = wanted.remove(index).unwrap_or_default();
        let t = Thumbnails::build(source, &catalogues[index], &ids, view.thumbnail_px);
        thumbs.insert(index.clone(), Arc::new(t));
    }
    let mut sections = Vec::new();
    for ((i, run), a) in runs.iter().enumerate().zip(analysed) {
        let row = &rows[i];
        let loss_png = row["loss_plot"]
            .as_str()
            .map(|f| std::fs::read(out.join(f)))
            .transpose()?;
        let (retrievals, t) = match a {
            Ok((index, r)) => (Ok(r), thumbs[&index].clone()),
            Err(why) => (Err(why), Arc::new(Thumbnails::default())),
        };
        sections.push(RunSection {
            name: run.name.clone(),
            summary: summary(row),
            loss_png,
            retrievals,
            thumbs: t,
        });
    }
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    Ok(Page {
        title: format!("dml report: {}", names.join(", ")),
        table,
        groups,
        recall_png: std::fs::read(out.join("recall.png"))?,
        r1_png: std::fs::read(out.join("r1.png"))?,
        runs: sections,
        classes: view.classes,
        thumbnail_px: view.thumbnail_px,
    })
}

/// A run's headline numbers for its section.
fn summary(row: &Value) -> Vec<(String, String)> {
    let recall = |k: u64| {
        row["recall"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["k"].as_u64() == Some(k))
            .and_then(|x| x["value"].as_f64())
    };
    let mut v = vec![
        ("R@1".to_string(), pct(recall(1))),
        ("MAP@R".into(), pct(row[names::field::MAP_AT_R].as_f64())),
        ("NMI".into(), num3(row[names::field::NMI].as_f64())),
    ];
    if row["untrained_recall@1"].is_number() {
        v.push((
            "untrained R@1".into(),
            pct(row["untrained_recall@1"].as_f64()),
        ));
        v.push(("untrained NMI".into(), num3(row["untrained_nmi"].as_f64())));
    }
    if let Some(t) = row["train_seconds"].as_f64().filter(|t| t.is_finite()) {
        v.push(("train s".into(), format!("{t:.0}")));
    }
    v
}

fn num3(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "—".into(),
    }
}

/// Reads run `i`'s neighbours and index and picks what its section shows; `Err` is the
/// reason the page gives where a run's retrievals cannot be shown (no neighbours saved,
/// no index in the store); a file that is there but unreadable is an error.
#[allow(clippy::type_complexity)]
fn analyse_run(
    i: usize,
    run: &RunLabel,
    view: &ReportSettings,
    inputs: &dyn ReportInputs,
    catalogues: &mut HashMap<PathBuf, Arc<Catalogue>>,
    sources: &mut Vec<(PathBuf, ImageSource)>,
) -> crate::Result<Result<(PathBuf, RunRetrievals), String>> {
    let retrieve = inputs.dir(ReportRole::Retrieve, i)?;
    let path = retrieve.join("neighbors.parquet");
    if !path.is_file() {
        return Ok(Err(
            "the retrieve stage saved no neighbours (retrieve.neighbors = 0)".into(),
        ));
    }
    let index = match inputs.optional_dir(ReportRole::Index, i) {
        Ok(d) => d,
        Err(why) => return Ok(Err(format!("no index: {why}"))),
    };
    if !catalogues.contains_key(&index) {
        let rows = tables::read_index(&index.join("index.parquet"))?;
        catalogues.insert(index.clone(), Arc::new(Catalogue::new(rows)?));
        let source = match inputs.optional_dir(ReportRole::Decode, i) {
            Ok(d) => ImageSource::Cache(dml_datasets::DecodeCache::open(&d)?),
            Err(why) => match inputs.image_root(i).filter(|r| r.is_dir()) {
                Some(root) => ImageSource::Files(root),
                None => ImageSource::Missing(why),
            },
        };
        sources.push((index.clone(), source));
    }
    let trained = Neighbours::read(&path)?;
    let untrained = if run.baseline {
        let p = inputs
            .dir(ReportRole::BaselineRetrieve, i)?
            .join("neighbors.parquet");
        p.is_file().then(|| Neighbours::read(&p)).transpose()?
    } else {
        None
    };
    let metrics = retrieve.join("metrics.json");
    let protocol = serde_json::from_str::<Value>(&fsx::read_to_string(&metrics)?)
        .map_err(StageError::json(format!("parsing {}", metrics.display())))?
        .get("protocol")
        .and_then(Value::as_str)
        .map(String::from);
    let cat = catalogues[&index].clone();
    Ok(Ok((
        index,
        RunRetrievals::analyse(
            cat,
            trained,
            untrained,
            Gallery::of_protocol(protocol.as_deref()),
            view,
        ),
    )))
}

/// Every K any run reports Recall@K for, ascending.
fn all_ks(rows: &[Value]) -> Vec<u64> {
    let mut ks: Vec<u64> = rows
        .iter()
        .flat_map(|r| {
            r["recall"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["k"].as_u64())
        })
        .collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// One row per run; recall columns `r@K` for every K any run has; one string column per
/// setting that differs between the runs, named by its path (`retrieve.protocol`).
fn build_frame(rows: &[Value], differing: &[String]) -> crate::Result<DataFrame> {
    let s = |key: &str| -> Vec<String> {
        rows.iter()
            .map(|r| r[key].as_str().unwrap_or("").to_string())
            .collect()
    };
    let f = |key: &str| -> Vec<f64> {
        rows.iter()
            .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let u = |key: &str| -> Vec<u32> {
        rows.iter()
            .map(|r| r[key].as_u64().unwrap_or(0) as u32)
            .collect()
    };
    let ks = all_ks(rows);
    let mut cols: Vec<Column> = vec![
        Column::new("run".into(), s("run")),
        Column::new("group".into(), s("group")),
        Column::new("dataset".into(), s("dataset")),
        Column::new("backbone".into(), s("backbone")),
        Column::new("method".into(), s("method")),
        Column::new(
            "normalized".into(),
            rows.iter()
                .map(|r| r["normalized"].as_bool().unwrap_or(false))
                .collect::<Vec<bool>>(),
        ),
        Column::new("margin".into(), s("margin")),
        Column::new("p".into(), u("p")),
        Column::new("k".into(), u("k")),
        Column::new(names::column::NMI.into(), f(names::field::NMI)),
    ];
    for k in &ks {
        let v: Vec<f64> = rows
            .iter()
            .map(|r| {
                r["recall"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["k"].as_u64() == Some(*k))
                    .and_then(|x| x["value"].as_f64())
                    .unwrap_or(f64::NAN)
            })
            .collect();
        cols.push(Column::new(names::column::recall_at(*k as usize).into(), v));
    }
    cols.push(Column::new(
        names::column::MAP_AT_R.into(),
        f(names::field::MAP_AT_R),
    ));
    cols.push(Column::new(
        names::column::R_PRECISION.into(),
        f(names::field::R_PRECISION),
    ));
    cols.push(Column::new("train_seconds".into(), f("train_seconds")));
    cols.push(Column::new("untrained_r@1".into(), f("untrained_recall@1")));
    cols.push(Column::new("untrained_nmi".into(), f("untrained_nmi")));
    cols.push(Column::new("val_r@1".into(), f("val_recall_at_1")));
    for k in differing {
        let v: Vec<Option<String>> = rows
            .iter()
            .map(|r| r["settings"][k].as_str().map(String::from))
            .collect();
        cols.push(Column::new(k.as_str().into(), v));
    }
    Ok(DataFrame::new_infer_height(cols)?)
}

/// Mean and sample std of every metric per group (runs differing only by seed), with the
/// group's first value of each differing setting.
fn aggregate(df: &DataFrame, differing: &[String]) -> crate::Result<DataFrame> {
    let metrics: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .filter(|n| {
            n == names::column::NMI
                || n.starts_with(names::column::RECALL_PREFIX)
                || n == names::column::MAP_AT_R
                || n == names::column::R_PRECISION
                || n == "train_seconds"
        })
        .collect();
    let mut aggs: Vec<Expr> = vec![
        col("method").first(),
        col("normalized").first(),
        col("margin").first(),
        col("p").first(),
        col("k").first(),
        col("run").count().alias("runs"),
    ];
    for k in differing {
        aggs.push(col(k.as_str()).first());
    }
    for m in &metrics {
        aggs.push(col(m.as_str()).mean().alias(format!("{m}_mean")));
        aggs.push(col(m.as_str()).std(1).alias(format!("{m}_std")));
    }
    Ok(df
        .clone()
        .lazy()
        .group_by_stable([col("group")])
        .agg(aggs)
        .collect()?)
}

fn frame_to_json(df: &DataFrame) -> crate::Result<Value> {
    let mut out = Vec::new();
    for i in 0..df.height() {
        let mut o = serde_json::Map::new();
        for c in df.columns() {
            let v = c.get(i)?;
            let j = match v {
                AnyValue::Null => Value::Null,
                AnyValue::Boolean(b) => json!(b),
                AnyValue::String(s) => json!(s),
                AnyValue::StringOwned(s) => json!(s.as_str()),
                AnyValue::Float64(x) if x.is_finite() => json!(x),
                AnyValue::Float64(_) => Value::Null,
                other if other.dtype().is_integer() => match other.extract::<i64>() {
                    Some(x) => json!(x),
                    None => json!(other.to_string()),
                },
                other => match other.extract::<f64>() {
                    Some(x) => json!(x),
                    None => json!(other.to_string()),
                },
            };
            o.insert(c.name().to_string(), j);
        }
        out.push(Value::Object(o));
    }
    Ok(Value::Array(out))
}

fn bar_rows(groups: &DataFrame) -> crate::Result<Vec<(String, f64, Option<f64>)>> {
    let g = frame_to_json(groups)?;
    let r1 = names::column::recall_at(1);
    let (mean, std) = (format!("{r1}_mean"), format!("{r1}_std"));
    Ok(g.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["group"].as_str().unwrap_or("").to_string(),
                r[&mean].as_f64().unwrap_or(0.0),
                r[&std]
                    .as_f64()
                    .filter(|_| r["runs"].as_f64().unwrap_or(1.0) > 1.0),
            )
        })
        .collect())
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{:.2}", 100.0 * x),
        _ => "—".into(),
    }
}

/// The seed's table, one row per run, with a column per setting that differs between the
/// runs (shown after the run's name).
fn run_cells(rows: &[Value], differing: &[String]) -> Cells {
    let ks = all_ks(rows);
    let baseline = rows.iter().any(|r| r["untrained_recall@1"].is_number());
    let mut header = vec!["run".to_string()];
    header.extend(differing.iter().cloned());
    header.extend([
        "method".into(),
        "normalized".into(),
        "margin".into(),
        "NMI".into(),
    ]);
    header.extend(ks.iter().map(|k| format!("R@{k}")));
    header.extend([
        "MAP@R".into(),
        "R-prec".into(),
        "P".into(),
        "K".into(),
        "train s".into(),
    ]);
    if baseline {
        header.extend(["untrained R@1".into(), "untrained NMI".into()]);
    }
    let validated = rows.iter().any(|r| r["val_recall_at_1"].is_number());
    if validated {
        header.push("validation R@1 (kept step)".into());
    }
    let mut out = Vec::new();
    for r in rows {
        let recall = |k: u64| {
            r["recall"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["k"].as_u64() == Some(k))
                .and_then(|x| x["value"].as_f64())
        };
        let mut cells = vec![r["run"].as_str().unwrap_or("").to_string()];
        cells.extend(
            differing
                .iter()
                .map(|k| r["settings"][k].as_str().unwrap_or("(unset)").to_string()),
        );
        cells.extend([
            r["method"].as_str().unwrap_or("").to_string(),
            if r["normalized"].as_bool().unwrap_or(false) {
                "Yes".into()
            } else {
                "No".into()
            },
            r["margin"].as_str().unwrap_or("").to_string(),
            format!("{:.3}", r[names::field::NMI].as_f64().unwrap_or(f64::NAN)),
        ]);
        cells.extend(ks.iter().map(|&k| pct(recall(k))));
        cells.push(pct(r[names::field::MAP_AT_R].as_f64()));
        cells.push(pct(r[names::field::R_PRECISION].as_f64()));
        cells.push(r["p"].to_string());
        cells.push(r["k"].to_string());
        cells.push(format!(
            "{:.0}",
            r["train_seconds"].as_f64().unwrap_or(f64::NAN)
        ));
        if baseline {
            cells.push(pct(r["untrained_recall@1"].as_f64()));
            cells.push(num3(r["untrained_nmi"].as_f64()));
        }
        if validated {
            cells.push(match r["val_recall_at_1"].as_f64() {
                Some(v) => format!(
                    "{} {} @{}",
                    pct(Some(v)),
                    match r["validation_on"].as_str() {
                        Some("test") => "test split",
                        _ => "holdout",
                    },
                    r["kept_step"]
                ),
                None => "—".into(),
            });
        }
        out.push(cells);
    }
    Cells { header, rows: out }
}

/// Mean ± std per group, when some group has several runs (seeds).
fn group_cells(rows: &[Value], groups: &DataFrame) -> crate::Result<Option<Cells>> {
    let ks = all_ks(rows);
    let g = frame_to_json(groups)?;
    let multi: Vec<&Value> = g
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["runs"].as_f64().unwrap_or(1.0) > 1.0)
        .collect();
    if multi.is_empty() {
        return Ok(None);
    }
    let mut header = vec!["group".to_string(), "runs".into(), "NMI".into()];
    header.extend(ks.iter().map(|k| format!("R@{k}")));
    header.push("MAP@R".into());
    let mut out = Vec::new();
    for r in multi {
        let pm = |m: &str, scale: f64, digits: usize| {
            format!(
                "{:.*} ± {:.*}",
                digits,
                scale * r[format!("{m}_mean")].as_f64().unwrap_or(f64::NAN),
                digits,
                scale * r[format!("{m}_std")].as_f64().unwrap_or(f64::NAN)
            )
        };
        let mut cells = vec![
            r["group"].as_str().unwrap_or("").to_string(),
            r["runs"].to_string(),
            pm(names::column::NMI, 1.0, 3),
        ];
        cells.extend(
            ks.iter()
                .map(|&k| pm(&names::column::recall_at(k as usize), 100.0, 2)),
        );
        cells.push(pm(names::column::MAP_AT_R, 100.0, 2));
        out.push(cells);
    }
    Ok(Some(Cells { header, rows: out }))
}

fn md_table(md: &mut String, t: &Cells) {
    // A `|` inside a cell would split it.
    let cell = |c: &String| c.replace('|', "\\|");
    let _ = writeln!(
        md,
        "| {} |",
        t.header.iter().map(cell).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(md, "|{}", " --- |".repeat(t.header.len()));
    for row in &t.rows {
        let _ = writeln!(
            md,
            "| {} |",
            row.iter().map(cell).collect::<Vec<_>>().join(" | ")
        );
    }
}

/// The seed's table (one row per run), then the per-group mean ± std when a group has several runs.
fn markdown(table: &Cells, groups: Option<&Cells>, rows: &[Value]) -> String {
    let mut md = String::new();
    md_table(&mut md, table);
    if let Some(g) = groups {
        let _ = writeln!(md, "\nMean ± std over seeds:\n");
        md_table(&mut md, g);
    }
    let plots: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|r| Some((r["run"].as_str()?, r["loss_plot"].as_str()?)))
        .collect();
    let _ = writeln!(
        md,
        "\nThe retrievals themselves (per-class Recall@1, random and worst queries, confused classes): [report.html](report.html)."
    );
    if !plots.is_empty() {
        let _ = writeln!(
            md,
            "\nPlots: [Recall@K](recall.png), [R@1 per run](r1.png). Loss curves:\n"
        );
        for (run, file) in plots {
            let _ = writeln!(md, "- [{file}]({file}): {run}");
        }
    }
    md
}
