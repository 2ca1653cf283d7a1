//! Softmax losses on K = 2 batches (anchors on even rows, positives on odd rows): N-pairs (Sohn 2016, TF contrib `npairs_loss`) and the angular loss (Wang et al. 2017, the seed's `angular_loss`).

use tch::{Kind, Tensor};

use super::distance::{distance_stats, PairMasks};
use super::{check_batch, LossOutput};
use crate::train::error::{Result, TrainError};

/// Splits a K = 2 batch into anchors (rows 0, 2, 4, …), positives (rows 1, 3, 5, …) and the
/// anchors' labels, checking that each row pair shares a label.
fn split_pairs(
    name: &'static str,
    x: &Tensor,
    labels: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let b = x.size()[0];
    if b % 2 != 0 || b < 2 {
        return Err(TrainError::InvalidBatch {
            loss: name,
            reason: format!("needs an even batch of (anchor, positive) rows, got {b} rows"),
        });
    }
    let anchor_labels = labels.slice(0, 0, b, 2);
    let positive_labels = labels.slice(0, 1, b, 2);
    if !anchor_labels.equal(&positive_labels) {
        return Err(TrainError::InvalidBatch {
            loss: name,
            reason: "rows 2i and 2i+1 must share a label (a P×K batch with K = 2)".into(),
        });
    }
    Ok((x.slice(0, 0, b, 2), x.slice(0, 1, b, 2), anchor_labels))
}

/// mean_i CE(softmax(S_i), T_i) with T_ij = [y_i = y_j] / Σ_k [y_i = y_k] (TF's label remapping),
/// plus the fraction of (i, j) with y_i ≠ y_j whose logit reaches the positive logit S_ii.
fn soft_target_cross_entropy(logits: &Tensor, anchor_labels: &Tensor) -> (Tensor, f64) {
    let kind = logits.kind();
    let l = anchor_labels.view([-1, 1]);
    let same = l.eq_tensor(&l.view([1, -1]));
    let targets = same.to_kind(kind);
    let targets = &targets / targets.sum_dim_intlist(1, true, kind);
    let xent = -(targets * logits.log_softmax(1, kind))
        .sum_dim_intlist(1, false, kind)
        .mean(kind);
    let different = same.logical_not();
    let n_diff = different.sum(Kind::Int64).int64_value(&[]);
    let violated = tch::no_grad(|| {
        let positive_logit = logits.diagonal(0, 0, 1).view([-1, 1]);
        logits
            .ge_tensor(&positive_logit)
            .logical_and(&different)
            .sum(Kind::Int64)
            .int64_value(&[])
    });
    let fraction = if n_diff == 0 {
        0.0
    } else {
        violated as f64 / n_diff as f64
    };
    (xent, fraction)
}

/// (λ/4)·(mean‖a‖² + mean‖p‖²), TF contrib's embedding regulariser.
fn l2_regulariser(anchors: &Tensor, positives: &Tensor, lambda: f64) -> Tensor {
    let kind = anchors.kind();
    let mean_sq = |t: &Tensor| t.square().sum_dim_intlist(1, false, kind).mean(kind);
    (mean_sq(anchors) + mean_sq(positives)) * (0.25 * lambda)
}

/// N-pairs loss: S = A·Pᵀ, L = mean_i CE(softmax(S_i), T_i) + (λ/4)(mean‖a‖² + mean‖p‖²).
///
/// `active_fraction`: fraction of (anchor, other-class positive) logits that reach the anchor's
/// own positive logit (softmax losses are never exactly zero).
pub fn npairs(embeddings: &Tensor, labels: &Tensor, lambda: f64) -> Result<LossOutput> {
    const NAME: &str = "npairs";
    check_batch(NAME, embeddings, labels)?;
    let (anchors, positives, anchor_labels) = split_pairs(NAME, embeddings, labels)?;
    let logits = anchors.matmul(&positives.tr());
    let (xent, active_fraction) = soft_target_cross_entropy(&logits, &anchor_labels);
    let loss = xent + l2_regulariser(&anchors, &positives, lambda);
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &PairMasks::new(labels));
    Ok(LossOutput {
        loss,
        active_fraction,
        mean_pos_dist,
        mean_neg_dist,
    })
}

/// Angular loss with t = tan²α: S_ii = 2(1+t)·a_i·p_i, S_ij = 4t·(a_i+p_i)·p_j (i ≠ j);
/// L = mean_i CE(softmax(S_i), T_i) + (λ/4)(mean‖a‖² + mean‖p‖²) (the seed calls it with the
/// regulariser on and λ = 0.002, i.e. 0.0005·(…)). `active_fraction` as for [`npairs`].
pub fn angular(
    embeddings: &Tensor,
    labels: &Tensor,
    alpha_degrees: f64,
    lambda: f64,
) -> Result<LossOutput> {
    const NAME: &str = "angular";
    check_batch(NAME, embeddings, labels)?;
    let (anchors, positives, anchor_labels) = split_pairs(NAME, embeddings, labels)?;
    let kind = embeddings.kind();
    let t = alpha_degrees.to_radians().tan().powi(2);
    let n = anchors.size()[0];
    let eye = Tensor::eye(n, (kind, embeddings.device()));
    let own = anchors.matmul(&positives.tr()) * (2.0 * (1.0 + t));
    let cross = (&anchors + &positives).matmul(&positives.tr()) * (4.0 * t);
    let logits = own * &eye + cross * (-&eye + 1.0);
    let (xent, active_fraction) = soft_target_cross_entropy(&logits, &anchor_labels);
    let loss = xent + l2_regulariser(&anchors, &positives, lambda);
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &PairMasks::new(labels));
    Ok(LossOutput {
        loss,
        active_fraction,
        mean_pos_dist,
        mean_neg_dist,
    })
}
