//! The `cluster` stage: k-means with k = classes on the rows the protocol scores, NMI
//! (`clusters.parquet`).
use crate::config::{ClusterSettings, RetrieveSettings};
use crate::retrieve::{read_embeddings, write_json};
use dml_artifacts::tables;
use dml_jobspec::evaluate::{self, Protocol};
use dml_pipeline::{BoxError, RunContext, Stage};
use serde_json::json;
use std::sync::Arc;

/// k-means (k = number of classes) and NMI.
pub struct ClusterStage {
    settings: ClusterSettings,
    protocol: Protocol,
    distance: dml_metrics::Distance,
}

impl ClusterStage {
    /// Clusters the same rows the (resolved) retrieval protocol scores, under the same
    /// distance.
    pub fn new(settings: ClusterSettings, retrieve: &RetrieveSettings) -> Arc<Self> {
        Arc::new(ClusterStage {
            settings,
            protocol: retrieve.protocol,
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
        tables::write_parquet(
            &ctx.out_dir().join("clusters.parquet"),
            &tables::clusters_to_batch(ids, assignments),
        )?;
        let m = evaluate::metrics_json(None, Some(&metrics), Default::default());
        write_json(&ctx.out_dir().join("metrics.json"), &m)?;
        ctx.note("metrics", m);
        Ok(())
    }
}
