//! Validation during training (`[train.validation]`): every `every` steps, and after the last
//! one, the validation images — a seeded, class-disjoint holdout of the training classes (which
//! the plan stage then leaves out) or the test split — are embedded in eval mode and scored with
//! the exact Recall@1 and MAP@R; with `keep = "best"` the weights of the best evaluation become
//! the artifact, and survive a resume inside the checkpoint. This module holds the settings
//! and the plan (plain data, part of the keys); `dml_torch::validator` runs them.
use crate::evaluate::Protocol;
pub use crate::settings::{Keep, ValidationSet, ValidationSettings};
use crate::train_config::ConfigError;
use dml_artifacts::tables::IndexRow;
use dml_datasets::{self as ds, Split};
use dml_metrics::Distance;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The held-out share of the training classes (in the plan's and the train stage's keys).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Holdout {
    /// `train.validation.holdout_fraction`.
    pub holdout_fraction: f64,
    /// `train.validation.seed`.
    pub seed: u64,
}

impl Holdout {
    /// The holdout the plan stage must leave out, when `v` validates on one.
    pub fn of(v: &ValidationSettings) -> Option<Holdout> {
        (v.enabled() && v.on == ValidationSet::Holdout).then_some(Holdout {
            holdout_fraction: v.holdout_fraction,
            seed: v.seed,
        })
    }

    /// The held-out classes of the index's train split.
    pub fn classes(&self, index: &[IndexRow]) -> ds::Result<BTreeSet<u32>> {
        let train: Vec<u32> = index
            .iter()
            .filter(|r| r.split == Split::Train)
            .map(|r| r.class_id)
            .collect();
        Ok(
            ds::holdout_classes(&train, self.holdout_fraction, self.seed)?
                .into_iter()
                .collect(),
        )
    }

    /// How the plan stage's settings name it, so that `explain` says
    /// "train.validation.holdout_fraction changed".
    pub fn plan_settings(&self) -> serde_json::Value {
        serde_json::json!({ "train": { "validation": self } })
    }
}

/// `[train.validation]` resolved against the dataset and `[retrieve]`: what the train key holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidationPlan {
    /// Steps between evaluations (> 0).
    pub every: u32,
    /// Holdout or test.
    pub on: ValidationSet,
    /// Last or best.
    pub keep: Keep,
    /// The holdout, when `on = "holdout"`.
    #[serde(flatten)]
    pub holdout: Option<Holdout>,
    /// The index splits validated on (`train` for the holdout).
    pub splits: Vec<Split>,
    /// Leave-one-out for the holdout; the run's retrieval protocol for the test split.
    pub protocol: Protocol,
    /// The run's retrieval distance.
    pub distance: Distance,
}

impl ValidationPlan {
    /// The plan of `[train.validation]` for a run that retrieves with `protocol` (resolved:
    /// not `auto`) and `distance`, or `None` when validation is off.
    pub fn resolve(
        v: &ValidationSettings,
        protocol: Protocol,
        distance: Distance,
    ) -> Result<Option<Self>, ConfigError> {
        if !v.enabled() {
            return Ok(None);
        }
        let (splits, protocol) = match v.on {
            ValidationSet::Holdout => {
                if !(v.holdout_fraction > 0.0 && v.holdout_fraction < 1.0) {
                    return Err(ConfigError::new(
                        "train.validation.holdout_fraction",
                        format!(
                            "train.validation.holdout_fraction = {} must lie strictly between 0 and 1",
                            v.holdout_fraction
                        ),
                    ));
                }
                (vec![Split::Train], Protocol::LeaveOneOut)
            }
            ValidationSet::Test => {
                let splits = match protocol {
                    // (`Auto` is resolved away; it would mean leave-one-out.)
                    Protocol::LeaveOneOut | Protocol::Auto => vec![Split::Test],
                    Protocol::QueryGallery | Protocol::InshopMerged => {
                        vec![Split::Query, Split::Gallery]
                    }
                };
                (splits, protocol)
            }
        };
        Ok(Some(ValidationPlan {
            every: v.every,
            on: v.on,
            keep: v.keep,
            holdout: Holdout::of(v),
            splits,
            protocol,
            distance,
        }))
    }
}
