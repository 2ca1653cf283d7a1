//! Validation during training (`[train.validation]`) through the real CLI: the logged
//! Recall@1 and MAP@R against a brute-force computation on the same embeddings, the
//! class-disjoint holdout, `keep = "best"` returning that step's weights (also across a
//! resume), and what the table does to keys.
use crate::common::*;
use dml_artifacts::tables::{self, Embeddings, Split, TrainLogRow};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// 20 classes × 6 images: 10 train classes, of which 3 are held out for validation.
fn val() -> Config {
    Config::tiny()
        .train()
        .named("val")
        .set("synthetic.classes", 20)
        .set("synthetic.images_per_class", 6)
        .set("plan.steps", 12)
        .set("train.validation.every", 4)
        .set("train.validation.on", "holdout")
        .set("train.validation.holdout_fraction", 0.3)
        .set("embed.batch_size", 128)
}

/// Validation on the test split every 2 steps, keeping the best step; the high learning rate
/// makes the last step not the best one.
fn best() -> Config {
    Config::tiny()
        .train()
        .named("best")
        .set("synthetic.classes", 16)
        .set("synthetic.images_per_class", 6)
        .set("plan.steps", 12)
        .set("train.optimizer.learning_rate", 0.01)
        .set("train.validation.every", 2)
        .set("train.validation.on", "test")
        .set("train.validation.keep", "best")
        .set("embed.batch_size", 128)
        .set("report.untrained_baseline", false)
}

/// Leave-one-out Recall@1 and MAP@R by brute force (f64 squared distances, ties by index).
fn brute_force(e: &Embeddings) -> (f64, f64) {
    let n = e.len();
    let row = |i: usize| &e.values[i * e.dim..(i + 1) * e.dim];
    let (mut hits, mut ap_sum, mut counted) = (0usize, 0.0f64, 0usize);
    for q in 0..n {
        let mut others: Vec<(f64, usize)> = (0..n)
            .filter(|&j| j != q)
            .map(|j| {
                let d: f64 = row(q)
                    .iter()
                    .zip(row(j))
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                    .sum();
                (d, j)
            })
            .collect();
        others.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let same = |j: usize| e.class_id[j] == e.class_id[q];
        if same(others[0].1) {
            hits += 1;
        }
        let r = others.iter().filter(|o| same(o.1)).count();
        if r > 0 {
            let (mut found, mut ap) = (0usize, 0.0f64);
            for (i, o) in others.iter().take(r).enumerate() {
                if same(o.1) {
                    found += 1;
                    ap += found as f64 / (i + 1) as f64;
                }
            }
            ap_sum += ap / r as f64;
            counted += 1;
        }
    }
    (hits as f64 / n as f64, ap_sum / counted as f64)
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-9, "{what}: {a} vs {b}");
}

fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn train_dir(outcome: &serde_json::Value) -> PathBuf {
    PathBuf::from(outcome["points"][0]["artifacts"]["train"].as_str().unwrap())
}

fn validated(log: &[TrainLogRow]) -> Vec<(u32, f64, f64)> {
    log.iter()
        .filter_map(|r| Some((r.step, r.val_recall_at_1?, r.val_map_at_r?)))
        .collect()
}

#[test]
fn holdout_validation_is_class_disjoint_and_logs_the_exact_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = val().write(tmp.path());
    let outcome = run_outcome(&store, &[cfg.to_str().unwrap()]);
    let train = train_dir(&outcome);
    let log = tables::read_train_log(&train.join("train_log.parquet")).unwrap();
    assert_eq!(log.len(), 12);
    // Every 4 steps, and the last step; null in between.
    let val = validated(&log);
    assert_eq!(
        val.iter().map(|v| v.0).collect::<Vec<_>>(),
        [3, 7, 11],
        "{log:?}"
    );
    assert!(log
        .iter()
        .all(|r| r.val_recall_at_1.is_some() == [3, 7, 11].contains(&r.step)));

    // The holdout: 3 of the 10 train classes, none of them in any batch.
    let plan_manifest = latest_manifest(&store, "val", "plan");
    let held: BTreeSet<u32> = plan_manifest["notes"]["holdout_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(held.len(), 3, "{}", plan_manifest["notes"]);
    let plan = tables::read_plan(&store.join("latest/val/plan/plan.parquet")).unwrap();
    let planned: BTreeSet<u32> = plan.iter().map(|r| r.class_id).collect();
    assert!(planned.is_disjoint(&held), "{planned:?} {held:?}");
    assert_eq!(planned.len(), 7);
    let index = tables::read_index(&store.join("latest/val/index/index.parquet")).unwrap();
    let held_images: Vec<u32> = index
        .iter()
        .filter(|r| r.split == Split::Train && held.contains(&r.class_id))
        .map(|r| r.image_id)
        .collect();
    assert_eq!(held_images.len(), 18);

    // What was scored: exactly the held-out images, and the logged numbers are the exact
    // metrics of those embeddings.
    let emb = Embeddings::read(&train.join("validation.arrow")).unwrap();
    assert_eq!(emb.image_id, held_images);
    assert!(emb.split.iter().all(|&s| s == Split::Holdout));
    let (r1, map) = brute_force(&emb);
    let last = val.last().unwrap();
    close(last.1, r1, "holdout R@1 at the last step");
    close(last.2, map, "holdout MAP@R at the last step");

    // Recorded in model.json, the manifest notes and the run's JSON outcome.
    let model = json_file(&train.join("model.json"));
    assert_eq!(model["validation"]["step"], 11, "{model}");
    assert_eq!(model["validation"]["keep"], "last");
    assert_eq!(model["validation"]["on"], "holdout");
    let notes = &latest_manifest(&store, "val", "train")["notes"];
    assert_eq!(notes["kept_step"], 11);
    assert_eq!(notes["validation_evaluations"], 3);
    assert_eq!(notes["validation_images"], 18);
    let v = &outcome["points"][0]["metrics"]["validation"];
    close(v["recall_at_1"].as_f64().unwrap(), r1, "outcome R@1");
    close(v["map_at_r"].as_f64().unwrap(), map, "outcome MAP@R");

    // The report shows the kept weights' validation R@1, where and at which step.
    let md = std::fs::read_to_string(store.join("latest/val/report/report.md")).unwrap();
    assert!(md.contains("validation R@1 (kept step)"), "{md}");
    assert!(
        md.contains(&format!("{:.2} holdout @11", 100.0 * r1)),
        "{md}"
    );

    // loss.png has the validation panel under the loss curve.
    let png = image::open(train.join("loss.png")).unwrap();
    assert_eq!((png.width(), png.height()), (900, 800));
}

#[test]
fn keep_best_makes_the_best_steps_weights_the_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = best().write(tmp.path());
    let outcome = run_outcome(&store, &[cfg.to_str().unwrap()]);
    let train = train_dir(&outcome);
    let log = tables::read_train_log(&train.join("train_log.parquet")).unwrap();
    let val = validated(&log);
    assert_eq!(
        val.iter().map(|v| v.0).collect::<Vec<_>>(),
        [1, 3, 5, 7, 9, 11]
    );
    // Best Recall@1, ties broken by MAP@R, then the earlier step.
    let best = val.iter().fold(val[0], |b, v| {
        if v.1 > b.1 || (v.1 == b.1 && v.2 > b.2) {
            *v
        } else {
            b
        }
    });
    let model = json_file(&train.join("model.json"));
    assert_eq!(model["validation"]["step"], best.0, "{model} {val:?}");
    assert_eq!(model["validation"]["keep"], "best");
    assert_eq!(
        latest_manifest(&store, "best", "train")["notes"]["kept_step"],
        best.0
    );
    // The config is chosen so that the best step is not the last: the artifact is not
    // simply the final weights.
    let last = *val.last().unwrap();
    assert!(best.0 < last.0, "best {best:?} is the last step: {val:?}");
    assert!(
        (best.1, best.2) != (last.1, last.2),
        "the best and last evaluations score alike: {val:?}"
    );

    // The embed stage embeds the test split with the artifact's weights; retrieve scores it
    // with the exact metrics: the best step's numbers, not the last step's.
    let retrieve = json_file(&store.join("latest/best/retrieve/metrics.json"));
    close(
        retrieve["recall@1"].as_f64().unwrap(),
        best.1,
        "artifact R@1",
    );
    close(
        retrieve["map@r"].as_f64().unwrap(),
        best.2,
        "artifact MAP@R",
    );
    let embedded = Embeddings::read(&store.join("latest/best/embed/embeddings.arrow")).unwrap();
    let (r1, map) = brute_force(&embedded);
    close(r1, best.1, "brute-force R@1 of the artifact's embeddings");
    close(
        map,
        best.2,
        "brute-force MAP@R of the artifact's embeddings",
    );
    // The validation's own embeddings of that step are the artifact's.
    let kept = Embeddings::read(&train.join("validation.arrow")).unwrap();
    assert_eq!(kept.image_id, embedded.image_id);
    assert_eq!(kept.split, embedded.split);
    assert!(kept.split.iter().all(|&s| s == Split::Test));
    let diff = kept
        .values
        .iter()
        .zip(&embedded.values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-5,
        "validation vs embed stage embeddings differ by {diff}"
    );
}

#[test]
fn keep_best_survives_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = best().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let straight = tmp.path().join("straight");
    ok(&straight, &["run", cfg, "--until", "train"]);
    let resumed = tmp.path().join("resumed");
    let killed = dml()
        .env("DML_FAULT_ABORT_AFTER_STEP", "8")
        .arg("--store")
        .arg(&resumed)
        .args(["run", cfg, "--until", "train"])
        .output()
        .unwrap();
    assert!(!killed.status.success());
    ok(&resumed, &["run", cfg, "--until", "train"]);
    let (ms, mr) = (
        latest_manifest(&straight, "best", "train"),
        latest_manifest(&resumed, "best", "train"),
    );
    assert_eq!(mr["notes"]["resumed_from_step"], 8, "{}", mr["notes"]);
    assert_eq!(ms["notes"]["kept_step"], mr["notes"]["kept_step"]);
    for file in ["model.safetensors", "validation.arrow"] {
        assert_eq!(file_hash(&ms, file), file_hash(&mr, file), "{file}");
    }
    let log = |store: &Path| {
        validated(
            &tables::read_train_log(&store.join("latest/best/train/train_log.parquet")).unwrap(),
        )
    };
    assert_eq!(log(&straight), log(&resumed));
}

#[test]
fn validation_off_leaves_keys_alone_and_on_changes_the_right_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let keys = |sets: &[&str]| -> Vec<(String, String)> {
        let mut a = vec![cfg];
        a.extend_from_slice(sets);
        plan(&store, &a)
            .into_iter()
            .map(|n| (n.id, n.key))
            .collect()
    };
    let key = |k: &[(String, String)], id: &str| k.iter().find(|n| n.0 == id).unwrap().1.clone();
    let base = keys(&[]);
    // An explicit table with every = 0 is off: nothing changes, whatever else it says.
    let off = keys(&[
        "--set",
        "train.validation.every=0",
        "--set",
        "train.validation.keep=\"best\"",
        "--set",
        "train.validation.on=\"test\"",
    ]);
    assert_eq!(base, off);
    // On the test split: the plan is unchanged, training is not.
    let test = keys(&[
        "--set",
        "train.validation.every=4",
        "--set",
        "train.validation.on=\"test\"",
    ]);
    assert_eq!(key(&base, "plan"), key(&test, "plan"));
    assert_ne!(key(&base, "train"), key(&test, "train"));
    assert_eq!(key(&base, "train:untrained"), key(&test, "train:untrained"));
    // On a holdout: the plan leaves classes out, so its key changes too.
    let holdout = keys(&["--set", "train.validation.every=4"]);
    assert_ne!(key(&base, "plan"), key(&holdout, "plan"));
    assert_ne!(key(&test, "train"), key(&holdout, "train"));
    let other_seed = keys(&[
        "--set",
        "train.validation.every=4",
        "--set",
        "train.validation.seed=1",
    ]);
    assert_ne!(key(&holdout, "plan"), key(&other_seed, "plan"));

    let e = fails(
        &store,
        &["run", cfg, "--dry-run", "--set", "train.validation.evry=4"],
    );
    assert!(e.contains("train.validation.every"), "{e}");
    let e = fails(
        &store,
        &[
            "run",
            cfg,
            "--dry-run",
            "--set",
            "train.validation.every=4",
            "--set",
            "train.validation.holdout_fraction=1.5",
        ],
    );
    assert!(e.contains("holdout_fraction"), "{e}");
}
