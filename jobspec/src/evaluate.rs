//! Scoring embeddings: the protocols (leave-one-out, query → gallery, the
//! seed's merged In-shop), shared by the `retrieve`/`cluster` stages and `dml eval`.
use dml_artifacts::{tables, StoreError};
use dml_datasets::Split;
use dml_metrics::{ClusteringMetrics, Distance, Exclude, RetrievalMetrics};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Why embeddings could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The embeddings table could not be read, or lacks a column.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The query → gallery protocol on a table without a split column.
    #[error("the query → gallery protocol needs a split column with `query` and `gallery` rows")]
    NoSplitColumn,
    /// The query → gallery protocol on a table without rows of this split.
    #[error(
        "the split column has no `{0}` rows (query → gallery needs both `query` and `gallery`)"
    )]
    NoSplitRows(String),
    /// Nothing to retrieve: `rows` gallery rows, and a query never retrieves itself when
    /// `leave_one_out`.
    #[error(
        "the gallery has no item to retrieve ({rows} rows{}); Recall@K needs at least two rows",
        if *leave_one_out { ", and a query never retrieves itself" } else { "" }
    )]
    EmptyGallery {
        /// Gallery rows.
        rows: usize,
        /// Whether the protocol leaves the query out of its own gallery.
        leave_one_out: bool,
    },
    /// A Recall@K cut-off larger than the gallery.
    #[error(
        "K = {k} is larger than the gallery ({available} items{}); pick Ks up to {available}",
        if *leave_one_out { " other than the query" } else { "" }
    )]
    KTooLarge {
        /// The cut-off.
        k: usize,
        /// The items a query can retrieve.
        available: usize,
        /// Whether the protocol leaves the query out of its own gallery.
        leave_one_out: bool,
    },
    /// A metric refused its input; `what` names it (`retrieval metrics`, `k-means`, `NMI`).
    #[error("{what}")]
    Metrics {
        /// The metric.
        what: &'static str,
        /// Why.
        #[source]
        source: dml_metrics::MetricsError,
    },
    /// A metrics file could not be read (the error names the file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A metrics file is not JSON.
    #[error("parsing {}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Results of scoring.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

fn metric(what: &'static str) -> impl FnOnce(dml_metrics::MetricsError) -> EvalError {
    move |source| EvalError::Metrics { what, source }
}

/// How queries and gallery are drawn from an embeddings table.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// The dataset's standard protocol: query → gallery for In-shop, leave-one-out otherwise.
    #[default]
    Auto,
    /// Every row queries all the others (CUB, SOP, Cars196, synthetic).
    LeaveOneOut,
    /// Rows of split `query` search rows of split `gallery` (In-shop's standard).
    QueryGallery,
    /// The seed's In-shop protocol: query and gallery merged, leave-one-out
    /// (its In-shop numbers are not comparable with the literature's).
    InshopMerged,
}

/// What Recall@K does with a query whose class has no other item in the gallery.
/// MAP@R and R-precision always leave such queries out (they are undefined there).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoPositives {
    /// Left out of every metric and counted (`queries_without_positives`), as
    /// pytorch-metric-learning does.
    #[default]
    Exclude,
    /// Counted as a miss in Recall@K (some papers' convention).
    CountAsMiss,
}

/// An embeddings table in memory.
#[derive(Debug, Clone)]
pub struct Table {
    /// Dimension.
    pub dim: usize,
    /// Row-major values.
    pub values: Vec<f32>,
    /// Labels (class ids).
    pub labels: Vec<u32>,
    /// Split names, if the table has a split column.
    pub splits: Option<Vec<String>>,
    /// Image ids (row numbers when the table has none).
    pub image_ids: Vec<u32>,
}

impl Table {
    /// Reads an Arrow IPC or Parquet file with a list/fixed-size-list float column.
    pub fn read(
        path: &Path,
        embedding_column: &str,
        label_column: &str,
        split_column: Option<&str>,
    ) -> Result<Table> {
        let batch = tables::read_table(path)?;
        let (dim, values) = tables::column_as_matrix(
            tables::column(&batch, embedding_column, path)?,
            embedding_column,
            path,
        )?;
        let labels = tables::column_as_labels(
            tables::column(&batch, label_column, path)?,
            label_column,
            path,
        )?;
        let splits =
            match split_column {
                Some(name) if batch.column_by_name(name).is_some() => Some(
                    tables::column_as_strings(tables::column(&batch, name, path)?, name, path)?,
                ),
                _ => None,
            };
        let image_ids = match batch.column_by_name("image_id") {
            Some(c) => tables::column_as_labels(c, "image_id", path)?,
            None => (0..labels.len() as u32).collect(),
        };
        Ok(Table {
            dim,
            values,
            labels,
            splits,
            image_ids,
        })
    }

    fn rows(&self, idx: &[usize]) -> (Vec<f32>, Vec<u32>, Vec<u32>) {
        let mut v = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            v.extend_from_slice(&self.values[i * self.dim..(i + 1) * self.dim]);
        }
        (
            v,
            idx.iter().map(|&i| self.labels[i]).collect(),
            idx.iter().map(|&i| self.image_ids[i]).collect(),
        )
    }

    fn split_rows(&self, name: &str) -> Result<Vec<usize>> {
        let Some(splits) = &self.splits else {
            return Err(EvalError::NoSplitColumn);
        };
        let rows: Vec<usize> = (0..splits.len()).filter(|&i| splits[i] == name).collect();
        if rows.is_empty() {
            return Err(EvalError::NoSplitRows(name.to_string()));
        }
        Ok(rows)
    }
}

/// Queries and gallery drawn from a table.
pub struct Selection<'a> {
    /// Query rows (borrowed from the table when they are all of it).
    pub queries: Cow<'a, [f32]>,
    /// Query labels.
    pub q_labels: Vec<u32>,
    /// Query image ids.
    pub q_ids: Vec<u32>,
    /// Gallery rows (for leave-one-out, the same slice as the queries, so
    /// that the search sees one matrix).
    pub gallery: Cow<'a, [f32]>,
    /// Gallery labels.
    pub g_labels: Vec<u32>,
    /// Gallery image ids.
    pub g_ids: Vec<u32>,
    /// Leave-one-out or not.
    pub exclude: Exclude,
}

/// Applies a (resolved, not `Auto`) protocol.
pub fn select(table: &Table, protocol: Protocol) -> Result<Selection<'_>> {
    if let Protocol::LeaveOneOut | Protocol::InshopMerged | Protocol::Auto = protocol {
        // Every row against every other: the table's own matrix, not copies.
        return Ok(Selection {
            queries: Cow::Borrowed(&table.values),
            q_labels: table.labels.clone(),
            q_ids: table.image_ids.clone(),
            gallery: Cow::Borrowed(&table.values),
            g_labels: table.labels.clone(),
            g_ids: table.image_ids.clone(),
            exclude: Exclude::SameIndex,
        });
    }
    let (q, g) = (
        table.split_rows(Split::Query.as_str())?,
        table.split_rows(Split::Gallery.as_str())?,
    );
    let (queries, q_labels, q_ids) = table.rows(&q);
    let (gallery, g_labels, g_ids) = table.rows(&g);
    let exclude = Exclude::None;
    Ok(Selection {
        queries: Cow::Owned(queries),
        q_labels,
        q_ids,
        gallery: Cow::Owned(gallery),
        g_labels,
        g_ids,
        exclude,
    })
}

/// Recall@K for each K, MAP@R and R-precision.
pub fn retrieval(
    sel: &Selection,
    dim: usize,
    ks: &[usize],
    distance: Distance,
) -> Result<RetrievalMetrics> {
    let available = sel.g_labels.len() - usize::from(sel.exclude == Exclude::SameIndex);
    let leave_one_out = sel.exclude == Exclude::SameIndex;
    if available == 0 {
        return Err(EvalError::EmptyGallery {
            rows: sel.g_labels.len(),
            leave_one_out,
        });
    }
    if let Some(&k) = ks.iter().find(|&&k| k > available) {
        return Err(EvalError::KTooLarge {
            k,
            available,
            leave_one_out,
        });
    }
    dml_metrics::evaluate_retrieval(
        &sel.queries,
        &sel.gallery,
        &sel.q_labels,
        &sel.g_labels,
        dim,
        ks,
        distance,
        sel.exclude,
    )
    .map_err(metric("retrieval metrics"))
}

/// k-means with k = the number of classes, then NMI, over the distinct rows of
/// the selection (the gallery, plus the queries for query → gallery). Under the
/// cosine distance the rows are L2-normalised first, so that k-means' squared
/// Euclidean distance is a monotone function of the cosine (2 − 2·cos).
pub fn clustering(
    sel: &Selection,
    dim: usize,
    seed: u64,
    distance: Distance,
) -> Result<(ClusteringMetrics, Vec<u32>, Vec<u32>)> {
    let (mut values, labels, ids) = if sel.exclude == Exclude::SameIndex {
        (
            sel.gallery.to_vec(),
            sel.g_labels.clone(),
            sel.g_ids.clone(),
        )
    } else {
        let mut v = sel.queries.to_vec();
        v.extend_from_slice(&sel.gallery);
        let mut l = sel.q_labels.clone();
        l.extend_from_slice(&sel.g_labels);
        let mut i = sel.q_ids.clone();
        i.extend_from_slice(&sel.g_ids);
        (v, l, i)
    };
    if distance == Distance::Cosine {
        for row in values.chunks_mut(dim.max(1)) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
    let mut classes = labels.clone();
    classes.sort_unstable();
    classes.dedup();
    let km = dml_metrics::kmeans(
        &values,
        labels.len(),
        dim,
        classes.len(),
        seed,
        dml_metrics::KMEANS_MAX_ITER,
    )
    .map_err(metric("k-means"))?;
    let nmi = dml_metrics::nmi(&labels, &km.assignments).map_err(metric("NMI"))?;
    let metrics = ClusteringMetrics {
        nmi,
        clusters: classes.len(),
        inertia: km.inertia,
        iterations: km.iterations,
        converged: km.converged,
        seed,
    };
    Ok((metrics, ids, km.assignments))
}

/// How each metric is spelled, the one place that says it: in `metrics.json` (and so in
/// notebooks and `dml eval`) at the top, as fields of the JSON the commands and `report.json`
/// write in [`field`], as `report.parquet`'s columns in [`column`]. In Rust the fields are
/// `recall`, `map_at_r`, `r_precision`, `nmi`.
pub mod names {
    /// Mean average precision at R.
    pub const MAP_AT_R: &str = "map@r";
    /// R-precision.
    pub const R_PRECISION: &str = "r_precision";
    /// Normalised mutual information of the k-means clustering.
    pub const NMI: &str = "nmi";
    /// The prefix of Recall@K (`recall@1`).
    pub const RECALL_PREFIX: &str = "recall@";
    /// The number of queries scored.
    pub const QUERIES: &str = "queries";
    /// The number of gallery items searched.
    pub const GALLERY: &str = "gallery";
    /// The number of queries whose class has no other item in the gallery.
    pub const QUERIES_WITHOUT_POSITIVES: &str = "queries_without_positives";

    /// `recall@K`.
    pub fn recall_at(k: usize) -> String {
        format!("{RECALL_PREFIX}{k}")
    }

    /// The metrics as fields of the JSON that `dml run --json`, `dml runs --json` and
    /// `report.json` write: identifiers (`map_at_r`, `recall_at_1`), so that pandas and jq
    /// reach them as attributes.
    pub mod field {
        /// MAP@R.
        pub const MAP_AT_R: &str = "map_at_r";
        /// R-precision.
        pub const R_PRECISION: &str = super::R_PRECISION;
        /// NMI.
        pub const NMI: &str = super::NMI;

        /// `recall_at_K`.
        pub fn recall_at(k: usize) -> String {
            format!("recall_at_{k}")
        }
    }

    /// The metrics as columns of `report.parquet` (and of the report's tables of groups).
    pub mod column {
        /// MAP@R.
        pub const MAP_AT_R: &str = super::MAP_AT_R;
        /// R-precision.
        pub const R_PRECISION: &str = super::R_PRECISION;
        /// NMI.
        pub const NMI: &str = super::NMI;
        /// The prefix of Recall@K (`r@1`).
        pub const RECALL_PREFIX: &str = "r@";

        /// `r@K`.
        pub fn recall_at(k: usize) -> String {
            format!("{RECALL_PREFIX}{k}")
        }
    }
}

/// The headline metrics of a `metrics.json` (retrieve's, cluster's, or `dml eval --json`'s),
/// read back typed; a metric the file lacks is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsFile {
    /// Recall@K by K, ascending.
    pub recall: Vec<(usize, f64)>,
    /// MAP@R.
    pub map_at_r: Option<f64>,
    /// R-precision.
    pub r_precision: Option<f64>,
    /// NMI.
    pub nmi: Option<f64>,
}

impl MetricsFile {
    /// Reads the metrics of a JSON object.
    pub fn from_json(v: &serde_json::Value) -> Self {
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let mut recall: Vec<(usize, f64)> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, x)| {
                let k: usize = k.strip_prefix(names::RECALL_PREFIX)?.parse().ok()?;
                Some((k, x.as_f64()?))
            })
            .collect();
        recall.sort_by_key(|&(k, _)| k);
        MetricsFile {
            recall,
            map_at_r: num(names::MAP_AT_R),
            r_precision: num(names::R_PRECISION),
            nmi: num(names::NMI),
        }
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = dml_artifacts::fsx::read_to_string(path)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| EvalError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self::from_json(&v))
    }

    /// Recall@`k`, if reported.
    pub fn recall_at(&self, k: usize) -> Option<f64> {
        self.recall.iter().find(|&&(j, _)| j == k).map(|&(_, v)| v)
    }
}

/// The metrics as one JSON object: `recall@K`, `map@r`, `r_precision`,
/// `queries`, `gallery`, `nmi`, … (only those computed). `rule` picks the
/// Recall@K convention for queries without positives (and is recorded).
pub fn metrics_json(
    r: Option<&RetrievalMetrics>,
    c: Option<&ClusteringMetrics>,
    rule: NoPositives,
) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(r) = r {
        let recall = match rule {
            NoPositives::Exclude => &r.recall,
            NoPositives::CountAsMiss => &r.recall_all_queries,
        };
        for (k, v) in recall {
            m.insert(names::recall_at(*k), (*v).into());
        }
        m.insert(names::MAP_AT_R.into(), r.map_at_r.into());
        m.insert(names::R_PRECISION.into(), r.r_precision.into());
        m.insert(names::QUERIES.into(), r.queries.into());
        m.insert(names::GALLERY.into(), r.gallery.into());
        m.insert(
            names::QUERIES_WITHOUT_POSITIVES.into(),
            r.queries_without_positives.into(),
        );
        m.insert("queries_without_positives_rule".into(), json_of(rule));
    }
    if let Some(c) = c {
        m.insert(names::NMI.into(), c.nmi.into());
        m.insert("kmeans_inertia".into(), c.inertia.into());
        m.insert("kmeans_iterations".into(), c.iterations.into());
        m.insert("kmeans_converged".into(), c.converged.into());
        m.insert("clusters".into(), c.clusters.into());
    }
    serde_json::Value::Object(m)
}

fn json_of(rule: NoPositives) -> serde_json::Value {
    serde_json::to_value(rule).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(splits: Option<Vec<&str>>) -> Table {
        Table {
            dim: 1,
            values: vec![0.0, 1.0, 2.0],
            labels: vec![0, 0, 1],
            splits: splits.map(|s| s.into_iter().map(String::from).collect()),
            image_ids: vec![0, 1, 2],
        }
    }

    #[test]
    fn a_k_beyond_the_gallery_names_both() {
        let t = table(None);
        let sel = select(&t, Protocol::LeaveOneOut).unwrap();
        let e = retrieval(&sel, 1, &[1, 5], Distance::Euclidean).unwrap_err();
        assert!(matches!(
            e,
            EvalError::KTooLarge {
                k: 5,
                available: 2,
                leave_one_out: true
            }
        ));
        assert_eq!(
            e.to_string(),
            "K = 5 is larger than the gallery (2 items other than the query); pick Ks up to 2"
        );
    }

    #[test]
    fn query_gallery_needs_both_splits() {
        let e = select(&table(None), Protocol::QueryGallery).err().unwrap();
        assert!(matches!(e, EvalError::NoSplitColumn));
        let t = table(Some(vec!["query", "query", "test"]));
        let e = select(&t, Protocol::QueryGallery).err().unwrap();
        assert_eq!(
            e.to_string(),
            "the split column has no `gallery` rows (query → gallery needs both `query` and `gallery`)"
        );
    }

    #[test]
    fn a_metrics_file_that_is_not_json_names_itself_then_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        std::fs::write(&path, "{").unwrap();
        let e = MetricsFile::read(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("parsing {}", path.display()));
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("EOF"), "{cause}");
    }
}
