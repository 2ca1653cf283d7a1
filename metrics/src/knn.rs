//! Exact k-nearest-neighbour search over a gallery, in bounded memory.
//!
//! [`knn`] ranks every gallery item for every query with the fused engine of
//! the `kernel` module: the gallery is packed once, queries are scanned in
//! blocks of [`QUERY_BLOCK`] rows in parallel (rayon), and each row keeps its
//! `k` best in a threshold-filtered buffer. Peak memory is the packed gallery,
//! the output, and per-thread block buffers: never the `queries × gallery`
//! distance matrix (14.6 GB at SOP scale).

use crate::error::MetricsError;
use crate::kernel::{
    key_dist, key_index, normalized_rows, squared_norms, PackedGallery, PackedRows, QueryRows,
    RowSink, Rows, TopK, QUERY_BLOCK, SYM_BLOCK,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Mutex;

/// The distance neighbours are ranked by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Euclidean distance `‖q − g‖`. Ranked by the squared distance
    /// `‖q‖² + ‖g‖² − 2 q·g`, clamped at 0 before the square root that the
    /// reported distances take.
    #[default]
    Euclidean,
    /// Cosine distance `1 − cos(q, g)`, computed on unit-length copies of the
    /// rows (an all-zero row stays zero: distance 1 to everything), clamped
    /// at 0.
    Cosine,
}

/// Gallery items a query may not retrieve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclude {
    /// Every gallery item is a candidate (query → gallery protocols such as
    /// In-shop).
    #[default]
    None,
    /// Leave-one-out: query `i` is gallery item `i` and never retrieves itself
    /// (CUB, SOP: the test set is searched against itself). Needs as many
    /// queries as gallery items.
    SameIndex,
}

impl Exclude {
    /// Gallery items each query can rank.
    pub fn available(self, gallery: usize) -> usize {
        match self {
            Exclude::None => gallery,
            Exclude::SameIndex => gallery.saturating_sub(1),
        }
    }
}

/// The `k` nearest gallery items of each query, nearest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbors {
    /// Neighbours per query.
    pub k: usize,
    /// Row-major `queries × k` gallery indices. Equal distances are ordered by
    /// lower gallery index.
    pub idx: Vec<u32>,
    /// Row-major `queries × k` distances in the requested [`Distance`]
    /// (true Euclidean distances, not squared).
    pub dist: Vec<f32>,
}

impl Neighbors {
    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.idx.len().checked_div(self.k).unwrap_or(0)
    }

    /// Indices and distances of query `i`'s neighbours, nearest first.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let r = i * self.k..(i + 1) * self.k;
        (&self.idx[r.clone()], &self.dist[r])
    }
}

/// Checks a row-major matrix and returns its row count.
pub(crate) fn check_rows(
    what: &'static str,
    data: &[f32],
    dim: usize,
) -> Result<usize, MetricsError> {
    if dim == 0 {
        return Err(MetricsError::ZeroDim);
    }
    if !data.len().is_multiple_of(dim) {
        return Err(MetricsError::RaggedRows {
            what,
            len: data.len(),
            dim,
        });
    }
    let rows = data.len() / dim;
    if rows == 0 {
        return Err(MetricsError::Empty { what });
    }
    // u32::MAX is reserved as "no index".
    let max = u32::MAX as usize - 1;
    if rows > max {
        return Err(MetricsError::TooManyRows { what, rows, max });
    }
    // Whole rows at a time: the test vectorises, and rayon's per-item
    // overhead is paid per row, not per value.
    if let Some(row) = data
        .par_chunks(dim)
        .position_first(|x| !x.iter().all(|v| v.is_finite()))
    {
        return Err(MetricsError::NonFinite { what, row });
    }
    Ok(rows)
}

/// `knn` estimates thresholds from a gallery sample when `k` is at least
/// this ...
const SAMPLE_MIN_K: usize = 64;
/// ... and the gallery holds at least this many times `k` items.
const SAMPLE_MIN_RATIO: usize = 8;
/// Rank, within the sample, of the threshold estimate (its relative standard
/// error is about `1/√SAMPLE_RANK`; the estimate aims at twice the k-th
/// distance, so falling short of the k-th is a many-sigma event).
const SAMPLE_RANK: usize = 32;

/// A prepared exact search: inputs validated, gallery packed, per-row terms
/// computed. Shared by [`knn`] and the one-pass retrieval evaluation.
pub(crate) struct Search<'a> {
    packed: PackedGallery,
    queries: Cow<'a, [f32]>,
    gallery: Cow<'a, [f32]>,
    qaux: Vec<f32>,
    gaux: Vec<f32>,
    scale: f32,
    dim: usize,
    nq: usize,
    exclude: Exclude,
    distance: Distance,
    /// Leave-one-out of a matrix against itself: each pair's distance can be
    /// computed once for both of its rows ([`scan_symmetric`](Self::scan_symmetric)).
    symmetric: bool,
}

/// Whether two matrices hold the same bits (the same slice, normally).
fn same_rows(a: &[f32], b: &[f32]) -> bool {
    std::ptr::eq(a, b)
        || (a.len() == b.len()
            && a.par_chunks(4096)
                .zip(b.par_chunks(4096))
                .all(|(x, y)| x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits())))
}

impl<'a> Search<'a> {
    /// Validates the matrices and packs the gallery.
    pub(crate) fn new(
        queries: &'a [f32],
        gallery: &'a [f32],
        dim: usize,
        distance: Distance,
        exclude: Exclude,
    ) -> Result<Self, MetricsError> {
        let nq = check_rows("queries", queries, dim)?;
        let symmetric = exclude == Exclude::SameIndex && same_rows(queries, gallery);
        let ng = if symmetric {
            nq
        } else {
            check_rows("gallery", gallery, dim)?
        };
        if exclude == Exclude::SameIndex && nq != ng {
            return Err(MetricsError::LeaveOneOutShape {
                queries: nq,
                gallery: ng,
            });
        }
        let (queries, gallery, qaux, gaux, scale) = match distance {
            Distance::Euclidean => {
                let qa = squared_norms(queries, dim);
                let ga = if symmetric {
                    qa.clone()
                } else {
                    squared_norms(gallery, dim)
                };
                (Cow::Borrowed(queries), Cow::Borrowed(gallery), qa, ga, -2.0)
            }
            Distance::Cosine => {
                let q = normalized_rows(queries, dim);
                let g = if symmetric {
                    q.clone()
                } else {
                    normalized_rows(gallery, dim)
                };
                (
                    Cow::Owned(q),
                    Cow::Owned(g),
                    vec![1.0; nq],
                    vec![0.0; ng],
                    -1.0,
                )
            }
        };
        let packed = PackedGallery::new(&gallery, dim, &gaux, scale, None);
        Ok(Search {
            packed,
            queries,
            gallery,
            qaux,
            gaux,
            scale,
            dim,
            nq,
            exclude,
            distance,
            symmetric,
        })
    }

    /// The items each query may not retrieve.
    pub(crate) fn exclude(&self) -> Exclude {
        self.exclude
    }

    /// Whether [`scan_symmetric`](Self::scan_symmetric) applies.
    pub(crate) fn symmetric(&self) -> bool {
        self.symmetric
    }

    /// Offers every admissible pair to the sinks of both of its rows
    /// (`sinks[i]` is row `i`'s), computing each pair's distance once: the
    /// leave-one-out scan of a matrix against itself with half the arithmetic
    /// of [`scan`](Self::scan), and the same distance bits. Needs
    /// [`symmetric`](Self::symmetric) and a sink for every row at once.
    ///
    /// The rows are cut into blocks of [`SYM_BLOCK`]. Each diagonal block is
    /// scanned against itself, then each pair of distinct blocks once, in the
    /// rounds of a round-robin tournament: no block plays twice in a round, so
    /// a round's pairs run in parallel, each owning both its blocks' sinks
    /// (the locks are never contended). Offers reach a row in an order that
    /// depends on the schedule, which the sinks' results do not.
    pub(crate) fn scan_symmetric<S: RowSink + Send>(&self, sinks: &mut [S]) {
        debug_assert!(self.symmetric);
        debug_assert_eq!(sinks.len(), self.nq);
        let n = self.nq;
        let q = QueryRows {
            data: &self.queries,
            aux: &self.qaux,
            dim: self.dim,
        };
        let rows = PackedRows::new(q, &self.packed);
        let range = |b: usize| b * SYM_BLOCK..((b + 1) * SYM_BLOCK).min(n);
        let blocks: Vec<Mutex<&mut [S]>> = sinks.chunks_mut(SYM_BLOCK).map(Mutex::new).collect();
        let lock = |b: usize| blocks[b].lock().unwrap_or_else(|e| e.into_inner());
        (0..blocks.len()).into_par_iter().for_each(|b| {
            self.packed
                .scan_pair(&rows, range(b), range(b), &mut lock(b), None);
        });
        for round in round_robin(blocks.len()) {
            round.into_par_iter().for_each(|(a, b)| {
                let (mut sa, mut sb) = (lock(a), lock(b));
                self.packed
                    .scan_pair(&rows, range(a), range(b), &mut sa, Some(&mut sb));
            });
        }
    }

    /// Refuses a search depth of 0 or beyond what each query can rank.
    pub(crate) fn check_depth(&self, k: usize) -> Result<(), MetricsError> {
        if k == 0 {
            return Err(MetricsError::ZeroK { what: "k" });
        }
        let available = self.exclude.available(self.gallery());
        if k > available {
            return Err(MetricsError::KTooLarge {
                k,
                available,
                gallery: self.gallery(),
                leave_one_out: self.exclude == Exclude::SameIndex,
            });
        }
        Ok(())
    }

    pub(crate) fn queries(&self) -> usize {
        self.nq
    }

    pub(crate) fn gallery(&self) -> usize {
        self.packed.len()
    }

    /// Number of query blocks (the unit of parallel work).
    pub(crate) fn blocks(&self) -> usize {
        self.nq.div_ceil(QUERY_BLOCK)
    }

    /// The query rows of block `b`.
    pub(crate) fn block_rows(&self, b: usize) -> Range<usize> {
        b * QUERY_BLOCK..((b + 1) * QUERY_BLOCK).min(self.nq)
    }

    /// Scans every admissible gallery item for each row of block `b`
    /// (`sinks[i]` receives row `block_rows(b).start + i`).
    pub(crate) fn scan<S: RowSink>(&self, b: usize, sinks: &mut [S]) {
        self.scan_rows(&self.packed, self.block_rows(b), sinks);
    }

    /// Scans `gallery` (this search's gallery, or a subset of it reporting
    /// the same indices) for query rows `rows`.
    fn scan_rows<S: RowSink>(&self, gallery: &PackedGallery, rows: Range<usize>, sinks: &mut [S]) {
        debug_assert_eq!(sinks.len(), rows.len());
        let q = QueryRows {
            data: &self.queries,
            aux: &self.qaux,
            dim: self.dim,
        };
        gallery.scan_block(
            q,
            Rows::Range(rows.start, rows.len()),
            self.exclude == Exclude::SameIndex,
            sinks,
        );
    }

    /// A strided sample of the gallery from which each query's distance to
    /// its `2k`-th nearest can be estimated, and the rank in the sample that
    /// estimates it; `None` when `k` is small or the gallery is not much
    /// larger than `k` (the plain selection is then as fast).
    fn threshold_sample(&self, k: usize) -> Option<(PackedGallery, usize)> {
        let ng = self.gallery();
        if k < SAMPLE_MIN_K || ng < SAMPLE_MIN_RATIO * k {
            return None;
        }
        // The SAMPLE_RANK-th nearest of m evenly strided items estimates the
        // (SAMPLE_RANK · ng / m)-th nearest overall; aim at 2k.
        let m = (SAMPLE_RANK * ng).div_ceil(2 * k).min(ng);
        let ids: Vec<u32> = (0..m).map(|i| (i * ng / m) as u32).collect();
        let d = self.dim;
        let mut rows = Vec::with_capacity(m * d);
        for &j in &ids {
            rows.extend_from_slice(&self.gallery[j as usize * d..(j as usize + 1) * d]);
        }
        let aux: Vec<f32> = ids.iter().map(|&j| self.gaux[j as usize]).collect();
        Some((
            PackedGallery::new(&rows, d, &aux, self.scale, Some(ids)),
            SAMPLE_RANK,
        ))
    }

    /// Scans only the gallery items `ids` (ascending) for the query rows `rows`, feeding
    /// `sinks[i]` the candidates of `rows[i]` with the same distance bits
    /// [`scan`](Self::scan) gives those pairs (the same kernel, on a packed subset).
    pub(crate) fn scan_subset<S: RowSink>(&self, ids: &[u32], rows: &[u32], sinks: &mut [S]) {
        let d = self.dim;
        let mut data = Vec::with_capacity(ids.len() * d);
        for &j in ids {
            data.extend_from_slice(&self.gallery[j as usize * d..(j as usize + 1) * d]);
        }
        let aux: Vec<f32> = ids.iter().map(|&j| self.gaux[j as usize]).collect();
        let packed = PackedGallery::new(&data, d, &aux, self.scale, Some(ids.to_vec()));
        let q = QueryRows {
            data: &self.queries,
            aux: &self.qaux,
            dim: d,
        };
        packed.scan_block(
            q,
            Rows::List(rows),
            self.exclude == Exclude::SameIndex,
            sinks,
        );
    }

    /// The reported distance for a ranking distance.
    pub(crate) fn report(&self, d: f32) -> f32 {
        match self.distance {
            Distance::Euclidean => d.sqrt(),
            Distance::Cosine => d,
        }
    }
}

/// The rounds of a round-robin tournament of `n` players (the circle method,
/// with a bye when `n` is odd): every pair `(a, b)`, `a < b < n`, once, and no
/// player twice in a round.
fn round_robin(n: usize) -> Vec<Vec<(usize, usize)>> {
    let m = n + n % 2;
    (0..m.saturating_sub(1))
        .map(|r| {
            (0..m / 2)
                .filter_map(|i| {
                    let a = if i == 0 { m - 1 } else { (r + i) % (m - 1) };
                    let b = (r + m - 1 - i) % (m - 1);
                    (a < n && b < n).then(|| (a.min(b), a.max(b)))
                })
                .collect()
        })
        .collect()
}

/// Exact `k`-nearest-neighbour search of `gallery` for every row of `queries`.
///
/// * `queries`, `gallery`: row-major `f32` matrices of `dim` columns, finite.
/// * `k`: neighbours per query, at least 1 and at most the gallery items a
///   query can rank (`gallery`, or `gallery − 1` with [`Exclude::SameIndex`]);
///   more is [`MetricsError::KTooLarge`].
/// * Results are exact for the distance as computed in `f32` (see
///   [`Distance`]), nearest first, equal distances ordered by lower gallery
///   index. The same pair gets the same distance bits wherever it appears, so
///   duplicated gallery vectors tie exactly.
///
/// Runs on the current rayon pool (wrap the call in `ThreadPool::install` to
/// choose the thread count); results do not depend on the thread count.
/// Memory: one packed copy of the gallery, the `queries × k` output, and
/// per-thread buffers of `QUERY_BLOCK × 2k` candidates.
///
/// Under leave-one-out of a matrix against itself, each pair's distance is
/// computed once for both of its rows (half the arithmetic), when every row's
/// buffer of `2k` candidates fits in [`SYMMETRIC_SINK_BYTES`].
pub fn knn(
    queries: &[f32],
    gallery: &[f32],
    dim: usize,
    k: usize,
    distance: Distance,
    exclude: Exclude,
) -> Result<Neighbors, MetricsError> {
    let search = Search::new(queries, gallery, dim, distance, exclude)?;
    knn_within(&search, k, SYMMETRIC_SINK_BYTES)
}

/// The most memory a symmetric leave-one-out scan may spend on its per-row
/// selection buffers (every row's at once); beyond it the search goes block
/// by block.
pub(crate) const SYMMETRIC_SINK_BYTES: usize = 512 << 20;

/// [`knn`] on a prepared search, with the symmetric scan allowed `sink_budget`
/// bytes of buffers.
fn knn_within(
    search: &Search<'_>,
    k: usize,
    sink_budget: usize,
) -> Result<Neighbors, MetricsError> {
    search.check_depth(k)?;
    let nq = search.queries();
    let mut idx = vec![0u32; nq * k];
    let mut dist = vec![0.0f32; nq * k];
    if search.symmetric() && nq.saturating_mul(TopK::capacity(k) * 8) <= sink_budget {
        let mut sinks: Vec<TopK> = (0..nq).into_par_iter().map(|_| TopK::new(k)).collect();
        search.scan_symmetric(&mut sinks);
        sinks
            .par_iter_mut()
            .zip(idx.par_chunks_mut(k).zip(dist.par_chunks_mut(k)))
            .enumerate()
            .try_for_each(|(row, (sink, (ic, dc)))| {
                let list = sink.finish();
                if list.len() < k {
                    return Err(MetricsError::DistanceOverflow { row });
                }
                for (t, &e) in list.iter().enumerate() {
                    ic[t] = key_index(e);
                    dc[t] = search.report(key_dist(e));
                }
                Ok(())
            })?;
        return Ok(Neighbors { k, idx, dist });
    }
    let sample = search.threshold_sample(k);
    idx.par_chunks_mut(QUERY_BLOCK * k)
        .zip(dist.par_chunks_mut(QUERY_BLOCK * k))
        .enumerate()
        .try_for_each_init(
            || (Vec::<TopK>::new(), Vec::<TopK>::new()),
            |(sinks, probes), (b, (ic, dc))| {
                let rows = search.block_rows(b);
                sinks.resize_with(rows.len(), || TopK::new(k));
                sinks.truncate(rows.len());
                match &sample {
                    // Start each row's selection at an estimate of its 2k-th
                    // distance, so that about 2k candidates are ever kept.
                    Some((packed, rank)) => {
                        probes.resize_with(rows.len(), || TopK::new(*rank));
                        probes.truncate(rows.len());
                        probes.iter_mut().for_each(|p| p.reset(*rank));
                        search.scan_rows(packed, rows.clone(), probes);
                        for (sink, probe) in sinks.iter_mut().zip(probes.iter_mut()) {
                            let est = probe.finish();
                            let bound = if est.len() == *rank {
                                key_dist(est[rank - 1])
                            } else {
                                f32::INFINITY
                            };
                            sink.reset_below(k, bound);
                        }
                    }
                    None => sinks.iter_mut().for_each(|s| s.reset(k)),
                }
                search.scan(b, sinks);
                for (i, sink) in sinks.iter_mut().enumerate() {
                    if sink.finish().len() < k {
                        // The estimate was below the k-th distance: search
                        // this row again without it.
                        let row = rows.start + i;
                        sink.reset(k);
                        search.scan_rows(&search.packed, row..row + 1, std::slice::from_mut(sink));
                    }
                    let list = sink.finish();
                    if list.len() < k {
                        // Every candidate is offered unless its distance is
                        // NaN, which finite inputs produce only by overflow.
                        return Err(MetricsError::DistanceOverflow {
                            row: rows.start + i,
                        });
                    }
                    for (t, &e) in list.iter().enumerate() {
                        ic[i * k + t] = key_index(e);
                        dc[i * k + t] = search.report(key_dist(e));
                    }
                }
                Ok(())
            },
        )?;
    Ok(Neighbors { k, idx, dist })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{combine, dot_seq};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Scalar brute force with the engine's formula: every distance, full sort.
    fn brute(
        q: &[f32],
        g: &[f32],
        dim: usize,
        k: usize,
        distance: Distance,
        exclude: Exclude,
    ) -> Neighbors {
        let (q, g, qa, ga, scale) = match distance {
            Distance::Euclidean => {
                let qa = q.chunks(dim).map(|x| dot_seq(x, x)).collect::<Vec<_>>();
                let ga = g.chunks(dim).map(|x| dot_seq(x, x)).collect::<Vec<_>>();
                (q.to_vec(), g.to_vec(), qa, ga, -2.0)
            }
            Distance::Cosine => {
                let q = normalized_rows(q, dim);
                let g = normalized_rows(g, dim);
                let (nq, ng) = (q.len() / dim, g.len() / dim);
                (q, g, vec![1.0; nq], vec![0.0; ng], -1.0)
            }
        };
        let mut idx = Vec::new();
        let mut dist = Vec::new();
        for (i, x) in q.chunks(dim).enumerate() {
            let mut all: Vec<(f32, u32)> = g
                .chunks(dim)
                .enumerate()
                .filter(|&(j, _)| !(exclude == Exclude::SameIndex && j == i))
                .map(|(j, y)| (combine(qa[i], ga[j], scale, dot_seq(x, y)), j as u32))
                .collect();
            all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
            for &(d, j) in &all[..k] {
                idx.push(j);
                dist.push(if distance == Distance::Euclidean {
                    d.sqrt()
                } else {
                    d
                });
            }
        }
        Neighbors { k, idx, dist }
    }

    /// Random rows with planted exact duplicates and coarse values (many ties).
    fn data(n: usize, dim: usize, seed: u64, coarse: bool) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v: Vec<f32> = (0..n * dim)
            .map(|_| {
                if coarse {
                    rng.gen_range(-2i32..=2) as f32
                } else {
                    rng.gen_range(-1.0f32..1.0)
                }
            })
            .collect();
        for _ in 0..n / 4 {
            let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
            let src = v[a * dim..(a + 1) * dim].to_vec();
            v[b * dim..(b + 1) * dim].copy_from_slice(&src);
        }
        v
    }

    #[test]
    fn matches_brute_force_exactly() {
        for &(nq, ng, dim, k) in &[
            (50usize, 300usize, 16usize, 10usize),
            (130, 257, 3, 40),
            (7, 33, 128, 33),
            (241, 241, 5, 1),
        ] {
            for coarse in [false, true] {
                let q = data(nq, dim, 1, coarse);
                let g = data(ng, dim, 2, coarse);
                for distance in [Distance::Euclidean, Distance::Cosine] {
                    let got = knn(&q, &g, dim, k, distance, Exclude::None).unwrap();
                    assert_eq!(
                        got,
                        brute(&q, &g, dim, k, distance, Exclude::None),
                        "{nq} {ng} {dim} {k} {coarse} {distance:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn leave_one_out_matches_brute_force_with_duplicates() {
        for &(n, dim, k) in &[(300usize, 8usize, 25usize), (121, 2, 120), (64, 64, 7)] {
            for coarse in [false, true] {
                let x = data(n, dim, 3, coarse);
                for distance in [Distance::Euclidean, Distance::Cosine] {
                    let got = knn(&x, &x, dim, k, distance, Exclude::SameIndex).unwrap();
                    let want = brute(&x, &x, dim, k, distance, Exclude::SameIndex);
                    assert_eq!(got, want, "{n} {dim} {k} {coarse} {distance:?}");
                    // Block by block (no budget for the symmetric scan): the same.
                    let blockwise = Search::new(&x, &x, dim, distance, Exclude::SameIndex)
                        .and_then(|s| knn_within(&s, k, 0))
                        .unwrap();
                    assert_eq!(
                        blockwise, want,
                        "{n} {dim} {k} {coarse} {distance:?} blockwise"
                    );
                    for i in 0..n {
                        assert!(!got.row(i).0.contains(&(i as u32)));
                    }
                }
            }
        }
    }

    #[test]
    fn sampled_thresholds_stay_exact() {
        // Large k against a larger gallery: the sampled threshold path.
        const { assert!(100 >= SAMPLE_MIN_K && 1000 >= SAMPLE_MIN_RATIO * 100) };
        for coarse in [false, true] {
            let q = data(50, 8, 12, coarse);
            let g = data(1000, 8, 13, coarse);
            for distance in [Distance::Euclidean, Distance::Cosine] {
                let got = knn(&q, &g, 8, 100, distance, Exclude::None).unwrap();
                assert_eq!(
                    got,
                    brute(&q, &g, 8, 100, distance, Exclude::None),
                    "{coarse} {distance:?}"
                );
            }
            let x = data(1000, 8, 14, coarse);
            let got = knn(&x, &x, 8, 64, Distance::Euclidean, Exclude::SameIndex).unwrap();
            assert_eq!(
                got,
                brute(&x, &x, 8, 64, Distance::Euclidean, Exclude::SameIndex)
            );
        }
    }

    #[test]
    fn a_misleading_sample_falls_back_to_a_full_search() {
        // Every sampled gallery item (the stride of the threshold sample) sits
        // next to the query, everything else is far: the estimate lets fewer
        // than k items through and the row must be searched again.
        let (ng, k, dim) = (1000usize, 100usize, 4usize);
        let m = (SAMPLE_RANK * ng).div_ceil(2 * k);
        let sampled: Vec<usize> = (0..m).map(|i| i * ng / m).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let mut g = vec![0.0f32; ng * dim];
        for j in 0..ng {
            let scale = if sampled.contains(&j) { 0.01 } else { 10.0 };
            for p in 0..dim {
                g[j * dim + p] = scale * rng.gen_range(-1.0f32..1.0);
            }
        }
        let q = vec![0.0f32; 2 * dim];
        let got = knn(&q, &g, dim, k, Distance::Euclidean, Exclude::None).unwrap();
        assert_eq!(
            got,
            brute(&q, &g, dim, k, Distance::Euclidean, Exclude::None)
        );
        // The sampled items come first, then the nearest of the far ones.
        assert!(got.row(0).0[..m.min(k)]
            .iter()
            .all(|&j| sampled.contains(&(j as usize))));
    }

    #[test]
    fn duplicates_tie_and_order_by_index() {
        // Gallery: the same vector five times, then a far one.
        let dim = 3;
        let mut g = Vec::new();
        for _ in 0..5 {
            g.extend_from_slice(&[0.3f32, -1.7, 2.2]);
        }
        g.extend_from_slice(&[9.0, 9.0, 9.0]);
        let q = [0.3f32, -1.7, 2.2];
        let nb = knn(&q, &g, dim, 6, Distance::Euclidean, Exclude::None).unwrap();
        assert_eq!(nb.idx, vec![0, 1, 2, 3, 4, 5]);
        assert!(nb.dist[..5].iter().all(|&d| d == 0.0));
        let nb = knn(&g, &g, dim, 4, Distance::Euclidean, Exclude::SameIndex).unwrap();
        assert_eq!(nb.row(2).0, &[0, 1, 3, 4]);
        assert_eq!(nb.row(5).0, &[0, 1, 2, 3]);
    }

    #[test]
    fn reports_true_euclidean_and_cosine_distances() {
        let dim = 2;
        let g = [3.0f32, 4.0, 0.0, 1.0, -2.0, 0.0];
        let q = [0.0f32, 0.0, 1.0, 0.0];
        let nb = knn(&q, &g, dim, 3, Distance::Euclidean, Exclude::None).unwrap();
        assert_eq!(nb.row(0).0, &[1, 2, 0]);
        let want = [1.0f32, 2.0, 5.0];
        for (d, w) in nb.row(0).1.iter().zip(want) {
            assert!((d - w).abs() < 1e-6, "{d} vs {w}");
        }
        let nb = knn(&q[2..], &g, dim, 3, Distance::Cosine, Exclude::None).unwrap();
        // cos with (1,0): (3,4) → 0.6, (0,1) → 0, (-2,0) → -1.
        assert_eq!(nb.idx, vec![0, 1, 2]);
        for (d, w) in nb.dist.iter().zip([0.4f32, 1.0, 2.0]) {
            assert!((d - w).abs() < 1e-6, "{d} vs {w}");
        }
    }

    #[test]
    fn distances_agree_with_direct_f64_computation() {
        let dim = 32;
        let q = data(40, dim, 5, false);
        let g = data(200, dim, 6, false);
        let nb = knn(&q, &g, dim, 50, Distance::Euclidean, Exclude::None).unwrap();
        for i in 0..40 {
            let (idx, dist) = nb.row(i);
            for (&j, &d) in idx.iter().zip(dist) {
                let exact: f64 = (0..dim)
                    .map(|p| {
                        let t = f64::from(q[i * dim + p]) - f64::from(g[j as usize * dim + p]);
                        t * t
                    })
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    (f64::from(d) - exact).abs() < 1e-3 * exact.max(1.0),
                    "{d} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn refuses_bad_input() {
        let g = [0.0f32; 12];
        assert!(matches!(
            knn(&g, &g, 3, 4, Distance::Euclidean, Exclude::SameIndex),
            Err(MetricsError::KTooLarge {
                k: 4,
                available: 3,
                gallery: 4,
                leave_one_out: true
            })
        ));
        assert!(matches!(
            knn(&g, &g, 3, 5, Distance::Euclidean, Exclude::None),
            Err(MetricsError::KTooLarge {
                k: 5,
                available: 4,
                ..
            })
        ));
        assert!(knn(&g, &g, 3, 4, Distance::Euclidean, Exclude::None).is_ok());
        assert!(matches!(
            knn(&g, &g, 5, 1, Distance::Euclidean, Exclude::None),
            Err(MetricsError::RaggedRows { .. })
        ));
        assert!(matches!(
            knn(&g, &g, 0, 1, Distance::Euclidean, Exclude::None),
            Err(MetricsError::ZeroDim)
        ));
        assert!(matches!(
            knn(&g, &g, 3, 0, Distance::Euclidean, Exclude::None),
            Err(MetricsError::ZeroK { .. })
        ));
        assert!(matches!(
            knn(&g[..6], &g, 3, 1, Distance::Euclidean, Exclude::SameIndex),
            Err(MetricsError::LeaveOneOutShape { .. })
        ));
        let mut bad = g;
        bad[7] = f32::NAN;
        assert!(matches!(
            knn(&g, &bad, 3, 1, Distance::Euclidean, Exclude::None),
            Err(MetricsError::NonFinite {
                what: "gallery",
                row: 2
            })
        ));
        assert!(matches!(
            knn(&[], &g, 3, 1, Distance::Euclidean, Exclude::None),
            Err(MetricsError::Empty { .. })
        ));
    }

    #[test]
    fn round_robin_pairs_every_block_once_and_no_block_twice_a_round() {
        for n in 0..12 {
            let rounds = round_robin(n);
            let mut seen = std::collections::BTreeSet::new();
            for round in &rounds {
                let mut players: Vec<usize> = round.iter().flat_map(|&(a, b)| [a, b]).collect();
                players.sort_unstable();
                let len = players.len();
                players.dedup();
                assert_eq!(players.len(), len, "n = {n}: a block twice in a round");
                for &(a, b) in round {
                    assert!(a < b && b < n);
                    assert!(seen.insert((a, b)), "n = {n}: ({a}, {b}) twice");
                }
            }
            assert_eq!(seen.len(), n * n.saturating_sub(1) / 2, "n = {n}");
        }
    }

    /// The symmetric scan offers each row exactly the distances the plain
    /// scan does, bit for bit, across block and tile boundaries.
    #[test]
    fn symmetric_scan_matches_the_plain_scan_bitwise() {
        use crate::kernel::OfferedOnce as Dense;
        for &(n, dim) in &[
            (1usize, 3usize),
            (5, 7),
            (2 * SYM_BLOCK + 37, 19),
            (SYM_BLOCK, 4),
        ] {
            for coarse in [false, true] {
                let x = data(n, dim, 21, coarse);
                for distance in [Distance::Euclidean, Distance::Cosine] {
                    let search = Search::new(&x, &x, dim, distance, Exclude::SameIndex).unwrap();
                    assert!(search.symmetric());
                    let mut sym = vec![Dense(vec![f32::NAN; n]); n];
                    search.scan_symmetric(&mut sym);
                    let mut plain = vec![Dense(vec![f32::NAN; n]); n];
                    for b in 0..search.blocks() {
                        let rows = search.block_rows(b);
                        search.scan(b, &mut plain[rows]);
                    }
                    for i in 0..n {
                        for j in 0..n {
                            assert_eq!(
                                sym[i].0[j].to_bits(),
                                plain[i].0[j].to_bits(),
                                "{n}×{dim} {coarse} {distance:?} at ({i}, {j})"
                            );
                        }
                        assert!(sym[i].0[i].is_nan(), "row {i} offered itself");
                    }
                }
            }
        }
        // A copy of the matrix is recognised too; another matrix is not.
        let x = data(10, 3, 22, false);
        let copy = x.clone();
        let search = Search::new(&x, &copy, 3, Distance::Euclidean, Exclude::SameIndex).unwrap();
        assert!(search.symmetric());
        let other = data(10, 3, 23, false);
        let search = Search::new(&x, &other, 3, Distance::Euclidean, Exclude::SameIndex).unwrap();
        assert!(!search.symmetric());
        let search = Search::new(&x, &x, 3, Distance::Euclidean, Exclude::None).unwrap();
        assert!(!search.symmetric());
    }

    #[test]
    fn same_result_on_one_and_two_threads() {
        let x = data(500, 24, 8, true);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| knn(&x, &x, 24, 30, Distance::Euclidean, Exclude::SameIndex).unwrap())
        };
        assert_eq!(run(1), run(2));
    }
}
