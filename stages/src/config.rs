//! The typed, validated experiment configuration: one table per stage.
//!
//! Every struct denies unknown fields and fills defaults, so writing a default
//! explicitly changes nothing, and only this resolved form is ever hashed.
use dml_jobspec::evaluate::Protocol;
pub use dml_jobspec::settings::{
    EmbedSettings, Keep, TrainSettings, ValidationSet, ValidationSettings,
};
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
    /// Image sizes: resize once (decode cache), crop for the network.
    pub image: ImageSettings,
    /// Training: network, loss, optimiser, device.
    pub train: TrainSettings,
    /// Embedding the evaluation split(s).
    pub embed: EmbedSettings,
    /// Retrieval evaluation.
    pub retrieve: RetrieveSettings,
    /// Clustering evaluation.
    pub cluster: ClusterSettings,
    /// The report.
    pub report: ReportSettings,
    /// Where stages run: in this process, or as Slurm jobs (never part of a key).
    pub executor: ExecutorSettings,
}

impl ExperimentConfig {
    /// Decides what the user left to the dataset and the loss — `retrieve.ks = []` (the
    /// literature's Ks), `retrieve.protocol = "auto"` and an unset `train.model.normalize`
    /// (the loss's recommendation) — the one place that does. (The device kind is decided
    /// when the DAG is built: it depends on the host, not on the settings.)
    pub fn resolve(mut self) -> ResolvedConfig {
        self.train.model.resolve(&self.train.loss);
        if self.retrieve.ks.is_empty() {
            self.retrieve.ks = default_ks(self.dataset.kind);
        }
        self.retrieve.protocol = resolve_protocol(self.retrieve.protocol, self.dataset.kind);
        ResolvedConfig(self)
    }
}

/// An [`ExperimentConfig`] whose "decide later" settings are decided
/// ([`ExperimentConfig::resolve`]): what the DAG, the stages and the keys read. It
/// serialises as the configuration itself, and deserialising one resolves it (resolving
/// is idempotent), so a resolved configuration can only be made by resolving.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ResolvedConfig(ExperimentConfig);

impl ResolvedConfig {
    /// The configuration, to change and resolve again.
    pub fn into_inner(self) -> ExperimentConfig {
        self.0
    }
}

impl std::ops::Deref for ResolvedConfig {
    type Target = ExperimentConfig;
    fn deref(&self) -> &ExperimentConfig {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ResolvedConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ExperimentConfig::deserialize(d).map(ExperimentConfig::resolve)
    }
}

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

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            name: "synthetic".into(),
            dataset: DatasetSettings::default(),
            synthetic: SyntheticSettings::default(),
            index: IndexSettings::default(),
            plan: PlanSettings::default(),
            image: ImageSettings::default(),
            train: TrainSettings::default(),
            embed: EmbedSettings::default(),
            retrieve: RetrieveSettings::default(),
            report: ReportSettings::default(),
            cluster: ClusterSettings::default(),
            executor: ExecutorSettings::default(),
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
    /// `pk` (P classes × K images, the default) or `random` (uniform batches of
    /// `batch_size` images, for the proxy losses). Part of the key only when `random`.
    #[serde(skip_serializing_if = "is_pk")]
    pub sampler: dml_datasets::Sampler,
    /// Images per batch of the `random` sampler (0: P × K).
    #[serde(skip_serializing_if = "is_zero")]
    pub batch_size: u32,
}

fn is_pk(s: &dml_datasets::Sampler) -> bool {
    *s == dml_datasets::Sampler::Pk
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl PlanSettings {
    /// Images per step: `batch_size` for the random sampler (P × K when unset), P × K otherwise.
    pub fn images_per_step(&self) -> u32 {
        match self.sampler {
            dml_datasets::Sampler::Random if self.batch_size > 0 => self.batch_size,
            _ => self.p.saturating_mul(self.k),
        }
    }
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            p: 20,
            k: 6,
            steps: 1000,
            seed: 0,
            allow_repeated_classes: false,
            sampler: dml_datasets::Sampler::Pk,
            batch_size: 0,
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
    pub protocol: dml_jobspec::evaluate::Protocol,
    /// Nearest neighbours saved per query in `neighbors.parquet`.
    pub neighbors: usize,
    /// Queries whose class has no other gallery item: `exclude` (left out of
    /// Recall@K too, and counted) or `count_as_miss`.
    pub queries_without_positives: dml_jobspec::evaluate::NoPositives,
}

impl Default for RetrieveSettings {
    fn default() -> Self {
        RetrieveSettings {
            ks: Vec::new(),
            distance: dml_metrics::Distance::Euclidean,
            protocol: dml_jobspec::evaluate::Protocol::Auto,
            neighbors: 10,
            queries_without_positives: Default::default(),
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

/// `[image]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// Every image is resized once to `resize`×`resize` (aspect not kept, as the seed) into the decode cache.
    pub resize: u32,
    /// The network sees `crop`×`crop`: a training crop (`train_crop`, + flip) in training,
    /// the centre crop at test time.
    pub crop: u32,
    /// Random horizontal flips in training (off for text, digits, logos). Train key only.
    pub flip: bool,
    /// `random` (a `crop`² window at a random offset, the seed's), `random_resized`
    /// (torchvision's RandomResizedCrop, resized to `crop`²) or `center`. Train key only.
    pub train_crop: dml_datasets::TrainCrop,
    /// Area fraction range of a `random_resized` crop, `[min, max]` in (0, 1].
    pub random_resized_scale: [f64; 2],
    /// Aspect ratio (w/h) range of a `random_resized` crop, `[min, max]`.
    pub random_resized_ratio: [f64; 2],
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            resize: 256,
            crop: 224,
            flip: true,
            train_crop: dml_datasets::TrainCrop::Random,
            random_resized_scale: dml_datasets::batch::DEFAULT_SCALE,
            random_resized_ratio: dml_datasets::batch::DEFAULT_RATIO,
        }
    }
}

impl ImageSettings {
    /// The training augmentation these settings describe.
    pub fn augment_policy(&self) -> dml_datasets::AugmentPolicy {
        dml_datasets::AugmentPolicy {
            crop: self.train_crop,
            flip: self.flip,
            scale: self.random_resized_scale,
            ratio: self.random_resized_ratio,
        }
    }
}

/// `[report]`: the untrained baseline, and what `report.html` shows of each run (all of
/// it part of the report stage's key; no other stage reads it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSettings {
    /// Also embed and score the untrained network, to show what training bought.
    pub untrained_baseline: bool,
    /// Queries drawn at random (seeded by `seed`) whose retrievals are shown.
    pub queries: usize,
    /// The worst queries shown (latest first correct neighbour, then lowest AP).
    pub worst_queries: usize,
    /// Neighbours shown per query (at most `retrieve.neighbors`, the ones saved).
    pub k: usize,
    /// The classes with the lowest Recall@1 shown.
    pub classes: usize,
    /// Thumbnails shown per class.
    pub class_images: usize,
    /// The most-confused class pairs shown.
    pub confused_pairs: usize,
    /// Seed of the random queries.
    pub seed: u64,
    /// Longer side of the thumbnails, in pixels.
    pub thumbnail_px: u32,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            untrained_baseline: true,
            queries: 8,
            worst_queries: 8,
            k: 8,
            classes: 20,
            class_images: 4,
            confused_pairs: 10,
            seed: 0,
            thumbnail_px: 64,
        }
    }
}

/// The most of each that a report shows: what keeps `report.html` small at any scale.
pub const REPORT_LIMITS: ReportLimits = ReportLimits {
    queries: 100,
    k: 50,
    classes: 500,
    class_images: 20,
    confused_pairs: 200,
    thumbnail_px: (16, 256),
};

/// Bounds of the `[report]` counts (see [`REPORT_LIMITS`]).
#[derive(Debug, Clone, Copy)]
pub struct ReportLimits {
    /// `queries` and `worst_queries`.
    pub queries: usize,
    /// `k`.
    pub k: usize,
    /// `classes`.
    pub classes: usize,
    /// `class_images`.
    pub class_images: usize,
    /// `confused_pairs`.
    pub confused_pairs: usize,
    /// `thumbnail_px` (min, max).
    pub thumbnail_px: (u32, u32),
}

/// Which executor runs the stages that must run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// In the `dml run` process (`--jobs` at once).
    #[default]
    Local,
    /// One `sbatch` job per stage, over a store on shared storage.
    Slurm,
}

/// `[executor]`: how stages are run. Read by `dml run` only; no stage reads it,
/// so it is never part of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorSettings {
    /// `local` or `slurm` (`dml run --executor` overrides).
    pub kind: ExecutorKind,
    /// `sbatch --partition` (empty: the cluster's default partition).
    pub partition: String,
    /// GPUs per job for stages that run on CUDA (`--gres=gpu:N`; 0: ask for none).
    pub gpus_per_job: u32,
    /// `sbatch --cpus-per-task` (0: the cluster's default).
    pub cpus_per_task: u32,
    /// `sbatch --mem`, e.g. `"16G"` (empty: the cluster's default).
    pub mem: String,
    /// `sbatch --time`, e.g. `"24:00:00"` (empty: the partition's limit).
    pub time: String,
    /// More `sbatch` arguments, passed as given (e.g. `["--account=lab", "--qos=normal"]`).
    pub extra_args: Vec<String>,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            kind: ExecutorKind::Local,
            partition: String::new(),
            gpus_per_job: 1,
            cpus_per_task: 0,
            mem: String::new(),
            time: String::new(),
            extra_args: Vec::new(),
        }
    }
}
