//! Margin loss with learnable β and distance-weighted negative sampling (Wu et al. 2017, "Sampling Matters in Deep Embedding Learning").
//!
//! What is implemented, following the authors' MXNet code (`chaoyuaw/sampling_matters`):
//! - pairs: every ordered positive pair (a, p); negatives either all negative pairs or, by
//!   default, one negative per positive pair drawn by distance-weighted sampling;
//! - D = sqrt(‖x_a − x_b‖² + 1e-8); ℓ⁺ = max(D_ap − β_a + α, 0), ℓ⁻ = max(β_a − D_an + α, 0);
//! - L = (Σℓ⁺ + Σℓ⁻ + ν·Σ_{positive pairs} β_a) / #(non-zero terms) (1 when none are);
//! - β: one global value or one per class (indexed by the anchor's label, which must then lie
//!   in 0..num_classes), initialised to 1.2 and trained by the optimiser like any weight;
//! - sampling: q(d) ∝ d^{2−n}·(1 − d²/4)^{−(n−3)/2} on unit-norm embeddings of dimension n, with d
//!   clamped below at `cutoff` (0.5) and only negatives with d < `nonzero_loss_cutoff` (1.4)
//!   eligible; weights are normalised per anchor in f64 (the authors subtract one global max,
//!   which is the same distribution); an anchor with no eligible negative samples uniformly
//!   among its negatives. Draws come from a ChaCha8 stream keyed by (seed, step), so a resumed
//!   run draws exactly what an uninterrupted one would.

pub use dml_jobspec::train_config::{BetaScope, MarginLossConfig, NegativeSampling};
use rand::Rng;
use tch::{Device, Kind, Tensor};

use super::distance::{distance_stats, PairMasks};
use super::{check_batch, require_pairs, LossOutput};
use crate::train::error::{Result, TrainError};

/// Draws, for every anchor, one negative per positive it has, by distance-weighted sampling.
/// Returns (anchor, negative) row pairs in anchor order.
pub(crate) fn distance_weighted_negatives(
    embeddings: &Tensor,
    labels: &[i64],
    cutoff: f64,
    nonzero_loss_cutoff: f64,
    rng: &mut impl Rng,
) -> Result<Vec<(i64, i64)>> {
    let x = embeddings
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous();
    let size = x.size();
    let (b, dim) = (size[0] as usize, size[1] as usize);
    let flat = Vec::<f64>::try_from(x.flatten(0, -1))
        .map_err(TrainError::torch("reading embeddings for sampling"))?;
    let n = dim as f64;
    let mut pairs = Vec::new();
    for a in 0..b {
        let positives = (0..b).filter(|&j| j != a && labels[j] == labels[a]).count();
        if positives == 0 {
            continue;
        }
        let negatives: Vec<usize> = (0..b).filter(|&j| labels[j] != labels[a]).collect();
        let row = &flat[a * dim..(a + 1) * dim];
        let mut eligible = Vec::new();
        for &j in &negatives {
            let other = &flat[j * dim..(j + 1) * dim];
            let d2: f64 = row.iter().zip(other).map(|(u, v)| (u - v) * (u - v)).sum();
            let d = d2.max(0.0).sqrt().max(cutoff);
            if d < nonzero_loss_cutoff {
                let log_w =
                    (2.0 - n) * d.ln() - 0.5 * (n - 3.0) * (1.0 - 0.25 * d * d).max(1e-8).ln();
                eligible.push((j, log_w));
            }
        }
        let weighted: Vec<(usize, f64)> = if eligible.is_empty() {
            negatives.iter().map(|&j| (j, 1.0)).collect()
        } else {
            let max = eligible
                .iter()
                .map(|e| e.1)
                .fold(f64::NEG_INFINITY, f64::max);
            eligible
                .iter()
                .map(|&(j, lw)| (j, (lw - max).exp()))
                .collect()
        };
        let total: f64 = weighted.iter().map(|w| w.1).sum();
        for _ in 0..positives {
            let mut u = rng.gen::<f64>() * total;
            let mut pick = weighted[weighted.len() - 1].0;
            for &(j, w) in &weighted {
                if u < w {
                    pick = j;
                    break;
                }
                u -= w;
            }
            pairs.push((a as i64, pick as i64));
        }
    }
    Ok(pairs)
}

/// Margin loss (see the module documentation). `beta` holds one value (global) or one per
/// class; `rng` drives distance-weighted sampling. `active_fraction` is the fraction of
/// positive and negative terms that are non-zero.
pub fn margin_loss(
    embeddings: &Tensor,
    labels: &Tensor,
    beta: &Tensor,
    cfg: &MarginLossConfig,
    rng: &mut impl Rng,
) -> Result<LossOutput> {
    const NAME: &str = "margin";
    check_batch(NAME, embeddings, labels)?;
    let masks = PairMasks::new(labels);
    require_pairs(NAME, &masks)?;
    let kind = embeddings.kind();
    let device = embeddings.device();
    let label_vec = Vec::<i64>::try_from(labels.to_device(Device::Cpu))
        .map_err(TrainError::torch("reading labels"))?;
    if cfg.beta_scope == BetaScope::PerClass {
        let classes = beta.size()[0];
        if let Some(bad) = label_vec.iter().find(|&&l| l < 0 || l >= classes) {
            return Err(TrainError::InvalidBatch {
                loss: NAME,
                reason: format!("label {bad} has no β (per-class β for labels 0..{classes})"),
            });
        }
    }

    let pos = masks.pos.nonzero();
    let (pos_a, pos_p) = (pos.select(1, 0), pos.select(1, 1));
    let (neg_a, neg_n) = match cfg.sampling {
        NegativeSampling::All => {
            let neg = masks.neg.nonzero();
            (neg.select(1, 0), neg.select(1, 1))
        }
        NegativeSampling::DistanceWeighted {
            cutoff,
            nonzero_loss_cutoff,
        } => {
            let pairs = distance_weighted_negatives(
                embeddings,
                &label_vec,
                cutoff,
                nonzero_loss_cutoff,
                rng,
            )?;
            let (a, n): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
            (
                Tensor::from_slice(&a).to_device(device),
                Tensor::from_slice(&n).to_device(device),
            )
        }
    };
    let dist = |i: &Tensor, j: &Tensor| {
        ((embeddings.index_select(0, i) - embeddings.index_select(0, j))
            .square()
            .sum_dim_intlist(1, false, kind)
            + 1e-8)
            .sqrt()
    };
    let beta = beta.to_kind(kind);
    let beta_of = |anchors: &Tensor| match cfg.beta_scope {
        BetaScope::Global => beta.expand([anchors.size()[0]], false),
        BetaScope::PerClass => beta.index_select(0, &labels.index_select(0, anchors)),
    };
    let beta_pos = beta_of(&pos_a);
    let pos_terms = (dist(&pos_a, &pos_p) - &beta_pos + cfg.alpha).relu();
    let neg_terms = (beta_of(&neg_a) - dist(&neg_a, &neg_n) + cfg.alpha).relu();
    let nonzero = pos_terms.gt(0.0).sum(Kind::Int64).int64_value(&[])
        + neg_terms.gt(0.0).sum(Kind::Int64).int64_value(&[]);
    let total_terms = pos_terms.size()[0] + neg_terms.size()[0];
    let numerator = pos_terms.sum(kind) + neg_terms.sum(kind) + beta_pos.sum(kind) * cfg.nu;
    let loss = numerator / nonzero.max(1) as f64;
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &masks);
    Ok(LossOutput {
        loss,
        active_fraction: if total_terms == 0 {
            0.0
        } else {
            nonzero as f64 / total_terms as f64
        },
        mean_pos_dist,
        mean_neg_dist,
    })
}
