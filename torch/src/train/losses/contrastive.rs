//! The seed's contrastive loss: fixed pairing inside each 8-row two-class group and the sqrt(·+1e-5) NaN fix.

use tch::Tensor;

use super::distance::{distance_stats, fraction, PairMasks};
use super::{check_batch, LossOutput};
use crate::train::error::{Result, TrainError};

/// Row order inside each 8-row group (class A = rows 0..3, class B = rows 4..7), taken two at
/// a time: (0,1) A–A, (4,3) B–A, (2,5) A–B, (6,7) B–B.
pub const GROUP_ORDER: [i64; 8] = [0, 1, 4, 3, 2, 5, 6, 7];

/// Row indices of the pairs the seed forms for a batch of `rows` rows (a multiple of 8).
pub fn pair_rows(rows: i64) -> Vec<(i64, i64)> {
    (0..rows / 8)
        .flat_map(|g| {
            GROUP_ORDER
                .chunks(2)
                .map(move |c| (8 * g + c[0], 8 * g + c[1]))
        })
        .collect()
}

/// Contrastive loss: d = sqrt(‖a − b‖² + 1e-5), L = mean[y·d² + (1 − y)·max(m − d, 0)²].
///
/// The seed hard-codes the pair labels [1, 0, 0, 1] per group; here y = [label_a = label_b],
/// which is exactly [1, 0, 0, 1] for a P×K batch with K = 4 and keeps same-class pairs right
/// when a class happens to appear in two neighbouring groups. `active_fraction` counts pairs
/// with a non-zero term.
pub fn contrastive(embeddings: &Tensor, labels: &Tensor, margin: f64) -> Result<LossOutput> {
    const NAME: &str = "contrastive";
    check_batch(NAME, embeddings, labels)?;
    let b = embeddings.size()[0];
    if b % 8 != 0 || b == 0 {
        return Err(TrainError::InvalidBatch {
            loss: NAME,
            reason: format!("needs groups of 8 rows (two classes × K = 4), got {b} rows"),
        });
    }
    let kind = embeddings.kind();
    let (first, second): (Vec<i64>, Vec<i64>) = pair_rows(b).into_iter().unzip();
    let device = embeddings.device();
    let first = Tensor::from_slice(&first).to_device(device);
    let second = Tensor::from_slice(&second).to_device(device);
    let a = embeddings.index_select(0, &first);
    let c = embeddings.index_select(0, &second);
    let same = labels
        .index_select(0, &first)
        .eq_tensor(&labels.index_select(0, &second))
        .to_kind(kind);
    let d = ((&a - &c).square().sum_dim_intlist(1, false, kind) + 1e-5).sqrt();
    let per_pair = &same * d.square() + (-&same + 1.0) * (-&d + margin).relu().square();
    let loss = per_pair.mean(kind);
    let active = fraction(&per_pair.gt(0.0));
    let (mean_pos_dist, mean_neg_dist) = distance_stats(embeddings, &PairMasks::new(labels));
    Ok(LossOutput {
        loss,
        active_fraction: active,
        mean_pos_dist,
        mean_neg_dist,
    })
}
