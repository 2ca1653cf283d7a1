//! Brute-force f64 reference implementations of every loss, written as plain loops straight from the formulas (tests only).

pub(crate) type Rows = [Vec<f64>];

pub(crate) fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(u, v)| (u - v) * (u - v)).sum()
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn hinge_or_soft(x: f64, margin: Option<f64>) -> (f64, bool) {
    match margin {
        Some(m) => ((x + m).max(0.0), x + m > 0.0),
        None => (softplus(x), x > 0.0),
    }
}

/// (loss, active fraction, number of positive pairs that used the easiest-negative fallback).
pub(crate) fn semi_hard(x: &Rows, y: &[i64], margin: Option<f64>) -> (f64, f64, usize) {
    let b = x.len();
    let (mut total, mut count, mut active, mut fallbacks) = (0.0, 0usize, 0usize, 0usize);
    for a in 0..b {
        for p in 0..b {
            if p == a || y[p] != y[a] {
                continue;
            }
            let d_ap = sq_dist(&x[a], &x[p]);
            let mut closest_farther: Option<f64> = None;
            let mut farthest = f64::NEG_INFINITY;
            for n in 0..b {
                if y[n] == y[a] {
                    continue;
                }
                let d_an = sq_dist(&x[a], &x[n]);
                farthest = farthest.max(d_an);
                if d_an > d_ap && closest_farther.is_none_or(|c| d_an < c) {
                    closest_farther = Some(d_an);
                }
            }
            let d_an = match closest_farther {
                Some(d) => d,
                None => {
                    fallbacks += 1;
                    farthest
                }
            };
            let (l, on) = hinge_or_soft(d_ap - d_an, margin);
            total += l;
            count += 1;
            active += on as usize;
        }
    }
    (
        total / count as f64,
        active as f64 / count as f64,
        fallbacks,
    )
}

pub(crate) fn batch_hard(x: &Rows, y: &[i64], margin: Option<f64>) -> (f64, f64) {
    let b = x.len();
    let d = |i: usize, j: usize| (sq_dist(&x[i], &x[j]) + 1e-12).sqrt();
    let (mut total, mut active) = (0.0, 0usize);
    for a in 0..b {
        let mut hardest_pos: f64 = 0.0;
        let mut hardest_neg = f64::INFINITY;
        for j in 0..b {
            if j == a {
                continue;
            }
            if y[j] == y[a] {
                hardest_pos = hardest_pos.max(d(a, j));
            } else {
                hardest_neg = hardest_neg.min(d(a, j));
            }
        }
        let (l, on) = hinge_or_soft(hardest_pos - hardest_neg, margin);
        total += l;
        active += on as usize;
    }
    (total / b as f64, active as f64 / b as f64)
}

pub(crate) fn lifted(x: &Rows, y: &[i64], margin: f64) -> (f64, f64) {
    let b = x.len();
    let d = |i: usize, j: usize| sq_dist(&x[i], &x[j]).sqrt();
    let neg_sum = |i: usize| -> f64 {
        (0..b)
            .filter(|&k| y[k] != y[i])
            .map(|k| (margin - d(i, k)).exp())
            .sum()
    };
    let (mut total, mut pairs, mut active) = (0.0, 0usize, 0usize);
    for i in 0..b {
        for j in i + 1..b {
            if y[i] != y[j] {
                continue;
            }
            let jij = (neg_sum(i) + neg_sum(j)).ln() + d(i, j);
            total += jij.max(0.0).powi(2);
            pairs += 1;
            active += (jij > 0.0) as usize;
        }
    }
    (total / (2.0 * pairs as f64), active as f64 / pairs as f64)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(u, v)| u * v).sum()
}

/// Cross-entropy with soft targets over logits rows, averaged, plus the violation fraction.
fn soft_xent(logits: &[Vec<f64>], y: &[i64]) -> (f64, f64) {
    let n = logits.len();
    let (mut total, mut violated, mut others) = (0.0, 0usize, 0usize);
    for i in 0..n {
        let max = logits[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits[i].iter().map(|s| (s - max).exp()).sum::<f64>().ln();
        let same: usize = (0..n).filter(|&j| y[j] == y[i]).count();
        for j in 0..n {
            if y[j] == y[i] {
                total -= (logits[i][j] - lse) / same as f64;
            } else {
                others += 1;
                violated += (logits[i][j] >= logits[i][i]) as usize;
            }
        }
    }
    (
        total / n as f64,
        if others == 0 {
            0.0
        } else {
            violated as f64 / others as f64
        },
    )
}

fn pair_split(x: &Rows, y: &[i64]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<i64>) {
    let anchors = x.iter().step_by(2).cloned().collect();
    let positives = x.iter().skip(1).step_by(2).cloned().collect();
    (anchors, positives, y.iter().step_by(2).cloned().collect())
}

fn l2_reg(a: &Rows, p: &Rows, lambda: f64) -> f64 {
    let mean_sq = |r: &Rows| r.iter().map(|v| dot(v, v)).sum::<f64>() / r.len() as f64;
    0.25 * lambda * (mean_sq(a) + mean_sq(p))
}

pub(crate) fn npairs(x: &Rows, y: &[i64], lambda: f64) -> (f64, f64) {
    let (a, p, ya) = pair_split(x, y);
    let logits: Vec<Vec<f64>> = a
        .iter()
        .map(|ai| p.iter().map(|pj| dot(ai, pj)).collect())
        .collect();
    let (xent, frac) = soft_xent(&logits, &ya);
    (xent + l2_reg(&a, &p, lambda), frac)
}

pub(crate) fn angular(x: &Rows, y: &[i64], alpha_degrees: f64, lambda: f64) -> (f64, f64) {
    let (a, p, ya) = pair_split(x, y);
    let t = (alpha_degrees * std::f64::consts::PI / 180.0).tan().powi(2);
    let n = a.len();
    let mut logits = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..n {
            logits[i][j] = if i == j {
                2.0 * (1.0 + t) * dot(&a[i], &p[i])
            } else {
                let sum: Vec<f64> = a[i].iter().zip(&p[i]).map(|(u, v)| u + v).collect();
                4.0 * t * dot(&sum, &p[j])
            };
        }
    }
    let (xent, frac) = soft_xent(&logits, &ya);
    (xent + l2_reg(&a, &p, lambda), frac)
}

pub(crate) fn contrastive(x: &Rows, y: &[i64], margin: f64) -> (f64, f64) {
    let order = [0usize, 1, 4, 3, 2, 5, 6, 7];
    let (mut total, mut pairs, mut active) = (0.0, 0usize, 0usize);
    for g in 0..x.len() / 8 {
        for c in order.chunks(2) {
            let (i, j) = (8 * g + c[0], 8 * g + c[1]);
            let d = (sq_dist(&x[i], &x[j]) + 1e-5).sqrt();
            let l = if y[i] == y[j] {
                d * d
            } else {
                (margin - d).max(0.0).powi(2)
            };
            total += l;
            pairs += 1;
            active += (l > 0.0) as usize;
        }
    }
    (total / pairs as f64, active as f64 / pairs as f64)
}

/// Margin loss over all positive and all negative pairs; `beta[label]` (or `beta[0]` if global).
pub(crate) fn margin_all_pairs(
    x: &Rows,
    y: &[i64],
    beta: &[f64],
    alpha: f64,
    nu: f64,
) -> (f64, f64) {
    let b = x.len();
    let beta_of = |a: usize| {
        if beta.len() == 1 {
            beta[0]
        } else {
            beta[y[a] as usize]
        }
    };
    let d = |i: usize, j: usize| (sq_dist(&x[i], &x[j]) + 1e-8).sqrt();
    let (mut sum, mut nonzero, mut terms, mut reg) = (0.0, 0usize, 0usize, 0.0);
    for a in 0..b {
        for j in 0..b {
            if j == a {
                continue;
            }
            let l = if y[j] == y[a] {
                reg += beta_of(a);
                (d(a, j) - beta_of(a) + alpha).max(0.0)
            } else {
                (beta_of(a) - d(a, j) + alpha).max(0.0)
            };
            sum += l;
            terms += 1;
            nonzero += (l > 0.0) as usize;
        }
    }
    (
        (sum + nu * reg) / nonzero.max(1) as f64,
        nonzero as f64 / terms as f64,
    )
}
