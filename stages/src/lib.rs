//! Stage implementations: index, plan, train, embed, cluster, retrieve, report.
pub mod train;
