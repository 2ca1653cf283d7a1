//! Ranking losses on a batch of embeddings `[B, D]` with int64 labels `[B]`: the seed's six (ports of TF contrib `metric_loss_ops.py`, triplet-reid `loss.py` and the seed's own) plus the margin loss of Wu et al. 2017.
//!
//! Every loss returns a [`LossOutput`]: the scalar loss (with gradient), the fraction of its
//! triplets/pairs that are active (non-zero loss), and the mean Euclidean distance over all
//! positive and all negative pairs of the batch, so that a collapsing embedding shows in logs.

mod contrastive;
mod distance;
mod lifted;
mod margin;
mod softmax_pairs;
mod triplet;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

pub use contrastive::{
    contrastive, pair_rows as contrastive_pair_rows, GROUP_ORDER as CONTRASTIVE_GROUP_ORDER,
};
pub use lifted::lifted_structure;
pub use margin::{margin_loss, BetaScope, MarginLossConfig, NegativeSampling};
pub use softmax_pairs::{angular, npairs};
pub use triplet::{hard_triplet, semi_hard_triplet};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::{nn, Kind, Tensor};

use self::distance::PairMasks;
use super::error::{Result, TrainError};

/// What a loss hands back for one batch.
#[derive(Debug)]
pub struct LossOutput {
    /// Scalar loss, differentiable with respect to the embeddings (and β for the margin loss).
    pub loss: Tensor,
    /// Fraction of the loss's triplets/pairs with non-zero loss (each loss documents its unit).
    pub active_fraction: f64,
    /// Mean Euclidean distance over ordered positive pairs (a ≠ p) of the batch.
    pub mean_pos_dist: f64,
    /// Mean Euclidean distance over negative pairs of the batch.
    pub mean_neg_dist: f64,
}

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
            .map_err(|e| TrainError::Config(format!("unknown loss `{name}`: {e}")))
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
        let bad = |what: &str| Err(TrainError::Config(format!("{}: {what}", self.name())));
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

/// Checks the common shape/dtype contract: embeddings `[B, D]` float, labels `[B]` int64.
pub(crate) fn check_batch(name: &'static str, embeddings: &Tensor, labels: &Tensor) -> Result<()> {
    let fail = |reason: String| Err(TrainError::InvalidBatch { loss: name, reason });
    let es = embeddings.size();
    if es.len() != 2 || es[0] == 0 || es[1] == 0 {
        return fail(format!(
            "embeddings must be a non-empty [B, D] matrix, got {es:?}"
        ));
    }
    if !matches!(embeddings.kind(), Kind::Float | Kind::Double) {
        return fail(format!(
            "embeddings must be f32 or f64, got {:?}",
            embeddings.kind()
        ));
    }
    if labels.size() != [es[0]] {
        return fail(format!(
            "labels must have shape [{}], got {:?}",
            es[0],
            labels.size()
        ));
    }
    if labels.kind() != Kind::Int64 {
        return fail(format!("labels must be int64, got {:?}", labels.kind()));
    }
    if labels.device() != embeddings.device() {
        return fail("labels and embeddings are on different devices".into());
    }
    Ok(())
}

/// Requires at least one positive pair and two classes; returns the number of ordered
/// positive pairs. (TF's masked reductions silently produce NaN or meaningless values on such
/// batches; a P×K sampler with P ≥ 2, K ≥ 2 never makes them.)
pub(crate) fn require_pairs(name: &'static str, masks: &PairMasks) -> Result<i64> {
    let n_pos = masks.num_pos();
    if n_pos == 0 {
        return Err(TrainError::InvalidBatch {
            loss: name,
            reason: "no two rows share a label".into(),
        });
    }
    if masks.num_neg() == 0 {
        return Err(TrainError::InvalidBatch {
            loss: name,
            reason: "all rows share one label".into(),
        });
    }
    Ok(n_pos)
}

/// A configured loss with its trainable state (the margin loss's β) and sampling seed.
#[derive(Debug)]
pub struct LossModule {
    loss: Loss,
    beta: Option<Tensor>,
    seed: u64,
}

impl LossModule {
    /// Validates `loss` and creates its variables under `vs` (the margin loss's `beta`, trainable
    /// unless `learn_beta` is false). `seed` keys the margin loss's sampling stream.
    pub fn new(loss: &Loss, vs: &nn::Path, seed: u64) -> Result<Self> {
        loss.validate()?;
        let beta = match loss {
            Loss::Margin(cfg) => {
                let n = cfg.beta_len()?;
                Some(if cfg.learn_beta {
                    vs.var("beta", &[n], nn::Init::Const(cfg.beta_init))
                } else {
                    let mut beta = vs.zeros_no_train("beta", &[n]);
                    tch::no_grad(|| {
                        let _ = beta.fill_(cfg.beta_init);
                    });
                    beta
                })
            }
            _ => None,
        };
        Ok(LossModule {
            loss: loss.clone(),
            beta,
            seed,
        })
    }

    /// The configured loss.
    pub fn loss(&self) -> &Loss {
        &self.loss
    }

    /// The margin loss's β values, if any.
    pub fn beta(&self) -> Option<&Tensor> {
        self.beta.as_ref()
    }

    /// Computes the loss for one batch. `step` selects the margin loss's sampling stream.
    pub fn forward(&self, embeddings: &Tensor, labels: &Tensor, step: u64) -> Result<LossOutput> {
        match &self.loss {
            Loss::SemiHardTriplet { margin } => semi_hard_triplet(embeddings, labels, *margin),
            Loss::HardTriplet { margin } => hard_triplet(embeddings, labels, *margin),
            Loss::LiftedStructure { margin } => lifted_structure(embeddings, labels, *margin),
            Loss::Npairs { lambda } => npairs(embeddings, labels, *lambda),
            Loss::Angular {
                alpha_degrees,
                lambda,
            } => angular(embeddings, labels, *alpha_degrees, *lambda),
            Loss::Contrastive { margin } => contrastive(embeddings, labels, *margin),
            Loss::Margin(cfg) => {
                let beta = self
                    .beta
                    .as_ref()
                    .ok_or_else(|| TrainError::Config("margin loss built without β".into()))?;
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                rng.set_stream(step);
                margin_loss(embeddings, labels, beta, cfg, &mut rng)
            }
        }
    }
}
