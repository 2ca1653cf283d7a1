//! Normalized mutual information between two labelings, as scikit-learn's
//! `normalized_mutual_info_score` computes it by default.

use crate::error::MetricsError;
use std::collections::HashMap;

/// Normalized mutual information `2·I(Y;C) / (H(Y) + H(C))` (arithmetic
/// normalisation, scikit-learn's default since 0.22), natural logarithms.
///
/// Follows scikit-learn's conventions so numbers are comparable:
/// * both labelings a single group (or both empty) → `1.0`;
/// * otherwise, mutual information 0 (including exactly one side being a
///   single group) → `0.0`;
/// * per-cell mutual-information terms smaller than `f64::EPSILON` in
///   magnitude are zeroed and the sum is clipped at 0.
///
/// Label values are arbitrary identifiers; only equality matters. The result
/// is symmetric and in `[0, 1]` up to rounding. Sums run in a fixed (sorted)
/// order, so the value does not depend on hashing or threads.
pub fn nmi(labels_true: &[u32], labels_pred: &[u32]) -> Result<f64, MetricsError> {
    if labels_true.len() != labels_pred.len() {
        return Err(MetricsError::LengthMismatch {
            what: "labels_true and labels_pred",
            left: labels_true.len(),
            right: labels_pred.len(),
        });
    }
    let n = labels_true.len();
    let (rows, true_counts) = group(labels_true);
    let (cols, pred_counts) = group(labels_pred);
    if (true_counts.len() == 1 && pred_counts.len() == 1) || n == 0 {
        return Ok(1.0);
    }
    let mi = mutual_information(&rows, &cols, &true_counts, &pred_counts, n);
    if mi == 0.0 {
        return Ok(0.0);
    }
    let normalizer = (entropy(&true_counts) + entropy(&pred_counts)) / 2.0;
    Ok(mi / normalizer.max(f64::EPSILON))
}

/// Dense group ids (in order of first appearance) and group sizes.
fn group(labels: &[u32]) -> (Vec<u32>, Vec<u64>) {
    let mut id: HashMap<u32, u32> = HashMap::new();
    let mut counts = Vec::new();
    let dense = labels
        .iter()
        .map(|l| {
            let next = counts.len() as u32;
            let g = *id.entry(*l).or_insert(next);
            if g == next {
                counts.push(0);
            }
            counts[g as usize] += 1;
            g
        })
        .collect();
    (dense, counts)
}

/// Entropy of a labeling from its group sizes, as scikit-learn's `entropy`.
fn entropy(counts: &[u64]) -> f64 {
    if counts.len() <= 1 {
        return 0.0;
    }
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    let log_total = total.ln();
    -counts
        .iter()
        .map(|&c| (c as f64 / total) * ((c as f64).ln() - log_total))
        .sum::<f64>()
}

/// Mutual information from the contingency table, as scikit-learn's
/// `mutual_info_score`.
fn mutual_information(
    rows: &[u32],
    cols: &[u32],
    row_counts: &[u64],
    col_counts: &[u64],
    n: usize,
) -> f64 {
    if row_counts.len() == 1 || col_counts.len() == 1 {
        return 0.0;
    }
    let mut cells: Vec<u64> = rows
        .iter()
        .zip(cols)
        .map(|(&r, &c)| (u64::from(r) << 32) | u64::from(c))
        .collect();
    cells.sort_unstable();
    let total = n as f64;
    let log_total = total.ln();
    let mut mi = 0.0f64;
    let mut start = 0;
    while start < cells.len() {
        let key = cells[start];
        let end = start + cells[start..].iter().take_while(|&&c| c == key).count();
        let nij = (end - start) as f64;
        let (r, c) = ((key >> 32) as usize, (key & 0xffff_ffff) as usize);
        let outer = (row_counts[r] as f64) * (col_counts[c] as f64);
        let p = nij / total;
        let term = p * (nij.ln() - log_total) + p * (-outer.ln() + log_total + log_total);
        if term.abs() >= f64::EPSILON {
            mi += term;
        }
        start = end;
    }
    mi.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The textbook definition, written independently: probabilities from a
    /// dense contingency table.
    fn brute(a: &[u32], b: &[u32]) -> f64 {
        let ka = *a.iter().max().unwrap() as usize + 1;
        let kb = *b.iter().max().unwrap() as usize + 1;
        let n = a.len() as f64;
        let mut joint = vec![vec![0.0f64; kb]; ka];
        for (&x, &y) in a.iter().zip(b) {
            joint[x as usize][y as usize] += 1.0 / n;
        }
        let pa: Vec<f64> = joint.iter().map(|r| r.iter().sum()).collect();
        let pb: Vec<f64> = (0..kb).map(|j| joint.iter().map(|r| r[j]).sum()).collect();
        let h = |p: &[f64]| {
            -p.iter()
                .filter(|&&x| x > 0.0)
                .map(|&x| x * x.ln())
                .sum::<f64>()
        };
        let mut i = 0.0;
        for x in 0..ka {
            for y in 0..kb {
                if joint[x][y] > 0.0 {
                    i += joint[x][y] * (joint[x][y] / (pa[x] * pb[y])).ln();
                }
            }
        }
        2.0 * i / (h(&pa) + h(&pb))
    }

    #[test]
    fn hand_computed_value() {
        // Y = [0,0,1,1], C = [0,0,0,1]: p(y) = (1/2, 1/2), p(c) = (3/4, 1/4),
        // cells (0,0) = 1/2, (1,0) = 1/4, (1,1) = 1/4.
        let i = 0.5 * (4.0f64 / 3.0).ln() + 0.25 * (2.0f64 / 3.0).ln() + 0.25 * 2.0f64.ln();
        let hy = 2.0f64.ln();
        let hc = -(0.75 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        let want = 2.0 * i / (hy + hc);
        let got = nmi(&[0, 0, 1, 1], &[0, 0, 0, 1]).unwrap();
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
        // scikit-learn 1.9.1, normalized_mutual_info_score on the same input.
        assert!((got - 0.3437110184854508).abs() < 1e-15);
    }

    #[test]
    fn matches_scikit_learn_values() {
        // Each value printed by scikit-learn 1.9.1's
        // normalized_mutual_info_score(labels_true, labels_pred).
        let cases: &[(&[u32], &[u32], f64)] = &[
            (
                &[0, 0, 0, 1, 1, 1, 2, 2, 2],
                &[0, 0, 1, 1, 1, 2, 2, 2, 2],
                0.589509827447305,
            ),
            (
                &[3, 1, 2, 1, 3, 3, 2, 1, 0, 0],
                &[0, 0, 1, 1, 2, 2, 3, 3, 0, 1],
                0.4160292481856192,
            ),
            (&[5, 5, 5, 5], &[1, 2, 3, 4], 0.0),
            (&[1, 2, 3], &[7, 7, 7], 0.0),
            (&[1, 1, 1], &[7, 7, 7], 1.0),
            (&[], &[], 1.0),
        ];
        for (a, b, want) in cases {
            let got = nmi(a, b).unwrap();
            assert!((got - want).abs() < 1e-14, "{a:?} {b:?}: {got} vs {want}");
        }
    }

    #[test]
    fn matches_brute_force_and_is_symmetric() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for &(n, ka, kb) in &[
            (50usize, 3u32, 4u32),
            (1000, 20, 35),
            (300, 300, 2),
            (7, 2, 7),
        ] {
            let a: Vec<u32> = (0..n).map(|_| rng.gen_range(0..ka)).collect();
            let b: Vec<u32> = (0..n)
                .map(|i| {
                    if rng.gen_bool(0.6) {
                        a[i] % kb
                    } else {
                        rng.gen_range(0..kb)
                    }
                })
                .collect();
            let got = nmi(&a, &b).unwrap();
            let want = brute(&a, &b);
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
            assert!((nmi(&b, &a).unwrap() - got).abs() < 1e-12);
        }
    }

    #[test]
    fn identical_partitions_score_one_whatever_the_names() {
        let a = [4u32, 4, 9, 9, 1, 1, 1];
        let b = [0u32, 0, 7, 7, 3, 3, 3];
        assert!((nmi(&a, &b).unwrap() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        assert!(matches!(
            nmi(&[0, 1], &[0]),
            Err(MetricsError::LengthMismatch {
                left: 2,
                right: 1,
                ..
            })
        ));
    }
}
