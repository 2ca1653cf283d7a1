//! The `plan` stage: P×K batches for every training step → `plan.parquet`.
use crate::config::PlanSettings;
use crate::error::StageError;
use dml_artifacts::tables::{self, PlanRow};
use dml_datasets::{self as ds, Split};
use dml_jobspec::roles;
use dml_jobspec::validation::Holdout;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde_json::json;
use std::collections::BTreeMap;

/// Plans P×K batches for every training step.
pub struct PlanStage {
    settings: PlanSettings,
    /// Training classes held out for validation (`[train.validation]` on a holdout).
    holdout: Option<Holdout>,
}

impl PlanStage {
    /// A plan stage; a `holdout`'s classes are left out of every batch.
    pub fn new(settings: PlanSettings, holdout: Option<Holdout>) -> Self {
        PlanStage { settings, holdout }
    }
}

impl Stage for PlanStage {
    fn name(&self) -> &'static str {
        "plan"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        let mut s = json!({ "plan": self.settings });
        // Without a holdout the key is what it always was.
        if let (Some(h), Some(o)) = (&self.holdout, s.as_object_mut()) {
            o.extend(h.plan_settings().as_object().cloned().unwrap_or_default());
        }
        s
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let index = tables::read_index(&ctx.input(roles::INDEX)?.join("index.parquet"))?;
        let held = match &self.holdout {
            Some(h) => h.classes(&index)?,
            None => Default::default(),
        };
        let mut classes: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for r in index
            .iter()
            .filter(|r| r.split == Split::Train && !held.contains(&r.class_id))
        {
            classes.entry(r.class_id).or_default().push(r.image_id);
        }
        if !held.is_empty() {
            ctx.note("holdout_classes", json!(held));
        }
        if classes.is_empty() {
            return Err(StageError::Input(
                "the index has no train split to plan batches from".into(),
            )
            .into());
        }
        let s = &self.settings;
        let planned = match s.sampler {
            ds::Sampler::Pk => ds::PkPlanner {
                p: s.p,
                k: s.k,
                steps: s.steps,
                seed: s.seed,
                allow_repeated_classes: s.allow_repeated_classes,
            }
            .plan(&classes),
            ds::Sampler::Random => ds::RandomPlanner {
                batch_size: s.images_per_step(),
                steps: s.steps,
                seed: s.seed,
            }
            .plan(&classes),
        };
        let planned = planned.map_err(|e| match e {
            // Name the holdout: it is why a small dataset has too few classes left.
            ds::DatasetError::TooFewClasses { .. } if !held.is_empty() => StageError::Input(format!(
                "{e}, after train.validation held out {} of the {} training classes for validation (or set --set train.validation.every=0 to train on all of them)",
                held.len(),
                held.len() + classes.len()
            )),
            e => StageError::Dataset(e),
        });
        let rows: Vec<PlanRow> = planned
            .map_err(|e| StageError::Planning(Box::new(e)))?
            .into_iter()
            .map(|r| PlanRow {
                step: r.step,
                slot: r.slot,
                image_id: r.image_id,
                class_id: r.class_id,
            })
            .collect();
        tables::write_parquet(
            &ctx.out_dir().join("plan.parquet"),
            &tables::plan_to_batch(&rows),
        )?;
        ctx.note("train_classes", json!(classes.len()));
        if s.sampler == ds::Sampler::Pk {
            let small = classes.values().filter(|v| (v.len() as u32) < s.k).count();
            ctx.note("classes_with_fewer_than_k_images", json!(small));
        }
        Ok(())
    }
}
