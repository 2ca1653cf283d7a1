//! k-means clustering (greedy k-means++ seeding, exact Lloyd iterations) on
//! the shared distance engine, and the clustering NMI of an embedding.
//!
//! **Seeding** is greedy k-means++ as scikit-learn runs it (Arthur &
//! Vassilvitskii 2007, with `2 + ⌊ln k⌋` local trials): each new centre is the
//! best, by resulting potential `Σ_x D²(x)`, of that many candidates drawn
//! i.i.d. with probability proportional to `D²` (squared distance to the
//! nearest centre chosen so far). Done one centre at a time that is `k`
//! sequential passes over the data per trial; here it runs in rounds without
//! changing the distribution:
//!
//! 1. A round draws a stream of proposals i.i.d. from the round's `D²`. For
//!    each proposal not seen in an earlier round, one blocked kernel scan
//!    lists the points it would bring closer, `d²(x, c) < D²(x)`. Only those
//!    pairs can change a potential, so the lists are sparse. `D²` only
//!    decreases, so a list made in an earlier round is a superset of the
//!    current one (the extra pairs gain nothing and update nothing): each
//!    distinct point is scanned at most once over the whole seeding.
//! 2. Centres are then chosen one by one. Candidates come from the stream by
//!    rejection: proposal `x` is accepted with probability
//!    `D²_now(x) / D²_round(x)`, which makes each accepted candidate an exact
//!    draw from the current `D²`. The potential reduction of a candidate is
//!    `Σ max(0, D²_now(x) − d²(x, c))` over its list, the best one (first on
//!    ties) becomes a centre, and its list updates `D²_now` and every point's
//!    nearest centre.
//! 3. When the stream runs dry the round ends (candidates drawn for an
//!    unfinished step are dropped, which does not bias the next draw) and the
//!    next round samples from the updated `D²`.
//!
//! The cost is one kernel scan of all points per distinct proposed point, at
//! most one `n × n` distance pass whatever `k` and the number of trials, and
//! the first Lloyd assignment comes for free. Memory: the cached lists,
//! pruned of stale pairs when they grow past a budget.
//!
//! **Lloyd iterations** run until no assignment changes (or `max_iter`). After
//! the first, only centroids that moved need distances: a point whose centroid
//! did not move can only switch to a moved one, and a point whose centroid
//! moved keeps the result of the moved-only scan when it beats its previous
//! distance; the rest (few, late in the run) are searched against all
//! centroids. Every distance is computed bit-identically wherever it is
//! computed (see the `kernel` module), so this shortcut returns exactly what a
//! full Lloyd step would, ties to the lower centroid index.
//!
//! **Determinism**: one seeded ChaCha8 stream drives the sampling in a fixed
//! order, centroid sums are taken per cluster in point-index order (in `f64`),
//! and every reduction runs in a fixed order; the result is the same for a
//! seed on any number of threads.

use crate::error::MetricsError;
use crate::kernel::{squared_norms, Best1, PackedGallery, QueryRows, RowSink, Rows, QUERY_BLOCK};
use crate::knn::check_rows;
use crate::nmi::nmi;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Default cap on Lloyd iterations (k-means at SOP scale converges well
/// within it; every iteration after the first few is cheap).
pub const KMEANS_MAX_ITER: usize = 100;

/// Proposals drawn per seeding round: at least (a panel of the kernel is 32
/// wide) and at most.
const MIN_PROPOSALS: usize = 64;
const MAX_PROPOSALS: usize = 2048;

/// Improvement pairs one seeding round may list (8 bytes each); the next
/// round's proposal count is sized from the last round's pass rate to stay
/// near this.
const PAIR_BUDGET: usize = 8 << 20;

/// Cached improvement pairs above which stale pairs are dropped.
const CACHE_BUDGET: usize = 4 * PAIR_BUDGET;

/// A k-means clustering.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    /// Cluster of each point, in `0..k`: its nearest centroid, ties to the
    /// lower centroid index.
    pub assignments: Vec<u32>,
    /// Row-major `k × dim` centroids. A cluster can be empty only when the
    /// data has fewer than `k` distinct points (its centroid then duplicates
    /// another's).
    pub centroids: Vec<f32>,
    /// Sum over points of the squared Euclidean distance to their centroid,
    /// accumulated in `f64` from the coordinates.
    pub inertia: f64,
    /// Lloyd iterations (centroid updates) run after seeding.
    pub iterations: usize,
    /// Whether the iterations stopped because nothing changed (rather than at
    /// `max_iter`).
    pub converged: bool,
}

/// Lexicographic `(distance, index)` order.
#[inline]
fn lex_le(a: Best1, b: Best1) -> bool {
    a.d < b.d || (a.d == b.d && a.j <= b.j)
}

/// Scans every point against `packed`, updating `best` in place.
fn scan_all(packed: &PackedGallery, q: QueryRows<'_>, best: &mut [Best1]) {
    best.par_chunks_mut(QUERY_BLOCK)
        .enumerate()
        .for_each(|(b, chunk)| {
            packed.scan_block(q, Rows::Range(b * QUERY_BLOCK, chunk.len()), false, chunk)
        });
}

/// Gathers rows `idx` of `data`.
fn gather(data: &[f32], dim: usize, idx: impl Iterator<Item = usize>) -> Vec<f32> {
    let mut out = Vec::new();
    for i in idx {
        out.extend_from_slice(&data[i * dim..(i + 1) * dim]);
    }
    out
}

/// Lists, for one point, the proposals that come closer to it than its
/// nearest centre at the start of the round.
struct ImproveSink<'a> {
    thr: f32,
    list: &'a mut Vec<(u32, f32)>,
}

impl RowSink for ImproveSink<'_> {
    #[inline(always)]
    fn threshold(&self) -> f32 {
        self.thr
    }
    #[inline(always)]
    fn offer(&mut self, d: f32, j: u32) {
        if d < self.thr {
            self.list.push((j, d));
        }
    }
}

/// scikit-learn's number of local trials for greedy k-means++.
pub(crate) fn local_trials(k: usize) -> usize {
    2 + (k as f64).ln().floor() as usize
}

/// Batched exact greedy k-means++ with `trials` candidates per centre (1 is
/// plain k-means++); see the module docs. Returns the chosen point indices
/// (centre `c` is point `centres[c]`) and each point's nearest centre.
fn seed(
    data: &[f32],
    n: usize,
    dim: usize,
    norms: &[f32],
    k: usize,
    trials: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<usize>, Vec<Best1>) {
    let q = QueryRows {
        data,
        aux: norms,
        dim,
    };
    let first = rng.gen_range(0..n);
    let mut centres = vec![first];
    let mut chosen = vec![false; n];
    chosen[first] = true;
    let mut best = vec![Best1::EMPTY; n];
    let packed = PackedGallery::new(
        &data[first * dim..(first + 1) * dim],
        dim,
        &norms[first..=first],
        -2.0,
        None,
    );
    scan_all(&packed, q, &mut best);

    let mut prefix = vec![0.0f64; n];
    let mut round_d2 = vec![0.0f32; n];
    let mut lists: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    // Improvement lists of the points proposed so far (see step 1).
    let mut improves: Vec<Option<Vec<(u32, f32)>>> = vec![None; n];
    let mut cached = 0usize;
    let mut proposals_per_round = MIN_PROPOSALS;
    let mut candidates: Vec<usize> = Vec::with_capacity(trials);
    while centres.len() < k {
        let remaining = k - centres.len();
        let mut total = 0.0f64;
        for ((p, r), b) in prefix.iter_mut().zip(round_d2.iter_mut()).zip(&best) {
            *r = b.d;
            total += f64::from(b.d);
            *p = total;
        }
        if total.is_nan() || total <= 0.0 {
            // Every point coincides with a centre: fewer distinct points than
            // k. The remaining centres can only duplicate; take the lowest
            // unchosen indices (every point keeps its lower-index centre).
            centres.extend((0..n).filter(|&i| !chosen[i]).take(remaining));
            break;
        }
        let p = proposals_per_round.min((3 * trials * remaining).max(MIN_PROPOSALS));
        let proposals: Vec<u32> = (0..p)
            .map(|_| {
                let u = rng.gen::<f64>() * total;
                prefix.partition_point(|&c| c <= u).min(n - 1) as u32
            })
            .collect();

        // 1. Sparse improvement lists, (point, d²) for d² < D²(point), for
        //    the proposals that have none yet. D² only decreases, so a list
        //    made in an earlier round is a superset of today's: pairs that
        //    no longer improve add no gain and update nothing.
        let mut fresh: Vec<u32> = proposals
            .iter()
            .copied()
            .filter(|&c| improves[c as usize].is_none())
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if !fresh.is_empty() {
            let rows = gather(data, dim, fresh.iter().map(|&i| i as usize));
            let aux: Vec<f32> = fresh.iter().map(|&i| norms[i as usize]).collect();
            let packed = PackedGallery::new(&rows, dim, &aux, -2.0, None);
            lists
                .par_chunks_mut(QUERY_BLOCK)
                .zip(round_d2.par_chunks(QUERY_BLOCK))
                .enumerate()
                .for_each(|(b, (ls, thr))| {
                    let m = ls.len();
                    let mut sinks: Vec<ImproveSink<'_>> = ls
                        .iter_mut()
                        .zip(thr)
                        .map(|(list, &thr)| {
                            list.clear();
                            ImproveSink { thr, list }
                        })
                        .collect();
                    packed.scan_block(q, Rows::Range(b * QUERY_BLOCK, m), false, &mut sinks);
                });
            // Transpose into one list per fresh proposal, points ascending.
            let mut per: Vec<Vec<(u32, f32)>> = vec![Vec::new(); fresh.len()];
            for (x, list) in lists.iter().enumerate() {
                for &(t, d) in list {
                    per[t as usize].push((x as u32, d));
                }
            }
            let pairs: usize = per.iter().map(Vec::len).sum();
            cached += pairs;
            for (&c, list) in fresh.iter().zip(per) {
                improves[c as usize] = Some(list);
            }
            // Size the next round's proposals to the pair budget.
            let rate = pairs as f64 / (n as f64 * fresh.len() as f64);
            proposals_per_round = ((PAIR_BUDGET as f64 / (rate * n as f64).max(1.0)) as usize)
                .clamp(MIN_PROPOSALS, MAX_PROPOSALS);
        }

        // 2. Greedy steps, candidates by rejection from the round's stream.
        let mut next = 0;
        'steps: while centres.len() < k {
            candidates.clear();
            while candidates.len() < trials {
                if next == p {
                    break 'steps;
                }
                let t = next;
                next += 1;
                let x = proposals[t] as usize;
                if rng.gen::<f64>() * f64::from(round_d2[x]) < f64::from(best[x].d) {
                    candidates.push(t);
                }
            }
            let reduction = |t: usize| -> f64 {
                let list = improves[proposals[t] as usize].as_deref().unwrap_or(&[]);
                list.iter()
                    .map(|&(x, d)| {
                        let gain = best[x as usize].d - d;
                        if gain > 0.0 {
                            f64::from(gain)
                        } else {
                            0.0
                        }
                    })
                    .sum()
            };
            let mut pick = candidates[0];
            let mut pick_gain = reduction(pick);
            for &t in &candidates[1..] {
                let gain = reduction(t);
                if gain > pick_gain {
                    pick = t;
                    pick_gain = gain;
                }
            }
            let c = centres.len() as u32;
            let point = proposals[pick] as usize;
            centres.push(point);
            chosen[point] = true;
            // A centre is never proposed again: its list is spent.
            let list = improves[point].take().unwrap_or_default();
            cached -= list.len();
            for &(x, d) in &list {
                let b = &mut best[x as usize];
                // New centres have the highest index so far: ties keep the old.
                if d < b.d {
                    *b = Best1 { d, j: c };
                }
            }
        }
        if cached > CACHE_BUDGET {
            // Drop the pairs that no longer improve anything.
            cached = 0;
            for list in improves.iter_mut().flatten() {
                list.retain(|&(x, d)| d < best[x as usize].d);
                cached += list.len();
            }
        }
    }
    (centres, best)
}

/// New centroids: the mean of each cluster's points (summed in point order,
/// in `f64`). An empty cluster is moved onto the point farthest from its
/// centroid (ties to the lower index) among clusters that keep a point, as
/// scikit-learn does, and that point counts for its new cluster.
fn update_centroids(data: &[f32], dim: usize, k: usize, assign: &[Best1], old: &[f32]) -> Vec<f32> {
    let n = assign.len();
    let mut label: Vec<u32> = assign.iter().map(|b| b.j).collect();
    let mut counts = vec![0usize; k];
    for &l in &label {
        counts[l as usize] += 1;
    }
    let empties: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
    if !empties.is_empty() {
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| {
            let (da, db) = (assign[a as usize].d, assign[b as usize].d);
            db.partial_cmp(&da)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let mut far = order.into_iter();
        for e in empties {
            // k <= n makes a donor cluster with two or more points exist.
            if let Some(x) = far
                .by_ref()
                .find(|&x| counts[label[x as usize] as usize] > 1)
            {
                counts[label[x as usize] as usize] -= 1;
                label[x as usize] = e as u32;
                counts[e] = 1;
            }
        }
    }
    // Members of each cluster in point order (counting sort).
    let mut start = vec![0usize; k + 1];
    for c in 0..k {
        start[c + 1] = start[c] + counts[c];
    }
    let mut fill = start.clone();
    let mut members = vec![0u32; n];
    for (i, &l) in label.iter().enumerate() {
        members[fill[l as usize]] = i as u32;
        fill[l as usize] += 1;
    }
    let mut out = vec![0.0f32; k * dim];
    out.par_chunks_mut(dim).enumerate().for_each_init(
        || vec![0.0f64; dim],
        |sum, (c, centroid)| {
            let m = &members[start[c]..start[c + 1]];
            if m.is_empty() {
                centroid.copy_from_slice(&old[c * dim..(c + 1) * dim]);
                return;
            }
            sum.iter_mut().for_each(|s| *s = 0.0);
            for &i in m {
                for (s, &v) in sum
                    .iter_mut()
                    .zip(&data[i as usize * dim..(i as usize + 1) * dim])
                {
                    *s += f64::from(v);
                }
            }
            let len = m.len() as f64;
            for (o, s) in centroid.iter_mut().zip(sum.iter()) {
                *o = (s / len) as f32;
            }
        },
    );
    out
}

/// The exact nearest centroid of every point, given the previous exact
/// assignment `prev` (against the previous centroids) and the centroids that
/// changed since (`moved`, ascending).
fn reassign(
    q: QueryRows<'_>,
    centroids: &[f32],
    cnorms: &[f32],
    moved: &[u32],
    prev: &[Best1],
) -> Vec<Best1> {
    let dim = q.dim;
    let k = cnorms.len();
    let full = || PackedGallery::new(centroids, dim, cnorms, -2.0, None);
    if 2 * moved.len() >= k {
        let mut out = vec![Best1::EMPTY; prev.len()];
        scan_all(&full(), q, &mut out);
        return out;
    }
    let mut is_moved = vec![false; k];
    for &c in moved {
        is_moved[c as usize] = true;
    }
    let rows = gather(centroids, dim, moved.iter().map(|&c| c as usize));
    let aux: Vec<f32> = moved.iter().map(|&c| cnorms[c as usize]).collect();
    let sub = PackedGallery::new(&rows, dim, &aux, -2.0, Some(moved.to_vec()));
    // A point whose centroid stayed keeps it unless a moved one is nearer:
    // every other unmoved centroid was, and still is, ranked after it.
    let mut out: Vec<Best1> = prev
        .iter()
        .map(|&b| {
            if is_moved[b.j as usize] {
                Best1::EMPTY
            } else {
                b
            }
        })
        .collect();
    scan_all(&sub, q, &mut out);
    // A point whose centroid moved is settled if the best moved centroid ranks
    // no later than its previous (distance, index): unmoved ones rank after
    // that. Otherwise search it against every centroid.
    let redo: Vec<u32> = (0..prev.len() as u32)
        .filter(|&i| {
            is_moved[prev[i as usize].j as usize] && !lex_le(out[i as usize], prev[i as usize])
        })
        .collect();
    if !redo.is_empty() {
        let all = full();
        let mut found = vec![Best1::EMPTY; redo.len()];
        found
            .par_chunks_mut(QUERY_BLOCK)
            .zip(redo.par_chunks(QUERY_BLOCK))
            .for_each(|(s, rows)| all.scan_block(q, Rows::List(rows), false, s));
        for (&i, b) in redo.iter().zip(found) {
            out[i as usize] = b;
        }
    }
    out
}

/// Sum of squared distances to the assigned centroids, in `f64` from the
/// coordinates, reduced in a fixed order.
fn inertia(data: &[f32], dim: usize, centroids: &[f32], assignments: &[u32]) -> f64 {
    const CHUNK: usize = 1024;
    let partial: Vec<f64> = data
        .par_chunks(CHUNK * dim)
        .zip(assignments.par_chunks(CHUNK))
        .map(|(rows, labels)| {
            rows.chunks(dim)
                .zip(labels)
                .map(|(x, &c)| {
                    let cen = &centroids[c as usize * dim..(c as usize + 1) * dim];
                    x.iter()
                        .zip(cen)
                        .map(|(&a, &b)| {
                            let t = f64::from(a) - f64::from(b);
                            t * t
                        })
                        .sum::<f64>()
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum()
}

/// k-means with greedy k-means++ seeding (scikit-learn's: `2 + ⌊ln k⌋`
/// local trials per centre) and Lloyd iterations, squared Euclidean distance.
/// See the module docs for how both are made fast without changing what
/// they compute.
///
/// * `data`: row-major `n × dim`, finite.
/// * `k`: clusters, `1 ≤ k ≤ n`.
/// * `seed`: the whole result is a function of `(data, k, seed, max_iter)`,
///   identical on any number of threads.
/// * `max_iter`: cap on Lloyd iterations ([`KMEANS_MAX_ITER`] is a good
///   default); iterations stop earlier when no assignment changes. `0`
///   returns the seeding's clustering.
///
/// The centroids are the means of the previous iteration's clusters and the
/// assignments are the nearest centroid of each point (ties to the lower
/// index), so at convergence each centroid is its cluster's mean. Runs on the
/// current rayon pool. Memory: `O((n + k) · dim)` plus the seeding's sparse
/// improvement lists, 8 bytes a pair, pruned once past 32 M pairs (their peak
/// was 7.1 M pairs for 60,502 points and k = 11,316).
pub fn kmeans(
    data: &[f32],
    n: usize,
    dim: usize,
    k: usize,
    seed: u64,
    max_iter: usize,
) -> Result<KMeans, MetricsError> {
    let rows = check_rows("data", data, dim)?;
    if rows != n {
        return Err(MetricsError::RaggedRows {
            what: "data (for the given n)",
            len: data.len(),
            dim,
        });
    }
    if k == 0 {
        return Err(MetricsError::ZeroK {
            what: "the number of clusters",
        });
    }
    if k > n {
        return Err(MetricsError::TooManyClusters { k, n });
    }
    let norms = squared_norms(data, dim);
    let q = QueryRows {
        data,
        aux: &norms,
        dim,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (centres, mut assign) = self::seed(data, n, dim, &norms, k, local_trials(k), &mut rng);
    let mut centroids = gather(data, dim, centres.into_iter());
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        let next = update_centroids(data, dim, k, &assign, &centroids);
        iterations += 1;
        let moved: Vec<u32> = (0..k as u32)
            .filter(|&c| {
                let r = c as usize * dim..(c as usize + 1) * dim;
                next[r.clone()]
                    .iter()
                    .zip(&centroids[r])
                    .any(|(a, b)| a.to_bits() != b.to_bits())
            })
            .collect();
        if moved.is_empty() {
            converged = true;
            break;
        }
        let cnorms = squared_norms(&next, dim);
        let fresh = reassign(q, &next, &cnorms, &moved, &assign);
        let changed = fresh.iter().zip(&assign).any(|(a, b)| a.j != b.j);
        centroids = next;
        assign = fresh;
        if !changed {
            converged = true;
            break;
        }
    }
    let assignments: Vec<u32> = assign.iter().map(|b| b.j).collect();
    let inertia = inertia(data, dim, &centroids, &assignments);
    Ok(KMeans {
        assignments,
        centroids,
        inertia,
        iterations,
        converged,
    })
}

/// The clustering metric of the evaluation protocol: k-means with `k` = the
/// number of distinct labels, then NMI between labels and clusters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusteringMetrics {
    /// NMI, arithmetic normalisation (see [`nmi`](crate::nmi())).
    pub nmi: f64,
    /// Clusters used (distinct labels).
    pub clusters: usize,
    /// k-means inertia.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
    /// Whether k-means converged before [`KMEANS_MAX_ITER`].
    pub converged: bool,
    /// The k-means seed.
    pub seed: u64,
}

/// Clusters `embeddings` (row-major, `dim` columns) into as many clusters as
/// `labels` has distinct values with [`kmeans`] (`seed`,
/// [`KMEANS_MAX_ITER`]) and scores the clustering with [`nmi`](crate::nmi()).
pub fn clustering_nmi(
    embeddings: &[f32],
    labels: &[u32],
    dim: usize,
    seed: u64,
) -> Result<ClusteringMetrics, MetricsError> {
    let n = check_rows("embeddings", embeddings, dim)?;
    if labels.len() != n {
        return Err(MetricsError::LabelCount {
            what: "labels",
            got: labels.len(),
            rows: n,
        });
    }
    let mut distinct = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let km = kmeans(embeddings, n, dim, distinct.len(), seed, KMEANS_MAX_ITER)?;
    Ok(ClusteringMetrics {
        nmi: nmi(labels, &km.assignments)?,
        clusters: distinct.len(),
        inertia: km.inertia,
        iterations: km.iterations,
        converged: km.converged,
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{combine, dot_seq};

    /// Gaussian-ish blobs: `classes` centres far apart, `per` points each.
    fn blobs(
        classes: usize,
        per: usize,
        dim: usize,
        spread: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<f32> = (0..classes * dim)
            .map(|_| rng.gen_range(-100.0f32..100.0))
            .collect();
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..classes * per {
            // Interleave classes so cluster structure is not index order.
            let c = i % classes;
            for p in 0..dim {
                x.push(centres[c * dim + p] + spread * (rng.gen::<f32>() + rng.gen::<f32>() - 1.0));
            }
            y.push(c as u32);
        }
        (x, y)
    }

    /// The exact nearest centroid by brute force with the engine's formula.
    fn nearest(x: &[f32], centroids: &[f32], dim: usize) -> Vec<u32> {
        x.chunks(dim)
            .map(|p| {
                let mut best = Best1::EMPTY;
                for (c, cen) in centroids.chunks(dim).enumerate() {
                    use crate::kernel::RowSink;
                    best.offer(
                        combine(dot_seq(p, p), dot_seq(cen, cen), -2.0, dot_seq(p, cen)),
                        c as u32,
                    );
                }
                best.j
            })
            .collect()
    }

    #[test]
    fn recovers_well_separated_blobs() {
        for &(classes, per, dim) in &[(5usize, 40usize, 2usize), (60, 8, 16), (200, 5, 32)] {
            let (x, y) = blobs(classes, per, dim, 1.0, 7);
            let km = kmeans(&x, classes * per, dim, classes, 0, KMEANS_MAX_ITER).unwrap();
            assert!(km.converged);
            assert_eq!(nmi(&y, &km.assignments).unwrap(), 1.0, "{classes} classes");
            let m = clustering_nmi(&x, &y, dim, 0).unwrap();
            assert_eq!((m.nmi, m.clusters), (1.0, classes));
        }
    }

    #[test]
    fn inertia_and_assignments_are_consistent() {
        let (x, _) = blobs(12, 30, 8, 40.0, 3);
        let n = 360;
        let km = kmeans(&x, n, 8, 12, 5, KMEANS_MAX_ITER).unwrap();
        assert_eq!(km.assignments, nearest(&x, &km.centroids, 8));
        let mut want = 0.0f64;
        for (i, p) in x.chunks(8).enumerate() {
            let c = &km.centroids[km.assignments[i] as usize * 8..][..8];
            want += p
                .iter()
                .zip(c)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>();
        }
        assert!(
            (km.inertia - want).abs() <= 1e-9 * want,
            "{} vs {}",
            km.inertia,
            want
        );
        // Converged: each centroid is its cluster's mean.
        assert!(km.converged);
        for c in 0..12 {
            let members: Vec<usize> = (0..n).filter(|&i| km.assignments[i] == c as u32).collect();
            assert!(!members.is_empty());
            for p in 0..8 {
                let mean = members
                    .iter()
                    .map(|&i| f64::from(x[i * 8 + p]))
                    .sum::<f64>()
                    / members.len() as f64;
                assert_eq!(km.centroids[c * 8 + p], mean as f32);
            }
        }
    }

    #[test]
    fn incremental_lloyd_equals_full_lloyd() {
        // Re-run the same iterations with a full search every step.
        let (x, _) = blobs(40, 10, 6, 60.0, 9);
        let (n, dim, k) = (400, 6, 40);
        for max_iter in [0usize, 1, 2, 5, 50] {
            let km = kmeans(&x, n, dim, k, 11, max_iter).unwrap();
            let norms = squared_norms(&x, dim);
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let (centres, mut assign) = seed(&x, n, dim, &norms, k, local_trials(k), &mut rng);
            let mut cents = gather(&x, dim, centres.into_iter());
            assert_eq!(
                assign.iter().map(|b| b.j).collect::<Vec<_>>(),
                nearest(&x, &cents, dim)
            );
            for _ in 0..km.iterations {
                let next = update_centroids(&x, dim, k, &assign, &cents);
                let labels = nearest(&x, &next, dim);
                cents = next;
                assign = labels
                    .iter()
                    .enumerate()
                    .map(|(i, &j)| {
                        let (p, c) = (
                            &x[i * dim..(i + 1) * dim],
                            &cents[j as usize * dim..(j as usize + 1) * dim],
                        );
                        Best1 {
                            d: combine(dot_seq(p, p), dot_seq(c, c), -2.0, dot_seq(p, c)),
                            j,
                        }
                    })
                    .collect();
            }
            assert_eq!(
                km.assignments,
                assign.iter().map(|b| b.j).collect::<Vec<_>>(),
                "max_iter {max_iter}"
            );
            assert_eq!(km.centroids, cents);
        }
    }

    /// The exact law of (greedy) k-means++ for k = 3 on a few points,
    /// enumerated: P(c1, c2, c3).
    fn greedy_law(x: &[f32], dim: usize, trials: usize) -> Vec<f64> {
        let n = x.len() / dim;
        let row = |i: usize| &x[i * dim..(i + 1) * dim];
        let d2: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        combine(
                            dot_seq(row(i), row(i)),
                            dot_seq(row(j), row(j)),
                            -2.0,
                            dot_seq(row(i), row(j)),
                        )
                    })
                    .collect()
            })
            .collect();
        // Distribution of the pick among `trials` i.i.d. draws ∝ D: the one
        // with the lowest potential (asserted distinct, so no tie rule).
        let pick = |dd: &[f32]| -> Vec<f64> {
            let total: f64 = dd.iter().map(|&v| f64::from(v)).sum();
            let w: Vec<f64> = dd.iter().map(|&v| f64::from(v) / total).collect();
            let pot: Vec<f64> = (0..n)
                .map(|c| (0..n).map(|i| f64::from(dd[i].min(d2[c][i]))).sum())
                .collect();
            for b in 0..n {
                for c in 0..b {
                    if w[b] > 0.0 && w[c] > 0.0 {
                        let scale = pot[b].abs().max(pot[c].abs());
                        assert!((pot[b] - pot[c]).abs() > 1e-3 * scale, "tied potentials");
                    }
                }
            }
            (0..n)
                .map(|b| {
                    if w[b] == 0.0 {
                        return 0.0;
                    }
                    let s: f64 = (0..n).filter(|&c| pot[c] >= pot[b]).map(|c| w[c]).sum();
                    s.powi(trials as i32) - (s - w[b]).powi(trials as i32)
                })
                .collect()
        };
        let mut law = vec![0.0; n * n * n];
        for a in 0..n {
            let da = d2[a].clone();
            let pb = pick(&da);
            for b in 0..n {
                if pb[b] == 0.0 {
                    continue;
                }
                let dab: Vec<f32> = (0..n).map(|i| da[i].min(d2[b][i])).collect();
                let pc = pick(&dab);
                for c in 0..n {
                    law[(a * n + b) * n + c] += pb[b] * pc[c] / n as f64;
                }
            }
        }
        law
    }

    #[test]
    fn seeding_follows_the_greedy_kmeanspp_law() {
        // Chosen so that no two candidates ever have (nearly) equal
        // potentials (`greedy_law` checks): under a tie, which one wins is
        // down to rounding, in scikit-learn as here.
        let x = [
            3.0f32, 1.3, 4.2, 4.0, 8.4, 6.8, 3.2, 5.3, 3.1, 8.1, 4.9, 5.6,
        ];
        let (n, dim, runs) = (6usize, 2usize, 20_000usize);
        let norms = squared_norms(&x, dim);
        for trials in [1usize, 3] {
            let law = greedy_law(&x, dim, trials);
            let mut seen = vec![0usize; n * n * n];
            for s in 0..runs as u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(s);
                let (c, best) = seed(&x, n, dim, &norms, 3, trials, &mut rng);
                assert_eq!(
                    best.iter().map(|b| b.j).collect::<Vec<_>>(),
                    nearest(&x, &gather(&x, dim, c.iter().copied()), dim)
                );
                seen[(c[0] * n + c[1]) * n + c[2]] += 1;
            }
            for (cell, (&p, &count)) in law.iter().zip(&seen).enumerate() {
                let freq = count as f64 / runs as f64;
                let tol = 4.5 * (p * (1.0 - p) / runs as f64).sqrt() + 2.0 / runs as f64;
                assert!(
                    (freq - p).abs() <= tol,
                    "trials {trials}, cell {cell}: {freq} vs {p}"
                );
            }
        }
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let (x, _) = blobs(50, 20, 12, 80.0, 4);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| kmeans(&x, 1000, 12, 50, 42, KMEANS_MAX_ITER).unwrap())
        };
        let one = run(1);
        let two = run(2);
        assert_eq!(one, two);
        assert_eq!(one.inertia.to_bits(), two.inertia.to_bits());
        // A different seed is a different run.
        let other = kmeans(&x, 1000, 12, 50, 43, KMEANS_MAX_ITER).unwrap();
        assert_ne!(other.assignments, one.assignments);
    }

    #[test]
    fn k_equals_n_puts_each_point_alone() {
        let (x, _) = blobs(7, 3, 4, 5.0, 2);
        let km = kmeans(&x, 21, 4, 21, 1, KMEANS_MAX_ITER).unwrap();
        let mut seen = km.assignments.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 21);
        assert_eq!(km.inertia, 0.0);
    }

    #[test]
    fn duplicates_and_fewer_distinct_points_than_k() {
        // Three distinct points, each repeated; k = 5 > 3 distinct.
        let base = [[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0]];
        let x: Vec<f32> = (0..12).flat_map(|i| base[i % 3]).collect();
        let km = kmeans(&x, 12, 2, 5, 3, KMEANS_MAX_ITER).unwrap();
        assert_eq!(km.inertia, 0.0);
        assert!(km.converged);
        assert_eq!(km.assignments, nearest(&x, &km.centroids, 2));
        let truth: Vec<u32> = (0..12).map(|i| (i % 3) as u32).collect();
        assert_eq!(nmi(&truth, &km.assignments).unwrap(), 1.0);
        // All points identical, k = n.
        let same = vec![1.5f32; 8];
        let km = kmeans(&same, 4, 2, 4, 0, KMEANS_MAX_ITER).unwrap();
        assert_eq!(km.inertia, 0.0);
        assert!(km.centroids.iter().all(|&v| v == 1.5));
        // Duplicated blobs still recovered.
        let (mut x, mut y) = blobs(10, 6, 3, 1.0, 5);
        x.extend(x.clone());
        y.extend(y.clone());
        let km = kmeans(&x, 120, 3, 10, 8, KMEANS_MAX_ITER).unwrap();
        assert_eq!(nmi(&y, &km.assignments).unwrap(), 1.0);
    }

    #[test]
    fn empty_clusters_are_reseeded_from_far_points() {
        // Centroids 0 and 1 both start on the left group; after the first
        // update one of them is empty and must be moved to the farthest point.
        let x = [0.0f32, 0.1, 0.2, 100.0];
        let assign = [
            Best1 { d: 0.0, j: 0 },
            Best1 { d: 0.01, j: 0 },
            Best1 { d: 0.04, j: 0 },
            Best1 { d: 9e3, j: 0 },
        ];
        let c = update_centroids(&x, 1, 2, &assign, &[0.0, 0.0]);
        assert_eq!(c, vec![0.1, 100.0]);
    }

    #[test]
    fn refuses_bad_input() {
        let x = [0.0f32; 6];
        assert!(matches!(
            kmeans(&x, 3, 2, 4, 0, 10),
            Err(MetricsError::TooManyClusters { k: 4, n: 3 })
        ));
        assert!(matches!(
            kmeans(&x, 3, 2, 0, 0, 10),
            Err(MetricsError::ZeroK { .. })
        ));
        assert!(matches!(
            kmeans(&x, 4, 2, 1, 0, 10),
            Err(MetricsError::RaggedRows { .. })
        ));
        assert!(matches!(
            clustering_nmi(&x, &[0, 1], 2, 0),
            Err(MetricsError::LabelCount { .. })
        ));
    }
}
