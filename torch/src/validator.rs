//! Validation during training, the part that runs the network: every `every` steps (and
//! after the last) the validation images are embedded in eval mode and scored with the exact
//! Recall@1 and MAP@R; with `keep = "best"` the best evaluation's weights become the
//! artifact and survive a resume inside the checkpoint. The settings and the plan
//! ([`ValidationPlan`]) are plain data in `dml_jobspec::validation`.
use crate::train::Trainer;
use anyhow::{anyhow, bail, Context, Result};
use dml_artifacts::tables::{self, Embeddings, IndexRow, TrainLogRow};
use dml_datasets::{self as ds, Split};
use dml_jobspec::evaluate::{self, Table};
use dml_jobspec::validation::{Keep, ValidationPlan, ValidationSet};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::Tensor;

/// Images per forward pass when validating (the default `embed.batch_size`, so a test-split
/// validation of the final weights sees the same batches as the embed stage at its default).
pub const BATCH: usize = 128;

/// Checkpoint tensor prefix of the best weights so far (`keep = "best"`).
const BEST_PREFIX: &str = "best.";
/// Checkpoint metadata: the train-log step the best weights are from.
const BEST_STEP_META: &str = "validation_best_step";
/// Checkpoint tensor (under [`BEST_PREFIX`]) of the best step's validation embeddings; no
/// network variable has this name (they are `backbone.*`, `head.*`, `loss.*`).
const BEST_EMBEDDINGS: &str = "validation_embeddings";

/// One evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// The train-log step it followed.
    pub step: u32,
    /// Recall@1.
    pub recall_at_1: f64,
    /// MAP@R.
    pub map_at_r: f64,
}

impl Score {
    fn beats(&self, other: &Score) -> bool {
        self.recall_at_1 > other.recall_at_1
            || (self.recall_at_1 == other.recall_at_1 && self.map_at_r > other.map_at_r)
    }
}

/// The weights that became the artifact and their score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Kept {
    /// Holdout or test.
    pub on: ValidationSet,
    /// Last or best.
    pub keep: Keep,
    /// The kept step's score (its `step` is the train-log step).
    #[serde(flatten)]
    pub score: Score,
}

/// Named copies of the network's variables (a [`Trainer::snapshot`]).
type Weights = Vec<(String, Tensor)>;

/// Scores the network during training.
pub struct Validator {
    plan: ValidationPlan,
    ids: Vec<usize>,
    labels: Vec<u32>,
    splits: Vec<Split>,
    cache: Arc<ds::DecodeCache>,
    crop: u32,
    scaling: ds::InputScaling,
    best: Option<(Score, Option<Weights>)>,
    latest: Option<Score>,
    /// The embeddings of the evaluation whose weights are kept so far (row-major, `dim`).
    kept_embeddings: Option<(Vec<f32>, usize)>,
    seconds: f64,
    evaluations: usize,
}

impl Validator {
    /// Picks the validation images from the index; for a holdout, checks that the plan
    /// (`planned_classes`) trains on none of them.
    pub fn new(
        plan: &ValidationPlan,
        index: &[IndexRow],
        planned_classes: &BTreeSet<u32>,
        cache: Arc<ds::DecodeCache>,
        crop: u32,
        scaling: ds::InputScaling,
    ) -> Result<Self> {
        let rows: Vec<&IndexRow> = match &plan.holdout {
            Some(h) => {
                let held = h.classes(index)?;
                if let Some(c) = held.intersection(planned_classes).next() {
                    bail!(
                        "the plan trains on class {c}, which train.validation holds out; the plan artifact was not made for this holdout (a bug: its key should include train.validation)"
                    );
                }
                index
                    .iter()
                    .filter(|r| r.split == Split::Train && held.contains(&r.class_id))
                    .collect()
            }
            None => index
                .iter()
                .filter(|r| plan.splits.contains(&r.split))
                .collect(),
        };
        let rows: Vec<&IndexRow> = rows
            .into_iter()
            .filter(|r| !cache.is_missing(r.image_id as usize))
            .collect();
        if rows.len() < 2 {
            bail!(
                "train.validation: the {} has {} readable image(s); validation needs at least 2",
                plan.on.label(),
                rows.len()
            );
        }
        Ok(Validator {
            plan: plan.clone(),
            ids: rows.iter().map(|r| r.image_id as usize).collect(),
            labels: rows.iter().map(|r| r.class_id).collect(),
            splits: rows
                .iter()
                .map(|r| match plan.on {
                    ValidationSet::Holdout => Split::Holdout,
                    ValidationSet::Test => r.split,
                })
                .collect(),
            cache,
            crop,
            scaling,
            best: None,
            latest: None,
            kept_embeddings: None,
            seconds: 0.0,
            evaluations: 0,
        })
    }

    /// Number of validation images.
    pub fn images(&self) -> usize {
        self.ids.len()
    }

    /// Number of distinct validation classes.
    pub fn classes(&self) -> usize {
        self.labels.iter().collect::<BTreeSet<_>>().len()
    }

    /// Whether to evaluate after `done` of `total` updates.
    pub fn due(&self, done: u64, total: u64) -> bool {
        done == total || done.is_multiple_of(u64::from(self.plan.every.max(1)))
    }

    /// The last evaluation.
    pub fn latest(&self) -> Option<Score> {
        self.latest
    }

    /// Wall seconds spent validating in this process.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Evaluations made in this process.
    pub fn evaluations(&self) -> usize {
        self.evaluations
    }

    /// How the progress line shows the latest value (`holdout R@1 93.3%`).
    pub fn progress(&self) -> String {
        match self.latest {
            Some(s) => format!(
                " {} R@1 {:.1}%",
                match self.plan.on {
                    ValidationSet::Holdout => "holdout",
                    ValidationSet::Test => "test",
                },
                100.0 * s.recall_at_1
            ),
            None => String::new(),
        }
    }

    /// Embeds the validation images with the trainer's network in eval mode and scores them;
    /// `step` is the train-log step just taken.
    pub fn evaluate(&mut self, trainer: &Trainer, step: u32) -> Result<Score> {
        let started = Instant::now();
        let values = crate::embedding::embed_images(
            &self.cache,
            &self.ids,
            self.crop,
            self.scaling,
            BATCH,
            &|x| Ok(trainer.embed(x)?),
            &|_| {},
        )?;
        let dim = values.len() / self.ids.len();
        let table = Table {
            dim,
            values: values.clone(),
            labels: self.labels.clone(),
            splits: Some(self.splits.iter().map(|s| s.to_string()).collect()),
            image_ids: self.ids.iter().map(|&i| i as u32).collect(),
        };
        let sel = evaluate::select(&table, self.plan.protocol)?;
        let m = evaluate::retrieval(&sel, dim, &[1], self.plan.distance)
            .with_context(|| format!("validating on the {}", self.plan.on.label()))?;
        let score = Score {
            step,
            recall_at_1: m
                .recall_at(1)
                .ok_or_else(|| anyhow!("no Recall@1 computed"))?,
            map_at_r: m.map_at_r,
        };
        let better = match &self.best {
            None => true,
            Some((b, _)) => score.beats(b),
        };
        if better {
            let weights = (self.plan.keep == Keep::Best).then(|| trainer.snapshot());
            self.best = Some((score, weights));
        }
        if self.plan.keep == Keep::Last || better {
            self.kept_embeddings = Some((values, dim));
        }
        self.latest = Some(score);
        self.evaluations += 1;
        self.seconds += started.elapsed().as_secs_f64();
        tracing::info!(
            "step {}: {} R@1 {:.4} MAP@R {:.4} ({} images, {:.2}s)",
            step,
            self.plan.on.label(),
            score.recall_at_1,
            score.map_at_r,
            self.ids.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(score)
    }

    /// What a checkpoint carries beside the trainer's state: the best weights so far
    /// (`keep = "best"`) and their step.
    pub fn checkpoint_extras(&self) -> (Vec<(String, Tensor)>, HashMap<String, String>) {
        match &self.best {
            Some((score, Some(weights))) => (
                weights
                    .iter()
                    .map(|(n, t)| (format!("{BEST_PREFIX}{n}"), t.shallow_clone()))
                    .chain(self.kept_embeddings.as_ref().map(|(v, dim)| {
                        (
                            format!("{BEST_PREFIX}{BEST_EMBEDDINGS}"),
                            Tensor::from_slice(v).view([-1, *dim as i64]),
                        )
                    }))
                    .collect(),
                HashMap::from([(BEST_STEP_META.to_string(), score.step.to_string())]),
            ),
            _ => (Vec::new(), HashMap::new()),
        }
    }

    /// Restores the latest and best scores from the resumed log, and the best weights from the
    /// checkpoint they were saved with.
    pub fn resume(&mut self, log: &[TrainLogRow], checkpoint: &Path) -> Result<()> {
        let mut best: Option<Score> = None;
        for r in log {
            if let (Some(r1), Some(map)) = (r.val_recall_at_1, r.val_map_at_r) {
                let s = Score {
                    step: r.step,
                    recall_at_1: r1,
                    map_at_r: map,
                };
                if best.is_none_or(|b| s.beats(&b)) {
                    best = Some(s);
                }
                self.latest = Some(s);
            }
        }
        let Some(best) = best else {
            return Ok(());
        };
        let weights = if self.plan.keep == Keep::Best {
            let (mut tensors, meta) =
                crate::train::read_checkpoint_extras(checkpoint, BEST_PREFIX)?;
            if let Some(e) = tensors.remove(BEST_EMBEDDINGS) {
                let dim = e.size().get(1).copied().unwrap_or(0) as usize;
                let values = Vec::<f32>::try_from(e.contiguous().view([-1]))
                    .context("reading the best validation embeddings from the checkpoint")?;
                self.kept_embeddings = Some((values, dim));
            }
            let saved = meta.get(BEST_STEP_META).and_then(|s| s.parse::<u32>().ok());
            if saved != Some(best.step) || tensors.is_empty() {
                bail!(
                    "checkpoint {} holds the best weights of step {saved:?}, but its log's best validation is step {}; delete the checkpoint directory to train from the start",
                    checkpoint.display(),
                    best.step
                );
            }
            let mut w: Vec<(String, Tensor)> = tensors.into_iter().collect();
            w.sort_by(|a, b| a.0.cmp(&b.0));
            Some(w)
        } else {
            None
        };
        self.best = Some((best, weights));
        Ok(())
    }

    /// Writes the kept evaluation's embeddings (`validation.arrow`: image_id, class_id, split —
    /// `holdout` or the test split's names —, embedding), so its scores can be checked and
    /// explored.
    pub fn write_embeddings(&self, path: &Path) -> Result<()> {
        let (values, dim) = self
            .kept_embeddings
            .as_ref()
            .ok_or_else(|| anyhow!("no validation embeddings to write"))?;
        let emb = Embeddings {
            image_id: self.ids.iter().map(|&i| i as u32).collect(),
            class_id: self.labels.clone(),
            split: self.splits.clone(),
            dim: *dim,
            values: values.clone(),
        };
        tables::write_ipc(path, &emb.to_batch())?;
        Ok(())
    }

    /// After the last step: with `keep = "best"`, puts the best weights back into the trainer;
    /// returns what is kept.
    pub fn finish(&self, trainer: &mut Trainer) -> Result<Kept> {
        let score = match self.plan.keep {
            Keep::Last => self.latest,
            Keep::Best => self.best.as_ref().map(|b| b.0),
        }
        .ok_or_else(|| anyhow!("training ended without a validation"))?;
        if let Some((_, Some(weights))) = &self.best {
            let map: HashMap<String, Tensor> = weights
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect();
            trainer
                .restore_snapshot(&map)
                .context("restoring the best validation step's weights")?;
        }
        Ok(Kept {
            on: self.plan.on,
            keep: self.plan.keep,
            score,
        })
    }
}
