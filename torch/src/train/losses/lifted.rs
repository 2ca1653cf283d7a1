//! Lifted structured loss (Song et al. 2016) as TF contrib's `lifted_struct_loss` computes it.

use tch::{Kind, Tensor};

use super::distance::{distance_stats, tf_pairwise_distance, PairMasks};
use super::{check_batch, require_pairs, LossOutput};
use crate::train::error::Result;

/// Lifted structured loss on Euclidean TF pairwise distances.
///
/// J_ij = log(Σ_{k∈N(i)} e^{m−D_ik} + Σ_{l∈N(j)} e^{m−D_jl}) + D_ij and
/// L = Σ over unordered positive pairs of max(J_ij, 0)² / (2·#unordered pairs), which is TF's
/// 0.25·Σ_ordered / (#ordered / 2). The log-sum-exp is stabilised as TF (and the Caffe layer)
/// do: M_ij = max(max_k∈N(i)(m − D_ik), max_l∈N(j)(m − D_jl)) is subtracted inside and added
/// back; here each row's sum is formed once (O(B²)) and rescaled by e^{max_i − M_ij} instead of
/// TF's B²×B tiling. `active_fraction` counts unordered positive pairs with J_ij > 0.
pub fn lifted_structure(embeddings: &Tensor, labels: &Tensor, margin: f64) -> Result<LossOutput> {
    const NAME: &str = "lifted_structure";
    check_batch(NAME, embeddings, labels)?;
    let masks = PairMasks::new(labels);
    require_pairs(NAME, &masks)?;
    let kind = embeddings.kind();

    let d = tf_pairwise_distance(embeddings, false);
    let not_neg = masks.neg.logical_not();
    let diff = -&d + margin;
    // Every row has a negative (checked), so the masked maxima are finite.
    let row_max = diff
        .detach()
        .masked_fill(&not_neg, f64::NEG_INFINITY)
        .amax(1, true);
    let row_sum = (&diff - &row_max)
        .masked_fill(&not_neg, f64::NEG_INFINITY)
        .exp()
        .sum_dim_intlist(1, true, kind);
    let max_ij = row_max.maximum(&row_max.tr());
    let summed =
        &row_sum * (&row_max - &max_ij).exp() + row_sum.tr() * (row_max.tr() - &max_ij).exp();
    let j = summed.log() + &max_ij + &d;

    let upper = masks.pos.triu(1);
    let n_upper = upper.sum(Kind::Int64).int64_value(&[]);
    let loss = (j.relu().square() * upper.to_kind(kind)).sum(kind) / (2 * n_upper) as f64;
    let active = j
        .gt(0.0)
        .logical_and(&upper)
        .sum(Kind::Int64)
        .int64_value(&[]);
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &masks);
    Ok(LossOutput {
        loss,
        active_fraction: active as f64 / n_upper as f64,
        mean_pos_dist,
        mean_neg_dist,
    })
}
