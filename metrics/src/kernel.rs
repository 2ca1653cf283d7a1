//! The fused distance engine: a packed gallery, SIMD register-tile kernels, and
//! per-row threshold filtering of candidates, shared by k-NN search and k-means.
//!
//! Every distance is `clamp0((a_i + b_j) + scale · dot(q_i, g_j))` where the
//! dot product is one fused multiply-add chain over the dimensions in order,
//! starting from zero. Squared Euclidean distance uses `a = ‖q‖²`, `b = ‖g‖²`,
//! `scale = -2`; cosine distance uses unit vectors, `a = 1`, `b = 0`,
//! `scale = -1`. Because each kernel lane runs exactly that chain, the value
//! for a pair does not depend on which kernel, tile position, block or thread
//! computed it: [`dot_seq`] and [`combine`] reproduce it bit for bit. That is
//! what makes ties (duplicated vectors) break by gallery index everywhere, lets
//! k-means reuse distances across iterations, and lets the tests compare
//! against a scalar brute force for exact equality.
//!
//! The gallery is packed once into panels of `NR` items laid out depth-major
//! (`panel[p * NR + j]`), so a kernel step loads `NR` gallery values with
//! aligned-width vector loads and broadcasts one query value per row. A
//! register tile of `MR × NR` dot products is computed over the full depth,
//! turned into distances, and compared with each row's current threshold in
//! vector registers; only lanes at or below the threshold reach the row's
//! [`RowSink`]. Memory is the packed gallery plus one query block: never a
//! query × gallery matrix.

use std::ops::Range;
use std::sync::OnceLock;

/// Number of query rows scanned together by one task. A multiple of every
/// kernel's `MR`; large enough that each gallery panel loaded from L3 is reused
/// many times from L1, small enough for a block of queries to stay in L2.
pub(crate) const QUERY_BLOCK: usize = 120;

/// Rows per block of the symmetric scan ([`PackedGallery::scan_pair`]): a
/// multiple of every kernel's `MR` and `NR`, so that a block starts on a whole
/// query tile and a whole gallery panel; a pair of blocks (the gathered rows
/// and the packed panels, 384 KiB each at 256 dimensions) stays in L2.
pub(crate) const SYM_BLOCK: usize = 192;

/// Receives, for one query row, the gallery candidates that pass its threshold.
pub(crate) trait RowSink {
    /// Candidates whose distance is greater than this are dropped by the
    /// kernel without a call. Ties (`==`) are offered, so a sink that holds a
    /// candidate it must compare by index too can do so.
    fn threshold(&self) -> f32;
    /// Offers gallery item `j` at distance `d` (`d <= threshold()` at the time
    /// the tile was filtered, so possibly above the current threshold). Offers
    /// for a row arrive in no particular order of `j` (the symmetric scan
    /// offers each pair to both of its rows), and a sink gives the same result
    /// whatever the order: ties are decided by index, never by arrival.
    fn offer(&mut self, d: f32, j: u32);
}

/// The instruction set a kernel was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F: 12 × 32 tiles in 24 zmm accumulators.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 + FMA: 6 × 16 tiles in 12 ymm accumulators.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Plain Rust with `f32::mul_add`: 4 × 8 tiles.
    Portable,
}

impl Isa {
    /// The fastest kernel this CPU runs, detected once.
    pub(crate) fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Every kernel this CPU can run, best first (the tests cross-check them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                out.push(Isa::Avx2);
            }
        }
        out.push(Isa::Portable);
        out
    }

    /// Gallery items per panel.
    fn nr(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 32,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 16,
            Isa::Portable => 8,
        }
    }

    /// Query rows per register tile.
    fn mr(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 12,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 6,
            Isa::Portable => 4,
        }
    }
}

/// `clamp0((a + b) + scale · dot)`: the distance every kernel computes, in the
/// same operation order (no contraction), with `0 > x ? 0 : x` as the clamp
/// (what `maxps(0, x)` does).
#[inline(always)]
pub(crate) fn combine(a: f32, b: f32, scale: f32, dot: f32) -> f32 {
    let x = (a + b) + scale * dot;
    if 0.0 > x {
        0.0
    } else {
        x
    }
}

/// The dot product as every kernel lane computes it: one fused multiply-add
/// chain in dimension order starting from `0.0`.
#[inline]
pub(crate) fn dot_seq(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports FMA, checked just above.
            return unsafe { dot_seq_fma(x, y) };
        }
    }
    dot_seq_plain(x, y)
}

#[inline(always)]
fn dot_seq_plain(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        acc = a.mul_add(*b, acc);
    }
    acc
}

/// Same chain, compiled so that `mul_add` becomes a `vfmadd` instruction
/// instead of a libm call. Results are identical: FMA rounds once either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn dot_seq_fma(x: &[f32], y: &[f32]) -> f32 {
    dot_seq_plain(x, y)
}

/// Squared norms of every row, computed as [`dot_seq`]`(x, x)`.
pub(crate) fn squared_norms(data: &[f32], dim: usize) -> Vec<f32> {
    use rayon::prelude::*;
    data.par_chunks(dim).map(|x| dot_seq(x, x)).collect()
}

/// Unit-length copies of every row (zero rows stay zero), for cosine distance.
pub(crate) fn normalized_rows(data: &[f32], dim: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = data.to_vec();
    out.par_chunks_mut(dim).for_each(|x| {
        let norm = x
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            for v in x.iter_mut() {
                *v = (f64::from(*v) / norm) as f32;
            }
        }
    });
    out
}

/// Which query rows a block scans.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    /// Consecutive rows `start..start + len` of the query matrix.
    Range(usize, usize),
    /// These rows of the query matrix, in this order.
    List(&'a [u32]),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::Range(_, len) => *len,
            Rows::List(list) => list.len(),
        }
    }
    fn get(&self, i: usize) -> usize {
        match self {
            Rows::Range(start, _) => start + i,
            Rows::List(list) => list[i] as usize,
        }
    }
}

/// A query matrix and its per-row term `a_i`.
#[derive(Clone, Copy)]
pub(crate) struct QueryRows<'a> {
    /// Row-major `rows × dim` floats.
    pub data: &'a [f32],
    /// `a_i` for each row (squared norm, or 1 for cosine).
    pub aux: &'a [f32],
    /// Dimension.
    pub dim: usize,
}

/// A gallery packed into depth-major panels for one kernel.
pub(crate) struct PackedGallery {
    isa: Isa,
    n: usize,
    dim: usize,
    scale: f32,
    /// `ceil(n / nr)` panels of `dim × nr` floats from `panels[offset..]`
    /// (64-byte aligned, so no vector load straddles two cache lines);
    /// padding items are zero.
    panels: Vec<f32>,
    offset: usize,
    /// `b_j` per item, padded with `+inf` to whole panels.
    aux: Vec<f32>,
    /// The index reported for local item `j` (ascending); identity when `None`.
    ids: Option<Vec<u32>>,
}

impl PackedGallery {
    /// Packs `data` (row-major, `aux.len()` rows) for the best kernel.
    /// `ids`, if given, are the ascending indices reported for each row.
    pub(crate) fn new(
        data: &[f32],
        dim: usize,
        aux: &[f32],
        scale: f32,
        ids: Option<Vec<u32>>,
    ) -> Self {
        Self::with_isa(Isa::best(), data, dim, aux, scale, ids)
    }

    /// Packs for a given kernel (tests use this to cross-check kernels).
    pub(crate) fn with_isa(
        isa: Isa,
        data: &[f32],
        dim: usize,
        aux: &[f32],
        scale: f32,
        ids: Option<Vec<u32>>,
    ) -> Self {
        use rayon::prelude::*;
        let n = aux.len();
        debug_assert_eq!(data.len(), n * dim);
        if let Some(ids) = &ids {
            debug_assert_eq!(ids.len(), n);
            debug_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
        let nr = isa.nr();
        let npanels = n.div_ceil(nr);
        let mut panels = vec![0.0f32; npanels * dim * nr + 16];
        let offset = panels.as_ptr().align_offset(64).min(16);
        if dim > 0 {
            panels[offset..offset + npanels * dim * nr]
                .par_chunks_mut(dim * nr)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..nr.min(n - p * nr) {
                        let row = &data[(p * nr + j) * dim..(p * nr + j + 1) * dim];
                        for (d, &v) in row.iter().enumerate() {
                            panel[d * nr + j] = v;
                        }
                    }
                });
        }
        let mut packed_aux = vec![f32::INFINITY; npanels * nr];
        packed_aux[..n].copy_from_slice(aux);
        PackedGallery {
            isa,
            n,
            dim,
            scale,
            panels,
            offset,
            aux: packed_aux,
            ids,
        }
    }

    /// The packed panels.
    fn panel_data(&self) -> &[f32] {
        &self.panels[self.offset..]
    }

    /// Number of gallery items.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Scans every gallery item for each of `rows` of `q`, feeding `sinks[i]`
    /// the candidates of row `rows[i]`. With `exclude_self`, gallery item
    /// (reported index) equal to the query's row index is skipped.
    pub(crate) fn scan_block<S: RowSink>(
        &self,
        q: QueryRows<'_>,
        rows: Rows<'_>,
        exclude_self: bool,
        sinks: &mut [S],
    ) {
        let m = rows.len();
        debug_assert_eq!(sinks.len(), m);
        debug_assert_eq!(q.dim, self.dim);
        if m == 0 || self.n == 0 {
            return;
        }
        let mr = self.isa.mr();
        let mut buf = vec![0.0f32; m.div_ceil(mr) * mr * self.dim];
        let mut aux = Vec::with_capacity(m);
        let mut excl = Vec::with_capacity(m);
        for i in 0..m {
            let r = rows.get(i);
            gather_row(
                &mut buf,
                mr,
                self.dim,
                i,
                &q.data[r * self.dim..(r + 1) * self.dim],
            );
            aux.push(q.aux[r]);
            excl.push(if exclude_self { r as u32 } else { u32::MAX });
        }
        let block = Block {
            q: &buf,
            aux: &aux,
            excl: &excl,
            m,
        };
        self.dispatch(&block, 0..self.n.div_ceil(self.isa.nr()), sinks, None);
    }

    /// The symmetric scan of one pair of row blocks of a matrix that is both
    /// the queries (`rows`, gathered once) and this gallery, under
    /// leave-one-out.
    ///
    /// * With `col_sinks`, `i` lies wholly before `j`: every pair `(a, b)`,
    ///   `a ∈ i`, `b ∈ j`, is computed once and offered to `row_sinks[a − i.start]`
    ///   as `(d, b)` and to `col_sinks[b − j.start]` as `(d, a)`. The distance
    ///   is the bits [`scan_block`](Self::scan_block) gives either order of the
    ///   pair: the dot product is one FMA chain of commuting products and
    ///   `a_a + b_b` commutes, because the two sides' terms are the same
    ///   vector's (squared norms, or `1` and `0` for cosine).
    /// * Without, `i == j` (a diagonal block): each row is offered every other
    ///   row of the block.
    ///
    /// Both ranges start at a multiple of [`SYM_BLOCK`].
    pub(crate) fn scan_pair<S: RowSink>(
        &self,
        rows: &PackedRows,
        i: Range<usize>,
        j: Range<usize>,
        row_sinks: &mut [S],
        col_sinks: Option<&mut [S]>,
    ) {
        let (mr, nr) = (self.isa.mr(), self.isa.nr());
        debug_assert_eq!(rows.isa, self.isa);
        debug_assert!(i.start.is_multiple_of(mr) && j.start.is_multiple_of(nr));
        debug_assert!(i.end <= rows.aux.len() && j.end <= self.n);
        debug_assert_eq!(row_sinks.len(), i.len());
        if i.is_empty() || j.is_empty() {
            return;
        }
        let excl: Vec<u32> = match col_sinks {
            Some(_) => {
                debug_assert!(i.end <= j.start);
                vec![u32::MAX; i.len()]
            }
            None => {
                debug_assert_eq!(i, j);
                (i.start as u32..i.end as u32).collect()
            }
        };
        let block = Block {
            q: &rows.tiles[(i.start / mr) * mr * self.dim..],
            aux: &rows.aux[i.clone()],
            excl: &excl,
            m: i.len(),
        };
        let panels = j.start / nr..j.end.div_ceil(nr);
        match col_sinks {
            Some(sinks) => {
                debug_assert_eq!(sinks.len(), j.len());
                let mut thr = vec![f32::NEG_INFINITY; panels.len() * nr];
                for (t, s) in thr.iter_mut().zip(sinks.iter()) {
                    *t = s.threshold();
                }
                let mut cols = Cols {
                    sinks,
                    thr,
                    row0: i.start as u32,
                };
                self.dispatch(&block, panels, row_sinks, Some(&mut cols));
            }
            None => self.dispatch(&block, panels, row_sinks, None),
        }
    }

    /// Runs the kernel for `block` over the gallery panels `panels`.
    fn dispatch<S: RowSink>(
        &self,
        block: &Block<'_>,
        panels: Range<usize>,
        sinks: &mut [S],
        cols: Option<&mut Cols<'_, S>>,
    ) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` is only chosen (or, in tests, only listed)
            // when the CPU reports AVX-512F.
            Isa::Avx512 => unsafe { x86::scan_avx512(self, block, panels, sinks, cols) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2 and FMA.
            Isa::Avx2 => unsafe { x86::scan_avx2(self, block, panels, sinks, cols) },
            Isa::Portable => scan_portable(self, block, panels, sinks, cols),
        }
    }

    /// Hands the lanes set in `mask` (bit `b` = item `base + b`) of a tile
    /// row to its sink, in increasing item order.
    #[inline(always)]
    fn offer_lanes<S: RowSink>(
        &self,
        mut mask: u64,
        dist: &[f32],
        base: usize,
        excl: u32,
        sink: &mut S,
    ) {
        while mask != 0 {
            let b = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let j = base + b;
            if j >= self.n {
                // Padding; every later lane is padding too.
                break;
            }
            let id = match &self.ids {
                Some(ids) => ids[j],
                None => j as u32,
            };
            if id != excl {
                sink.offer(dist[b], id);
            }
        }
    }
}

/// One gathered block of query rows, in depth-major tiles.
struct Block<'a> {
    q: &'a [f32],
    aux: &'a [f32],
    excl: &'a [u32],
    m: usize,
}

/// Writes query row `x` as row `i` of a gather buffer: tiles of `mr` rows,
/// each laid out depth-major (`tile[p * mr + i % mr]`), so the kernel
/// broadcasts from a pointer that advances by `mr` per step, padded to whole
/// tiles so that it never branches on a partial one.
#[inline]
fn gather_row(buf: &mut [f32], mr: usize, dim: usize, i: usize, x: &[f32]) {
    let tile = &mut buf[(i / mr) * mr * dim..(i / mr + 1) * mr * dim];
    for (p, &v) in x.iter().enumerate() {
        tile[p * mr + i % mr] = v;
    }
}

/// Every row of a query matrix gathered once into the kernel's tiles, for
/// the symmetric scan (which reads each block of rows many times).
pub(crate) struct PackedRows {
    isa: Isa,
    tiles: Vec<f32>,
    aux: Vec<f32>,
}

impl PackedRows {
    /// Gathers `q` for the kernel of `gallery`.
    pub(crate) fn new(q: QueryRows<'_>, gallery: &PackedGallery) -> Self {
        use rayon::prelude::*;
        let (isa, dim) = (gallery.isa, q.dim);
        let mr = isa.mr();
        let n = q.aux.len();
        let mut tiles = vec![0.0f32; n.div_ceil(mr) * mr * dim];
        if dim > 0 {
            tiles
                .par_chunks_mut(mr * dim)
                .enumerate()
                .for_each(|(t, tile)| {
                    for i in 0..mr.min(n - t * mr) {
                        let r = t * mr + i;
                        gather_row(tile, mr, dim, i, &q.data[r * dim..(r + 1) * dim]);
                    }
                });
        }
        PackedRows {
            isa,
            tiles,
            aux: q.aux.to_vec(),
        }
    }
}

/// The column side of a symmetric scan: the sinks of the gallery items in the
/// scanned panels and their thresholds, padded to whole panels with `-inf`
/// (which no distance passes).
struct Cols<'a, S> {
    sinks: &'a mut [S],
    thr: Vec<f32>,
    /// Index of the block's first row, reported to the column sinks.
    row0: u32,
}

impl<S: RowSink> Cols<'_, S> {
    /// Hands the lanes set in `mask` (bit `b` = column `base + b` of the
    /// scanned panels) to their column sinks as candidate `row`.
    #[inline(always)]
    fn offer(&mut self, mut mask: u64, dist: &[f32], base: usize, row: u32) {
        while mask != 0 {
            let b = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let sink = &mut self.sinks[base + b];
            sink.offer(dist[b], row);
            self.thr[base + b] = sink.threshold();
        }
    }
}

/// Portable kernel: 4 × 8 tiles in plain Rust, for CPUs without AVX2+FMA
/// and other architectures (where `mul_add` is a native instruction; on an
/// x86-64 without FMA it is a slow but exact libm call).
fn scan_portable<S: RowSink>(
    g: &PackedGallery,
    b: &Block<'_>,
    panels: Range<usize>,
    sinks: &mut [S],
    mut cols: Option<&mut Cols<'_, S>>,
) {
    const MR: usize = 4;
    const NR: usize = 8;
    let dim = g.dim;
    let tiles = b.m.div_ceil(MR);
    let mut dist = [0.0f32; NR];
    for (local, pnl) in panels.enumerate() {
        let panel = &g.panel_data()[pnl * dim * NR..(pnl + 1) * dim * NR];
        let baux = &g.aux[pnl * NR..(pnl + 1) * NR];
        for t in 0..tiles {
            let q = &b.q[t * MR * dim..(t + 1) * MR * dim];
            let mut acc = [[0.0f32; NR]; MR];
            for p in 0..dim {
                let gv = &panel[p * NR..(p + 1) * NR];
                for (i, acc_row) in acc.iter_mut().enumerate() {
                    let a = q[p * MR + i];
                    for (s, &gj) in acc_row.iter_mut().zip(gv) {
                        *s = a.mul_add(gj, *s);
                    }
                }
            }
            for (i, acc_row) in acc.iter().enumerate().take((b.m - t * MR).min(MR)) {
                let r = t * MR + i;
                let thr = sinks[r].threshold();
                let mut mask = 0u64;
                let mut cmask = 0u64;
                for j in 0..NR {
                    dist[j] = combine(b.aux[r], baux[j], g.scale, acc_row[j]);
                    if dist[j] <= thr {
                        mask |= 1 << j;
                    }
                    if let Some(c) = cols.as_deref() {
                        if dist[j] <= c.thr[local * NR + j] {
                            cmask |= 1 << j;
                        }
                    }
                }
                if mask != 0 {
                    g.offer_lanes(mask, &dist, pnl * NR, b.excl[r], &mut sinks[r]);
                }
                if let (true, Some(c)) = (cmask != 0, cols.as_deref_mut()) {
                    let row = c.row0 + r as u32;
                    c.offer(cmask, &dist, local * NR, row);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX-512 and AVX2 register-tile kernels (x86-64 only).

    use super::{Block, Cols, PackedGallery, RowSink};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// 12 × 32 tiles: 24 zmm accumulators, two gallery loads and one
    /// broadcast per depth step (27 of the 32 zmm registers).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scan_avx512<S: RowSink>(
        g: &PackedGallery,
        b: &Block<'_>,
        panels: Range<usize>,
        sinks: &mut [S],
        mut cols: Option<&mut Cols<'_, S>>,
    ) {
        const MR: usize = 12;
        const NR: usize = 32;
        let dim = g.dim;
        let tiles = b.m.div_ceil(MR);
        let scale = _mm512_set1_ps(g.scale);
        let zero = _mm512_setzero_ps();
        let mut tile = [[0.0f32; NR]; MR];
        for (local, pnl) in panels.enumerate() {
            let gp = g.panel_data().as_ptr().add(pnl * dim * NR);
            let b0 = _mm512_loadu_ps(g.aux.as_ptr().add(pnl * NR));
            let b1 = _mm512_loadu_ps(g.aux.as_ptr().add(pnl * NR + 16));
            for t in 0..tiles {
                let qp = b.q.as_ptr().add(t * MR * dim);
                let mut acc = [[zero; 2]; MR];
                for p in 0..dim {
                    let g0 = _mm512_loadu_ps(gp.add(p * NR));
                    let g1 = _mm512_loadu_ps(gp.add(p * NR + 16));
                    for (i, a) in acc.iter_mut().enumerate() {
                        let qv = _mm512_set1_ps(*qp.add(p * MR + i));
                        a[0] = _mm512_fmadd_ps(qv, g0, a[0]);
                        a[1] = _mm512_fmadd_ps(qv, g1, a[1]);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(tile[i].as_mut_ptr(), a[0]);
                    _mm512_storeu_ps(tile[i].as_mut_ptr().add(16), a[1]);
                }
                for (i, row) in tile.iter_mut().enumerate().take((b.m - t * MR).min(MR)) {
                    let r = t * MR + i;
                    let av = _mm512_set1_ps(b.aux[r]);
                    let thr = _mm512_set1_ps(sinks[r].threshold());
                    let d0 = _mm512_loadu_ps(row.as_ptr());
                    let d1 = _mm512_loadu_ps(row.as_ptr().add(16));
                    let d0 = _mm512_max_ps(
                        zero,
                        _mm512_add_ps(_mm512_add_ps(av, b0), _mm512_mul_ps(scale, d0)),
                    );
                    let d1 = _mm512_max_ps(
                        zero,
                        _mm512_add_ps(_mm512_add_ps(av, b1), _mm512_mul_ps(scale, d1)),
                    );
                    let m0 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(d0, thr);
                    let m1 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(d1, thr);
                    let mask = u64::from(m0) | (u64::from(m1) << 16);
                    let cmask = match cols.as_deref() {
                        Some(c) => {
                            let ct = c.thr.as_ptr().add(local * NR);
                            let c0 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(d0, _mm512_loadu_ps(ct));
                            let c1 =
                                _mm512_cmp_ps_mask::<_CMP_LE_OQ>(d1, _mm512_loadu_ps(ct.add(16)));
                            u64::from(c0) | (u64::from(c1) << 16)
                        }
                        None => 0,
                    };
                    if mask | cmask != 0 {
                        _mm512_storeu_ps(row.as_mut_ptr(), d0);
                        _mm512_storeu_ps(row.as_mut_ptr().add(16), d1);
                        if mask != 0 {
                            g.offer_lanes(mask, row, pnl * NR, b.excl[r], &mut sinks[r]);
                        }
                        if let (true, Some(c)) = (cmask != 0, cols.as_deref_mut()) {
                            let id = c.row0 + r as u32;
                            c.offer(cmask, row, local * NR, id);
                        }
                    }
                }
            }
        }
    }

    /// 6 × 16 tiles: 12 ymm accumulators, two gallery loads and one
    /// broadcast per depth step (15 of the 16 ymm registers).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scan_avx2<S: RowSink>(
        g: &PackedGallery,
        b: &Block<'_>,
        panels: Range<usize>,
        sinks: &mut [S],
        mut cols: Option<&mut Cols<'_, S>>,
    ) {
        const MR: usize = 6;
        const NR: usize = 16;
        let dim = g.dim;
        let tiles = b.m.div_ceil(MR);
        let scale = _mm256_set1_ps(g.scale);
        let zero = _mm256_setzero_ps();
        let mut tile = [[0.0f32; NR]; MR];
        for (local, pnl) in panels.enumerate() {
            let gp = g.panel_data().as_ptr().add(pnl * dim * NR);
            let b0 = _mm256_loadu_ps(g.aux.as_ptr().add(pnl * NR));
            let b1 = _mm256_loadu_ps(g.aux.as_ptr().add(pnl * NR + 8));
            for t in 0..tiles {
                let qp = b.q.as_ptr().add(t * MR * dim);
                let mut acc = [[zero; 2]; MR];
                for p in 0..dim {
                    let g0 = _mm256_loadu_ps(gp.add(p * NR));
                    let g1 = _mm256_loadu_ps(gp.add(p * NR + 8));
                    for (i, a) in acc.iter_mut().enumerate() {
                        let qv = _mm256_broadcast_ss(&*qp.add(p * MR + i));
                        a[0] = _mm256_fmadd_ps(qv, g0, a[0]);
                        a[1] = _mm256_fmadd_ps(qv, g1, a[1]);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(tile[i].as_mut_ptr(), a[0]);
                    _mm256_storeu_ps(tile[i].as_mut_ptr().add(8), a[1]);
                }
                for (i, row) in tile.iter_mut().enumerate().take((b.m - t * MR).min(MR)) {
                    let r = t * MR + i;
                    let av = _mm256_set1_ps(b.aux[r]);
                    let thr = _mm256_set1_ps(sinks[r].threshold());
                    let d0 = _mm256_loadu_ps(row.as_ptr());
                    let d1 = _mm256_loadu_ps(row.as_ptr().add(8));
                    let d0 = _mm256_max_ps(
                        zero,
                        _mm256_add_ps(_mm256_add_ps(av, b0), _mm256_mul_ps(scale, d0)),
                    );
                    let d1 = _mm256_max_ps(
                        zero,
                        _mm256_add_ps(_mm256_add_ps(av, b1), _mm256_mul_ps(scale, d1)),
                    );
                    let m0 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(d0, thr)) as u32;
                    let m1 = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(d1, thr)) as u32;
                    let mask = u64::from(m0 | (m1 << 8));
                    let cmask = match cols.as_deref() {
                        Some(c) => {
                            let ct = c.thr.as_ptr().add(local * NR);
                            let c0 = _mm256_cmp_ps::<_CMP_LE_OQ>(d0, _mm256_loadu_ps(ct));
                            let c1 = _mm256_cmp_ps::<_CMP_LE_OQ>(d1, _mm256_loadu_ps(ct.add(8)));
                            let c0 = _mm256_movemask_ps(c0) as u32;
                            let c1 = _mm256_movemask_ps(c1) as u32;
                            u64::from(c0 | (c1 << 8))
                        }
                        None => 0,
                    };
                    if mask | cmask != 0 {
                        _mm256_storeu_ps(row.as_mut_ptr(), d0);
                        _mm256_storeu_ps(row.as_mut_ptr().add(8), d1);
                        if mask != 0 {
                            g.offer_lanes(mask, row, pnl * NR, b.excl[r], &mut sinks[r]);
                        }
                        if let (true, Some(c)) = (cmask != 0, cols.as_deref_mut()) {
                            let id = c.row0 + r as u32;
                            c.offer(cmask, row, local * NR, id);
                        }
                    }
                }
            }
        }
    }
}

/// Keeps the single nearest candidate, ties to the lower index. Can start
/// from a known candidate (k-means reuses the last iteration's distance).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Best1 {
    pub d: f32,
    pub j: u32,
}

impl Best1 {
    /// Nothing seen yet.
    pub(crate) const EMPTY: Best1 = Best1 {
        d: f32::INFINITY,
        j: u32::MAX,
    };
}

impl RowSink for Best1 {
    #[inline(always)]
    fn threshold(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn offer(&mut self, d: f32, j: u32) {
        if d < self.d || (d == self.d && j < self.j) {
            self.d = d;
            self.j = j;
        }
    }
}

/// A candidate as one sortable integer: the distance's bits above the index.
///
/// Distances are clamped at zero, so their IEEE bits order like the values
/// (`+ 0.0` turns a `-0.0` into `+0.0`); comparing keys is comparing
/// `(distance, index)` lexicographically, and sorting or selecting `u64`s is
/// several times faster than going through a float comparator.
#[inline(always)]
pub(crate) fn key(d: f32, j: u32) -> u64 {
    (u64::from((d + 0.0).to_bits()) << 32) | u64::from(j)
}

/// The distance of a [`key`].
#[inline(always)]
pub(crate) fn key_dist(key: u64) -> f32 {
    f32::from_bits((key >> 32) as u32)
}

/// The index of a [`key`].
#[inline(always)]
pub(crate) fn key_index(key: u64) -> u32 {
    key as u32
}

/// Keeps the `k` nearest candidates of a row, ties to the lower index.
///
/// Candidates are appended to a buffer of `2k` entries while they beat the
/// current bound (the k-th smallest [`key`] seen so far, `+inf` until `k`
/// have been seen); when the buffer fills, a linear-time selection keeps the
/// best `k` and tightens the bound. The bound is a key, distance and index
/// together, so a candidate that ties the k-th distance is kept exactly when
/// its index is lower, in whatever order the candidates arrive.
pub(crate) struct TopK {
    k: usize,
    cap: usize,
    primed: bool,
    /// Candidates whose key is at least this are rejected; its distance is
    /// what the kernel filters with.
    bound: u64,
    buf: Vec<u64>,
}

impl TopK {
    /// An empty selector for `k >= 1` neighbours.
    pub(crate) fn new(k: usize) -> Self {
        let mut t = TopK {
            k: 0,
            cap: 0,
            primed: false,
            bound: u64::MAX,
            buf: Vec::new(),
        };
        t.reset(k);
        t
    }

    /// Forgets everything and selects `k >= 1` from now on (keeps the
    /// allocation).
    pub(crate) fn reset(&mut self, k: usize) {
        self.reset_below(k, f32::INFINITY);
    }

    /// Like [`reset`](Self::reset), but only candidates closer than `bound`
    /// are kept. If [`finish`](Self::finish) then returns `k` of them they
    /// are the exact `k` nearest (the k-th nearest is below `bound`);
    /// otherwise the bound was too tight and the row must be searched again
    /// without it.
    pub(crate) fn reset_below(&mut self, k: usize, bound: f32) {
        debug_assert!(k >= 1);
        self.k = k;
        self.cap = Self::capacity(k);
        self.primed = false;
        // Every key at `bound` (any index) is at least `key(bound, 0)`.
        self.bound = key(bound, 0);
        self.buf.clear();
        self.buf.reserve(self.cap);
    }

    /// The candidates a selector of `k` buffers.
    pub(crate) fn capacity(k: usize) -> usize {
        (2 * k).max(k + 16)
    }

    fn compact(&mut self) {
        let k = self.k;
        self.buf.select_nth_unstable(k - 1);
        self.buf.truncate(k);
        self.bound = self.buf[k - 1];
    }

    /// The kept candidates as [`key`]s, nearest first (fewer than `k` only if
    /// the gallery had fewer admissible items or distances were not finite).
    pub(crate) fn finish(&mut self) -> &[u64] {
        if self.buf.len() > self.k {
            self.compact();
        }
        self.buf.sort_unstable();
        &self.buf
    }
}

impl RowSink for TopK {
    #[inline(always)]
    fn threshold(&self) -> f32 {
        key_dist(self.bound)
    }
    #[inline(always)]
    fn offer(&mut self, d: f32, j: u32) {
        if d.is_nan() {
            return;
        }
        let e = key(d, j);
        if e >= self.bound {
            return;
        }
        self.buf.push(e);
        if !self.primed && self.buf.len() == self.k {
            // The first k kept: the k-th smallest is their maximum (below
            // the bound, since each of them was).
            self.primed = true;
            self.bound = self.buf.iter().copied().max().unwrap_or(0);
        } else if self.buf.len() == self.cap {
            self.compact();
        }
    }
}

/// Records every distance offered to a row, and refuses a pair offered twice
/// (the tests of the symmetric scan).
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct OfferedOnce(pub Vec<f32>);

#[cfg(test)]
impl RowSink for OfferedOnce {
    fn threshold(&self) -> f32 {
        f32::INFINITY
    }
    fn offer(&mut self, d: f32, j: u32) {
        assert!(self.0[j as usize].is_nan(), "pair offered twice");
        self.0[j as usize] = d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every distance of a row.
    struct DenseRow<'a>(&'a mut [f32]);

    impl RowSink for DenseRow<'_> {
        fn threshold(&self) -> f32 {
            f32::INFINITY
        }
        fn offer(&mut self, d: f32, j: u32) {
            self.0[j as usize] = d;
        }
    }
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Every kernel, every tile position, every block shape: the full
    /// distance table equals the scalar formula bit for bit.
    #[test]
    fn kernels_match_scalar_formula_bitwise() {
        for &(nq, ng, dim) in &[
            (1usize, 1usize, 1usize),
            (13, 33, 7),
            (25, 70, 128),
            (7, 5, 3),
            (130, 97, 19),
        ] {
            let q = random_rows(nq, dim, 1);
            let g = random_rows(ng, dim, 2);
            let qa = squared_norms(&q, dim);
            let ga = squared_norms(&g, dim);
            for isa in Isa::available() {
                let packed = PackedGallery::with_isa(isa, &g, dim, &ga, -2.0, None);
                let mut table = vec![f32::NAN; nq * ng];
                let mut sinks: Vec<DenseRow<'_>> = table.chunks_mut(ng).map(DenseRow).collect();
                packed.scan_block(
                    QueryRows {
                        data: &q,
                        aux: &qa,
                        dim,
                    },
                    Rows::Range(0, nq),
                    false,
                    &mut sinks,
                );
                for i in 0..nq {
                    for j in 0..ng {
                        let want = combine(
                            qa[i],
                            ga[j],
                            -2.0,
                            dot_seq(&q[i * dim..(i + 1) * dim], &g[j * dim..(j + 1) * dim]),
                        );
                        assert_eq!(
                            table[i * ng + j].to_bits(),
                            want.to_bits(),
                            "{isa:?} ({nq},{ng},{dim}) at {i},{j}"
                        );
                    }
                }
            }
        }
    }

    /// Every kernel's symmetric pair scan: each pair `i ≠ j` reaches both
    /// rows once, with the scalar formula's bits.
    #[test]
    fn pair_scans_offer_each_pair_to_both_rows_bitwise() {
        let (n, dim) = (2 * SYM_BLOCK + 37, 19);
        let x = random_rows(n, dim, 5);
        let xa = squared_norms(&x, dim);
        let blocks: Vec<Range<usize>> = (0..n.div_ceil(SYM_BLOCK))
            .map(|b| b * SYM_BLOCK..((b + 1) * SYM_BLOCK).min(n))
            .collect();
        for isa in Isa::available() {
            let packed = PackedGallery::with_isa(isa, &x, dim, &xa, -2.0, None);
            let q = QueryRows {
                data: &x,
                aux: &xa,
                dim,
            };
            let rows = PackedRows::new(q, &packed);
            let mut sinks = vec![OfferedOnce(vec![f32::NAN; n]); n];
            for (a, ra) in blocks.iter().enumerate() {
                packed.scan_pair(&rows, ra.clone(), ra.clone(), &mut sinks[ra.clone()], None);
                for rb in &blocks[a + 1..] {
                    let (head, tail) = sinks.split_at_mut(rb.start);
                    packed.scan_pair(
                        &rows,
                        ra.clone(),
                        rb.clone(),
                        &mut head[ra.clone()],
                        Some(&mut tail[..rb.len()]),
                    );
                }
            }
            for i in 0..n {
                for j in 0..n {
                    let got = sinks[i].0[j];
                    if i == j {
                        assert!(got.is_nan(), "{isa:?}: row {i} offered itself");
                        continue;
                    }
                    let want = combine(
                        xa[i],
                        xa[j],
                        -2.0,
                        dot_seq(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]),
                    );
                    assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} at {i},{j}");
                }
            }
        }
    }

    /// Candidates offered in any order select the same `k`, ties by index.
    #[test]
    fn topk_does_not_depend_on_the_order_of_offers() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        for k in [1usize, 3, 20, 100] {
            let vals: Vec<(f32, u32)> = (0..400)
                .map(|j| (rng.gen_range(0..12) as f32 * 0.5, j))
                .collect();
            let select = |order: &[(f32, u32)]| {
                let mut t = TopK::new(k);
                for &(d, j) in order {
                    if d <= t.threshold() {
                        t.offer(d, j);
                    }
                }
                t.finish().to_vec()
            };
            let want = select(&vals);
            let mut reversed = vals.clone();
            reversed.reverse();
            assert_eq!(select(&reversed), want, "k = {k} reversed");
            let mut shuffled = vals.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.gen_range(0..=i));
            }
            assert_eq!(select(&shuffled), want, "k = {k} shuffled");
        }
    }

    #[test]
    fn exclusion_and_ids_are_applied() {
        let dim = 5;
        let g = random_rows(40, dim, 3);
        let ga = squared_norms(&g, dim);
        // Reported ids 3j + 1: gallery row 1 is reported as 4.
        let ids: Vec<u32> = (0..40).map(|j| 3 * j + 1).collect();
        // Query row 4 is an exact copy of gallery row 1.
        let mut q = random_rows(6, dim, 4);
        q[4 * dim..5 * dim].copy_from_slice(&g[dim..2 * dim]);
        let qa = squared_norms(&q, dim);
        let brute = |r: usize, skip: Option<u32>| {
            let mut best = Best1::EMPTY;
            for j in 0..40 {
                if Some(ids[j]) != skip {
                    let d = combine(
                        qa[r],
                        ga[j],
                        -2.0,
                        dot_seq(&q[r * dim..(r + 1) * dim], &g[j * dim..(j + 1) * dim]),
                    );
                    best.offer(d, ids[j]);
                }
            }
            (best.j, best.d)
        };
        for isa in Isa::available() {
            let packed = PackedGallery::with_isa(isa, &g, dim, &ga, -2.0, Some(ids.clone()));
            let rows = [4u32, 2];
            for exclude in [false, true] {
                let mut sinks = vec![Best1::EMPTY; 2];
                packed.scan_block(
                    QueryRows {
                        data: &q,
                        aux: &qa,
                        dim,
                    },
                    Rows::List(&rows),
                    exclude,
                    &mut sinks,
                );
                for (s, &r) in sinks.iter().zip(&rows) {
                    let skip = exclude.then_some(r);
                    assert_eq!(
                        (s.j, s.d),
                        brute(r as usize, skip),
                        "{isa:?} row {r} exclude {exclude}"
                    );
                }
                if exclude {
                    assert_ne!(sinks[0].j, 4);
                } else {
                    assert_eq!((sinks[0].j, sinks[0].d), (4, 0.0));
                }
            }
        }
    }

    #[test]
    fn topk_keeps_k_smallest_with_index_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut t = TopK::new(1);
        for k in [1usize, 2, 5, 40, 300] {
            let vals: Vec<f32> = (0..500)
                .map(|_| rng.gen_range(0..30) as f32 * 0.25)
                .collect();
            t.reset(k);
            for (j, &d) in vals.iter().enumerate() {
                if d <= t.threshold() {
                    t.offer(d, j as u32);
                }
            }
            let mut want: Vec<(f32, u32)> = vals
                .iter()
                .enumerate()
                .map(|(j, &d)| (d, j as u32))
                .collect();
            want.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
            want.truncate(k);
            let got: Vec<(f32, u32)> = t
                .finish()
                .iter()
                .map(|&e| (key_dist(e), key_index(e)))
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn keys_order_like_distance_then_index() {
        let pairs = [
            (0.0f32, 5u32),
            (-0.0, 4),
            (0.0, 6),
            (1e-30, 0),
            (0.5, 1),
            (0.5, 2),
            (3.0, 0),
            (f32::INFINITY, 0),
        ];
        for a in pairs {
            for b in pairs {
                let want = (a.0 + 0.0)
                    .partial_cmp(&(b.0 + 0.0))
                    .unwrap()
                    .then(a.1.cmp(&b.1));
                assert_eq!(key(a.0, a.1).cmp(&key(b.0, b.1)), want, "{a:?} {b:?}");
            }
        }
        assert_eq!(key_dist(key(-0.0, 3)).to_bits(), 0.0f32.to_bits());
        assert_eq!(key_index(key(2.5, 77)), 77);
    }
}
