//! The typed, validated experiment configuration: one table per stage.
//!
//! Every struct denies unknown fields and fills defaults, so writing a default
//! explicitly changes nothing, and only this resolved form is ever hashed.
use serde::{Deserialize, Serialize};

/// One experiment: a dataset and the settings of every stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    /// Run name (run records and `latest/` links are per name).
    pub name: String,
    /// Which dataset and where.
    pub dataset: DatasetSettings,
    /// The built-in synthetic set (used when `dataset.kind = "synthetic"`).
    pub synthetic: SyntheticSettings,
    /// Index stage.
    pub index: IndexSettings,
    /// P×K planning.
    pub plan: PlanSettings,
    /// Retrieval evaluation.
    pub retrieve: RetrieveSettings,
    /// Clustering evaluation.
    pub cluster: ClusterSettings,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            name: "synthetic".into(),
            dataset: DatasetSettings::default(),
            synthetic: SyntheticSettings::default(),
            index: IndexSettings::default(),
            plan: PlanSettings::default(),
            retrieve: RetrieveSettings::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

/// Dataset kinds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKindName {
    /// The built-in generated set.
    #[default]
    Synthetic,
    /// CUB-200-2011.
    Cub,
    /// Stanford Online Products.
    Sop,
    /// DeepFashion In-shop.
    Inshop,
    /// Cars196.
    Cars196,
    /// A folder per class.
    Folder,
}

/// `[dataset]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSettings {
    /// Which adapter.
    pub kind: DatasetKindName,
    /// The dataset root on disk (not part of any key: the content fingerprint is).
    pub root: String,
    /// Folder datasets: the classes used for training (default: first half of the sorted names).
    pub train_classes: Vec<String>,
}

/// `[synthetic]`: the generator's own typed spec.
pub type SyntheticSettings = dml_datasets::SyntheticSpec;

/// `[index]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IndexSettings {
    /// Leave out images that cannot be read instead of failing (recorded in the manifest).
    pub skip_bad_images: bool,
}

/// `[plan]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSettings {
    /// Classes per batch.
    pub p: u32,
    /// Images per class.
    pub k: u32,
    /// Training steps to plan.
    pub steps: u32,
    /// Seed.
    pub seed: u64,
    /// Tile the class list when there are fewer classes than P (the seed's behaviour).
    pub allow_repeated_classes: bool,
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            p: 20,
            k: 6,
            steps: 1000,
            seed: 0,
            allow_repeated_classes: false,
        }
    }
}

/// `[retrieve]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrieveSettings {
    /// Recall@K cut-offs; empty = the dataset's (CUB 1,2,4,8; SOP 1,10,100,1000; In-shop 1,10,…,50).
    pub ks: Vec<usize>,
    /// `euclidean` (squared distances clamped at 0) or `cosine`.
    pub distance: dml_metrics::Distance,
    /// `auto`, `leave_one_out`, `query_gallery` or `inshop_merged`.
    pub protocol: crate::evaluate::Protocol,
    /// Nearest neighbours saved per query in `neighbors.parquet`.
    pub neighbors: usize,
}

impl Default for RetrieveSettings {
    fn default() -> Self {
        RetrieveSettings {
            ks: Vec::new(),
            distance: dml_metrics::Distance::Euclidean,
            protocol: crate::evaluate::Protocol::Auto,
            neighbors: 10,
        }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// k-means seed (k-means++ seeding, Lloyd iterations until no assignment changes).
    pub seed: u64,
}
