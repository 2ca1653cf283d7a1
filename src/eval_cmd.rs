//! `dml eval`: score any embeddings file (Arrow IPC or Parquet) without a pipeline.
use anyhow::{bail, Result};
use dml_jobspec::evaluate::{self, names, NoPositives, Protocol, Table};
use dml_metrics::Distance;
use std::path::PathBuf;

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    // Every row queries all the others.
    #[value(alias = "leave_one_out")]
    LeaveOneOut,
    // Rows of split `query` search the rows of split `gallery`.
    #[value(alias = "query_gallery")]
    QueryGallery,
    // The seed's In-shop protocol: query and gallery merged, leave-one-out.
    #[value(alias = "inshop_merged")]
    InshopMerged,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::LeaveOneOut => Protocol::LeaveOneOut,
            ProtocolArg::QueryGallery => Protocol::QueryGallery,
            ProtocolArg::InshopMerged => Protocol::InshopMerged,
        }
    }
}

/// `--queries-without-positives`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NoPositivesArg {
    // Left out of every metric and counted.
    Exclude,
    // Counted as a miss in Recall@K.
    #[value(alias = "count_as_miss")]
    CountAsMiss,
}

impl From<NoPositivesArg> for NoPositives {
    fn from(r: NoPositivesArg) -> NoPositives {
        match r {
            NoPositivesArg::Exclude => NoPositives::Exclude,
            NoPositivesArg::CountAsMiss => NoPositives::CountAsMiss,
        }
    }
}

/// `--distance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DistanceArg {
    // Euclidean (squared distances rank the same).
    Euclidean,
    // Cosine.
    Cosine,
}

impl From<DistanceArg> for Distance {
    fn from(d: DistanceArg) -> Distance {
        match d {
            DistanceArg::Euclidean => Distance::Euclidean,
            DistanceArg::Cosine => Distance::Cosine,
        }
    }
}

/// `--metrics`, spelled as in metrics.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricArg {
    // Recall@K for every K of `--k`.
    Recall,
    // MAP@R, with R-precision (`map_r`, the spelling before metrics had one name
    // everywhere, is read as map@r).
    #[value(name = "map@r", alias = "map_r")]
    MapAtR,
    // NMI of k-means on the embeddings.
    Nmi,
}

/// Arguments of `dml eval`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Files: Parquet (any codec: snappy, zstd, lz4, gzip, brotli) or Arrow IPC (file or stream, \
uncompressed, zstd or lz4), as pyarrow, polars and pandas write them. Embeddings: a list, \
large list or fixed-size list of float32/float64. Labels: integers, strings or a \
categorical (dictionary) column.

Marking queries: for --protocol query-gallery, give every row a split column (default \
`split`, see --split-column) holding `query` or `gallery`; queries search the gallery rows \
only. With leave-one-out every row queries all the others.

Queries whose class has no other item in the gallery are left out of Recall@K, MAP@R and \
R-precision and counted in `queries_without_positives`; --queries-without-positives \
count-as-miss counts them as Recall@K misses instead.

Example:
  dml eval emb.parquet --embedding-column vec --labels-column label \\
      --protocol query-gallery --k 1,10,20 --metrics recall,map@r,nmi --json")]
pub struct EvalArgs {
    /// An Arrow IPC or Parquet file with a list / fixed-size-list float column.
    pub embeddings: PathBuf,
    /// The label column (integers, strings or categorical).
    #[arg(long, default_value = "class_id")]
    pub labels_column: String,
    /// The embedding column.
    #[arg(long, default_value = "embedding")]
    pub embedding_column: String,
    /// The split column: `query` / `gallery` per row, for --protocol query-gallery.
    #[arg(long, default_value = "split")]
    pub split_column: String,
    /// How queries and gallery are drawn.
    #[arg(long, value_enum, default_value_t = ProtocolArg::LeaveOneOut)]
    pub protocol: ProtocolArg,
    /// Recall@K cut-offs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub k: Vec<usize>,
    /// Queries without any positive in the gallery: exclude (and count them) or count-as-miss.
    #[arg(long, value_enum, default_value_t = NoPositivesArg::Exclude)]
    pub queries_without_positives: NoPositivesArg,
    /// What to compute, spelled as in metrics.json (all by default).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "recall,map@r,nmi"
    )]
    pub metrics: Vec<MetricArg>,
    /// The distance queries are ranked by.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DistanceArg::Euclidean)]
    pub distance: DistanceArg,
    /// k-means seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the metrics as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let protocol = Protocol::from(args.protocol);
    let rule = NoPositives::from(args.queries_without_positives);
    let distance = Distance::from(args.distance);
    let want = |m: MetricArg| args.metrics.contains(&m);
    let table = Table::read(
        &args.embeddings,
        &args.embedding_column,
        &args.labels_column,
        Some(&args.split_column),
    )
    .map_err(|e| {
        // A missing column: the flag that names another one.
        let text = format!("{e:#}");
        let flag = [
            (&args.labels_column, "--labels-column"),
            (&args.embedding_column, "--embedding-column"),
            (&args.split_column, "--split-column"),
        ]
        .into_iter()
        .find(|(c, _)| text.contains(&format!("no column `{c}`")));
        match flag {
            Some((_, flag)) => anyhow::anyhow!("{text}; name the column to read with {flag} NAME"),
            None => e.into(),
        }
    })?;
    let sel = evaluate::select(&table, protocol)?;
    let wants_retrieval = want(MetricArg::Recall) || want(MetricArg::MapAtR);
    let retrieval = if wants_retrieval {
        Some(evaluate::retrieval(&sel, table.dim, &args.k, distance)?)
    } else {
        None
    };
    let clustering = if want(MetricArg::Nmi) {
        Some(evaluate::clustering(&sel, table.dim, args.seed, distance)?.0)
    } else {
        None
    };
    let mut out = evaluate::metrics_json(retrieval.as_ref(), clustering.as_ref(), rule);
    if let Some(o) = out.as_object_mut() {
        if !want(MetricArg::Recall) {
            o.retain(|k, _| !k.starts_with(names::RECALL_PREFIX));
        }
        if !want(MetricArg::MapAtR) {
            o.remove(names::MAP_AT_R);
            o.remove(names::R_PRECISION);
        }
        if retrieval.is_none() {
            o.insert(names::QUERIES.into(), sel.q_labels.len().into());
            o.insert(names::GALLERY.into(), sel.g_labels.len().into());
        }
    }
    // Metrics that the data cannot define: said, never printed as if they were scores.
    let mut undefined: Vec<String> = Vec::new();
    let queries = out
        .get(names::QUERIES)
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let without = out
        .get(names::QUERIES_WITHOUT_POSITIVES)
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if wants_retrieval && queries > 0 && without == queries {
        undefined.push(format!(
            "Recall@K and MAP@R are undefined: none of the {queries} queries has another item of its class in the gallery (is `{}` the class label, and does each class have 2 or more rows?)",
            args.labels_column
        ));
    }
    let classes: std::collections::BTreeSet<u32> = sel.q_labels.iter().copied().collect();
    if want(MetricArg::Nmi) && classes.len() < 2 {
        undefined.push(format!(
            "NMI is undefined: the evaluated rows hold {} class(es); its value 1.0 says nothing",
            classes.len()
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{:<28} {}", "protocol", value_name(args.protocol));
        println!("{:<28} {}", "distance", value_name(args.distance));
        for (k, v) in out.as_object().into_iter().flatten() {
            println!("{k:<28} {v}");
        }
    }
    for u in &undefined {
        eprintln!("warning: {u}");
    }
    let asked = usize::from(wants_retrieval) + usize::from(want(MetricArg::Nmi));
    if !undefined.is_empty() && undefined.len() >= asked {
        bail!(
            "no metric asked for is defined on `{}` (see the warnings above)",
            args.embeddings.display()
        );
    }
    Ok(())
}

/// How a flag's value is spelled on the command line.
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}
