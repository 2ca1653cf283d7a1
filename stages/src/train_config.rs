//! The training settings as plain data: backbone, head, loss, optimiser, precision.
//!
//! These types are what the config file, the train key and `model.json` hold. They carry
//! no tensors, so everything that only reads or hashes settings (planning, `--dry-run`,
//! `dml eval`, the report) works without libtorch; `dml-torch` builds the network, the
//! loss and the optimiser from them.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;

/// A setting that cannot work, found before anything is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Results of the checks here.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// Width of the small CNN's pooled features (its last block's channels).
pub const SMALL_CNN_FEATURES: i64 = 256;
/// Width of DenseNet-169's pooled features.
pub const DENSENET169_FEATURES: i64 = 1664;

// ---- the network ----

/// The feature extractor under the embedding head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// Four conv3×3–BN–ReLU–maxpool blocks (32, 64, 128, 256 channels): the CPU default, fast at
    /// 48–64 px. Not a torchvision model; its tensors are `features.{0..3}.{conv,bn}.*`.
    SmallCnn,
    /// torchvision `resnet18` (512 features).
    Resnet18,
    /// torchvision `resnet50` (2048 features).
    Resnet50,
    /// torchvision `densenet169` (1664 features, after its final norm5 + ReLU).
    Densenet169,
    /// torchvision `googlenet` (Inception V1) without auxiliary heads (1024 features).
    InceptionV1,
}

impl Backbone {
    /// Every backbone, in a fixed order.
    pub const ALL: [Backbone; 5] = [
        Backbone::SmallCnn,
        Backbone::Resnet18,
        Backbone::Resnet50,
        Backbone::Densenet169,
        Backbone::InceptionV1,
    ];

    /// The snake_case name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::SmallCnn => "small_cnn",
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet50 => "resnet50",
            Backbone::Densenet169 => "densenet169",
            Backbone::InceptionV1 => "inception_v1",
        }
    }

    /// The torchvision model whose `state_dict` this backbone loads (`None` for the small CNN).
    pub fn torchvision_name(self) -> Option<&'static str> {
        match self {
            Backbone::SmallCnn => None,
            Backbone::Resnet18 => Some("resnet18"),
            Backbone::Resnet50 => Some("resnet50"),
            Backbone::Densenet169 => Some("densenet169"),
            Backbone::InceptionV1 => Some("googlenet"),
        }
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(self) -> i64 {
        match self {
            Backbone::SmallCnn => SMALL_CNN_FEATURES,
            Backbone::Resnet18 => 512,
            Backbone::Resnet50 => 2048,
            Backbone::Densenet169 => DENSENET169_FEATURES,
            Backbone::InceptionV1 => 1024,
        }
    }

    /// The input scaling the backbone's (torchvision) weights expect.
    pub fn input_scaling(self) -> InputScaling {
        input_scaling(self)
    }
}

/// How raw pixel values in 0..=255 are mapped before the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputScaling {
    /// (x/255 − 0.5)·2, into [−1, 1]: Inception V1 (the seed's, and what torchvision's
    /// `googlenet` weights see after their `transform_input`).
    SignedUnit,
    /// x/255: the seed's DenseNet-169 scaling (for its TF checkpoint).
    UnitRange,
    /// (x/255 − mean)/std with torchvision's ImageNet mean and std, per channel (RGB).
    ImagenetMeanStd,
}

/// torchvision's ImageNet channel means (RGB, 0..1 scale).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet channel standard deviations (RGB, 0..1 scale).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

impl InputScaling {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            InputScaling::SignedUnit => "signed_unit",
            InputScaling::UnitRange => "unit_range",
            InputScaling::ImagenetMeanStd => "imagenet_mean_std",
        }
    }

    /// Per-channel (scale, offset) such that scaled = x·scale + offset for x in 0..=255 (RGB).
    pub fn affine(self) -> [(f64, f64); 3] {
        match self {
            InputScaling::SignedUnit => [(2.0 / 255.0, -1.0); 3],
            InputScaling::UnitRange => [(1.0 / 255.0, 0.0); 3],
            InputScaling::ImagenetMeanStd => std::array::from_fn(|c| {
                (
                    1.0 / (255.0 * IMAGENET_STD[c]),
                    -IMAGENET_MEAN[c] / IMAGENET_STD[c],
                )
            }),
        }
    }
}

impl InputScaling {
    /// The same scaling as the batch assembler names it.
    pub fn for_batches(self) -> dml_datasets::InputScaling {
        match self {
            InputScaling::SignedUnit => dml_datasets::InputScaling::Inception,
            InputScaling::UnitRange => dml_datasets::InputScaling::Unit,
            InputScaling::ImagenetMeanStd => dml_datasets::InputScaling::ImagenetMeanStd,
        }
    }
}

/// The scaling each backbone's weights expect: Inception V1 (x/255 − 0.5)·2 as in the seed;
/// ResNet and DenseNet torchvision's ImageNet mean/std, because the weights are torchvision's
/// (the seed's ResNet subtracted the mean only and its DenseNet used x/255, both for its TF
/// checkpoints; `ModelConfig::input_scaling` can select those); the small CNN (x/255 − 0.5)·2.
pub fn input_scaling(backbone: Backbone) -> InputScaling {
    match backbone {
        Backbone::SmallCnn | Backbone::InceptionV1 => InputScaling::SignedUnit,
        Backbone::Resnet18 | Backbone::Resnet50 | Backbone::Densenet169 => {
            InputScaling::ImagenetMeanStd
        }
    }
}

/// The embedding head on the pooled backbone features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// One linear layer (`head.fc.{weight,bias}`).
    Direct,
    /// Linear 1024 (no bias, as slim omits it before a batch norm) + BN + ReLU + linear to the
    /// embedding (orthogonal init, as the seed): `head.fc1.weight`, `head.bn1.*`, `head.fc2.*`.
    #[default]
    Fc1024,
}

impl Head {
    /// The snake_case name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            Head::Direct => "direct",
            Head::Fc1024 => "fc1024",
        }
    }
}

/// Settings of the embedding network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The feature extractor.
    #[serde(default = "default_backbone")]
    pub backbone: Backbone,
    /// The embedding head (the seed's default is `fc1024`).
    #[serde(default)]
    pub head: Head,
    /// Embedding width (128).
    #[serde(default = "default_embedding_dim")]
    pub embedding_dim: i64,
    /// L2-normalise the embeddings (the seed's `*_normalize` heads). Unset: the loss's
    /// recommended setting ([`Loss::normalize_by_default`]), decided by
    /// [`ModelConfig::resolve`] before anything is built or hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// torchvision `state_dict` (safetensors) to initialise the backbone from.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Overrides the backbone's input scaling (see [`Backbone::input_scaling`]).
    #[serde(default)]
    pub input_scaling: Option<InputScaling>,
}

impl ModelConfig {
    /// Whether the embeddings are L2-normalised under `loss`: the setting, or the
    /// loss's recommendation when it is unset.
    pub fn normalizes(&self, loss: &Loss) -> bool {
        self.normalize
            .unwrap_or_else(|| loss.normalize_by_default())
    }

    /// Decides `normalize` for `loss`.
    pub fn resolve(&mut self, loss: &Loss) {
        self.normalize = Some(self.normalizes(loss));
    }
}

fn default_backbone() -> Backbone {
    Backbone::SmallCnn
}
fn default_embedding_dim() -> i64 {
    128
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            backbone: default_backbone(),
            head: Head::default(),
            embedding_dim: default_embedding_dim(),
            normalize: None,
            pretrained: None,
            input_scaling: None,
        }
    }
}

impl ModelConfig {
    /// The input scaling in effect (the override, else the backbone's).
    pub fn input_scaling(&self) -> InputScaling {
        self.input_scaling
            .unwrap_or_else(|| self.backbone.input_scaling())
    }

    /// Checks the settings once, before anything is built.
    pub fn validate(&self) -> Result<()> {
        if self.embedding_dim <= 0 {
            return Err(ConfigError(format!(
                "embedding_dim must be > 0, got {}",
                self.embedding_dim
            )));
        }
        Ok(())
    }
}

// ---- the loss ----

/// A triplet margin: a number (hinge) or `"soft"` (softplus).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Margin {
    /// max(x + m, 0).
    Value(f64),
    /// softplus(x) = ln(1 + eˣ).
    Soft,
}

impl Serialize for Margin {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Margin::Value(m) => s.serialize_f64(*m),
            Margin::Soft => s.serialize_str("soft"),
        }
    }
}

impl<'de> Deserialize<'de> for Margin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Value(f64),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Value(m) => Ok(Margin::Value(m)),
            Repr::Name(name) if name == "soft" => Ok(Margin::Soft),
            Repr::Name(other) => Err(serde::de::Error::custom(format!(
                "margin must be a number or \"soft\", got \"{other}\""
            ))),
        }
    }
}

/// The loss to train with and its parameters; defaults are the seed's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// Semi-hard triplet loss on squared distances (seed: margin 0.2, normalised embeddings).
    SemiHardTriplet {
        /// Hinge margin or soft.
        #[serde(default = "margin_0_2")]
        margin: Margin,
    },
    /// Batch-hard triplet loss (seed: margin 1.0, unnormalised embeddings).
    HardTriplet {
        /// Hinge margin or soft.
        #[serde(default = "margin_1")]
        margin: Margin,
    },
    /// Lifted structured loss (seed: margin 1.0, unnormalised embeddings).
    LiftedStructure {
        /// The margin inside the exponentials.
        #[serde(default = "one")]
        margin: f64,
    },
    /// N-pairs loss on K = 2 batches (unnormalised embeddings).
    Npairs {
        /// λ of the (λ/4)(mean‖a‖² + mean‖p‖²) regulariser (0.002).
        #[serde(default = "npairs_lambda")]
        lambda: f64,
    },
    /// Angular loss on K = 2 batches (normalised embeddings).
    Angular {
        /// α in degrees (45).
        #[serde(default = "alpha_45")]
        alpha_degrees: f64,
        /// λ of the same regulariser as N-pairs (0.002, i.e. 0.0005·(…)).
        #[serde(default = "npairs_lambda")]
        lambda: f64,
    },
    /// The seed's contrastive loss on K = 4 batches (normalised embeddings).
    Contrastive {
        /// Margin for negative pairs (1.0).
        #[serde(default = "one")]
        margin: f64,
    },
    /// Margin loss of Wu et al. 2017 (normalised embeddings).
    Margin(MarginLossConfig),
}

fn margin_0_2() -> Margin {
    Margin::Value(0.2)
}
fn margin_1() -> Margin {
    Margin::Value(1.0)
}
fn one() -> f64 {
    1.0
}
fn npairs_lambda() -> f64 {
    0.002
}
fn alpha_45() -> f64 {
    45.0
}

impl Default for Loss {
    fn default() -> Self {
        Loss::HardTriplet { margin: margin_1() }
    }
}

impl Loss {
    /// The snake_case name used in settings.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::SemiHardTriplet { .. } => "semi_hard_triplet",
            Loss::HardTriplet { .. } => "hard_triplet",
            Loss::LiftedStructure { .. } => "lifted_structure",
            Loss::Npairs { .. } => "npairs",
            Loss::Angular { .. } => "angular",
            Loss::Contrastive { .. } => "contrastive",
            Loss::Margin(_) => "margin",
        }
    }

    /// The loss with the seed's parameters, by name.
    pub fn with_defaults(name: &str) -> Result<Loss> {
        serde_json::from_value(serde_json::json!({ "name": name }))
            .map_err(|e| ConfigError(format!("unknown loss `{name}`: {e}")))
    }

    /// Whether the seed L2-normalises embeddings for this loss (its recommended setting).
    pub fn normalize_by_default(&self) -> bool {
        matches!(
            self,
            Loss::SemiHardTriplet { .. }
                | Loss::Angular { .. }
                | Loss::Contrastive { .. }
                | Loss::Margin(_)
        )
    }

    /// The images per class (K of P×K) the loss's batch layout requires, if any.
    pub fn required_samples_per_class(&self) -> Option<usize> {
        match self {
            Loss::Npairs { .. } | Loss::Angular { .. } => Some(2),
            Loss::Contrastive { .. } => Some(4),
            _ => None,
        }
    }

    /// Checks the parameters once, before anything runs.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(ConfigError(format!("{}: {what}", self.name())));
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        match self {
            Loss::SemiHardTriplet { margin } | Loss::HardTriplet { margin } => match margin {
                Margin::Value(m) if !finite_nonneg(*m) => {
                    bad("margin must be a finite number ≥ 0 or \"soft\"")
                }
                _ => Ok(()),
            },
            Loss::LiftedStructure { margin } | Loss::Contrastive { margin }
                if !finite_nonneg(*margin) =>
            {
                bad("margin must be a finite number ≥ 0")
            }
            Loss::Npairs { lambda } if !finite_nonneg(*lambda) => bad("lambda must be ≥ 0"),
            Loss::Angular {
                alpha_degrees,
                lambda,
            } => {
                if !(alpha_degrees.is_finite() && *alpha_degrees > 0.0 && *alpha_degrees < 90.0) {
                    bad("alpha_degrees must lie in (0, 90)")
                } else if !finite_nonneg(*lambda) {
                    bad("lambda must be ≥ 0")
                } else {
                    Ok(())
                }
            }
            Loss::Margin(cfg) => {
                cfg.beta_len()?;
                if !finite_nonneg(cfg.alpha) || !cfg.beta_init.is_finite() || !finite_nonneg(cfg.nu)
                {
                    return bad("alpha and nu must be ≥ 0 and beta_init finite");
                }
                match cfg.sampling {
                    NegativeSampling::DistanceWeighted {
                        cutoff,
                        nonzero_loss_cutoff,
                    } if !(cutoff > 0.0 && nonzero_loss_cutoff > cutoff) => {
                        bad("distance-weighted sampling needs 0 < cutoff < nonzero_loss_cutoff")
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// Settings of the margin loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarginLossConfig {
    /// α, the margin around the boundary β (0.2).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Initial β (1.2).
    #[serde(default = "default_beta_init")]
    pub beta_init: f64,
    /// Whether β is trained (true) or held at `beta_init`.
    #[serde(default = "default_true")]
    pub learn_beta: bool,
    /// One β for all classes, or one per class.
    #[serde(default)]
    pub beta_scope: BetaScope,
    /// Number of training classes; required when `beta_scope` is `per_class`.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// ν, the weight of the β regulariser (0).
    #[serde(default)]
    pub nu: f64,
    /// How negatives are chosen.
    #[serde(default)]
    pub sampling: NegativeSampling,
}

fn default_alpha() -> f64 {
    0.2
}
fn default_beta_init() -> f64 {
    1.2
}
fn default_true() -> bool {
    true
}

impl Default for MarginLossConfig {
    fn default() -> Self {
        MarginLossConfig {
            alpha: default_alpha(),
            beta_init: default_beta_init(),
            learn_beta: true,
            beta_scope: BetaScope::default(),
            num_classes: None,
            nu: 0.0,
            sampling: NegativeSampling::default(),
        }
    }
}

/// Whether β is shared or per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaScope {
    /// A single β.
    #[default]
    Global,
    /// β indexed by the anchor's class.
    PerClass,
}

/// Negative selection for the margin loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NegativeSampling {
    /// One negative per positive pair, drawn with probability ∝ 1/q(d).
    DistanceWeighted {
        /// Lower clamp on distances before weighting (0.5).
        #[serde(default = "default_cutoff")]
        cutoff: f64,
        /// Negatives at this distance or farther are never drawn (1.4 = α + β₀).
        #[serde(default = "default_nonzero_cutoff")]
        nonzero_loss_cutoff: f64,
    },
    /// Every negative pair of the batch.
    All,
}

fn default_cutoff() -> f64 {
    0.5
}
fn default_nonzero_cutoff() -> f64 {
    1.4
}

impl Default for NegativeSampling {
    fn default() -> Self {
        NegativeSampling::DistanceWeighted {
            cutoff: default_cutoff(),
            nonzero_loss_cutoff: default_nonzero_cutoff(),
        }
    }
}
impl MarginLossConfig {
    /// Number of β values this configuration trains.
    pub fn beta_len(&self) -> Result<i64> {
        match self.beta_scope {
            BetaScope::Global => Ok(1),
            BetaScope::PerClass => match self.num_classes {
                Some(n) if n > 0 => Ok(n as i64),
                _ => Err(ConfigError(
                    "margin loss with beta_scope = per_class needs num_classes > 0".into(),
                )),
            },
        }
    }
}

// ---- the optimiser ----

/// The learning rate the `linear` and `cosine` schedules reach at the end (the seed's 1e-7).
pub const END_LEARNING_RATE: f64 = 1e-7;

/// How the learning rate moves over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The seed's `tf.train.polynomial_decay(base, step, total, 1e-7, power=1)`:
    /// (base − 1e-7)·(1 − min(step, total)/total) + 1e-7. TF evaluates it with the global step
    /// before the update, so step 0 uses `base` and the last update (step total − 1) uses
    /// (base − 1e-7)/total + 1e-7; 1e-7 itself is reached at step = total.
    #[default]
    Linear,
    /// `base` throughout.
    Constant,
    /// 1e-7 + (base − 1e-7)·(1 + cos(π·min(step, total)/total))/2.
    Cosine,
}

impl LrSchedule {
    /// The learning rate for (0-based) `step` of `total`; `total = 0` gives `base`.
    pub fn lr(self, step: u64, total: u64, base: f64) -> f64 {
        if total == 0 {
            return base;
        }
        let progress = step.min(total) as f64 / total as f64;
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Linear => (base - END_LEARNING_RATE) * (1.0 - progress) + END_LEARNING_RATE,
            LrSchedule::Cosine => {
                END_LEARNING_RATE
                    + (base - END_LEARNING_RATE)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Algorithm {
    /// `tf.train.AdamOptimizer`: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²,
    /// θ ← θ − lr·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε).
    Adam {
        /// β₁ (0.9).
        #[serde(default = "beta1")]
        beta1: f64,
        /// β₂ (0.999).
        #[serde(default = "beta2")]
        beta2: f64,
        /// ε (1e-8, TF's default).
        #[serde(default = "epsilon")]
        epsilon: f64,
    },
    /// `tf.train.MomentumOptimizer` (the seed's CUB setting): a ← μa + g, θ ← θ − lr·a
    /// (Nesterov: θ ← θ − lr·(g + μa)).
    Sgd {
        /// μ (0.9).
        #[serde(default = "momentum")]
        momentum: f64,
        /// Nesterov momentum (false).
        #[serde(default)]
        nesterov: bool,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn epsilon() -> f64 {
    1e-8
}
fn momentum() -> f64 {
    0.9
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Adam {
            beta1: beta1(),
            beta2: beta2(),
            epsilon: epsilon(),
        }
    }
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Adam (default) or SGD with momentum.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Base learning rate (the seed's 3e-4).
    #[serde(default = "base_lr")]
    pub learning_rate: f64,
    /// Schedule applied to the base rate (the seed's linear decay).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// L2 weight decay on weight matrices and kernels (0; see the module documentation).
    #[serde(default)]
    pub weight_decay: f64,
    /// Base learning rate for the margin loss's β (same schedule); `None` uses
    /// `learning_rate`. Wu et al. trained β with a larger rate than the network.
    #[serde(default)]
    pub beta_learning_rate: Option<f64>,
}

fn base_lr() -> f64 {
    3e-4
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            algorithm: Algorithm::default(),
            learning_rate: base_lr(),
            schedule: LrSchedule::default(),
            weight_decay: 0.0,
            beta_learning_rate: None,
        }
    }
}

impl OptimConfig {
    /// Checks the settings once.
    pub fn validate(&self) -> Result<()> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let fraction = |x: f64| (0.0..1.0).contains(&x);
        if !positive(self.learning_rate) || !self.beta_learning_rate.is_none_or(positive) {
            return Err(ConfigError("learning rates must be finite and > 0".into()));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError("weight_decay must be ≥ 0".into()));
        }
        match self.algorithm {
            Algorithm::Adam {
                beta1,
                beta2,
                epsilon,
            } if !(fraction(beta1) && fraction(beta2) && positive(epsilon)) => Err(ConfigError(
                "adam needs 0 ≤ beta1, beta2 < 1 and epsilon > 0".into(),
            )),
            Algorithm::Sgd { momentum, .. } if !fraction(momentum) => {
                Err(ConfigError("sgd needs 0 ≤ momentum < 1".into()))
            }
            _ => Ok(()),
        }
    }
}

// ---- the whole ----

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 autocast for the forward pass, on CUDA and on CPUs with native bf16
    /// (AVX512-BF16/AMX; refused elsewhere): convolutions and matrix products in bf16, the
    /// weights, the loss and the optimiser in f32.
    Bf16,
}

/// Everything that shapes a training run except the data and the step count.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The embedding network.
    #[serde(default)]
    pub model: ModelConfig,
    /// The ranking loss.
    #[serde(default)]
    pub loss: Loss,
    /// Optimiser, learning rate and schedule.
    #[serde(default)]
    pub optimizer: OptimConfig,
    /// Forward-pass precision.
    #[serde(default)]
    pub precision: Precision,
    /// On CUDA: cuDNN's deterministic algorithms instead of autotuned ones (slower; the CPU
    /// is deterministic either way). Left out of the serialised form when false, so the
    /// settings of existing runs and checkpoints read the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deterministic: bool,
}

impl TrainConfig {
    /// Checks every part once, before anything runs.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.loss.validate()?;
        self.optimizer.validate()
    }
}
