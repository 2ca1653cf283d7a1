//! The names stages give their inputs (`ctx.input(roles::INDEX)`, and the report's
//! [`ReportRole`]s), in one place.

/// The synthetic dataset's images.
pub const SYNTH: &str = "synth";
/// `index.parquet`.
pub const INDEX: &str = "index";
/// `plan.parquet`.
pub const PLAN: &str = "plan";
/// The decode cache.
pub const DECODE: &str = "decode";
/// The trained network.
pub const TRAIN: &str = "train";
/// `embeddings.arrow`.
pub const EMBED: &str = "embed";

/// What one of the report stage's inputs is to it. The report reads each run `i` of its
/// table through the roles `retrieve/i`, `cluster/i`, `train/i`, `index/i`, `decode/i` (and
/// `baseline_retrieve/i`, `baseline_cluster/i` with an untrained baseline):
/// [`ReportRole::of`] spells them for the DAG, the report and the commands that read a
/// record's report node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReportRole {
    /// The run's retrieval metrics and neighbours.
    Retrieve,
    /// The run's clustering metrics.
    Cluster,
    /// The trained network (its training log and notes).
    Train,
    /// The index (`report.html`'s class names and image paths).
    Index,
    /// The decode cache (`report.html`'s thumbnails).
    Decode,
    /// The untrained baseline's retrieval metrics.
    BaselineRetrieve,
    /// The untrained baseline's clustering metrics.
    BaselineCluster,
}

impl ReportRole {
    /// Every role, in the order the DAG adds them.
    pub const ALL: [ReportRole; 7] = [
        ReportRole::Retrieve,
        ReportRole::Cluster,
        ReportRole::Train,
        ReportRole::Index,
        ReportRole::Decode,
        ReportRole::BaselineRetrieve,
        ReportRole::BaselineCluster,
    ];

    /// The role's stem: `retrieve`, …, `baseline_cluster`.
    pub fn name(self) -> &'static str {
        match self {
            ReportRole::Retrieve => "retrieve",
            ReportRole::Cluster => "cluster",
            ReportRole::Train => "train",
            ReportRole::Index => "index",
            ReportRole::Decode => "decode",
            ReportRole::BaselineRetrieve => "baseline_retrieve",
            ReportRole::BaselineCluster => "baseline_cluster",
        }
    }

    /// The stage whose artifact fills the role.
    pub fn stage(self) -> &'static str {
        match self {
            ReportRole::Retrieve | ReportRole::BaselineRetrieve => "retrieve",
            ReportRole::Cluster | ReportRole::BaselineCluster => "cluster",
            ReportRole::Train => "train",
            ReportRole::Index => "index",
            ReportRole::Decode => "decode",
        }
    }

    /// Whether the role is the untrained baseline's.
    pub fn is_baseline(self) -> bool {
        matches!(
            self,
            ReportRole::BaselineRetrieve | ReportRole::BaselineCluster
        )
    }

    /// The input's name for run `run` of the report: `retrieve/0`.
    pub fn of(self, run: usize) -> String {
        format!("{}/{run}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_roles_are_spelled_as_records_hold_them() {
        let names: Vec<String> = ReportRole::ALL.iter().map(|r| r.of(2)).collect();
        assert_eq!(
            names,
            [
                "retrieve/2",
                "cluster/2",
                "train/2",
                "index/2",
                "decode/2",
                "baseline_retrieve/2",
                "baseline_cluster/2"
            ]
        );
        for r in ReportRole::ALL {
            assert_eq!(r.is_baseline(), r.name().starts_with("baseline_"));
            assert!(r.name().ends_with(r.stage()), "{r:?}");
        }
    }
}
