//! Exact retrieval and clustering metrics for deep metric learning, fast at
//! Stanford Online Products scale on a few CPU cores, in bounded memory.
//!
//! * [`knn`]: exact k-nearest-neighbour search ([`Distance::Euclidean`] or
//!   [`Distance::Cosine`], optional leave-one-out [`Exclude::SameIndex`]),
//!   ties broken by lower gallery index.
//! * [`evaluate_retrieval`] (and the protocol wrappers
//!   [`evaluate_query_gallery`], [`evaluate_leave_one_out`]): Recall@K,
//!   MAP@R and R-precision in one search pass; [`retrieval_metrics`] scores
//!   neighbours already found.
//! * [`kmeans`]: scikit-learn's greedy k-means++ seeding (batched, same
//!   distribution) and exact Lloyd iterations to convergence, deterministic
//!   for a seed on any thread count;
//!   [`nmi`]: normalized mutual information as scikit-learn computes it;
//!   [`clustering_nmi`]: both, with k = the number of classes.
//!
//! Matrices are row-major `&[f32]` slices with an explicit `dim`; labels are
//! `u32` class ids. Work runs on the current rayon pool; wrap a call in
//! `rayon::ThreadPool::install` to pick the thread count.
//!
//! ```
//! use dml_metrics::{clustering_nmi, evaluate_leave_one_out, knn, Distance, Exclude};
//!
//! // Four 2-d embeddings of two classes.
//! let x = [0.0f32, 0.0, 0.1, 0.0, 5.0, 5.0, 5.0, 5.2];
//! let labels = [7u32, 7, 9, 9];
//!
//! let nb = knn(&x, &x, 2, 1, Distance::Euclidean, Exclude::SameIndex)?;
//! assert_eq!(nb.idx, [1, 0, 3, 2]);
//!
//! let m = evaluate_leave_one_out(&x, &labels, 2, &[1, 2], Distance::Euclidean)?;
//! assert_eq!(m.recall_at(1), Some(1.0));
//! assert_eq!((m.map_at_r, m.queries_without_positives), (1.0, 0));
//!
//! let c = clustering_nmi(&x, &labels, 2, 0)?;
//! assert_eq!((c.clusters, c.nmi), (2, 1.0));
//! # Ok::<(), dml_metrics::MetricsError>(())
//! ```
//!
//! Everything rests on one engine (module `kernel`): the gallery packed into
//! SIMD panels (AVX-512, AVX2+FMA, or portable code, chosen at run time), a
//! register-tile kernel that computes `‖q‖² + ‖g‖² − 2 q·g` for a tile of
//! queries and gallery items, and a per-row threshold test in registers that
//! discards almost every candidate with one comparison. No function ever
//! materialises a queries × gallery matrix.
#![deny(missing_docs)]

mod error;
mod kernel;
mod kmeans;
mod knn;
mod nmi;
mod retrieval;

pub use error::MetricsError;
pub use kmeans::{clustering_nmi, kmeans, ClusteringMetrics, KMeans, KMEANS_MAX_ITER};
pub use knn::{knn, Distance, Exclude, Neighbors};
pub use nmi::nmi;
pub use retrieval::{
    evaluate_leave_one_out, evaluate_query_gallery, evaluate_retrieval, retrieval_metrics,
    RetrievalMetrics, CUB_KS, INSHOP_KS, SOP_KS,
};
