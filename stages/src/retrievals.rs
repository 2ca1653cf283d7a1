//! What a run retrieved, read back from its artifacts for the HTML report: each query's
//! saved nearest neighbours (`neighbors.parquet`), scored against the index's classes —
//! per-query rank of the first correct neighbour and average precision, per-class
//! Recall@1, the most-confused class pairs, and the queries a report shows (a seeded
//! random draw, and the worst). Nothing is embedded or searched again: everything comes
//! from the `retrieve.neighbors` neighbours each query has saved.
use crate::error::StageError;
use arrow::array::{Array, Float32Array, UInt32Array};
use dml_artifacts::tables::{self, IndexRow};
use dml_datasets::Split;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;

/// Every query's nearest neighbours, as the retrieve stage saved them.
#[derive(Debug, Clone, Default)]
pub struct Neighbours {
    /// Neighbours saved per query.
    pub depth: usize,
    /// Query image ids, in file order.
    pub queries: Vec<u32>,
    /// `depth` neighbour image ids per query, nearest first.
    pub ids: Vec<u32>,
    /// Their distances.
    pub dist: Vec<f32>,
    /// Query image id → its row.
    rows: HashMap<u32, usize>,
}

impl Neighbours {
    /// Reads `neighbors.parquet` (query_image_id, rank, neighbor_image_id, distance), checking
    /// that every query has ranks 1..depth in order.
    pub fn read(path: &Path) -> crate::Result<Self> {
        let b = tables::read_table(path)?;
        let u32s = |n: &str| -> crate::Result<&UInt32Array> {
            tables::column(&b, n, path)?
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| {
                    StageError::Input(format!("{}: column `{n}` is not uint32", path.display()))
                })
        };
        let (q, rank, nb) = (
            u32s("query_image_id")?,
            u32s("rank")?,
            u32s("neighbor_image_id")?,
        );
        let dist = tables::column(&b, "distance", path)?
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| {
                StageError::Input(format!(
                    "{}: column `distance` is not float32",
                    path.display()
                ))
            })?;
        let depth = rank.values().iter().copied().max().unwrap_or(0) as usize;
        let n = b.num_rows();
        if depth == 0 || n % depth != 0 {
            return Err(StageError::Input(format!(
                "{}: {n} rows are not whole queries of {depth} neighbours",
                path.display()
            )));
        }
        let mut out = Neighbours {
            depth,
            queries: Vec::with_capacity(n / depth),
            ids: nb.values().to_vec(),
            dist: dist.values().to_vec(),
            rows: HashMap::with_capacity(n / depth),
        };
        for (row, start) in (0..n).step_by(depth).enumerate() {
            let query = q.value(start);
            let whole = (0..depth)
                .all(|r| q.value(start + r) == query && rank.value(start + r) as usize == r + 1);
            if !whole {
                return Err(StageError::Input(format!(
                    "{}: the neighbours of query {query} are not ranks 1..{depth} in order",
                    path.display()
                )));
            }
            out.queries.push(query);
            out.rows.insert(query, row);
        }
        Ok(out)
    }

    /// The neighbours and distances of row `row`.
    pub fn row(&self, row: usize) -> (&[u32], &[f32]) {
        let r = row * self.depth..(row + 1) * self.depth;
        (&self.ids[r.clone()], &self.dist[r])
    }

    /// The row of a query image, if it was a query.
    pub fn row_of(&self, query: u32) -> Option<usize> {
        self.rows.get(&query).copied()
    }
}

/// The classes, names and splits of the indexed images, by image id.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// The index rows, position = image id.
    pub rows: Vec<IndexRow>,
    /// Class id → name.
    names: HashMap<u32, String>,
}

impl Catalogue {
    /// The index, checked to be dense (row `i` has image id `i`, as the index stage writes it).
    pub fn new(rows: Vec<IndexRow>) -> crate::Result<Self> {
        if let Some((i, r)) = rows
            .iter()
            .enumerate()
            .find(|(i, r)| r.image_id as usize != *i)
        {
            return Err(StageError::Input(format!(
                "index row {i} has image_id {}: not dense",
                r.image_id
            )));
        }
        let names = rows
            .iter()
            .map(|r| (r.class_id, r.class_name.clone()))
            .collect();
        Ok(Catalogue { rows, names })
    }

    /// The class of an image (`u32::MAX` for an id the index lacks).
    pub fn class(&self, id: u32) -> u32 {
        self.rows.get(id as usize).map_or(u32::MAX, |r| r.class_id)
    }

    /// The name of a class.
    pub fn name_of_class(&self, class: u32) -> String {
        self.names
            .get(&class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }

    /// The class name of an image.
    pub fn class_name(&self, id: u32) -> &str {
        self.rows
            .get(id as usize)
            .map_or("?", |r| r.class_name.as_str())
    }
}

/// What one query's saved neighbours say about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryScore {
    /// The query's row in [`Neighbours`].
    pub row: usize,
    /// Its image id.
    pub query: u32,
    /// 1-based rank of its first correct neighbour, `None` when none of the saved ones is.
    pub first_correct: Option<u32>,
    /// Average precision at R (MAP@R's term) over the saved neighbours: exact when the
    /// query's R (relevant gallery items) is at most the depth, a lower bound otherwise.
    pub ap: f64,
    /// R: gallery items of its class it could retrieve.
    pub positives: u32,
}

/// Which gallery a query searched: the protocol recorded in the retrieve stage's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gallery {
    /// Every query searched all the other queries (leave-one-out, In-shop merged).
    OtherQueries,
    /// Queries searched the images of the `gallery` split.
    GallerySplit,
}

impl Gallery {
    /// From `metrics.json`'s `protocol` (`leave_one_out`, `query_gallery`, `inshop_merged`).
    pub fn of_protocol(protocol: Option<&str>) -> Self {
        match protocol {
            Some("query_gallery") => Gallery::GallerySplit,
            _ => Gallery::OtherQueries,
        }
    }
}

/// Every query's score; R per class from the gallery the protocol searched.
pub fn score_queries(nb: &Neighbours, cat: &Catalogue, gallery: Gallery) -> Vec<QueryScore> {
    let mut per_class: HashMap<u32, u32> = HashMap::new();
    match gallery {
        Gallery::OtherQueries => {
            for &q in &nb.queries {
                *per_class.entry(cat.class(q)).or_default() += 1;
            }
        }
        Gallery::GallerySplit => {
            for r in cat.rows.iter().filter(|r| r.split == Split::Gallery) {
                *per_class.entry(r.class_id).or_default() += 1;
            }
        }
    }
    let own = u32::from(gallery == Gallery::OtherQueries);
    nb.queries
        .iter()
        .enumerate()
        .map(|(row, &query)| {
            let class = cat.class(query);
            let positives = per_class
                .get(&class)
                .copied()
                .unwrap_or(0)
                .saturating_sub(own);
            let (ids, _) = nb.row(row);
            let mut hits = 0u32;
            let mut ap = 0.0;
            let mut first_correct = None;
            for (i, &g) in ids.iter().enumerate() {
                if cat.class(g) != class {
                    continue;
                }
                first_correct.get_or_insert(i as u32 + 1);
                if (i as u32) < positives {
                    hits += 1;
                    ap += f64::from(hits) / (i + 1) as f64;
                }
            }
            QueryScore {
                row,
                query,
                first_correct,
                ap: if positives > 0 {
                    ap / f64::from(positives)
                } else {
                    0.0
                },
                positives,
            }
        })
        .collect()
}

/// `n` queries (with at least one positive) drawn at random with `seed`, in draw order:
/// the same queries for every run over the same test set.
pub fn random_queries(scores: &[QueryScore], n: usize, seed: u64) -> Vec<QueryScore> {
    let eligible: Vec<&QueryScore> = scores.iter().filter(|s| s.positives > 0).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rand::seq::index::sample(&mut rng, eligible.len(), n.min(eligible.len()))
        .into_iter()
        .map(|i| *eligible[i])
        .collect()
}

/// The `n` worst queries: the latest first correct neighbour (none among the saved ones
/// is worst), then the lowest average precision, then the closest (most confidently
/// wrong) first neighbour.
pub fn worst_queries(scores: &[QueryScore], nb: &Neighbours, n: usize) -> Vec<QueryScore> {
    let mut v: Vec<&QueryScore> = scores.iter().filter(|s| s.positives > 0).collect();
    let first_dist = |s: &QueryScore| nb.row(s.row).1.first().copied().unwrap_or(0.0);
    v.sort_by(|a, b| {
        let ra = a.first_correct.unwrap_or(u32::MAX);
        let rb = b.first_correct.unwrap_or(u32::MAX);
        rb.cmp(&ra)
            .then(a.ap.total_cmp(&b.ap))
            .then(first_dist(a).total_cmp(&first_dist(b)))
            .then(a.query.cmp(&b.query))
    });
    v.into_iter().take(n).copied().collect()
}

/// Recall@1 and MAP@R of one class's queries.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScore {
    /// Class id.
    pub class: u32,
    /// Its queries (with positives).
    pub queries: u32,
    /// Fraction whose nearest neighbour is of the class.
    pub recall_at_1: f64,
    /// Mean of their average precisions (over the saved neighbours).
    pub map: f64,
    /// The class most often retrieved first instead, with how many queries.
    pub confused_with: Option<(u32, u32)>,
}

/// Per-class Recall@1, worst first (then lowest MAP, then most queries, then class id).
pub fn class_scores(scores: &[QueryScore], nb: &Neighbours, cat: &Catalogue) -> Vec<ClassScore> {
    #[derive(Default)]
    struct Acc {
        n: u32,
        hits: u32,
        ap: f64,
        wrong: HashMap<u32, u32>,
    }
    let mut acc: HashMap<u32, Acc> = HashMap::new();
    for s in scores.iter().filter(|s| s.positives > 0) {
        let class = cat.class(s.query);
        let a = acc.entry(class).or_default();
        a.n += 1;
        a.ap += s.ap;
        if s.first_correct == Some(1) {
            a.hits += 1;
        } else if let Some(&first) = nb.row(s.row).0.first() {
            *a.wrong.entry(cat.class(first)).or_default() += 1;
        }
    }
    let mut out: Vec<ClassScore> = acc
        .into_iter()
        .map(|(class, a)| ClassScore {
            class,
            queries: a.n,
            recall_at_1: f64::from(a.hits) / f64::from(a.n),
            map: a.ap / f64::from(a.n),
            confused_with: a
                .wrong
                .into_iter()
                .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0))),
        })
        .collect();
    out.sort_by(|a, b| {
        a.recall_at_1
            .total_cmp(&b.recall_at_1)
            .then(a.map.total_cmp(&b.map))
            .then(b.queries.cmp(&a.queries))
            .then(a.class.cmp(&b.class))
    });
    out
}

/// How often queries of one class retrieved images of another.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusedPair {
    /// The queries' class.
    pub query_class: u32,
    /// The class retrieved instead.
    pub retrieved_class: u32,
    /// Wrong neighbours of that class among the top `k` of the query class's queries.
    pub count: u32,
    /// `count` over all top-`k` slots of the query class's queries.
    pub share: f64,
}

/// The `n` class pairs with the most wrong neighbours among every query's top `k`.
pub fn confused_pairs(
    scores: &[QueryScore],
    nb: &Neighbours,
    cat: &Catalogue,
    k: usize,
    n: usize,
) -> Vec<ConfusedPair> {
    let k = k.min(nb.depth);
    let mut pairs: HashMap<(u32, u32), u32> = HashMap::new();
    let mut slots: HashMap<u32, u32> = HashMap::new();
    for s in scores.iter().filter(|s| s.positives > 0) {
        let class = cat.class(s.query);
        *slots.entry(class).or_default() += k as u32;
        for &g in &nb.row(s.row).0[..k] {
            let c = cat.class(g);
            if c != class {
                *pairs.entry((class, c)).or_default() += 1;
            }
        }
    }
    let mut v: Vec<ConfusedPair> = pairs
        .into_iter()
        .map(|((a, b), count)| ConfusedPair {
            query_class: a,
            retrieved_class: b,
            count,
            share: f64::from(count) / f64::from(slots[&a].max(1)),
        })
        .collect();
    v.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.share.total_cmp(&a.share))
            .then((a.query_class, a.retrieved_class).cmp(&(b.query_class, b.retrieved_class)))
    });
    v.truncate(n);
    v
}

/// A histogram of per-class Recall@1: ten bins of 10 % (the last one closed, so 100 %
/// falls in 90–100 %).
pub fn recall_histogram(classes: &[ClassScore]) -> [u32; 10] {
    let mut bins = [0u32; 10];
    for c in classes {
        bins[((c.recall_at_1 * 10.0).floor() as usize).min(9)] += 1;
    }
    bins
}

/// The first `n` query images of a class (in query order), to show it.
pub fn class_examples(nb: &Neighbours, cat: &Catalogue, class: u32, n: usize) -> Vec<u32> {
    nb.queries
        .iter()
        .copied()
        .filter(|&q| cat.class(q) == class)
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(classes: &[u32]) -> Catalogue {
        Catalogue::new(
            classes
                .iter()
                .enumerate()
                .map(|(i, &c)| IndexRow {
                    image_id: i as u32,
                    path: format!("{c}/{i}.jpg"),
                    class_id: c,
                    class_name: format!("class {c}"),
                    split: Split::Test,
                    width: 10,
                    height: 10,
                    bytes: 1,
                    blake3: String::new(),
                    dataset_image_id: None,
                })
                .collect(),
        )
        .unwrap()
    }

    fn nb(rows: &[(u32, &[u32])]) -> Neighbours {
        let depth = rows[0].1.len();
        let mut n = Neighbours {
            depth,
            ..Default::default()
        };
        for (row, (q, ids)) in rows.iter().enumerate() {
            n.queries.push(*q);
            n.rows.insert(*q, row);
            n.ids.extend_from_slice(ids);
            n.dist
                .extend((0..depth).map(|i| (i + 1) as f32 + *q as f32 / 100.0));
        }
        n
    }

    #[test]
    fn scores_follow_map_at_r_and_the_first_correct_rank() {
        // Classes: images 0,1,2 → class 0; 3,4 → class 1; 5 → class 2 (no positive).
        let c = cat(&[0, 0, 0, 1, 1, 2]);
        let n = nb(&[
            (0, &[1, 3, 2]), // R = 2: hits at 1 and 3 → AP = (1/1) / 2 (rank 3 > R)
            (1, &[3, 4, 0]), // first correct at 3; AP over the first R = 2: 0
            (2, &[0, 1, 3]), // AP = (1 + 1) / 2 = 1
            (3, &[4, 0, 1]), // R = 1: AP = 1
            (4, &[0, 1, 2]), // none correct
            (5, &[0, 3, 4]), // no positive at all
        ]);
        let s = score_queries(&n, &c, Gallery::OtherQueries);
        let got: Vec<(Option<u32>, f64, u32)> = s
            .iter()
            .map(|q| (q.first_correct, q.ap, q.positives))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), 0.5, 2),
                (Some(3), 0.0, 2),
                (Some(1), 1.0, 2),
                (Some(1), 1.0, 1),
                (None, 0.0, 1),
                (None, 0.0, 0),
            ]
        );
        // Worst: no correct neighbour, then the latest first correct; the query without
        // positives is never shown.
        let worst: Vec<u32> = worst_queries(&s, &n, 3).iter().map(|q| q.query).collect();
        assert_eq!(worst, vec![4, 1, 0]);
        // Per class: class 1 has R@1 1/2 and mostly retrieves class 0 first; class 0 2/3.
        let classes = class_scores(&s, &n, &c);
        assert_eq!(classes[0].class, 1);
        assert_eq!(classes[0].recall_at_1, 0.5);
        assert_eq!(classes[0].confused_with, Some((0, 1)));
        assert_eq!(classes[1].class, 0);
        assert!((classes[1].recall_at_1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(classes.len(), 2, "class 2 has no query with a positive");
        assert_eq!(recall_histogram(&classes)[5], 1);
        assert_eq!(recall_histogram(&classes)[6], 1);
        // Confused pairs over the top 2: class 1 → 0 three times (4: 0, 1; 3: 0) of 4
        // slots, class 0 → 1 three times (0: 3; 1: 3, 4) of 6: the larger share first.
        let pairs = confused_pairs(&s, &n, &c, 2, 5);
        let got: Vec<(u32, u32, u32, f64)> = pairs
            .iter()
            .map(|p| (p.query_class, p.retrieved_class, p.count, p.share))
            .collect();
        assert_eq!(got, vec![(1, 0, 3, 0.75), (0, 1, 3, 0.5)]);
        // The random draw is seeded and never repeats a query.
        let a = random_queries(&s, 4, 7);
        assert_eq!(a, random_queries(&s, 4, 7));
        let mut ids: Vec<u32> = a.iter().map(|q| q.query).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 4);
        assert!(!ids.contains(&5));
        assert_eq!(random_queries(&s, 50, 7).len(), 5);
        assert_eq!(class_examples(&n, &c, 0, 2), vec![0, 1]);
    }

    #[test]
    fn a_query_gallery_protocol_counts_positives_in_the_gallery_split() {
        let mut c = cat(&[0, 0, 0, 1]);
        c.rows[0].split = Split::Query;
        c.rows[3].split = Split::Query;
        c.rows[1].split = Split::Gallery;
        c.rows[2].split = Split::Gallery;
        let n = nb(&[(0, &[2, 1]), (3, &[1, 2])]);
        let s = score_queries(&n, &c, Gallery::GallerySplit);
        assert_eq!((s[0].positives, s[0].ap), (2, 1.0));
        assert_eq!((s[1].positives, s[1].first_correct), (0, None));
    }

    #[test]
    fn neighbours_read_back_and_bad_tables_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("neighbors.parquet");
        let batch = tables::neighbors_to_batch(
            vec![5, 5, 9, 9],
            vec![1, 2, 1, 2],
            vec![9, 1, 5, 2],
            vec![0.5, 0.7, 0.5, 0.9],
        );
        tables::write_parquet(&p, &batch).unwrap();
        let n = Neighbours::read(&p).unwrap();
        assert_eq!(n.depth, 2);
        assert_eq!(n.queries, vec![5, 9]);
        assert_eq!(
            n.row(n.row_of(9).unwrap()),
            (&[5u32, 2][..], &[0.5f32, 0.9][..])
        );
        let bad =
            tables::neighbors_to_batch(vec![5, 5, 9], vec![1, 2, 1], vec![9, 1, 5], vec![0.0; 3]);
        tables::write_parquet(&p, &bad).unwrap();
        assert!(Neighbours::read(&p).is_err());
    }
}
