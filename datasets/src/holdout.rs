//! The validation holdout: a seeded share of the training classes kept out of the P×K plan,
//! so validation during training is class-disjoint from training (the Metric Learning Reality
//! Check protocol).
//!
//! # The rule
//! The classes are sorted and deduplicated; `n = round(fraction · classes)`, at least 2 (a
//! retrieval score needs two classes) and at most `classes − 1`. One ChaCha8 generator,
//! `ChaCha8Rng::seed_from_u64(seed)`, shuffles the sorted list with the crate's fixed
//! Fisher–Yates; its first `n` entries, sorted, are the holdout. Like the plan, the draw for a
//! given input and seed is a stable contract.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DatasetError, Result};
use crate::stable_rng::shuffle;

/// The held-out classes (ascending) of `classes` for `fraction` and `seed`; see the module docs.
pub fn holdout_classes(classes: &[u32], fraction: f64, seed: u64) -> Result<Vec<u32>> {
    let invalid = |reason: String| DatasetError::InvalidSetting {
        setting: "train.validation.holdout_fraction",
        value: fraction.to_string(),
        reason,
    };
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(invalid("it must lie strictly between 0 and 1".into()));
    }
    let mut sorted = classes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() < 3 {
        return Err(invalid(format!(
            "the train split has {} class(es); a class-disjoint holdout needs at least 3 (2 to validate on, 1 to train on); use `on = \"test\"`",
            sorted.len()
        )));
    }
    let n = ((fraction * sorted.len() as f64).round() as usize).clamp(2, sorted.len() - 1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shuffle(&mut rng, &mut sorted);
    let mut held: Vec<u32> = sorted[..n].to_vec();
    held.sort_unstable();
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_seeded_sized_and_independent_of_input_order() {
        let classes: Vec<u32> = (0..100).collect();
        let a = holdout_classes(&classes, 0.1, 0).unwrap();
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let mut reversed = classes.clone();
        reversed.reverse();
        assert_eq!(holdout_classes(&reversed, 0.1, 0).unwrap(), a);
        assert_ne!(holdout_classes(&classes, 0.1, 1).unwrap(), a);
        // Golden: the draw is a contract, like the plan's.
        assert_eq!(a, GOLDEN);
    }

    #[test]
    fn holdout_keeps_two_classes_out_and_one_in() {
        assert_eq!(holdout_classes(&[4, 5, 6], 0.01, 0).unwrap().len(), 2);
        assert_eq!(holdout_classes(&[4, 5, 6], 0.99, 0).unwrap().len(), 2);
        let e = holdout_classes(&[1, 2], 0.5, 0).unwrap_err().to_string();
        assert!(
            e.contains("holdout_fraction") && e.contains("on = \"test\""),
            "{e}"
        );
        let e = holdout_classes(&[1, 2, 3], 1.0, 0).unwrap_err().to_string();
        assert!(e.contains("strictly between 0 and 1"), "{e}");
    }

    const GOLDEN: [u32; 10] = [10, 22, 38, 48, 53, 65, 78, 82, 84, 96];
}
