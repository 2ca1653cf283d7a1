//! Losses with one trained parameter block per class, as pytorch-metric-learning 2.9.0 computes them: Proxy-Anchor (Kim et al. 2020), Proxy-NCA (Movshovitz-Attias et al. 2017), ArcFace (Deng et al. 2019) and SoftTriple (Qian et al. 2019).
//!
//! Labels here are class *indices* `0..C` (the [`super::LossModule`] maps class ids to them);
//! the parameters keep PML's shapes and names: `proxies` `[C, D]`, ArcFace's `W` `[D, C]`,
//! SoftTriple's `fc` `[D, C·K]`.

use tch::{Kind, Tensor};

use super::distance::{distance_stats, PairMasks};
use super::pml::{cosine, masked_logsumexp, normalize, zero_loss};
use super::{check_batch, LossOutput};
use crate::train::error::{Result, TrainError};

/// Checks that `index` (class indices) lie in `0..classes`.
fn check_indices(name: &'static str, index: &Tensor, classes: i64) -> Result<()> {
    let (lo, hi) = tch::no_grad(|| (index.min().int64_value(&[]), index.max().int64_value(&[])));
    if lo < 0 || hi >= classes {
        return Err(TrainError::InvalidBatch {
            loss: name,
            reason: format!(
                "class index {} outside 0..{classes}",
                if lo < 0 { lo } else { hi }
            ),
        });
    }
    Ok(())
}

/// Fraction of rows whose own class does not score highest in `logits` `[B, C]`.
fn misranked_fraction(logits: &Tensor, index: &Tensor) -> f64 {
    tch::no_grad(|| {
        let top = logits.detach().argmax(1, false);
        let wrong = top.ne_tensor(index).sum(Kind::Int64).int64_value(&[]);
        wrong as f64 / index.size()[0].max(1) as f64
    })
}

fn finish(
    loss: Tensor,
    logits: &Tensor,
    embeddings: &Tensor,
    labels: &Tensor,
    index: &Tensor,
) -> LossOutput {
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &PairMasks::new(labels));
    LossOutput {
        loss,
        active_fraction: misranked_fraction(logits, index),
        mean_pos_dist,
        mean_neg_dist,
    }
}

/// Proxy-Anchor loss, PML's `ProxyAnchorLoss(margin δ, alpha α)`: with S the cosine
/// similarities of the rows to the proxies `[B, C]`,
/// L = 1/|P⁺| Σ_{p∈P⁺} log(1 + Σ_{i: y_i = p} e^{−α(S_ip − δ)}) +
/// 1/C Σ_p log(1 + Σ_{i: y_i ≠ p} e^{α(S_ip + δ)}),
/// with P⁺ the proxies with a row in the batch. `labels` are class ids (for the statistics),
/// `index` their proxy indices. `active_fraction`: rows whose own proxy is not the nearest.
pub fn proxy_anchor(
    embeddings: &Tensor,
    labels: &Tensor,
    index: &Tensor,
    proxies: &Tensor,
    margin: f64,
    alpha: f64,
) -> Result<LossOutput> {
    const NAME: &str = "proxy_anchor";
    check_batch(NAME, embeddings, labels)?;
    let classes = proxies.size()[0];
    check_indices(NAME, index, classes)?;
    let kind = embeddings.kind();
    let proxies = proxies.to_kind(kind);
    let cos = cosine(embeddings, &proxies);
    let pos_mask = index.one_hot(classes).to_kind(Kind::Bool);
    let neg_mask = pos_mask.logical_not();
    let with_pos = pos_mask.any_dim(0, false).sum(Kind::Int64).int64_value(&[]);
    // PML: pos_exp = margin − cos, neg_exp = cos + margin; log-sum-exp over the rows.
    let pos_term = masked_logsumexp(&((-&cos + margin) * alpha), &pos_mask, true, 0);
    let neg_term = masked_logsumexp(&((&cos + margin) * alpha), &neg_mask, true, 0);
    let pos_loss = if with_pos == 0 {
        zero_loss(embeddings)
    } else {
        pos_term.sum(kind) / with_pos as f64
    };
    let neg_loss = neg_term.sum(kind) / classes as f64;
    Ok(finish(pos_loss + neg_loss, &cos, embeddings, labels, index))
}

/// Proxy-NCA, PML's `ProxyNCALoss(softmax_scale s)`: with D the squared Euclidean distances
/// between the L2-normalised rows and proxies (`torch.cdist(…)²`),
/// L_i = −log softmax(−s·D_i)_{y_i}, averaged over the rows whose probability is not 0 in
/// the working precision (PML drops the others; 0 when none is left).
pub fn proxy_nca(
    embeddings: &Tensor,
    labels: &Tensor,
    index: &Tensor,
    proxies: &Tensor,
    softmax_scale: f64,
) -> Result<LossOutput> {
    const NAME: &str = "proxy_nca";
    check_batch(NAME, embeddings, labels)?;
    let classes = proxies.size()[0];
    check_indices(NAME, index, classes)?;
    let kind = embeddings.kind();
    let proxies = proxies.to_kind(kind);
    let d = Tensor::cdist(
        &normalize(embeddings),
        &normalize(&proxies),
        2.0,
        None::<i64>,
    )
    .square();
    let logits = -d * softmax_scale;
    let same = index.one_hot(classes).to_kind(kind);
    let prob = (logits.softmax(1, kind) * same).sum_dim_intlist(1, false, kind);
    let nonzero = prob.ne(0.0);
    let n = nonzero.sum(Kind::Int64).int64_value(&[]);
    let loss = if n == 0 {
        zero_loss(embeddings)
    } else {
        (-prob.masked_select(&nonzero).log()).mean(kind)
    };
    Ok(finish(loss, &logits, embeddings, labels, index))
}

/// ArcFace, PML's `ArcFaceLoss(margin m in degrees, scale s)`: with cos θ_ic the cosine
/// similarities of the rows to the class weights (columns of `w` `[D, C]`), the target
/// logit becomes cos(θ + m) where θ ≤ π − m and cos θ − m·sin m beyond (PML's monotone
/// continuation); L = mean_i CE(s·logits_i, y_i).
pub fn arcface(
    embeddings: &Tensor,
    labels: &Tensor,
    index: &Tensor,
    w: &Tensor,
    margin_degrees: f64,
    scale: f64,
) -> Result<LossOutput> {
    const NAME: &str = "arcface";
    check_batch(NAME, embeddings, labels)?;
    let classes = w.size()[1];
    check_indices(NAME, index, classes)?;
    let kind = embeddings.kind();
    let m = margin_degrees.to_radians();
    let cos = cosine(embeddings, &w.to_kind(kind).tr());
    let mask = index.one_hot(classes).to_kind(kind);
    let target = cos.gather(1, &index.view([-1, 1]), false).squeeze_dim(1);
    let angles = target.clamp(-1.0, 1.0).acos();
    let monotone = angles.le(std::f64::consts::PI - m);
    let modified = (&angles + m)
        .cos()
        .where_self(&monotone, &(angles.cos() - m * m.sin()));
    let diff = (modified - &target).unsqueeze(1);
    let logits = (&cos + mask * diff) * scale;
    let loss = logits.cross_entropy_loss::<Tensor>(index, None, tch::Reduction::Mean, -100, 0.0);
    Ok(finish(loss, &logits, embeddings, labels, index))
}

/// SoftTriple, PML's `SoftTripleLoss(centers_per_class K, la λ, gamma γ, margin δ)`: with
/// S the cosine similarities of the rows to the centres (columns of `fc` `[D, C·K]`), the
/// class similarity is S'_ic = Σ_k softmax_k(S_ick/γ)·S_ick, and
/// L = mean_i CE(λ(S'_i − δ·1[c = y_i]), y_i) + τ·R, where R, the centre regulariser of the
/// paper (PML's `SparseCentersRegularizer`), is Σ_c Σ_{k<k'} √(2 + tiny − 2·min(1, cos(w_ck, w_ck')))
/// / (C·K·(K − 1)).
#[allow(clippy::too_many_arguments)]
pub fn soft_triple(
    embeddings: &Tensor,
    labels: &Tensor,
    index: &Tensor,
    fc: &Tensor,
    centers_per_class: i64,
    la: f64,
    gamma: f64,
    margin: f64,
    tau: f64,
) -> Result<LossOutput> {
    const NAME: &str = "soft_triple";
    check_batch(NAME, embeddings, labels)?;
    let k = centers_per_class;
    let classes = fc.size()[1] / k;
    check_indices(NAME, index, classes)?;
    let kind = embeddings.kind();
    let fc = fc.to_kind(kind);
    let centers = fc.tr();
    let sim = cosine(embeddings, &centers).view([-1, classes, k]);
    let prob = (&sim * (1.0 / gamma)).softmax(2, kind);
    let class_sim = (prob * &sim).sum_dim_intlist(2, false, kind);
    let margins = index.one_hot(classes).to_kind(kind) * margin;
    let logits = (&class_sim - margins) * la;
    let mut loss =
        logits.cross_entropy_loss::<Tensor>(index, None, tch::Reduction::Mean, -100, 0.0);
    if tau > 0.0 {
        loss += centre_regulariser(&centers, classes, k) * tau;
    }
    Ok(finish(loss, &class_sim, embeddings, labels, index))
}

/// PML's `SparseCentersRegularizer` on `centers` `[C·K, D]`.
fn centre_regulariser(centers: &Tensor, classes: i64, k: i64) -> Tensor {
    let kind = centers.kind();
    let sim = cosine(centers, centers);
    let block = Tensor::ones([k, k], (Kind::Bool, centers.device())).triu(1);
    let blocks: Vec<&Tensor> = (0..classes).map(|_| &block).collect();
    let same = Tensor::block_diag(&blocks);
    let pairs = sim.masked_select(&same);
    let tiny = match kind {
        Kind::Double => f64::MIN_POSITIVE,
        _ => f32::MIN_POSITIVE as f64,
    };
    let reg = (-(pairs * 2.0).clamp_max(2.0) + (2.0 + tiny)).sqrt();
    let divisor = 2 * classes * k * (k - 1) / 2;
    reg.sum(kind) / divisor as f64
}
