//! Retrieval metrics from ranked neighbours: Recall@K, MAP@R and R-precision,
//! and the one-call evaluations that search and score in a single pass.
//!
//! Definitions (Musgrave et al., "A Metric Learning Reality Check", 2020):
//! a gallery item is *relevant* to a query when it has the query's label;
//! `R_q` is the number of relevant gallery items the query can retrieve (its
//! own row excluded under leave-one-out).
//!
//! * Recall@K: the fraction of queries with at least one relevant item among
//!   their K nearest, over the queries that have a relevant item at all (as
//!   pytorch-metric-learning does). [`RetrievalMetrics::recall_all_queries`]
//!   holds the other convention, where a query with no relevant item counts as
//!   a miss.
//! * R-precision: relevant items among the `R_q` nearest, divided by `R_q`.
//! * MAP@R: `(1/R_q) · Σ_{i ≤ R_q} rel(i) · P@i`, where `P@i` is the fraction
//!   of relevant items among the `i` nearest.
//!
//! R-precision and MAP@R are averaged over the queries with `R_q ≥ 1`; the
//! others are counted in [`RetrievalMetrics::queries_without_positives`].

use crate::error::MetricsError;
use crate::kernel::{key, key_dist, key_index, RowSink, TopK};
use crate::knn::{Distance, Exclude, Neighbors, Search, SYMMETRIC_SINK_BYTES};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Recall@K cut-offs of the CUB-200-2011 protocol.
pub const CUB_KS: [usize; 4] = [1, 2, 4, 8];
/// Recall@K cut-offs of the Stanford Online Products protocol.
pub const SOP_KS: [usize; 4] = [1, 10, 100, 1000];
/// Recall@K cut-offs of the In-shop Clothes protocol.
pub const INSHOP_KS: [usize; 6] = [1, 10, 20, 30, 40, 50];

/// Retrieval quality of one embedding under one protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalMetrics {
    /// `(K, Recall@K)` in the order the cut-offs were given, as fractions in
    /// `[0, 1]`, over the queries with at least one relevant gallery item.
    pub recall: Vec<(usize, f64)>,
    /// `(K, Recall@K)` over every query: one without a relevant gallery item
    /// counts as a miss.
    pub recall_all_queries: Vec<(usize, f64)>,
    /// MAP@R averaged over queries with at least one relevant gallery item
    /// (0 when there are none: see `queries_without_positives`).
    pub map_at_r: f64,
    /// R-precision averaged over the same queries.
    pub r_precision: f64,
    /// Number of queries.
    pub queries: usize,
    /// Number of gallery items.
    pub gallery: usize,
    /// Queries with no relevant gallery item, left out of Recall@K, MAP@R and
    /// R-precision (counted as misses in `recall_all_queries`).
    pub queries_without_positives: usize,
}

impl RetrievalMetrics {
    /// Recall@`k`, if `k` was one of the cut-offs.
    pub fn recall_at(&self, k: usize) -> Option<f64> {
        self.recall.iter().find(|(kk, _)| *kk == k).map(|&(_, r)| r)
    }
}

/// What one query contributes.
#[derive(Clone, Copy, Debug)]
struct QueryScore {
    /// Rank (0-based) of the first relevant neighbour, `usize::MAX` if none
    /// among the ranked ones.
    first_hit: usize,
    /// `R_q`.
    r: usize,
    /// Average precision at R (meaningful when `r > 0`).
    ap: f64,
    /// R-precision (meaningful when `r > 0`).
    r_precision: f64,
}

/// MAP@R and R-precision terms from the first `r` ranked gallery items.
fn precision_at_r(
    label: u32,
    r: usize,
    ranked: impl Iterator<Item = u32>,
    g_labels: &[u32],
) -> (f64, f64) {
    if r == 0 {
        return (0.0, 0.0);
    }
    let mut hits = 0usize;
    let mut ap = 0.0f64;
    for (i, j) in ranked.take(r).enumerate() {
        if g_labels[j as usize] == label {
            hits += 1;
            ap += hits as f64 / (i + 1) as f64;
        }
    }
    (ap / r as f64, hits as f64 / r as f64)
}

/// Scores a query from its ranked neighbours (at least `max(ks)` and `r`).
fn score_query(label: u32, r: usize, ranked: &[u32], g_labels: &[u32]) -> QueryScore {
    let first_hit = ranked
        .iter()
        .position(|&j| g_labels[j as usize] == label)
        .unwrap_or(usize::MAX);
    let (ap, r_precision) = precision_at_r(label, r, ranked.iter().copied(), g_labels);
    QueryScore {
        first_hit,
        r,
        ap,
        r_precision,
    }
}

/// Everything the one-pass evaluation needs from a query's scan, without its
/// neighbour list: the rank of its nearest relevant item (by counting the
/// items that rank before it, up to `max(ks)`), and its `R_q` nearest items
/// (for MAP@R and R-precision).
///
/// The kernel threshold is the larger of the nearest relevant item's distance
/// (while counting) and the top-`R_q` selection's, so a query whose nearest
/// relevant item is its nearest neighbour (most of them, for a trained
/// embedding) lets through almost nothing.
struct RankSink {
    /// `key` of the nearest relevant gallery item (`u64::MAX`: none).
    positive: u64,
    /// Items ranked before it, so far.
    before: usize,
    /// Stop counting at this many (then it is a miss for every cut-off).
    cap: usize,
    counting: bool,
    /// `R_q`; `top` is used only when it is positive.
    r: usize,
    top: TopK,
    thr: f32,
}

impl RankSink {
    fn new() -> Self {
        RankSink {
            positive: u64::MAX,
            before: 0,
            cap: 0,
            counting: false,
            r: 0,
            top: TopK::new(1),
            thr: f32::NEG_INFINITY,
        }
    }

    fn reset(&mut self, positive: Option<u64>, cap: usize, r: usize) {
        self.positive = positive.unwrap_or(u64::MAX);
        self.before = 0;
        self.cap = cap;
        self.counting = positive.is_some();
        self.r = r;
        if r > 0 {
            self.top.reset(r);
        }
        self.update_threshold();
    }

    #[inline(always)]
    fn update_threshold(&mut self) {
        let count = if self.counting {
            key_dist(self.positive)
        } else {
            f32::NEG_INFINITY
        };
        let top = if self.r > 0 {
            self.top.threshold()
        } else {
            f32::NEG_INFINITY
        };
        self.thr = if count > top { count } else { top };
    }
}

impl RowSink for RankSink {
    #[inline(always)]
    fn threshold(&self) -> f32 {
        self.thr
    }
    #[inline(always)]
    fn offer(&mut self, d: f32, j: u32) {
        if self.counting && key(d, j) < self.positive {
            self.before += 1;
            if self.before >= self.cap {
                self.counting = false;
            }
        }
        if self.r > 0 {
            self.top.offer(d, j);
        }
        self.update_threshold();
    }
}

/// Validated labels: `R_q` for every query, and the search depth needed.
struct Relevance {
    r: Vec<usize>,
    max_k: usize,
}

fn relevance(
    q_labels: &[u32],
    g_labels: &[u32],
    nq: usize,
    ng: usize,
    ks: &[usize],
    exclude: Exclude,
) -> Result<Relevance, MetricsError> {
    if q_labels.len() != nq {
        return Err(MetricsError::LabelCount {
            what: "query labels",
            got: q_labels.len(),
            rows: nq,
        });
    }
    if g_labels.len() != ng {
        return Err(MetricsError::LabelCount {
            what: "gallery labels",
            got: g_labels.len(),
            rows: ng,
        });
    }
    if ks.is_empty() || ks.contains(&0) {
        return Err(MetricsError::ZeroK {
            what: "every Recall@K cut-off (and at least one)",
        });
    }
    let max_k = ks.iter().copied().max().unwrap_or(1);
    let available = exclude.available(ng);
    if max_k > available {
        return Err(MetricsError::KTooLarge {
            k: max_k,
            available,
            gallery: ng,
            leave_one_out: exclude == Exclude::SameIndex,
        });
    }
    if exclude == Exclude::SameIndex && nq != ng {
        return Err(MetricsError::LeaveOneOutShape {
            queries: nq,
            gallery: ng,
        });
    }
    let mut class_size: HashMap<u32, usize> = HashMap::new();
    for &l in g_labels {
        *class_size.entry(l).or_default() += 1;
    }
    let r = q_labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let total = class_size.get(l).copied().unwrap_or(0);
            let own = usize::from(exclude == Exclude::SameIndex && g_labels[i] == *l);
            total - own
        })
        .collect();
    Ok(Relevance { r, max_k })
}

fn summarize(scores: &[QueryScore], ks: &[usize], gallery: usize) -> RetrievalMetrics {
    let nq = scores.len();
    // Sums in query order: the same bits on any thread count.
    let with = scores.iter().filter(|s| s.r > 0);
    let counted = with.clone().count();
    let fraction = |hits: usize, of: usize| if of > 0 { hits as f64 / of as f64 } else { 0.0 };
    // A query without a relevant item never hits, so the hit counts are the same
    // under both conventions; only the denominators differ.
    let hits: Vec<usize> = ks
        .iter()
        .map(|&k| scores.iter().filter(|s| s.first_hit < k).count())
        .collect();
    let recall = ks
        .iter()
        .zip(&hits)
        .map(|(&k, &h)| (k, fraction(h, counted)))
        .collect();
    let recall_all_queries = ks
        .iter()
        .zip(&hits)
        .map(|(&k, &h)| (k, fraction(h, nq)))
        .collect();
    let (ap, rp) = with.fold((0.0f64, 0.0f64), |(a, p), s| (a + s.ap, p + s.r_precision));
    let (map_at_r, r_precision) = if counted > 0 {
        (ap / counted as f64, rp / counted as f64)
    } else {
        (0.0, 0.0)
    };
    RetrievalMetrics {
        recall,
        recall_all_queries,
        map_at_r,
        r_precision,
        queries: nq,
        gallery,
        queries_without_positives: nq - counted,
    }
}

/// Retrieval metrics from neighbours already found by [`knn`](crate::knn()).
///
/// `neighbors` must rank at least `max(ks)` and `max_q R_q` items per query
/// (else [`MetricsError::KTooLarge`], naming the depth needed) and must have
/// been searched with the same `exclude`. `g_labels` gives each gallery row's
/// class, `q_labels` each query's.
pub fn retrieval_metrics(
    neighbors: &Neighbors,
    q_labels: &[u32],
    g_labels: &[u32],
    ks: &[usize],
    exclude: Exclude,
) -> Result<RetrievalMetrics, MetricsError> {
    let nq = neighbors.queries();
    let ng = g_labels.len();
    let rel = relevance(q_labels, g_labels, nq, ng, ks, exclude)?;
    let need = rel.max_k.max(rel.r.iter().copied().max().unwrap_or(0));
    if neighbors.k < need {
        return Err(MetricsError::KTooLarge {
            k: need,
            available: neighbors.k,
            gallery: ng,
            leave_one_out: false,
        });
    }
    if let Some(&j) = neighbors.idx.iter().find(|&&j| j as usize >= ng) {
        return Err(MetricsError::LabelCount {
            what: "gallery labels",
            got: ng,
            rows: j as usize + 1,
        });
    }
    let scores: Vec<QueryScore> = (0..nq)
        .into_par_iter()
        .map(|i| score_query(q_labels[i], rel.r[i], &neighbors.row(i).0[..need], g_labels))
        .collect();
    Ok(summarize(&scores, ks, ng))
}

/// Searches and scores in one pass: Recall@K for each `K` in `ks`, MAP@R and
/// R-precision of `queries` against `gallery`.
///
/// The result is exactly what [`retrieval_metrics`] gives on the output of
/// [`knn`](crate::knn()) with depth `max(max(ks), max_q R_q)` (same
/// distances, same tie order), but the neighbour lists are never built: each
/// query's scan keeps only its `R_q` nearest items and counts the items
/// ranked before its nearest relevant one (up to `max(ks)`), which is all
/// that Recall@K, MAP@R and R-precision read. With a trained embedding most
/// queries' nearest relevant item is near the top, so almost every candidate
/// is rejected by one comparison inside the distance kernel, and the search
/// costs about as much as the distance computation alone. Memory is the
/// packed gallery plus per-thread block buffers.
///
/// Under leave-one-out of a matrix against itself (`queries` and `gallery`
/// the same rows), each pair's distance is computed once and offered to both
/// of its rows, which halves the arithmetic; every row's selection buffer is
/// then held at once (up to 512 MiB of them; beyond that, classes of many
/// thousands of items at a large scale, the scan goes block by block).
///
/// * `queries`/`gallery`: row-major, `dim` columns; `q_labels`/`g_labels`: one
///   class per row.
/// * `ks`: at least one cut-off, none zero, none above the gallery items a
///   query can rank.
/// * `exclude`: [`Exclude::None`] for query → gallery protocols,
///   [`Exclude::SameIndex`] for leave-one-out (then `queries` and `gallery`
///   are the same rows, normally the same slice).
///
/// The protocol wrappers [`evaluate_query_gallery`] and
/// [`evaluate_leave_one_out`] fill in the last two arguments. Runs on the
/// current rayon pool; the result does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_retrieval(
    queries: &[f32],
    gallery: &[f32],
    q_labels: &[u32],
    g_labels: &[u32],
    dim: usize,
    ks: &[usize],
    distance: Distance,
    exclude: Exclude,
) -> Result<RetrievalMetrics, MetricsError> {
    let search = Search::new(queries, gallery, dim, distance, exclude)?;
    evaluate_within(&search, q_labels, g_labels, ks, SYMMETRIC_SINK_BYTES)
}

/// [`evaluate_retrieval`] on a prepared search, with the symmetric scan allowed
/// `sink_budget` bytes of selection buffers.
fn evaluate_within(
    search: &Search<'_>,
    q_labels: &[u32],
    g_labels: &[u32],
    ks: &[usize],
    sink_budget: usize,
) -> Result<RetrievalMetrics, MetricsError> {
    let rel = relevance(
        q_labels,
        g_labels,
        search.queries(),
        search.gallery(),
        ks,
        search.exclude(),
    )?;
    // Gallery rows grouped by class, each group in index order.
    let mut by_class: Vec<u32> = (0..g_labels.len() as u32).collect();
    by_class.sort_unstable_by_key(|&j| (g_labels[j as usize], j));
    let mut class_rows: HashMap<u32, std::ops::Range<usize>> = HashMap::new();
    let mut s = 0;
    while s < by_class.len() {
        let l = g_labels[by_class[s] as usize];
        let e = s + by_class[s..]
            .iter()
            .take_while(|&&j| g_labels[j as usize] == l)
            .count();
        class_rows.insert(l, s..e);
        s = e;
    }
    let nearest_positive = nearest_positives(search, q_labels, &by_class, &class_rows);
    let score = |sink: &mut RankSink, i: usize| {
        let first_hit = if sink.positive == u64::MAX || sink.before >= sink.cap {
            usize::MAX
        } else {
            sink.before
        };
        let (ap, r_precision) = if sink.r > 0 {
            let top = sink.top.finish();
            if top.len() < sink.r {
                return Err(MetricsError::DistanceOverflow { row: i });
            }
            precision_at_r(
                q_labels[i],
                sink.r,
                top.iter().map(|&e| key_index(e)),
                g_labels,
            )
        } else {
            (0.0, 0.0)
        };
        Ok(QueryScore {
            first_hit,
            r: sink.r,
            ap,
            r_precision,
        })
    };
    // The symmetric scan holds every row's sink at once; it is used when
    // their selection buffers fit in the budget.
    let sink_bytes: usize = rel.r.iter().map(|&r| TopK::capacity(r.max(1)) * 8).sum();
    if search.symmetric() && sink_bytes <= sink_budget {
        let mut sinks: Vec<RankSink> = (0..search.queries())
            .into_par_iter()
            .map(|i| {
                let mut sink = RankSink::new();
                sink.reset(nearest_positive[i], rel.max_k, rel.r[i]);
                sink
            })
            .collect();
        search.scan_symmetric(&mut sinks);
        let scores: Vec<QueryScore> = sinks
            .par_iter_mut()
            .enumerate()
            .map(|(i, sink)| score(sink, i))
            .collect::<Result<_, MetricsError>>()?;
        return Ok(summarize(&scores, ks, search.gallery()));
    }
    let blocks: Vec<Vec<QueryScore>> = (0..search.blocks())
        .into_par_iter()
        .map_init(Vec::<RankSink>::new, |sinks, b| {
            let rows = search.block_rows(b);
            sinks.resize_with(rows.len(), RankSink::new);
            sinks.truncate(rows.len());
            for (sink, i) in sinks.iter_mut().zip(rows.clone()) {
                sink.reset(nearest_positive[i], rel.max_k, rel.r[i]);
            }
            search.scan(b, sinks);
            sinks
                .iter_mut()
                .zip(rows)
                .map(|(sink, i)| score(sink, i))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, MetricsError>>()?;
    let scores: Vec<QueryScore> = blocks.into_iter().flatten().collect();
    Ok(summarize(&scores, ks, search.gallery()))
}

/// Each query's nearest positive as a [`key`] (`None` when its class has no gallery item
/// it may retrieve): every class's gallery items are packed once and scanned, with the
/// search's own kernel, by the queries of that class only, so the distances are the bits
/// the full scan gives the same pairs.
fn nearest_positives(
    search: &Search<'_>,
    q_labels: &[u32],
    by_class: &[u32],
    class_rows: &HashMap<u32, std::ops::Range<usize>>,
) -> Vec<Option<u64>> {
    let mut queries: Vec<u32> = (0..q_labels.len() as u32).collect();
    queries.sort_unstable_by_key(|&i| (q_labels[i as usize], i));
    let groups: Vec<&[u32]> = queries
        .chunk_by(|a, b| q_labels[*a as usize] == q_labels[*b as usize])
        .collect();
    let found: Vec<Vec<(u32, u64)>> = groups
        .into_par_iter()
        .map(|rows| {
            let Some(members) = class_rows.get(&q_labels[rows[0] as usize]) else {
                return Vec::new();
            };
            // Ascending already: `by_class` is sorted by (label, index).
            let ids = by_class[members.clone()].to_vec();
            let mut sinks = vec![MinSink(u64::MAX); rows.len()];
            search.scan_subset(&ids, rows, &mut sinks);
            rows.iter()
                .zip(sinks)
                .filter(|(_, s)| s.0 != u64::MAX)
                .map(|(&i, s)| (i, s.0))
                .collect()
        })
        .collect();
    let mut out = vec![None; q_labels.len()];
    for (i, k) in found.into_iter().flatten() {
        out[i as usize] = Some(k);
    }
    out
}

/// Keeps the smallest [`key`] offered.
#[derive(Clone, Copy)]
struct MinSink(u64);

impl RowSink for MinSink {
    fn threshold(&self) -> f32 {
        if self.0 == u64::MAX {
            f32::INFINITY
        } else {
            key_dist(self.0)
        }
    }
    fn offer(&mut self, d: f32, j: u32) {
        self.0 = self.0.min(key(d, j));
    }
}

/// The query → gallery protocol (In-shop Clothes): each query ranks the whole
/// gallery, nothing excluded.
pub fn evaluate_query_gallery(
    queries: &[f32],
    q_labels: &[u32],
    gallery: &[f32],
    g_labels: &[u32],
    dim: usize,
    ks: &[usize],
    distance: Distance,
) -> Result<RetrievalMetrics, MetricsError> {
    evaluate_retrieval(
        queries,
        gallery,
        q_labels,
        g_labels,
        dim,
        ks,
        distance,
        Exclude::None,
    )
}

/// The leave-one-out protocol (CUB-200-2011, Stanford Online Products, and
/// the seed's merged In-shop compatibility protocol): every row queries all
/// the others.
pub fn evaluate_leave_one_out(
    embeddings: &[f32],
    labels: &[u32],
    dim: usize,
    ks: &[usize],
    distance: Distance,
) -> Result<RetrievalMetrics, MetricsError> {
    evaluate_retrieval(
        embeddings,
        embeddings,
        labels,
        labels,
        dim,
        ks,
        distance,
        Exclude::SameIndex,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knn::knn;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Textbook scoring from an explicit full ranking.
    fn reference(
        ranking: &[Vec<u32>],
        q_labels: &[u32],
        g_labels: &[u32],
        ks: &[usize],
        loo: bool,
    ) -> RetrievalMetrics {
        let nq = ranking.len();
        let mut recall = vec![0usize; ks.len()];
        let (mut map, mut rp, mut counted) = (0.0, 0.0, 0usize);
        for (i, rank) in ranking.iter().enumerate() {
            let rel: Vec<bool> = rank
                .iter()
                .map(|&j| g_labels[j as usize] == q_labels[i])
                .collect();
            for (t, &k) in ks.iter().enumerate() {
                if rel[..k].iter().any(|&x| x) {
                    recall[t] += 1;
                }
            }
            let r = g_labels
                .iter()
                .enumerate()
                .filter(|&(j, &l)| l == q_labels[i] && !(loo && j == i))
                .count();
            if r == 0 {
                continue;
            }
            counted += 1;
            let mut ap = 0.0;
            for i in 0..r {
                if rel[i] {
                    let p_at_i = rel[..=i].iter().filter(|&&x| x).count() as f64 / (i + 1) as f64;
                    ap += p_at_i;
                }
            }
            map += ap / r as f64;
            rp += rel[..r].iter().filter(|&&x| x).count() as f64 / r as f64;
        }
        RetrievalMetrics {
            recall: ks
                .iter()
                .zip(&recall)
                .map(|(&k, &c)| {
                    (
                        k,
                        if counted > 0 {
                            c as f64 / counted as f64
                        } else {
                            0.0
                        },
                    )
                })
                .collect(),
            recall_all_queries: ks
                .iter()
                .zip(&recall)
                .map(|(&k, &c)| (k, c as f64 / nq as f64))
                .collect(),
            map_at_r: if counted > 0 {
                map / counted as f64
            } else {
                0.0
            },
            r_precision: if counted > 0 {
                rp / counted as f64
            } else {
                0.0
            },
            queries: nq,
            gallery: g_labels.len(),
            queries_without_positives: nq - counted,
        }
    }

    fn close(a: &RetrievalMetrics, b: &RetrievalMetrics) {
        assert_eq!(a.queries, b.queries);
        assert_eq!(a.gallery, b.gallery);
        assert_eq!(a.queries_without_positives, b.queries_without_positives);
        assert_eq!(a.recall.len(), b.recall.len());
        for (x, y) in a
            .recall
            .iter()
            .zip(&b.recall)
            .chain(a.recall_all_queries.iter().zip(&b.recall_all_queries))
        {
            assert_eq!(x.0, y.0);
            assert!((x.1 - y.1).abs() < 1e-12, "{a:?} vs {b:?}");
        }
        assert!((a.map_at_r - b.map_at_r).abs() < 1e-12, "{a:?} vs {b:?}");
        assert!(
            (a.r_precision - b.r_precision).abs() < 1e-12,
            "{a:?} vs {b:?}"
        );
    }

    #[test]
    fn hand_computed_example() {
        // 1-d points; labels A=0, B=1. Query 0.0 (label A) against gallery:
        //   idx: 0     1     2     3     4
        //   x:   0.1   0.2   0.3   0.4   5.0
        //   lab: B     A     B     A     A
        // Ranking: 0(B) 1(A) 2(B) 3(A) 4(A), and R = 3.
        // Recall@1 = 0, Recall@2 = 1. The first R are B A B: R-precision 1/3.
        // MAP@R = (1/3)(0·P@1 + 1·P@2 + 0·P@3) = (1/3)(1/2) = 1/6.
        let g = [0.1f32, 0.2, 0.3, 0.4, 5.0];
        let gl = [1u32, 0, 1, 0, 0];
        let m =
            evaluate_query_gallery(&[0.0], &[0], &g, &gl, 1, &[1, 2], Distance::Euclidean).unwrap();
        assert_eq!(m.recall, vec![(1, 0.0), (2, 1.0)]);
        assert!((m.r_precision - 1.0 / 3.0).abs() < 1e-15);
        assert!((m.map_at_r - 1.0 / 6.0).abs() < 1e-15);
        assert_eq!(m.queries_without_positives, 0);
    }

    #[test]
    fn leave_one_out_hand_example() {
        // Points on a line with labels; every row queries the others.
        //   idx: 0    1    2    3
        //   x:   0    1    3    10
        //   lab: 0    0    1    1
        // Row 0: ranks 1(0) 2(1) 3(1): R=1, AP=1, hit@1.
        // Row 1: ranks 0(0) 2(1) 3(1) (dist 1, 2, 9): R=1, AP=1, hit@1.
        // Row 2: ranks 1(0) 0(0) 3(1) (dist 2, 3, 7): R=1, AP=0, miss@1, hit@3.
        // Row 3: ranks 2(1) ...: R=1, AP=1.
        let x = [0.0f32, 1.0, 3.0, 10.0];
        let l = [0u32, 0, 1, 1];
        let m = evaluate_leave_one_out(&x, &l, 1, &[1, 2, 3], Distance::Euclidean).unwrap();
        assert_eq!(m.recall, vec![(1, 0.75), (2, 0.75), (3, 1.0)]);
        assert!((m.map_at_r - 0.75).abs() < 1e-15);
        assert!((m.r_precision - 0.75).abs() < 1e-15);
    }

    #[test]
    fn queries_without_positives_are_left_out_and_counted() {
        // Label 7 appears once: under leave-one-out it has no positive.
        let x = [0.0f32, 0.1, 5.0, 5.1, 9.0];
        let l = [1u32, 1, 2, 2, 7];
        let m = evaluate_leave_one_out(&x, &l, 1, &[1], Distance::Euclidean).unwrap();
        assert_eq!(m.queries_without_positives, 1);
        // Four queries have a positive and all four hit; counted as a miss, 4/5.
        assert_eq!(m.recall, vec![(1, 1.0)]);
        assert_eq!(m.recall_all_queries, vec![(1, 0.8)]);
        assert_eq!(m.map_at_r, 1.0);
        assert_eq!(m.r_precision, 1.0);
        // A query whose class is absent from the gallery.
        let m = evaluate_query_gallery(&[0.0], &[3], &x, &l, 1, &[1], Distance::Euclidean).unwrap();
        assert_eq!(
            (m.queries_without_positives, m.map_at_r, m.recall[0].1),
            (1, 0.0, 0.0)
        );
    }

    #[test]
    fn matches_reference_on_random_data() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (n, dim, classes) = (400usize, 6usize, 37u32);
        let labels: Vec<u32> = (0..n).map(|_| rng.gen_range(0..classes)).collect();
        let x: Vec<f32> = (0..n * dim)
            .map(|i| labels[i / dim] as f32 * 0.05 + rng.gen_range(-1.0f32..1.0))
            .collect();
        let ks = [1usize, 5, 20];
        for distance in [Distance::Euclidean, Distance::Cosine] {
            // Leave-one-out.
            let full = knn(&x, &x, dim, n - 1, distance, Exclude::SameIndex).unwrap();
            let ranking: Vec<Vec<u32>> = (0..n).map(|i| full.row(i).0.to_vec()).collect();
            let want = reference(&ranking, &labels, &labels, &ks, true);
            close(
                &evaluate_leave_one_out(&x, &labels, dim, &ks, distance).unwrap(),
                &want,
            );
            close(
                &retrieval_metrics(&full, &labels, &labels, &ks, Exclude::SameIndex).unwrap(),
                &want,
            );
            // Query → gallery on a split.
            let (q, g) = x.split_at(100 * dim);
            let (ql, gl) = labels.split_at(100);
            let full = knn(q, g, dim, n - 100, distance, Exclude::None).unwrap();
            let ranking: Vec<Vec<u32>> = (0..100).map(|i| full.row(i).0.to_vec()).collect();
            let want = reference(&ranking, ql, gl, &ks, false);
            close(
                &evaluate_query_gallery(q, ql, g, gl, dim, &ks, distance).unwrap(),
                &want,
            );
        }
    }

    #[test]
    fn one_pass_equals_scoring_full_neighbour_lists_with_ties() {
        // Coarse coordinates and repeated rows: many exactly tied distances,
        // so rank counting and top-R selection must break ties by index just
        // as the neighbour lists do.
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let (n, dim) = (700usize, 3usize);
        let mut x: Vec<f32> = (0..n * dim)
            .map(|_| rng.gen_range(-2i32..=2) as f32)
            .collect();
        for _ in 0..100 {
            let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
            let row = x[a * dim..(a + 1) * dim].to_vec();
            x[b * dim..(b + 1) * dim].copy_from_slice(&row);
        }
        let labels: Vec<u32> = (0..n).map(|_| rng.gen_range(0..90)).collect();
        for ks in [vec![1usize, 3, 10], vec![2], vec![1, 50, 300, 499]] {
            for distance in [Distance::Euclidean, Distance::Cosine] {
                let want_k = *ks.iter().max().unwrap();
                let depth = want_k.max(30);
                let nb = knn(&x, &x, dim, depth, distance, Exclude::SameIndex).unwrap();
                let want =
                    retrieval_metrics(&nb, &labels, &labels, &ks, Exclude::SameIndex).unwrap();
                let got = evaluate_leave_one_out(&x, &labels, dim, &ks, distance).unwrap();
                assert_eq!(got, want, "{ks:?} {distance:?}");
                // The block-by-block scan (no budget for the symmetric one's
                // buffers) and a copy of the matrix as the gallery: the same.
                let copy = x.clone();
                let blockwise = Search::new(&x, &copy, dim, distance, Exclude::SameIndex)
                    .and_then(|s| evaluate_within(&s, &labels, &labels, &ks, 0))
                    .unwrap();
                assert_eq!(blockwise, want, "{ks:?} {distance:?} block by block");
                let (q, g) = x.split_at(200 * dim);
                let (ql, gl) = labels.split_at(200);
                let nb = knn(q, g, dim, depth, distance, Exclude::None).unwrap();
                let want = retrieval_metrics(&nb, ql, gl, &ks, Exclude::None).unwrap();
                assert_eq!(
                    evaluate_query_gallery(q, ql, g, gl, dim, &ks, distance).unwrap(),
                    want
                );
            }
        }
    }

    #[test]
    fn refuses_bad_labels_and_cutoffs() {
        let x = [0.0f32, 1.0, 2.0];
        let l = [0u32, 0, 1];
        assert!(matches!(
            evaluate_leave_one_out(&x, &l[..2], 1, &[1], Distance::Euclidean),
            Err(MetricsError::LabelCount { .. })
        ));
        assert!(matches!(
            evaluate_leave_one_out(&x, &l, 1, &[], Distance::Euclidean),
            Err(MetricsError::ZeroK { .. })
        ));
        assert!(matches!(
            evaluate_leave_one_out(&x, &l, 1, &[0], Distance::Euclidean),
            Err(MetricsError::ZeroK { .. })
        ));
        assert!(matches!(
            evaluate_leave_one_out(&x, &l, 1, &[3], Distance::Euclidean),
            Err(MetricsError::KTooLarge {
                k: 3,
                available: 2,
                ..
            })
        ));
        let nb = knn(&x, &x, 1, 1, Distance::Euclidean, Exclude::SameIndex).unwrap();
        assert!(matches!(
            retrieval_metrics(&nb, &l, &l, &[2], Exclude::SameIndex),
            Err(MetricsError::KTooLarge { .. })
        ));
    }

    #[test]
    fn serializes_round_trip() {
        let m = RetrievalMetrics {
            recall: vec![(1, 0.5), (10, 0.75)],
            recall_all_queries: vec![(1, 0.5), (10, 0.75)],
            map_at_r: 0.25,
            r_precision: 0.375,
            queries: 4,
            gallery: 4,
            queries_without_positives: 0,
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<RetrievalMetrics>(&s).unwrap(), m);
    }
}
