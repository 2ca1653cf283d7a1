//! Building blocks shared by the losses that follow pytorch-metric-learning (PML 2.9.0): its
//! normalisation, cosine similarity, masked log-sum-exp, zero loss, and the pairs of a batch
//! against itself or against a cross-batch memory.
//!
//! They reproduce PML's arithmetic step by step (the same operations in the same order), so
//! that values and gradients agree with PML's to rounding.

use tch::{Kind, Tensor};

/// `torch.nn.functional.normalize(x, p=2, dim=1)`: x / max(‖x‖, 1e-12).
pub(crate) fn normalize(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2.0, [1], true)
        .clamp_min(1e-12)
        .expand_as(x);
    x / norm
}

/// PML's `CosineSimilarity()(query, reference)`: both normalised, then `q·rᵀ`.
pub(crate) fn cosine(query: &Tensor, reference: &Tensor) -> Tensor {
    normalize(query).matmul(&normalize(reference).tr())
}

/// The most negative finite value of `kind` (PML's `neg_inf`, `torch.finfo(dtype).min`).
pub(crate) fn neg_inf(kind: Kind) -> f64 {
    match kind {
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// PML's `lmu.logsumexp(x, keep_mask, add_one, dim)` on a 2-D `x`: entries outside `keep`
/// are replaced by `finfo.min`, a zero is appended along `dim` when `add_one`, and rows
/// (columns, for `dim = 0`) without a kept entry give 0. Keeps the reduced dimension.
pub(crate) fn masked_logsumexp(x: &Tensor, keep: &Tensor, add_one: bool, dim: i64) -> Tensor {
    let x = x.masked_fill(&keep.logical_not(), neg_inf(x.kind()));
    let x = if add_one {
        let mut shape = x.size();
        shape[dim as usize] = 1;
        let zeros = Tensor::zeros(&shape, (x.kind(), x.device()));
        Tensor::cat(&[x, zeros], dim)
    } else {
        x
    };
    let out = x.logsumexp([dim], true);
    let none = keep.any_dim(dim, true).logical_not();
    out.masked_fill(&none, 0.0)
}

/// PML's zero loss, `sum(embeddings·0)`: 0 with a (zero) gradient.
pub(crate) fn zero_loss(embeddings: &Tensor) -> Tensor {
    (embeddings * 0.0).sum(embeddings.kind())
}

/// The pairs a pair-based loss sees: `[B, R]` boolean masks of the batch's rows (anchors)
/// against the reference rows (the batch itself, or a cross-batch memory).
pub(crate) struct Pairs {
    /// Same label (never a row with itself).
    pub pos: Tensor,
    /// Different label.
    pub neg: Tensor,
}

impl Pairs {
    /// The batch against itself: PML's `get_all_pairs_indices(labels)`.
    pub(crate) fn within(labels: &Tensor) -> Pairs {
        let b = labels.size()[0];
        let l = labels.view([-1, 1]);
        let same = l.eq_tensor(&l.view([1, -1]));
        let eye = Tensor::eye(b, (Kind::Bool, labels.device()));
        Pairs {
            pos: same.logical_and(&eye.logical_not()),
            neg: same.logical_not(),
        }
    }

    /// The batch against reference labels: PML's `get_all_pairs_indices(labels, ref_labels)`,
    /// where a row's own slot in the reference still counts as a positive (PML removes
    /// it only after mining: [`Pairs::without_self`]).
    pub(crate) fn against(labels: &Tensor, ref_labels: &Tensor) -> Pairs {
        let same = labels.view([-1, 1]).eq_tensor(&ref_labels.view([1, -1]));
        Pairs {
            neg: same.logical_not(),
            pos: same,
        }
    }

    /// Drops positives (i, self_slot[i]): PML's `remove_self_comparisons`.
    pub(crate) fn without_self(self, self_slot: &Tensor) -> Pairs {
        let r = self.pos.size()[1];
        let own = self_slot
            .view([-1, 1])
            .eq_tensor(&Tensor::arange(r, (Kind::Int64, self_slot.device())).view([1, -1]));
        Pairs {
            pos: self.pos.logical_and(&own.logical_not()),
            neg: self.neg,
        }
    }

    /// Number of positive and negative pairs.
    pub(crate) fn counts(&self) -> (i64, i64) {
        (
            self.pos.sum(Kind::Int64).int64_value(&[]),
            self.neg.sum(Kind::Int64).int64_value(&[]),
        )
    }

    /// PML's `MultiSimilarityMiner` on the similarity matrix `sim` (no gradient): a positive
    /// (i, j) is kept when S_ij − ε < max over i's negatives, a negative when S_ij + ε > min
    /// over i's positives. With no positive pair or no negative pair in the whole batch,
    /// nothing is kept.
    pub(crate) fn mine_multi_similarity(&self, sim: &Tensor, epsilon: f64) -> Pairs {
        tch::no_grad(|| {
            let (n_pos, n_neg) = self.counts();
            if n_pos == 0 || n_neg == 0 {
                let none = self.pos.zeros_like();
                return Pairs {
                    pos: none.shallow_clone(),
                    neg: none,
                };
            }
            let sim = sim.detach();
            let kind = sim.kind();
            let max = -neg_inf(kind);
            // Non-negatives to −max, non-positives to +max, as PML's sorting masks.
            let hardest_neg = sim
                .masked_fill(&self.neg.logical_not(), -max)
                .amax([1], true);
            let easiest_pos = sim
                .masked_fill(&self.pos.logical_not(), max)
                .amin([1], true);
            let pos = self
                .pos
                .logical_and(&(&sim - epsilon).lt_tensor(&hardest_neg));
            let neg = self
                .neg
                .logical_and(&(&sim + epsilon).gt_tensor(&easiest_pos));
            Pairs { pos, neg }
        })
    }
}

/// Fraction of pairs that are out of order for their anchor: a positive less similar than
/// the anchor's most similar negative, or a negative more similar than its least similar
/// positive (the pairs a miner with ε = 0 keeps). 0 when there are none.
pub(crate) fn hard_pair_fraction(sim: &Tensor, pairs: &Pairs) -> f64 {
    let (n_pos, n_neg) = pairs.counts();
    if n_pos + n_neg == 0 {
        return 0.0;
    }
    let hard = pairs.mine_multi_similarity(sim, 0.0).counts();
    (hard.0 + hard.1) as f64 / (n_pos + n_neg) as f64
}
