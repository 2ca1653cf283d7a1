//! The evaluation stages: `retrieve` (Recall@K, MAP@R, R-precision and the
//! nearest neighbours) and `cluster` (k-means with k = classes, NMI).
use crate::config::{ClusterSettings, DatasetKindName, RetrieveSettings};
use crate::evaluate::{self, Protocol, Table};
use dml_artifacts::tables;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde_json::json;
use std::sync::Arc;

/// The Ks a dataset is reported at (the literature's).
pub fn default_ks(kind: DatasetKindName) -> Vec<usize> {
    match kind {
        DatasetKindName::Sop => dml_metrics::SOP_KS.to_vec(),
        DatasetKindName::Inshop => dml_metrics::INSHOP_KS.to_vec(),
        _ => dml_metrics::CUB_KS.to_vec(),
    }
}

/// The protocol `Auto` stands for on a dataset.
pub fn resolve_protocol(p: Protocol, kind: DatasetKindName) -> Protocol {
    match (p, kind) {
        (Protocol::Auto, DatasetKindName::Inshop) => Protocol::QueryGallery,
        (Protocol::Auto, _) => Protocol::LeaveOneOut,
        (p, _) => p,
    }
}

fn read_embeddings(ctx: &RunContext<'_>) -> Result<Table, BoxError> {
    let path = ctx.input("embed")?.join("embeddings.arrow");
    Ok(Table::read(&path, "embedding", "class_id", Some("split"))?)
}

fn write_json(path: &std::path::Path, v: &serde_json::Value) -> Result<(), BoxError> {
    std::fs::write(path, serde_json::to_string_pretty(v)?)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// Exact retrieval metrics.
pub struct RetrieveStage {
    settings: RetrieveSettings,
}

impl RetrieveStage {
    /// Resolves the dataset defaults (Ks, protocol) so that the key holds the values used.
    pub fn new(mut settings: RetrieveSettings, kind: DatasetKindName) -> Arc<Self> {
        if settings.ks.is_empty() {
            settings.ks = default_ks(kind);
        }
        settings.protocol = resolve_protocol(settings.protocol, kind);
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
            let nb = dml_metrics::knn(
                &sel.queries,
                &sel.gallery,
                table.dim,
                depth,
                s.distance,
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
            let batch = neighbors_batch(q, rank, n, nb.dist);
            tables::write_parquet(&ctx.out_dir().join("neighbors.parquet"), &batch)?;
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

fn neighbors_batch(
    q: Vec<u32>,
    rank: Vec<u32>,
    n: Vec<u32>,
    d: Vec<f32>,
) -> arrow::array::RecordBatch {
    use arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("query_image_id", DataType::UInt32, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("neighbor_image_id", DataType::UInt32, false),
        Field::new("distance", DataType::Float32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(q)),
        Arc::new(UInt32Array::from(rank)),
        Arc::new(UInt32Array::from(n)),
        Arc::new(Float32Array::from(d)),
    ];
    RecordBatch::try_new(schema, cols).expect("neighbor columns match their schema")
}

/// k-means (k = number of classes) and NMI.
pub struct ClusterStage {
    settings: ClusterSettings,
    protocol: Protocol,
    distance: dml_metrics::Distance,
}

impl ClusterStage {
    /// Clusters the same rows the retrieval protocol scores, under the same distance.
    pub fn new(
        settings: ClusterSettings,
        retrieve: &RetrieveSettings,
        kind: DatasetKindName,
    ) -> Arc<Self> {
        Arc::new(ClusterStage {
            settings,
            protocol: resolve_protocol(retrieve.protocol, kind),
            distance: retrieve.distance,
        })
    }
}

impl Stage for ClusterStage {
    fn name(&self) -> &'static str {
        "cluster"
    }
    fn version(&self) -> u32 {
        // 2: rows are L2-normalised under retrieve.distance = cosine.
        2
    }
    fn settings(&self) -> serde_json::Value {
        json!({
            "cluster": self.settings,
            "retrieve": { "protocol": self.protocol, "distance": self.distance },
        })
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let table = read_embeddings(ctx)?;
        let sel = evaluate::select(&table, self.protocol)?;
        let (metrics, ids, assignments) =
            evaluate::clustering(&sel, table.dim, self.settings.seed, self.distance)?;
        {
            use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
            use arrow::datatypes::{DataType, Field, Schema};
            let schema = Arc::new(Schema::new(vec![
                Field::new("image_id", DataType::UInt32, false),
                Field::new("cluster", DataType::UInt32, false),
            ]));
            let cols: Vec<ArrayRef> = vec![
                Arc::new(UInt32Array::from(ids)),
                Arc::new(UInt32Array::from(assignments)),
            ];
            let batch =
                RecordBatch::try_new(schema, cols).expect("cluster columns match their schema");
            tables::write_parquet(&ctx.out_dir().join("clusters.parquet"), &batch)?;
        }
        let m = evaluate::metrics_json(None, Some(&metrics), Default::default());
        write_json(&ctx.out_dir().join("metrics.json"), &m)?;
        ctx.note("metrics", m);
        Ok(())
    }
}
