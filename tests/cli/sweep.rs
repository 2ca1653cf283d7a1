//! Sweeps as one DAG: shared stages run once, --jobs, resume after an
//! interruption, the combined report, diff, and rebuilding from a record.
use crate::common::*;
use std::collections::BTreeMap;

fn sweep_config() -> String {
    format!(
        "{}\n[sweep]\n\"train.loss.name\" = [\"hard_triplet\", \"lifted_structure\"]\n\"plan.seed\" = [0, 1]\n",
        Config::tiny().train()
    )
}

fn count<'a>(nodes: &'a [(String, String)], status: &str) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for (id, s) in nodes {
        if s == status {
            *m.entry(id.split(['[', ':']).next().unwrap()).or_default() += 1;
        }
    }
    m
}

#[test]
fn a_sweep_is_one_dag_with_shared_stages_built_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &sweep_config());
    let cfg = cfg.to_str().unwrap();
    let store = tmp.path().join("j1");
    let nodes = run_json(&store, &[cfg]);
    let ran = count(&nodes, "ran");
    // 2 losses × 2 plan seeds: one synth/index/decode, two plans, four of each
    // model stage, one untrained baseline chain, one report.
    let expected: BTreeMap<&str, usize> = [
        ("synth", 1),
        ("index", 1),
        ("plan", 2),
        ("decode", 1),
        ("train", 5),
        ("embed", 5),
        ("retrieve", 5),
        ("cluster", 5),
        ("report", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(ran, expected, "{nodes:?}");
    assert!(
        nodes
            .iter()
            .any(|(id, _)| id == "train[plan.seed=1,train.loss.name=lifted_structure]"),
        "{nodes:?}"
    );

    // --jobs 2 gives the same artifacts.
    let store2 = tmp.path().join("j2");
    run_json(&store2, &[cfg, "--jobs", "2"]);
    for entry in std::fs::read_dir(store.join("latest/tiny")).unwrap() {
        let node = entry.unwrap().file_name().to_string_lossy().to_string();
        if node.starts_with("train") || node.starts_with("embed") {
            let file = if node.starts_with("train") {
                "model.safetensors"
            } else {
                "embeddings.arrow"
            };
            assert_eq!(
                file_hash(&latest_manifest(&store, "tiny", &node), file),
                file_hash(&latest_manifest(&store2, "tiny", &node), file),
                "{node}"
            );
        }
    }

    // The combined report: one row per run, numbers equal to each run's metrics,
    // and mean ± std over the seed axis.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(store.join("latest/tiny/report/report.json")).unwrap(),
    )
    .unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for run in runs {
        let name = run["run"].as_str().unwrap();
        let point = name.trim_start_matches("tiny[").trim_end_matches(']');
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                store.join(format!("latest/tiny/retrieve@{point}/metrics.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(run["recall"][0]["value"], m["recall@1"], "{name}");
        assert_eq!(run["map_at_r"], m["map@r"], "{name}");
    }
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    for g in groups {
        assert_eq!(g["runs"], 2);
        let mine: Vec<f64> = runs
            .iter()
            .filter(|r| r["group"] == g["group"])
            .map(|r| r["recall"][0]["value"].as_f64().unwrap())
            .collect();
        let mean = mine.iter().sum::<f64>() / 2.0;
        let std = ((mine[0] - mean).powi(2) + (mine[1] - mean).powi(2)).sqrt(); // ddof = 1, n = 2
        assert!((g["r@1_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert!((g["r@1_std"].as_f64().unwrap() - std).abs() < 1e-9);
    }
    assert!(store.join("latest/tiny/report/report.parquet").exists());
    let md = std::fs::read_to_string(store.join("latest/tiny/report/report.md")).unwrap();
    assert!(md.contains("Mean ± std over seeds"), "{md}");
}

#[test]
fn an_interrupted_sweep_continues_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &sweep_config());
    let cfg = cfg.to_str().unwrap();
    let store = tmp.path().join("store");
    let killed = dml()
        .env("DML_FAULT_ABORT_BEFORE_COMMIT", "retrieve")
        .arg("--store")
        .arg(&store)
        .args(["run", cfg])
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let nodes = run_json(&store, &[cfg]);
    let cached = count(&nodes, "cached");
    assert!(cached.get("train").copied().unwrap_or(0) >= 1, "{nodes:?}");
    assert_eq!(cached.get("synth"), Some(&1));
    assert!(nodes.iter().all(|(_, s)| s == "ran" || s == "cached"));
    assert!(run_json(&store, &[cfg]).iter().all(|(_, s)| s == "cached"));
}

#[test]
fn diff_and_rebuild_from_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let store = tmp.path().join("store");
    ok(&store, &["run", cfg]);
    ok(&store, &["run", cfg, "--set", "plan.seed=1"]);
    let records: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(store.join("runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(records.len(), 2);
    let d = ok(
        &store,
        &[
            "diff",
            records[0].to_str().unwrap(),
            records[1].to_str().unwrap(),
        ],
    );
    assert!(
        d.contains("plan.seed: (unset) → 1") || d.contains("plan.seed: 0 → 1"),
        "{d}"
    );
    assert!(
        d.contains("plan") && d.contains("invalidated: plan.seed changed 0 → 1"),
        "{d}"
    );
    assert!(d.contains("invalidated: input plan changed"), "{d}");
    assert!(d.contains("synth") && d.contains("same artifact"), "{d}");

    // Rebuilding the second run from its record in an empty store gives byte-identical artifacts.
    let fresh = tmp.path().join("fresh");
    ok(
        &fresh,
        &["run", "--from-record", records[1].to_str().unwrap()],
    );
    for (node, file) in [
        ("plan", "plan.parquet"),
        ("train", "model.safetensors"),
        ("embed", "embeddings.arrow"),
        ("cluster", "clusters.parquet"),
    ] {
        assert_eq!(
            file_hash(&latest_manifest(&store, "tiny", node), file),
            file_hash(&latest_manifest(&fresh, "tiny", node), file),
            "{node}"
        );
    }
    // And in the same store it reuses everything.
    let again = run_json(&store, &["--from-record", records[1].to_str().unwrap()]);
    assert!(again.iter().all(|(_, s)| s == "cached"), "{again:?}");
}
