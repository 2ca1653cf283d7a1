//! Triplet losses: TF contrib's semi-hard mining (with its fallback to the easiest negative) and triplet-reid's batch-hard mining.

use tch::{Kind, Tensor};

use super::distance::{cdist_euclidean, distance_stats, tf_pairwise_distance, PairMasks};
use super::{check_batch, require_pairs, LossOutput, Margin};
use crate::train::error::Result;

/// Semi-hard triplet loss on **squared** TF pairwise distances.
///
/// For every ordered positive pair (a, p): n* is the closest negative that is farther than p
/// (D_an > D_ap); when no such negative exists, TF falls back to the *farthest* (easiest)
/// negative of a. L = mean over positive pairs of max(D_ap − D_an* + m, 0), or
/// softplus(D_ap − D_an*) for [`Margin::Soft`].
///
/// Instead of TF's B²×B tiling, each anchor's negative distances are sorted once and n* is
/// found by binary search (O(B² log B)); gradients flow through the sort to the chosen entry.
/// `active_fraction` counts pairs whose hinge argument is positive (soft: D_ap > D_an*).
pub fn semi_hard_triplet(
    embeddings: &Tensor,
    labels: &Tensor,
    margin: Margin,
) -> Result<LossOutput> {
    const NAME: &str = "semi_hard_triplet";
    check_batch(NAME, embeddings, labels)?;
    let masks = PairMasks::new(labels);
    let n_pos = require_pairs(NAME, &masks)?;
    let kind = embeddings.kind();

    let d = tf_pairwise_distance(embeddings, true);
    // Non-negatives pushed to +inf so they sort last; every row has ≥ 1 negative (checked).
    let d_neg = d.masked_fill(&masks.neg.logical_not(), f64::INFINITY);
    let (sorted, _) = d_neg.sort(1, false);
    let n_neg = masks.neg.sum_dim_intlist(1, true, Kind::Int64);
    // Index of the first negative strictly greater than D_ap.
    let first_greater = d.detach().contiguous().searchsorted(
        &sorted.detach().contiguous(),
        false,
        true,
        "right",
        None::<Tensor>,
    );
    let has_semi_hard = first_greater.lt_tensor(&n_neg);
    let farthest = (&n_neg - 1).expand_as(&first_greater);
    let chosen = first_greater.where_self(&has_semi_hard, &farthest);
    let d_an = sorted.gather(1, &chosen, false);

    let diff = &d - &d_an;
    let (per_pair, active) = match margin {
        Margin::Value(m) => {
            let z = &diff + m;
            (z.relu(), z.gt(0.0))
        }
        Margin::Soft => (diff.softplus(), diff.gt(0.0)),
    };
    let loss = (per_pair * masks.pos.to_kind(kind)).sum(kind) / n_pos as f64;
    let active = active
        .logical_and(&masks.pos)
        .sum(Kind::Int64)
        .int64_value(&[]);
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &masks);
    Ok(LossOutput {
        loss,
        active_fraction: active as f64 / n_pos as f64,
        mean_pos_dist,
        mean_neg_dist,
    })
}

/// Batch-hard triplet loss (Hermans et al. 2017, triplet-reid `batch_hard`) on
/// D = sqrt(Σ(x_i − x_j)² + 1e-12).
///
/// Per anchor: d⁺ = max over its positives (0 when it has none, as triplet-reid's masked
/// product gives), d⁻ = min over its negatives; ℓ = max(d⁺ − d⁻ + m, 0) or softplus(d⁺ − d⁻);
/// L = mean over all anchors. On collapsed embeddings every distance is 1e-6, so L = m
/// (ln 2 when soft). `active_fraction` counts anchors with a positive hinge argument.
pub fn hard_triplet(embeddings: &Tensor, labels: &Tensor, margin: Margin) -> Result<LossOutput> {
    const NAME: &str = "hard_triplet";
    check_batch(NAME, embeddings, labels)?;
    let masks = PairMasks::new(labels);
    require_pairs(NAME, &masks)?;
    let kind = embeddings.kind();

    let d = cdist_euclidean(embeddings);
    let hardest_pos = (&d * masks.pos.to_kind(kind)).amax(1, false);
    let hardest_neg = d
        .masked_fill(&masks.neg.logical_not(), f64::INFINITY)
        .amin(1, false);
    let diff = hardest_pos - hardest_neg;
    let (per_anchor, active) = match margin {
        Margin::Value(m) => {
            let z = &diff + m;
            (z.relu(), z.gt(0.0))
        }
        Margin::Soft => (diff.softplus(), diff.gt(0.0)),
    };
    let loss = per_anchor.mean(kind);
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &masks);
    Ok(LossOutput {
        loss,
        active_fraction: super::distance::fraction(&active),
        mean_pos_dist,
        mean_neg_dist,
    })
}
