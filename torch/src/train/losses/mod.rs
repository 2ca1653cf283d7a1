//! Ranking losses on a batch of embeddings `[B, D]` with int64 labels `[B]`: the seed's six (ports of TF contrib `metric_loss_ops.py`, triplet-reid `loss.py` and the seed's own), the margin loss of Wu et al. 2017, and the modern baselines as pytorch-metric-learning 2.9.0 computes them (multi-similarity with its miner, circle, Proxy-Anchor, Proxy-NCA, ArcFace, SoftTriple; cross-batch memory for the pair losses).
//!
//! The losses with one parameter block per class keep it in the [`LossModule`] under PML's
//! names: `loss.proxies` (`[C, D]`, Proxy-Anchor and Proxy-NCA), `loss.W` (`[D, C]`,
//! ArcFace), `loss.fc` (`[D, C·K]`, SoftTriple), C the number of training classes in
//! ascending class-id order. A cross-batch memory is state of the module too, saved in
//! checkpoints (not in the weights).
//!
//! Every loss returns a [`LossOutput`]: the scalar loss (with gradient), the fraction of its
//! triplets/pairs that are active (non-zero loss), and the mean Euclidean distance over all
//! positive and all negative pairs of the batch, so that a collapsing embedding shows in logs.

mod contrastive;
mod distance;
mod lifted;
mod margin;
mod memory;
mod multi_similarity;
mod pml;
mod proxy;
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
pub use memory::Memory;
pub use multi_similarity::{circle, multi_similarity, PairOptions, Reference};
pub use proxy::{arcface, proxy_anchor, proxy_nca, soft_triple};
pub use softmax_pairs::{angular, npairs};
pub use triplet::{hard_triplet, semi_hard_triplet};

pub use dml_jobspec::train_config::{Loss, Margin, Miner};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::HashMap;
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

/// A configured loss with its trainable state (the margin loss's β, proxies, class weights
/// or centres), its cross-batch memory and its sampling seed.
#[derive(Debug)]
pub struct LossModule {
    loss: Loss,
    beta: Option<Tensor>,
    /// `proxies`, `W` or `fc`.
    params: Option<Tensor>,
    /// The training class ids, ascending: row/column c of the parameters is class `classes[c]`.
    classes: Option<Tensor>,
    memory: Option<RefCell<Memory>>,
    seed: u64,
}

impl LossModule {
    /// Validates `loss` and creates its variables under `vs` (the margin loss's `beta`, trainable
    /// unless `learn_beta` is false). `seed` keys the margin loss's sampling stream. A loss
    /// with class parameters built here has none (for the untrained network; see
    /// [`LossModule::with_classes`]).
    pub fn new(loss: &Loss, vs: &nn::Path, seed: u64) -> Result<Self> {
        Self::with_classes(loss, vs, seed, None, 0)
    }

    /// Like [`LossModule::new`], creating the per-class parameters of the proxy losses for
    /// `classes` (the training class ids) and embeddings of width `dim`, initialised as PML
    /// does from libtorch's generator: Proxy-Anchor's proxies Kaiming-normal (fan-out),
    /// Proxy-NCA's proxies and ArcFace's weights standard normal, SoftTriple's centres
    /// Kaiming-uniform (a = √5).
    pub fn with_classes(
        loss: &Loss,
        vs: &nn::Path,
        seed: u64,
        classes: Option<&[i64]>,
        dim: i64,
    ) -> Result<Self> {
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
        let (params, class_ids) = match classes.filter(|_| loss.has_class_parameters()) {
            Some(ids) => {
                if ids.is_empty() || ids.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(TrainError::Config(format!(
                        "{}: the training classes must be a non-empty ascending list",
                        loss.name()
                    )));
                }
                let c = ids.len() as i64;
                let randn = |stdev: f64| nn::Init::Randn { mean: 0.0, stdev };
                let params = match loss {
                    Loss::ProxyAnchor { .. } => {
                        vs.var("proxies", &[c, dim], randn((2.0 / c as f64).sqrt()))
                    }
                    Loss::ProxyNca { .. } => vs.var("proxies", &[c, dim], randn(1.0)),
                    Loss::Arcface { .. } => vs.var("W", &[dim, c], randn(1.0)),
                    Loss::SoftTriple {
                        centers_per_class, ..
                    } => {
                        let n = c * *centers_per_class as i64;
                        let bound = 1.0 / (n as f64).sqrt();
                        vs.var(
                            "fc",
                            &[dim, n],
                            nn::Init::Uniform {
                                lo: -bound,
                                up: bound,
                            },
                        )
                    }
                    _ => unreachable!("has_class_parameters"),
                };
                let ids = Tensor::from_slice(ids).to_device(vs.device());
                (Some(params), Some(ids))
            }
            None => (None, None),
        };
        let memory = loss
            .memory()
            .map(|(size, start)| RefCell::new(Memory::new(size as i64, start, vs.device())));
        Ok(LossModule {
            loss: loss.clone(),
            beta,
            params,
            classes: class_ids,
            memory,
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

    /// The per-class parameters (`proxies`, `W` or `fc`), if any.
    pub fn class_parameters(&self) -> Option<&Tensor> {
        self.params.as_ref()
    }

    /// The cross-batch memory's state as named tensors (empty without one), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.memory
            .as_ref()
            .map(|m| m.borrow().state_tensors())
            .unwrap_or_default()
    }

    /// Restores [`LossModule::state_tensors`].
    pub(crate) fn load_state(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        match &self.memory {
            Some(m) => m.borrow_mut().load_state(tensors),
            None => Ok(()),
        }
    }

    /// Class indices `0..C` of `labels` (class ids), checking that each is a training class.
    fn class_index(&self, labels: &Tensor) -> Result<(Tensor, &Tensor)> {
        let (Some(classes), Some(params)) = (&self.classes, &self.params) else {
            return Err(TrainError::Config(format!(
                "{} was built without the training classes (the untrained network has no proxies)",
                self.loss.name()
            )));
        };
        let labels = labels.to_device(classes.device());
        let index = labels.searchsorted(classes, false, false, "left", None::<Tensor>);
        let c = classes.size()[0];
        let found = classes.index_select(0, &index.clamp_max(c - 1));
        if !bool::try_from(found.eq_tensor(&labels).all()).unwrap_or(false) {
            let bad = labels
                .masked_select(&found.ne_tensor(&labels))
                .int64_value(&[0]);
            return Err(TrainError::InvalidBatch {
                loss: self.loss.name(),
                reason: format!("class {bad} is not one of the {c} training classes"),
            });
        }
        Ok((index, params))
    }

    /// Computes the loss for one batch. `step` selects the margin loss's sampling stream
    /// and whether the cross-batch memory is in use yet; a step that uses the memory first
    /// enqueues the batch.
    pub fn forward(&self, embeddings: &Tensor, labels: &Tensor, step: u64) -> Result<LossOutput> {
        let pair_options = || PairOptions {
            miner_epsilon: self.loss.miner().map(|(_, eps)| eps),
        };
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
            Loss::MultiSimilarity {
                alpha, beta, base, ..
            } => self.with_memory(embeddings, labels, step, |reference| {
                multi_similarity(
                    embeddings,
                    labels,
                    *alpha,
                    *beta,
                    *base,
                    pair_options(),
                    reference,
                )
            }),
            Loss::Circle { m, gamma, .. } => {
                self.with_memory(embeddings, labels, step, |reference| {
                    circle(embeddings, labels, *m, *gamma, pair_options(), reference)
                })
            }
            Loss::ProxyAnchor { margin, alpha, .. } => {
                let (index, proxies) = self.class_index(labels)?;
                proxy_anchor(embeddings, labels, &index, proxies, *margin, *alpha)
            }
            Loss::ProxyNca { softmax_scale, .. } => {
                let (index, proxies) = self.class_index(labels)?;
                proxy_nca(embeddings, labels, &index, proxies, *softmax_scale)
            }
            Loss::Arcface { margin, scale, .. } => {
                let (index, w) = self.class_index(labels)?;
                arcface(embeddings, labels, &index, w, *margin, *scale)
            }
            Loss::SoftTriple {
                centers_per_class,
                la,
                gamma,
                margin,
                tau,
                ..
            } => {
                let (index, fc) = self.class_index(labels)?;
                soft_triple(
                    embeddings,
                    labels,
                    &index,
                    fc,
                    *centers_per_class as i64,
                    *la,
                    *gamma,
                    *margin,
                    *tau,
                )
            }
        }
    }

    /// Runs `f` against the memory (after enqueueing the batch) once it is in use, else
    /// against the batch alone.
    fn with_memory(
        &self,
        embeddings: &Tensor,
        labels: &Tensor,
        step: u64,
        f: impl FnOnce(Option<&Reference<'_>>) -> Result<LossOutput>,
    ) -> Result<LossOutput> {
        match &self.memory {
            Some(m) if step >= m.borrow().start_step() => {
                let mut m = m.borrow_mut();
                let self_slot = m.enqueue(embeddings, labels)?;
                let (e, l) = m.contents();
                f(Some(&Reference {
                    embeddings: &e,
                    labels: &l,
                    self_slot: &self_slot,
                }))
            }
            _ => f(None),
        }
    }
}
