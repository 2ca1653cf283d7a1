//! The crate's one error type: every way an evaluation call can be refused.

use thiserror::Error;

/// Why a metrics call refused its input.
///
/// Every public function validates shapes, labels and values up front and
/// returns one of these instead of panicking, so a caller (a pipeline stage,
/// the `dml eval` command) can report it with context.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetricsError {
    /// The embedding dimension was zero.
    #[error("the embedding dimension must be at least 1")]
    ZeroDim,

    /// A flat row-major buffer does not hold a whole number of rows.
    #[error("{what} holds {len} floats, which is not a whole number of rows of dimension {dim}")]
    RaggedRows {
        /// Which argument (`"queries"`, `"gallery"`, `"data"`).
        what: &'static str,
        /// Its length in floats.
        len: usize,
        /// The dimension it was read with.
        dim: usize,
    },

    /// An argument that needs at least one row had none.
    #[error("{what} is empty")]
    Empty {
        /// Which argument.
        what: &'static str,
    },

    /// A label slice does not have one label per row.
    #[error("{what} has {got} labels for {rows} rows")]
    LabelCount {
        /// Which label slice.
        what: &'static str,
        /// Labels given.
        got: usize,
        /// Rows they should label.
        rows: usize,
    },

    /// Two slices that must be paired element by element differ in length.
    #[error("{what}: {left} versus {right} entries")]
    LengthMismatch {
        /// What was being paired.
        what: &'static str,
        /// Length of the first.
        left: usize,
        /// Length of the second.
        right: usize,
    },

    /// An input held a NaN or an infinity.
    #[error("{what} row {row} holds a non-finite value")]
    NonFinite {
        /// Which argument.
        what: &'static str,
        /// First offending row.
        row: usize,
    },

    /// A distance overflowed to infinity or NaN although every input was finite
    /// (values so large that their squares do not fit in `f32`).
    #[error("a distance overflowed for query row {row}; rescale the embeddings")]
    DistanceOverflow {
        /// The query row concerned.
        row: usize,
    },

    /// `k` (neighbours), a Recall@K cut-off or a cluster count was zero.
    #[error("{what} must be at least 1")]
    ZeroK {
        /// Which count.
        what: &'static str,
    },

    /// More neighbours were asked for than the gallery can supply to a query.
    #[error(
        "asked for {k} neighbours but each query has only {available} gallery items to rank \
         (gallery of {gallery}{})",
        if *.leave_one_out { ", minus the query itself" } else { "" }
    )]
    KTooLarge {
        /// Neighbours requested.
        k: usize,
        /// Gallery items available to each query.
        available: usize,
        /// Gallery size.
        gallery: usize,
        /// Whether the query's own row was excluded.
        leave_one_out: bool,
    },

    /// Leave-one-out search pairs query `i` with gallery item `i`, so both sets
    /// must have the same number of rows.
    #[error("leave-one-out needs as many queries as gallery items, got {queries} and {gallery}")]
    LeaveOneOutShape {
        /// Query rows.
        queries: usize,
        /// Gallery rows.
        gallery: usize,
    },

    /// k-means was asked for more clusters than there are points.
    #[error("k-means cannot make {k} clusters from {n} points")]
    TooManyClusters {
        /// Clusters requested.
        k: usize,
        /// Points given.
        n: usize,
    },

    /// Row indices are stored as `u32`.
    #[error("{what} has {rows} rows; at most {max} are supported")]
    TooManyRows {
        /// Which argument.
        what: &'static str,
        /// Rows given.
        rows: usize,
        /// The limit.
        max: usize,
    },
}
