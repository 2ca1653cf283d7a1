//! Pair losses on cosine similarities as pytorch-metric-learning 2.9.0 computes them: the multi-similarity loss (Wang et al. 2019) and the circle loss (Sun et al. 2020), each optionally after PML's multi-similarity miner and against a cross-batch memory.

use tch::{Kind, Tensor};

use super::distance::{distance_stats, PairMasks};
use super::pml::{cosine, hard_pair_fraction, masked_logsumexp, zero_loss, Pairs};
use super::{check_batch, LossOutput};
use crate::train::error::Result;

/// The reference rows a pair loss compares the batch with: a cross-batch memory that
/// already holds the batch (PML's `CrossBatchMemory`), with each batch row's slot in it.
pub struct Reference<'a> {
    /// Memory embeddings `[R, D]` (no gradient).
    pub embeddings: &'a Tensor,
    /// Their labels `[R]`.
    pub labels: &'a Tensor,
    /// The slot of each batch row in the memory `[B]`.
    pub self_slot: &'a Tensor,
}

/// Settings shared by the pair losses here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairOptions {
    /// The multi-similarity miner's ε, when mining.
    pub miner_epsilon: Option<f64>,
}

/// Similarities and mined pairs, as PML's `GenericPairLoss` sees them. `None`: PML's
/// "no pairs" case (at most one positive and one negative pair), a zero loss.
fn similarities_and_pairs(
    embeddings: &Tensor,
    labels: &Tensor,
    reference: Option<&Reference<'_>>,
    options: PairOptions,
) -> (Tensor, Pairs, Option<Pairs>) {
    let (sim, pairs, self_slot) = match reference {
        None => (cosine(embeddings, embeddings), Pairs::within(labels), None),
        Some(r) => (
            cosine(embeddings, &r.embeddings.to_kind(embeddings.kind())),
            Pairs::against(labels, r.labels),
            Some(r.self_slot),
        ),
    };
    let mined = match options.miner_epsilon {
        Some(eps) => pairs.mine_multi_similarity(&sim, eps),
        None => Pairs {
            pos: pairs.pos.shallow_clone(),
            neg: pairs.neg.shallow_clone(),
        },
    };
    let (pairs, mined) = match self_slot {
        Some(slot) => (pairs.without_self(slot), mined.without_self(slot)),
        None => (pairs, mined),
    };
    let (n_pos, n_neg) = mined.counts();
    // PML: `if all(len(x) <= 1 for x in indices_tuple): return self.zero_losses()`.
    let mined = (n_pos > 1 || n_neg > 1).then_some(mined);
    (sim, pairs, mined)
}

fn output(
    loss: Tensor,
    sim: &Tensor,
    pairs: &Pairs,
    embeddings: &Tensor,
    labels: &Tensor,
) -> LossOutput {
    let active_fraction = hard_pair_fraction(sim, pairs);
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &PairMasks::new(labels));
    LossOutput {
        loss,
        active_fraction,
        mean_pos_dist,
        mean_neg_dist,
    }
}

/// Multi-similarity loss, PML's `MultiSimilarityLoss(alpha, beta, base)`: on cosine
/// similarities S (of the L2-normalised rows),
/// L_i = (1/α)·log(1 + Σ_{p∈P_i} e^{−α(S_ip − λ)}) + (1/β)·log(1 + Σ_{n∈N_i} e^{β(S_in − λ)}),
/// averaged over all rows of the batch (a row without pairs counts 0). P_i and N_i are all
/// positives and negatives, or those the miner keeps; against a memory, the memory's rows
/// (without the row's own slot). `active_fraction`: the fraction of pairs out of order.
pub fn multi_similarity(
    embeddings: &Tensor,
    labels: &Tensor,
    alpha: f64,
    beta: f64,
    base: f64,
    options: PairOptions,
    reference: Option<&Reference<'_>>,
) -> Result<LossOutput> {
    check_batch("multi_similarity", embeddings, labels)?;
    let (sim, pairs, mined) = similarities_and_pairs(embeddings, labels, reference, options);
    let loss = match mined {
        None => zero_loss(embeddings),
        Some(m) => {
            let kind = embeddings.kind();
            // PML: pos_exp = base − S, neg_exp = S − base (inverted distance).
            let pos = masked_logsumexp(&((-&sim + base) * alpha), &m.pos, true, 1) / alpha;
            let neg = masked_logsumexp(&((&sim - base) * beta), &m.neg, true, 1) / beta;
            (pos + neg).mean(kind)
        }
    };
    Ok(output(loss, &sim, &pairs, embeddings, labels))
}

/// Circle loss, PML's `CircleLoss(m, gamma)`: with O_p = 1 + m, O_n = −m, Δ_p = 1 − m,
/// Δ_n = m, the logits are −γ·[O_p − S_p]₊·(S_p − Δ_p) for positives and
/// γ·[S_n − O_n]₊·(S_n − Δ_n) for negatives (the brackets without gradient), and
/// L_i = softplus(lse_p + lse_n) for rows with a positive and a negative; the mean is over
/// the rows whose loss is non-zero (PML's `AvgNonZeroReducer`), 0 when there are none.
pub fn circle(
    embeddings: &Tensor,
    labels: &Tensor,
    m: f64,
    gamma: f64,
    options: PairOptions,
    reference: Option<&Reference<'_>>,
) -> Result<LossOutput> {
    check_batch("circle", embeddings, labels)?;
    let (sim, pairs, mined) = similarities_and_pairs(embeddings, labels, reference, options);
    let loss = match mined {
        None => zero_loss(embeddings),
        Some(mp) => {
            let kind = embeddings.kind();
            let detached = sim.detach();
            let pos_logits = (-(-&detached + (1.0 + m)).relu() * gamma) * (&sim - (1.0 - m));
            let neg_logits = ((&detached + m).relu() * gamma) * (&sim - m);
            let zeros = sim.zeros_like();
            let new_mat = zeros
                .where_self(&mp.pos.logical_not(), &pos_logits)
                .where_self(&mp.neg.logical_not(), &neg_logits);
            let lse_pos = masked_logsumexp(&new_mat, &mp.pos, false, 1);
            let lse_neg = masked_logsumexp(&new_mat, &mp.neg, false, 1);
            let losses = (lse_pos + lse_neg).softplus().squeeze_dim(1);
            let has_both = mp
                .pos
                .any_dim(1, false)
                .logical_and(&mp.neg.any_dim(1, false));
            let losses = losses * has_both.to_kind(kind);
            let nonzero = losses.gt(0.0);
            let n = nonzero.sum(Kind::Int64).int64_value(&[]);
            if n == 0 {
                zero_loss(embeddings)
            } else {
                losses.masked_select(&nonzero).mean(kind)
            }
        }
    };
    Ok(output(loss, &sim, &pairs, embeddings, labels))
}
