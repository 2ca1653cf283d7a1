//! The `report` stage: one row per run in the seed's table columns (method,
//! normalised, margin, NMI, R@1, R@4, P, K) plus R@K for the dataset's Ks,
//! MAP@R, R-precision and training time; mean ± std over seeds when a seed
//! axis is swept (aggregated with polars); `report.md`, `report.json`,
//! `report.parquet`, `recall.png`, `r1.png` and each run's loss curve.
use crate::config::ExperimentConfig;
use crate::evaluate::MetricsFile;
use crate::plots;
use anyhow::anyhow;
use dml_artifacts::fsx;
use dml_pipeline::{BoxError, RunContext, Stage};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

/// Collects every run's metrics into one report.
pub struct ReportStage {
    runs: Vec<RunLabel>,
}

impl ReportStage {
    /// A report over `runs`; its inputs are `retrieve/i`, `cluster/i`, `train/i`
    /// (and `baseline_retrieve/i`, `baseline_cluster/i` when a baseline was scored).
    pub fn new(runs: Vec<RunLabel>) -> Self {
        ReportStage { runs }
    }
}

/// The `metrics.json` of an input artifact.
fn read_metrics(dir: &Path) -> Result<MetricsFile, BoxError> {
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
        3
    }
    fn settings(&self) -> Value {
        json!({ "report": { "runs": self.runs } })
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let out = ctx.out_dir().to_path_buf();
        write_report(&out, &self.runs, &StageInputs(ctx))
    }
}

/// Where a report finds its inputs: role (`retrieve/0`, `cluster/0`, `train/0`,
/// `baseline_retrieve/0`, `baseline_cluster/0`) → artifact directory, and the
/// train artifacts' manifest notes.
pub trait ReportInputs {
    /// The artifact directory of a role.
    fn dir(&self, role: &str) -> Result<PathBuf, BoxError>;
    /// The manifest notes of a role's artifact (empty when it has none).
    fn notes(&self, role: &str) -> Value;
}

struct StageInputs<'a, 'b>(&'a RunContext<'b>);

impl ReportInputs for StageInputs<'_, '_> {
    fn dir(&self, role: &str) -> Result<PathBuf, BoxError> {
        Ok(self.0.input(role)?.to_path_buf())
    }
    fn notes(&self, role: &str) -> Value {
        self.0
            .input_manifest(role)
            .map(|m| m.notes.clone())
            .unwrap_or_default()
    }
}

/// Writes a report over `runs` into `out` (`report.md`, `report.json`,
/// `report.parquet`, `recall.png`, `r1.png`, `loss_<i>.png`) from existing
/// artifacts only: the report stage's body, and `dml report` over several runs.
pub fn write_report(
    out: &Path,
    runs: &[RunLabel],
    inputs: &dyn ReportInputs,
) -> Result<(), BoxError> {
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let r = read_metrics(&inputs.dir(&format!("retrieve/{i}"))?)?;
        let c = read_metrics(&inputs.dir(&format!("cluster/{i}"))?)?;
        let train_dir = inputs.dir(&format!("train/{i}"))?;
        let train_notes = inputs.notes(&format!("train/{i}"));
        let recall = r.recall.clone();
        curves.push(plots::RecallCurve {
            label: run.name.clone(),
            points: recall.clone(),
            untrained: false,
        });
        let baseline = if run.baseline {
            let br = read_metrics(&inputs.dir(&format!("baseline_retrieve/{i}"))?)?;
            let bc = read_metrics(&inputs.dir(&format!("baseline_cluster/{i}"))?)?;
            curves.push(plots::RecallCurve {
                label: run.name.clone(),
                points: recall
                    .iter()
                    .filter_map(|&(k, _)| Some((k, br.recall_at(k)?)))
                    .collect(),
                untrained: true,
            });
            Some((or_nan(br.recall_at(1)), or_nan(bc.nmi)))
        } else {
            None
        };
        let loss_png = train_dir.join("loss.png");
        let loss_file = format!("loss_{i}.png");
        if loss_png.exists() {
            fsx::copy(&loss_png, &out.join(&loss_file))?;
        }
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
            "nmi": or_nan(c.nmi),
            "recall": recall.iter().map(|(k, v)| json!({"k": k, "value": v})).collect::<Vec<_>>(),
            "map_at_r": or_nan(r.map_at_r),
            "r_precision": or_nan(r.r_precision),
            "train_seconds": train_notes.get("train_seconds").and_then(Value::as_f64).unwrap_or(f64::NAN),
            "untrained_recall@1": baseline.map(|b| b.0),
            "untrained_nmi": baseline.map(|b| b.1),
            "loss_plot": loss_png.exists().then_some(loss_file),
            // [train.validation]: the kept weights' validation R@1, where and at which step.
            "val_recall_at_1": train_notes.get("val_recall_at_1").and_then(Value::as_f64),
            "validation_on": train_notes.get("validation_on").and_then(Value::as_str),
            "kept_step": train_notes.get("kept_step").and_then(Value::as_u64),
        }));
    }
    let table = build_frame(&rows)?;
    let groups = aggregate(&table)?;
    let md = markdown(&rows, &groups)?;
    fsx::write(&out.join("report.md"), &md)?;
    fsx::write(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json!({ "runs": rows, "groups": frame_to_json(&groups)? }))?,
    )?;
    let mut table = table;
    let file = fsx::create(&out.join("report.parquet"))?;
    ParquetWriter::new(file)
        .finish(&mut table)
        .map_err(|e| anyhow!("writing report.parquet: {e}"))?;
    plots::recall_curves(&out.join("recall.png"), "Recall@K", &curves)?;
    let bars = bar_rows(&groups)?;
    plots::bars(&out.join("r1.png"), "Recall@1 per run", "R@1 (%)", &bars)?;
    Ok(())
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

/// One row per run; recall columns `r@K` for every K any run has.
fn build_frame(rows: &[Value]) -> Result<DataFrame, BoxError> {
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
        Column::new("nmi".into(), f("nmi")),
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
        cols.push(Column::new(format!("r@{k}").into(), v));
    }
    cols.push(Column::new("map@r".into(), f("map_at_r")));
    cols.push(Column::new("r_precision".into(), f("r_precision")));
    cols.push(Column::new("train_seconds".into(), f("train_seconds")));
    cols.push(Column::new("untrained_r@1".into(), f("untrained_recall@1")));
    cols.push(Column::new("untrained_nmi".into(), f("untrained_nmi")));
    cols.push(Column::new("val_r@1".into(), f("val_recall_at_1")));
    Ok(DataFrame::new_infer_height(cols)?)
}

/// Mean and sample std of every metric per group (runs differing only by seed).
fn aggregate(df: &DataFrame) -> Result<DataFrame, BoxError> {
    let metrics: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .filter(|n| {
            n == "nmi"
                || n.starts_with("r@")
                || n == "map@r"
                || n == "r_precision"
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

fn frame_to_json(df: &DataFrame) -> Result<Value, BoxError> {
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

fn bar_rows(groups: &DataFrame) -> Result<Vec<(String, f64, Option<f64>)>, BoxError> {
    let g = frame_to_json(groups)?;
    Ok(g.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["group"].as_str().unwrap_or("").to_string(),
                r["r@1_mean"].as_f64().unwrap_or(0.0),
                r["r@1_std"]
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

/// The seed's table (one row per run), then the per-group mean ± std when a group has several runs.
fn markdown(rows: &[Value], groups: &DataFrame) -> Result<String, BoxError> {
    let ks = all_ks(rows);
    let baseline = rows.iter().any(|r| r["untrained_recall@1"].is_number());
    let mut md = String::new();
    let mut header = vec![
        "run".to_string(),
        "method".into(),
        "normalized".into(),
        "margin".into(),
        "NMI".into(),
    ];
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
    writeln!(md, "| {} |", header.join(" | "))?;
    writeln!(md, "|{}", " --- |".repeat(header.len()))?;
    for r in rows {
        let recall = |k: u64| {
            r["recall"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["k"].as_u64() == Some(k))
                .and_then(|x| x["value"].as_f64())
        };
        let mut cells = vec![
            r["run"].as_str().unwrap_or("").to_string(),
            r["method"].as_str().unwrap_or("").to_string(),
            if r["normalized"].as_bool().unwrap_or(false) {
                "Yes".into()
            } else {
                "No".into()
            },
            r["margin"].as_str().unwrap_or("").to_string(),
            format!("{:.3}", r["nmi"].as_f64().unwrap_or(f64::NAN)),
        ];
        cells.extend(ks.iter().map(|&k| pct(recall(k))));
        cells.push(pct(r["map_at_r"].as_f64()));
        cells.push(pct(r["r_precision"].as_f64()));
        cells.push(r["p"].to_string());
        cells.push(r["k"].to_string());
        cells.push(format!(
            "{:.0}",
            r["train_seconds"].as_f64().unwrap_or(f64::NAN)
        ));
        if baseline {
            cells.push(pct(r["untrained_recall@1"].as_f64()));
            cells.push(match r["untrained_nmi"].as_f64() {
                Some(x) => format!("{x:.3}"),
                None => "—".into(),
            });
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
        writeln!(md, "| {} |", cells.join(" | "))?;
    }
    let g = frame_to_json(groups)?;
    let multi: Vec<&Value> = g
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["runs"].as_f64().unwrap_or(1.0) > 1.0)
        .collect();
    if !multi.is_empty() {
        writeln!(md, "\nMean ± std over seeds:\n")?;
        let mut header = vec!["group".to_string(), "runs".into(), "NMI".into()];
        header.extend(ks.iter().map(|k| format!("R@{k}")));
        header.push("MAP@R".into());
        writeln!(md, "| {} |", header.join(" | "))?;
        writeln!(md, "|{}", " --- |".repeat(header.len()))?;
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
                pm("nmi", 1.0, 3),
            ];
            cells.extend(ks.iter().map(|k| pm(&format!("r@{k}"), 100.0, 2)));
            cells.push(pm("map@r", 100.0, 2));
            writeln!(md, "| {} |", cells.join(" | "))?;
        }
    }
    let plots: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|r| Some((r["run"].as_str()?, r["loss_plot"].as_str()?)))
        .collect();
    if !plots.is_empty() {
        writeln!(
            md,
            "\nPlots: [Recall@K](recall.png), [R@1 per run](r1.png). Loss curves:\n"
        )?;
        for (run, file) in plots {
            writeln!(md, "- [{file}]({file}): {run}")?;
        }
    }
    Ok(md)
}
