//! The P×K batch planner: which images fill each training step, seeded and deterministic.
//!
//! # The rule (triplet-reid's sampler, as the seed uses it)
//! Classes are the keys of the input map in ascending order; the image ids of each class
//! are sorted (so the order the caller gives does not matter). One ChaCha8 generator,
//! `ChaCha8Rng::seed_from_u64(seed)`, drives everything, in this order:
//!
//! 1. **Epochs.** When fewer than P classes remain in the current epoch (at the start,
//!    too), a new epoch begins: the class list is shuffled and cut to a multiple of P —
//!    the `n mod P` classes at its end sit this epoch out. With fewer classes than P
//!    (only with `allow_repeated_classes`), the epoch is instead `ceil(P/n)` copies of
//!    the class list, each shuffled in turn, concatenated and cut to a multiple of P; a
//!    step then holds some classes twice.
//! 2. **Steps.** Each step takes the next P classes of the epoch.
//! 3. **Images.** For each of those classes in turn, with `n` images: the list
//!    `[i mod n for i in 0..ceil(K/n)·n]` is shuffled and its first K entries pick the
//!    images — K distinct images when `n ≥ K`, every image ⌊K/n⌋ or ⌈K/n⌉ times otherwise.
//!
//! Shuffles and bounded draws are the crate's fixed ones (Fisher–Yates from the end,
//! rejection sampling on `next_u32`), not `rand`'s, so **the plan for a given input and
//! seed is a stable contract**: a change to it is a breaking change (the golden test
//! guards it).
//!
//! # Layout
//! Rows are ordered by step, then slot; slot `j·K + i` holds image `i` of the step's
//! `j`-th class, so each class's K images are contiguous. With K = 2 (N-pairs,
//! angular) rows `2i` and `2i + 1` are an anchor–positive pair; with K = 4
//! (contrastive) each group of eight rows is two classes.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::stable_rng::shuffle;

/// One image slot of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlanRow {
    /// Training step, from 0.
    pub step: u32,
    /// Position in the batch, 0..P·K.
    pub slot: u16,
    /// The image.
    pub image_id: u32,
    /// Its class.
    pub class_id: u32,
}

/// Settings of the P×K planner; see the module docs for the exact rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkPlanner {
    /// Classes per batch (`plan.p`).
    pub p: u32,
    /// Images per class (`plan.k`).
    pub k: u32,
    /// Number of steps to plan.
    pub steps: u32,
    /// Seed of the ChaCha8 generator.
    pub seed: u64,
    /// With fewer classes than P, tile the class list instead of failing.
    pub allow_repeated_classes: bool,
}

impl PkPlanner {
    /// Plans `steps` batches of P classes × K images from `classes` (class id → image ids
    /// of the train split). Errors: P or K is 0, P·K exceeds 65,536 slots, a class has no
    /// image, or there are fewer classes than P without `allow_repeated_classes`.
    pub fn plan(&self, classes: &BTreeMap<u32, Vec<u32>>) -> Result<Vec<PlanRow>> {
        if self.p == 0 {
            return Err(DatasetError::InvalidSetting {
                setting: "plan.p",
                value: "0".into(),
                reason: "a batch needs at least one class".into(),
            });
        }
        if self.k == 0 {
            return Err(DatasetError::InvalidSetting {
                setting: "plan.k",
                value: "0".into(),
                reason: "a batch needs at least one image per class".into(),
            });
        }
        let batch = u64::from(self.p) * u64::from(self.k);
        if batch > u64::from(u16::MAX) + 1 {
            return Err(DatasetError::InvalidSetting {
                setting: "plan.p × plan.k",
                value: format!("{} × {}", self.p, self.k),
                reason: format!("P×K = {batch} exceeds the 65,536 slots a step can hold"),
            });
        }
        let n = classes.len();
        if n == 0 || (n < self.p as usize && !self.allow_repeated_classes) {
            return Err(DatasetError::TooFewClasses {
                p: self.p,
                classes: n,
            });
        }
        let mut images: Vec<(u32, Vec<u32>)> = Vec::with_capacity(n);
        for (&class_id, ids) in classes {
            if ids.is_empty() {
                return Err(DatasetError::EmptyClass { class_id });
            }
            let mut ids = ids.clone();
            ids.sort_unstable();
            images.push((class_id, ids));
        }

        let p = self.p as usize;
        let k = self.k as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut rows = Vec::with_capacity(self.steps as usize * p * k);
        let mut epoch: Vec<usize> = Vec::new();
        let mut cursor = 0usize;
        let mut picks: Vec<usize> = Vec::new();
        for step in 0..self.steps {
            if epoch.len() - cursor < p {
                epoch.clear();
                cursor = 0;
                let copies = if n >= p { 1 } else { p.div_ceil(n) };
                for _ in 0..copies {
                    let mut order: Vec<usize> = (0..n).collect();
                    shuffle(&mut rng, &mut order);
                    epoch.extend(order);
                }
                epoch.truncate(epoch.len() / p * p);
            }
            for (j, &c) in epoch[cursor..cursor + p].iter().enumerate() {
                let (class_id, ids) = &images[c];
                let m = ids.len();
                picks.clear();
                picks.extend((0..k.div_ceil(m) * m).map(|i| i % m));
                shuffle(&mut rng, &mut picks);
                for (i, &pick) in picks[..k].iter().enumerate() {
                    rows.push(PlanRow {
                        step,
                        slot: (j * k + i) as u16,
                        image_id: ids[pick],
                        class_id: *class_id,
                    });
                }
            }
            cursor += p;
        }
        Ok(rows)
    }
}

/// Which planner fills the batches (`plan.sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// P classes × K images ([`PkPlanner`]).
    #[default]
    Pk,
    /// Uniform batches without replacement within an epoch ([`RandomPlanner`]).
    Random,
}

/// Uniform batches, as a PyTorch `DataLoader(shuffle=True, drop_last=True)` draws them.
///
/// # The rule
/// Every image of `classes` is listed once, ordered by image id. One ChaCha8 generator,
/// `ChaCha8Rng::seed_from_u64(seed)`, shuffles that list ([`crate::stable_rng`]'s
/// Fisher–Yates) at the start of each epoch; steps take the next `batch_size` images in
/// that order; the `n mod batch_size` images left at the end of an epoch sit it out, and
/// the next epoch is a new shuffle of all of them. Slot `i` of a step holds its `i`-th
/// image; classes appear as often as chance has it (once, or not at all). Like the P×K
/// plan, the plan for a given input and seed is a stable contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomPlanner {
    /// Images per batch (`plan.batch_size`).
    pub batch_size: u32,
    /// Number of steps to plan.
    pub steps: u32,
    /// Seed of the ChaCha8 generator.
    pub seed: u64,
}

impl RandomPlanner {
    /// Plans `steps` batches from `classes` (class id → image ids of the train split).
    /// Errors: a batch of 0 or more than 65,536 images, or fewer images than one batch.
    pub fn plan(&self, classes: &BTreeMap<u32, Vec<u32>>) -> Result<Vec<PlanRow>> {
        let batch = self.batch_size as usize;
        if batch == 0 || batch > usize::from(u16::MAX) + 1 {
            return Err(DatasetError::InvalidSetting {
                setting: "plan.batch_size",
                value: self.batch_size.to_string(),
                reason: "a batch holds between 1 and 65,536 images".into(),
            });
        }
        let mut images: Vec<(u32, u32)> = classes
            .iter()
            .flat_map(|(&c, ids)| ids.iter().map(move |&i| (i, c)))
            .collect();
        images.sort_unstable();
        if images.len() < batch {
            return Err(DatasetError::InvalidSetting {
                setting: "plan.batch_size",
                value: self.batch_size.to_string(),
                reason: format!(
                    "the training split has only {} images, fewer than one batch",
                    images.len()
                ),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut rows = Vec::with_capacity(self.steps as usize * batch);
        let mut cursor = images.len();
        for step in 0..self.steps {
            if images.len() - cursor < batch {
                shuffle(&mut rng, &mut images);
                cursor = 0;
            }
            for (slot, &(image_id, class_id)) in images[cursor..cursor + batch].iter().enumerate() {
                rows.push(PlanRow {
                    step,
                    slot: slot as u16,
                    image_id,
                    class_id,
                });
            }
            cursor += batch;
        }
        Ok(rows)
    }
}

/// Number of steps in one epoch for `n_classes` classes: `n / P` (at least 1 when classes
/// may repeat). Useful to size `steps` in whole epochs.
pub fn steps_per_epoch(n_classes: usize, p: u32, allow_repeated_classes: bool) -> usize {
    let p = p.max(1) as usize;
    if n_classes >= p {
        n_classes / p
    } else if allow_repeated_classes && n_classes > 0 {
        p.div_ceil(n_classes) * n_classes / p
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
