//! P×K planner tests: batch structure, balanced repetition, epochs, determinism, the golden plan, errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;

/// `n_classes` classes with ids 100, 101, …; class i has `sizes(i)` images with globally unique ids.
fn classes(n_classes: u32, sizes: impl Fn(u32) -> u32) -> BTreeMap<u32, Vec<u32>> {
    let mut next = 0;
    let mut m = BTreeMap::new();
    for c in 0..n_classes {
        let ids: Vec<u32> = (next..next + sizes(c)).collect();
        next += sizes(c);
        m.insert(100 + c, ids);
    }
    m
}

fn planner(p: u32, k: u32, steps: u32, seed: u64) -> PkPlanner {
    PkPlanner {
        p,
        k,
        steps,
        seed,
        allow_repeated_classes: false,
    }
}

fn steps_of(rows: &[PlanRow]) -> Vec<Vec<PlanRow>> {
    let mut out: Vec<Vec<PlanRow>> = Vec::new();
    for r in rows {
        if out.len() <= r.step as usize {
            out.push(Vec::new());
        }
        out[r.step as usize].push(*r);
    }
    out
}

#[test]
fn every_step_has_p_distinct_classes_with_k_images_each() {
    let data = classes(23, |c| 3 + c % 9);
    let (p, k) = (5, 4);
    let rows = planner(p, k, 40, 1).plan(&data).expect("plan");
    assert_eq!(rows.len(), 40 * 20);
    let owner: HashMap<u32, u32> = data
        .iter()
        .flat_map(|(&c, ids)| ids.iter().map(move |&i| (i, c)))
        .collect();
    for (s, step) in steps_of(&rows).iter().enumerate() {
        assert_eq!(step.len(), (p * k) as usize);
        let slots: Vec<u16> = step.iter().map(|r| r.slot).collect();
        assert_eq!(slots, (0..(p * k) as u16).collect::<Vec<_>>(), "step {s}");
        let mut seen = BTreeSet::new();
        for group in step.chunks(k as usize) {
            let c = group[0].class_id;
            assert!(seen.insert(c), "class {c} twice in step {s}");
            assert!(
                group.iter().all(|r| r.class_id == c),
                "slots are class by class"
            );
            assert!(
                group.iter().all(|r| owner[&r.image_id] == c),
                "images belong to their class"
            );
            let images: BTreeSet<u32> = group.iter().map(|r| r.image_id).collect();
            if data[&c].len() >= k as usize {
                assert_eq!(images.len(), k as usize, "without replacement when n ≥ K");
            }
        }
    }
}

#[test]
fn small_classes_repeat_in_a_balanced_way() {
    let data = classes(4, |c| [1, 2, 3, 7][c as usize]);
    let rows = planner(4, 5, 30, 9).plan(&data).expect("plan");
    for step in steps_of(&rows) {
        for group in step.chunks(5) {
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for r in group {
                *counts.entry(r.image_id).or_default() += 1;
            }
            let n = data[&group[0].class_id].len();
            assert_eq!(counts.len(), n.min(5), "every image used when n < K");
            let (lo, hi) = (5 / n, 5usize.div_ceil(n));
            assert!(
                counts.values().all(|&v| v >= lo && v <= hi),
                "{counts:?} for n = {n}"
            );
        }
    }
    // the single-image class repeats it K times
    let single: Vec<&PlanRow> = rows.iter().filter(|r| r.class_id == 100).collect();
    assert!(single.iter().all(|r| r.image_id == data[&100][0]));
}

#[test]
fn each_class_once_per_epoch_when_p_divides_n() {
    let data = classes(12, |_| 4);
    let rows = planner(4, 2, 9, 3).plan(&data).expect("plan");
    for epoch in steps_of(&rows).chunks(3) {
        let mut all: Vec<u32> = epoch
            .iter()
            .flat_map(|s| s.chunks(2).map(|g| g[0].class_id).collect::<Vec<_>>())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (100..112).collect::<Vec<_>>());
    }
    assert_eq!(steps_per_epoch(12, 4, false), 3);
}

#[test]
fn the_remainder_sits_out_each_epoch() {
    let data = classes(10, |_| 4);
    let rows = planner(4, 2, 200, 5).plan(&data).expect("plan");
    let steps = steps_of(&rows);
    let mut benched = BTreeSet::new();
    for epoch in steps.chunks(2) {
        let used: BTreeSet<u32> = epoch
            .iter()
            .flat_map(|s| s.chunks(2).map(|g| g[0].class_id).collect::<Vec<_>>())
            .collect();
        assert_eq!(
            used.len(),
            8,
            "two steps of four distinct classes per epoch"
        );
        benched.extend((100..110).filter(|c| !used.contains(c)));
    }
    assert_eq!(
        benched.len(),
        10,
        "over 100 epochs every class sits out at least once"
    );
    assert_eq!(steps_per_epoch(10, 4, false), 2);
}

#[test]
fn same_seed_same_plan_other_seed_other_plan() {
    let data = classes(30, |c| 2 + c % 5);
    let a = planner(6, 3, 50, 42).plan(&data).expect("plan");
    assert_eq!(a, planner(6, 3, 50, 42).plan(&data).expect("plan"));
    assert_ne!(a, planner(6, 3, 50, 43).plan(&data).expect("plan"));
    // the order of image ids within a class does not matter
    let mut shuffled = data.clone();
    for ids in shuffled.values_mut() {
        ids.reverse();
    }
    assert_eq!(a, planner(6, 3, 50, 42).plan(&shuffled).expect("plan"));
    // a longer plan starts with the shorter one
    let longer = planner(6, 3, 80, 42).plan(&data).expect("plan");
    assert_eq!(&longer[..a.len()], &a[..]);
}

/// The plan for a seed is a stable contract: this digest must never change. If it does,
/// the sampler changed, every stored plan is stale, and the plan stage's code version
/// must be bumped.
#[test]
fn golden_plan() {
    let data = classes(17, |c| 1 + c % 6);
    let rows = PkPlanner {
        p: 4,
        k: 3,
        steps: 25,
        seed: 2024,
        allow_repeated_classes: false,
    }
    .plan(&data)
    .expect("plan");
    let mut h = blake3::Hasher::new();
    for r in &rows {
        h.update(&r.step.to_le_bytes());
        h.update(&r.slot.to_le_bytes());
        h.update(&r.image_id.to_le_bytes());
        h.update(&r.class_id.to_le_bytes());
    }
    let first: Vec<(u32, u32)> = rows[..6].iter().map(|r| (r.class_id, r.image_id)).collect();
    assert_eq!(first, GOLDEN_FIRST, "first rows");
    assert_eq!(h.finalize().to_hex().as_str(), GOLDEN_DIGEST);
}

const GOLDEN_FIRST: [(u32, u32); 6] = [
    (100, 0),
    (100, 0),
    (100, 0),
    (114, 47),
    (114, 45),
    (114, 46),
];
const GOLDEN_DIGEST: &str = "5aa088982333aa77ed9a887c06b31a2edf65ffe24f61d33b9b0033e6f9cda9ff";

#[test]
fn too_few_classes() {
    let data = classes(3, |_| 2);
    let err = planner(5, 2, 4, 0).plan(&data).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("plan.p") && msg.contains("only 3 class"),
        "{msg}"
    );
    assert!(matches!(
        err,
        DatasetError::TooFewClasses { p: 5, classes: 3 }
    ));

    let rows = PkPlanner {
        allow_repeated_classes: true,
        ..planner(5, 2, 6, 0)
    }
    .plan(&data)
    .expect("tiled plan");
    for step in steps_of(&rows) {
        let classes_in_step: BTreeSet<u32> = step.iter().map(|r| r.class_id).collect();
        assert_eq!(
            classes_in_step.len(),
            3,
            "the tiled list holds every class in each step"
        );
        assert_eq!(step.len(), 10);
    }
    assert_eq!(steps_per_epoch(3, 5, true), 1);
    assert_eq!(steps_per_epoch(3, 5, false), 0);
}

#[test]
fn setting_errors() {
    let data = classes(4, |_| 2);
    assert!(planner(0, 2, 1, 0)
        .plan(&data)
        .unwrap_err()
        .to_string()
        .contains("plan.p"));
    assert!(planner(2, 0, 1, 0)
        .plan(&data)
        .unwrap_err()
        .to_string()
        .contains("plan.k"));
    let many = classes(300, |_| 1);
    assert!(planner(300, 300, 1, 0)
        .plan(&many)
        .unwrap_err()
        .to_string()
        .contains("65,536"));
    let mut with_empty = data.clone();
    with_empty.insert(7, Vec::new());
    let err = planner(2, 2, 1, 0).plan(&with_empty).unwrap_err();
    assert!(
        matches!(err, DatasetError::EmptyClass { class_id: 7 }),
        "{err}"
    );
    let none = BTreeMap::new();
    assert!(matches!(
        PkPlanner {
            allow_repeated_classes: true,
            ..planner(2, 2, 1, 0)
        }
        .plan(&none)
        .unwrap_err(),
        DatasetError::TooFewClasses { classes: 0, .. }
    ));
    assert!(planner(2, 2, 0, 0)
        .plan(&data)
        .expect("zero steps")
        .is_empty());
}

#[test]
fn random_batches_cover_each_epoch_without_replacement() {
    // 7 classes of 5..11 images: 56 images; batches of 10 leave 6 out per epoch.
    let cls = classes(7, |c| 5 + c);
    let total: usize = cls.values().map(Vec::len).sum();
    assert_eq!(total, 56);
    let planner = RandomPlanner {
        batch_size: 10,
        steps: 12,
        seed: 3,
    };
    let rows = planner.plan(&cls).unwrap();
    assert_eq!(rows.len(), 120);
    let label: HashMap<u32, u32> = cls
        .iter()
        .flat_map(|(&c, ids)| ids.iter().map(move |&i| (i, c)))
        .collect();
    let steps = steps_of(&rows);
    for (s, batch) in steps.iter().enumerate() {
        let slots: Vec<u16> = batch.iter().map(|r| r.slot).collect();
        assert_eq!(slots, (0..10).collect::<Vec<u16>>(), "step {s}");
        for r in batch {
            assert_eq!(label[&r.image_id], r.class_id, "a row carries its class");
        }
    }
    // 5 steps per epoch: within each, no image twice.
    for epoch in steps.chunks(5) {
        let ids: Vec<u32> = epoch.iter().flatten().map(|r| r.image_id).collect();
        let unique: BTreeSet<u32> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "an image repeated within an epoch");
    }
    // Classes are not balanced: some batch holds a class exactly once.
    assert!(steps.iter().any(|b| {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for r in b {
            *counts.entry(r.class_id).or_default() += 1;
        }
        counts.values().any(|&n| n == 1)
    }));
    assert_eq!(planner.plan(&cls).unwrap(), rows, "seeded");
    let other = RandomPlanner { seed: 4, ..planner }.plan(&cls).unwrap();
    assert_ne!(other, rows);
}

#[test]
fn random_planner_errors_name_the_batch_size() {
    let cls = classes(3, |_| 4);
    for batch_size in [0, 13, 70_000] {
        let err = RandomPlanner {
            batch_size,
            steps: 1,
            seed: 0,
        }
        .plan(&cls)
        .unwrap_err()
        .to_string();
        assert!(err.contains("plan.batch_size"), "{err}");
    }
}

#[test]
fn golden_random_plan() {
    // The contract: this seed and input give exactly these batches.
    let cls = classes(3, |_| 3);
    let rows = RandomPlanner {
        batch_size: 4,
        steps: 3,
        seed: 0,
    }
    .plan(&cls)
    .unwrap();
    let ids: Vec<u32> = rows.iter().map(|r| r.image_id).collect();
    assert_eq!(ids, GOLDEN_RANDOM);
}

// Epoch 1: images 4 3 0 2 | 1 8 6 7 (5 sits out); epoch 2 reshuffles all nine.
const GOLDEN_RANDOM: [u32; 12] = [4, 3, 0, 2, 1, 8, 6, 7, 0, 1, 4, 3];
