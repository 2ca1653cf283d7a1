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

pub use dml_stages::train_config::{Loss, Margin};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
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
