//! Pairwise distances (TF contrib's numerically guarded form and triplet-reid's `cdist`), label masks and batch statistics shared by the losses.

use tch::{Kind, Tensor};

/// TF contrib `pairwise_distance`: D² = |x_i|² + |x_j|² − 2·x_i·x_j clamped at 0 with a zero
/// diagonal; the non-squared form takes the square root after adding 1e-16 only where D² = 0
/// and multiplies those entries back to 0, so the gradient stays finite when two rows coincide.
pub(crate) fn tf_pairwise_distance(x: &Tensor, squared: bool) -> Tensor {
    let b = x.size()[0];
    let sq = x.square().sum_dim_intlist(1, true, x.kind());
    let d2 = (&sq + sq.tr() - x.matmul(&x.tr()) * 2.0).clamp_min(0.0);
    let zero = d2.le(0.0);
    let offdiag =
        Tensor::ones([b, b], (x.kind(), x.device())) - Tensor::eye(b, (x.kind(), x.device()));
    let d = if squared {
        d2
    } else {
        let keep = zero.logical_not().to_kind(x.kind());
        (d2 + zero.to_kind(x.kind()) * 1e-16).sqrt() * keep
    };
    d * offdiag
}

/// triplet-reid `cdist(..., 'euclidean')`: sqrt(Σ(x_i − x_j)² + 1e-12), from explicit differences.
pub(crate) fn cdist_euclidean(x: &Tensor) -> Tensor {
    let diff = x.unsqueeze(1) - x.unsqueeze(0);
    (diff.square().sum_dim_intlist(-1, false, x.kind()) + 1e-12).sqrt()
}

/// Boolean masks of ordered positive pairs (same label, a ≠ p) and negative pairs.
pub(crate) struct PairMasks {
    pub pos: Tensor,
    pub neg: Tensor,
}

impl PairMasks {
    pub(crate) fn new(labels: &Tensor) -> Self {
        let b = labels.size()[0];
        let l = labels.view([-1, 1]);
        let same = l.eq_tensor(&l.view([1, -1]));
        let eye = Tensor::eye(b, (Kind::Bool, labels.device()));
        let pos = same.logical_and(&eye.logical_not());
        let neg = same.logical_not();
        PairMasks { pos, neg }
    }

    pub(crate) fn num_pos(&self) -> i64 {
        self.pos.sum(Kind::Int64).int64_value(&[])
    }

    pub(crate) fn num_neg(&self) -> i64 {
        self.neg.sum(Kind::Int64).int64_value(&[])
    }
}

/// Mean Euclidean distance over all ordered positive pairs and over all negative pairs of the
/// batch (0 where a batch has none), for monitoring collapse; no gradient.
pub(crate) fn distance_stats(x: &Tensor, masks: &PairMasks) -> (f64, f64) {
    tch::no_grad(|| {
        let d = tf_pairwise_distance(&x.detach().to_kind(Kind::Double), false);
        let mean_over = |m: &Tensor| -> f64 {
            let n = m.sum(Kind::Int64).int64_value(&[]);
            if n == 0 {
                0.0
            } else {
                d.masked_select(m).sum(Kind::Double).double_value(&[]) / n as f64
            }
        };
        (mean_over(&masks.pos), mean_over(&masks.neg))
    })
}

/// Mean of a boolean tensor as a fraction (0 for an empty tensor).
pub(crate) fn fraction(mask: &Tensor) -> f64 {
    let n = mask.numel();
    if n == 0 {
        return 0.0;
    }
    mask.sum(Kind::Int64).int64_value(&[]) as f64 / n as f64
}
