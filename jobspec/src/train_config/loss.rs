//! The loss and its miner (`[train.loss]`), and the margin loss's settings.
use super::base::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    /// Multi-similarity loss (Wang et al. 2019), pytorch-metric-learning's
    /// `MultiSimilarityLoss` on cosine similarities, optionally with its miner and a
    /// cross-batch memory.
    MultiSimilarity {
        /// Weight of positive pairs (2).
        #[serde(default = "ms_alpha")]
        alpha: f64,
        /// Weight of negative pairs (50).
        #[serde(default = "ms_beta")]
        beta: f64,
        /// The similarity offset λ (0.5).
        #[serde(default = "half")]
        base: f64,
        /// Pair mining before the loss (`"multi_similarity"`; none by default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<Miner>,
        /// ε of the multi-similarity miner (0.1).
        #[serde(default = "epsilon_0_1", skip_serializing_if = "is_0_1")]
        miner_epsilon: f64,
        /// Cross-batch memory: embeddings kept from earlier batches (0: off).
        #[serde(default, skip_serializing_if = "is_zero_usize")]
        memory: usize,
        /// Steps trained without the memory before it is used (XBM's warm-up; 0).
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        memory_start_step: u64,
    },
    /// Circle loss (Sun et al. 2020), pytorch-metric-learning's `CircleLoss` on cosine
    /// similarities; the paper's m = 0.25, γ = 256 (PML's defaults are 0.4 and 80).
    Circle {
        /// The relaxation m (0.25).
        #[serde(default = "circle_m")]
        m: f64,
        /// The scale γ (256).
        #[serde(default = "circle_gamma")]
        gamma: f64,
        /// Pair mining before the loss (`"multi_similarity"`; none by default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<Miner>,
        /// ε of the multi-similarity miner (0.1).
        #[serde(default = "epsilon_0_1", skip_serializing_if = "is_0_1")]
        miner_epsilon: f64,
        /// Cross-batch memory: embeddings kept from earlier batches (0: off).
        #[serde(default, skip_serializing_if = "is_zero_usize")]
        memory: usize,
        /// Steps trained without the memory before it is used (0).
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        memory_start_step: u64,
    },
    /// Proxy-Anchor loss (Kim et al. 2020), pytorch-metric-learning's `ProxyAnchorLoss`:
    /// one proxy per training class (`loss.proxies`).
    ProxyAnchor {
        /// δ (0.1).
        #[serde(default = "margin_0_1")]
        margin: f64,
        /// α (32).
        #[serde(default = "alpha_32")]
        alpha: f64,
        /// Learning-rate multiplier of the proxies (1; the paper's recipe uses 100).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
    /// Proxy-NCA (Movshovitz-Attias et al. 2017), pytorch-metric-learning's `ProxyNCALoss`:
    /// softmax over negative squared distances to one proxy per class (`loss.proxies`).
    ProxyNca {
        /// Scale of the distances inside the softmax (1).
        #[serde(default = "one")]
        softmax_scale: f64,
        /// Learning-rate multiplier of the proxies (1).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
    /// ArcFace (Deng et al. 2019), pytorch-metric-learning's `ArcFaceLoss`: class weights
    /// `loss.W` (`[embedding_dim, classes]`).
    Arcface {
        /// Additive angular margin in degrees (28.6, i.e. 0.5 rad).
        #[serde(default = "arcface_margin")]
        margin: f64,
        /// Logit scale s (64).
        #[serde(default = "arcface_scale")]
        scale: f64,
        /// Learning-rate multiplier of the class weights (1).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
    /// SoftTriple (Qian et al. 2019), pytorch-metric-learning's `SoftTripleLoss`: K centres
    /// per class, `loss.fc` (`[embedding_dim, classes·K]`).
    SoftTriple {
        /// Centres per class K (10).
        #[serde(default = "centers_10")]
        centers_per_class: usize,
        /// λ, the scale of the class logits (20).
        #[serde(default = "la_20")]
        la: f64,
        /// γ, the temperature of the soft assignment to centres (0.1).
        #[serde(default = "epsilon_0_1")]
        gamma: f64,
        /// δ, the margin on the true class (0.01).
        #[serde(default = "margin_0_01")]
        margin: f64,
        /// τ, the weight of the paper's centre regulariser (0, as in PML; the paper
        /// uses 0.2). PML's `SparseCentersRegularizer`; needs `centers_per_class` > 1.
        #[serde(default)]
        tau: f64,
        /// Learning-rate multiplier of the centres (1; the paper's recipe uses 100).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
}

/// Pair mining for the pair-based losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Miner {
    /// Multi-similarity mining (Wang et al. 2019, PML's `MultiSimilarityMiner`): keep a
    /// positive less similar than the anchor's most similar negative + ε, and a negative
    /// more similar than its least similar positive − ε.
    MultiSimilarity,
}

fn ms_alpha() -> f64 {
    2.0
}
fn ms_beta() -> f64 {
    50.0
}
fn half() -> f64 {
    0.5
}
fn circle_m() -> f64 {
    0.25
}
fn circle_gamma() -> f64 {
    256.0
}
fn margin_0_1() -> f64 {
    0.1
}
fn alpha_32() -> f64 {
    32.0
}
fn arcface_margin() -> f64 {
    28.6
}
fn arcface_scale() -> f64 {
    64.0
}
fn centers_10() -> usize {
    10
}
fn la_20() -> f64 {
    20.0
}
fn margin_0_01() -> f64 {
    0.01
}

fn margin_0_2() -> Margin {
    Margin::Value(0.2)
}
fn margin_1() -> Margin {
    Margin::Value(1.0)
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
            Loss::MultiSimilarity { .. } => "multi_similarity",
            Loss::Circle { .. } => "circle",
            Loss::ProxyAnchor { .. } => "proxy_anchor",
            Loss::ProxyNca { .. } => "proxy_nca",
            Loss::Arcface { .. } => "arcface",
            Loss::SoftTriple { .. } => "soft_triple",
        }
    }

    /// Whether the loss trains one parameter block per training class (proxies, class
    /// weights, centres): it needs the number of training classes and no P×K layout.
    pub fn has_class_parameters(&self) -> bool {
        matches!(
            self,
            Loss::ProxyAnchor { .. }
                | Loss::ProxyNca { .. }
                | Loss::Arcface { .. }
                | Loss::SoftTriple { .. }
        )
    }

    /// The learning-rate multiplier of the loss's own parameters (1 when it has none).
    pub fn lr_multiplier(&self) -> f64 {
        match self {
            Loss::ProxyAnchor { lr_multiplier, .. }
            | Loss::ProxyNca { lr_multiplier, .. }
            | Loss::Arcface { lr_multiplier, .. }
            | Loss::SoftTriple { lr_multiplier, .. } => *lr_multiplier,
            _ => 1.0,
        }
    }

    /// The cross-batch memory (size, first step it is used at), when on.
    pub fn memory(&self) -> Option<(usize, u64)> {
        match self {
            Loss::MultiSimilarity {
                memory,
                memory_start_step,
                ..
            }
            | Loss::Circle {
                memory,
                memory_start_step,
                ..
            } if *memory > 0 => Some((*memory, *memory_start_step)),
            _ => None,
        }
    }

    /// The pair miner and its ε, when one is set.
    pub fn miner(&self) -> Option<(Miner, f64)> {
        match self {
            Loss::MultiSimilarity {
                miner: Some(m),
                miner_epsilon,
                ..
            }
            | Loss::Circle {
                miner: Some(m),
                miner_epsilon,
                ..
            } => Some((*m, *miner_epsilon)),
            _ => None,
        }
    }

    /// Whether the loss works on any batch (a class may have one image, or none of its
    /// pairs), so that `plan.sampler = "random"` can feed it; the seed's losses need P×K.
    pub fn accepts_random_batches(&self) -> bool {
        self.has_class_parameters()
            || matches!(self, Loss::MultiSimilarity { .. } | Loss::Circle { .. })
    }

    /// The loss with the seed's parameters, by name.
    pub fn with_defaults(name: &str) -> Result<Loss> {
        serde_json::from_value(serde_json::json!({ "name": name }))
            .map_err(|e| ConfigError::new("train.loss.name", format!("unknown loss `{name}`: {e}")))
    }

    /// Whether the seed L2-normalises embeddings for this loss (its recommended setting).
    pub fn normalize_by_default(&self) -> bool {
        matches!(
            self,
            Loss::SemiHardTriplet { .. }
                | Loss::Angular { .. }
                | Loss::Contrastive { .. }
                | Loss::Margin(_)
                | Loss::MultiSimilarity { .. }
                | Loss::Circle { .. }
                | Loss::ProxyAnchor { .. }
                | Loss::ProxyNca { .. }
                | Loss::Arcface { .. }
                | Loss::SoftTriple { .. }
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
        let bad = |what: &str| {
            Err(ConfigError::new(
                "train.loss",
                format!("{}: {what}", self.name()),
            ))
        };
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        let positive = |x: f64| x.is_finite() && x > 0.0;
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
            Loss::MultiSimilarity {
                alpha,
                beta,
                base,
                miner_epsilon,
                ..
            } => {
                if !(positive(*alpha) && positive(*beta) && base.is_finite()) {
                    bad("alpha and beta must be > 0 and base finite")
                } else if !finite_nonneg(*miner_epsilon) {
                    bad("miner_epsilon must be ≥ 0")
                } else {
                    Ok(())
                }
            }
            Loss::Circle {
                m,
                gamma,
                miner_epsilon,
                ..
            } => {
                if !(finite_nonneg(*m) && positive(*gamma)) {
                    bad("m must be ≥ 0 and gamma > 0")
                } else if !finite_nonneg(*miner_epsilon) {
                    bad("miner_epsilon must be ≥ 0")
                } else {
                    Ok(())
                }
            }
            Loss::ProxyAnchor { margin, alpha, .. } => {
                if !(margin.is_finite() && positive(*alpha)) {
                    bad("margin must be finite and alpha > 0")
                } else {
                    Ok(())
                }
            }
            Loss::ProxyNca { softmax_scale, .. } if !positive(*softmax_scale) => {
                bad("softmax_scale must be > 0")
            }
            Loss::Arcface { margin, scale, .. } => {
                if !(finite_nonneg(*margin) && *margin < 180.0 && positive(*scale)) {
                    bad("margin must lie in [0, 180) degrees and scale be > 0")
                } else {
                    Ok(())
                }
            }
            Loss::SoftTriple {
                centers_per_class,
                la,
                gamma,
                margin,
                tau,
                ..
            } => {
                if *centers_per_class == 0 {
                    bad("centers_per_class must be ≥ 1")
                } else if !(positive(*la) && positive(*gamma) && margin.is_finite()) {
                    bad("la and gamma must be > 0 and margin finite")
                } else if !finite_nonneg(*tau) {
                    bad("tau must be ≥ 0")
                } else if *tau > 0.0 && *centers_per_class < 2 {
                    bad("the centre regulariser (tau > 0) needs centers_per_class ≥ 2; set train.loss.tau = 0 or more centres")
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }?;
        if !(self.lr_multiplier().is_finite() && self.lr_multiplier() > 0.0) {
            return Err(ConfigError::new("train.loss.lr_multiplier", format!(
                "train.loss.lr_multiplier = {} must be > 0 (it scales the learning rate of the loss's parameters)",
                self.lr_multiplier()
            )));
        }
        if let Some((memory, _)) = self.memory() {
            if memory > 10_000_000 {
                return bad("memory is larger than 10,000,000 embeddings");
            }
        }
        Ok(())
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
                _ => Err(ConfigError::new(
                    "train.loss.num_classes",
                    "margin loss with beta_scope = per_class needs num_classes > 0",
                )),
            },
        }
    }
}
