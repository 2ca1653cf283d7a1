//! The `retrieve` stage: exact Recall@K, MAP@R and R-precision, and each query's nearest
//! neighbours (`neighbors.parquet`).
#[cfg(doc)]
use crate::config::ExperimentConfig;
use crate::config::RetrieveSettings;
use dml_artifacts::tables;
use dml_jobspec::evaluate::{self, Protocol, Table};
use dml_jobspec::roles;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde_json::json;
use std::sync::Arc;

/// The `depth` nearest gallery images of every query of `sel`, in order, as the rows of
/// `neighbors.parquet`: query image id, rank (from 1), neighbour image id, distance.
pub fn neighbours_table(
    sel: &evaluate::Selection<'_>,
    dim: usize,
    depth: usize,
    distance: dml_metrics::Distance,
) -> crate::Result<arrow::array::RecordBatch> {
    let nb = dml_metrics::knn(
        &sel.queries,
        &sel.gallery,
        dim,
        depth,
        distance,
        sel.exclude,
    )?;
    let mut q = Vec::with_capacity(nb.idx.len());
    let mut rank = Vec::with_capacity(nb.idx.len());
    let mut n = Vec::with_capacity(nb.idx.len());
    for (i, chunk) in nb.idx.chunks(depth).enumerate() {
        for (r, &g) in chunk.iter().enumerate() {
            q.push(sel.q_ids[i]);
            rank.push(r as u32 + 1);
            n.push(sel.g_ids[g as usize]);
        }
    }
    Ok(tables::neighbors_to_batch(q, rank, n, nb.dist))
}

/// The embed input's `embeddings.arrow`.
pub(crate) fn read_embeddings(ctx: &RunContext<'_>) -> crate::Result<Table> {
    let path = ctx
        .input(roles::EMBED)
        .map_err(crate::StageError::Engine)?
        .join("embeddings.arrow");
    Ok(Table::read(&path, "embedding", "class_id", Some("split"))?)
}

/// Writes `v` as pretty JSON, naming the file in errors.
pub(crate) fn write_json(path: &std::path::Path, v: &serde_json::Value) -> crate::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(crate::StageError::json(format!(
        "writing {}",
        path.display()
    )))?;
    dml_artifacts::fsx::write(path, text)?;
    Ok(())
}

/// Exact retrieval metrics.
pub struct RetrieveStage {
    settings: RetrieveSettings,
}

impl RetrieveStage {
    /// A retrieve stage on resolved settings ([`ExperimentConfig::resolve`]: the Ks and
    /// the protocol decided), so that the key holds the values used.
    pub fn new(settings: RetrieveSettings) -> Arc<Self> {
        debug_assert!(!settings.ks.is_empty() && settings.protocol != Protocol::Auto);
        Arc::new(RetrieveStage { settings })
    }
}

impl Stage for RetrieveStage {
    fn name(&self) -> &'static str {
        "retrieve"
    }
    fn version(&self) -> u32 {
        // 2: Recall@K leaves out queries without positives (retrieve.queries_without_positives).
        2
    }
    fn settings(&self) -> serde_json::Value {
        json!({ "retrieve": self.settings })
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let s = &self.settings;
        let table = read_embeddings(ctx)?;
        let sel = evaluate::select(&table, s.protocol)?;
        let metrics = evaluate::retrieval(&sel, table.dim, &s.ks, s.distance)?;
        // The nearest neighbours of every query, for notebooks and failure analysis.
        let available =
            sel.g_labels.len() - usize::from(sel.exclude == dml_metrics::Exclude::SameIndex);
        let depth = s.neighbors.min(available);
        if depth > 0 {
            let batch = neighbours_table(&sel, table.dim, depth, s.distance)?;
            tables::write_parquet(&ctx.out_dir().join("neighbors.parquet"), &batch)?;
        }
        if metrics.queries_without_positives > 0 {
            tracing::warn!(
                "{} of the {} test queries have no other image of their class to find (classes with a single test image): {}",
                metrics.queries_without_positives,
                sel.q_labels.len(),
                match s.queries_without_positives {
                    evaluate::NoPositives::Exclude => "they are left out of Recall@K and MAP@R (retrieve.queries_without_positives = \"exclude\")",
                    _ => "they count as misses (retrieve.queries_without_positives)",
                }
            );
        }
        let mut m = evaluate::metrics_json(Some(&metrics), None, s.queries_without_positives);
        if let Some(o) = m.as_object_mut() {
            o.insert("protocol".into(), json!(s.protocol));
            o.insert("distance".into(), json!(s.distance));
        }
        write_json(&ctx.out_dir().join("metrics.json"), &m)?;
        ctx.note("metrics", m);
        Ok(())
    }
}
