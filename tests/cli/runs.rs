//! Comparing runs through the real CLI: `dml run --json`'s outcome, `dml runs`, `dml diff`
//! with metrics and `dml report` over several runs, all read from the artifacts in the store.
use crate::common::*;
use std::path::{Path, PathBuf};

fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn count(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn run_json_runs_diff_and_report_read_the_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let cfg_a = Config::tiny().train().named("a").write(&a_dir);
    let cfg_b = Config::tiny().train().named("b").write(&b_dir);

    // `run --json`: the nodes, then each point's artifacts and headline metrics.
    let oa = run_outcome(&store, &[cfg_a.to_str().unwrap()]);
    assert_eq!(oa["outcome"], "ok");
    assert!(oa["nodes"].as_array().unwrap().len() >= 8);
    let points = oa["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{oa}");
    let pa = &points[0];
    assert_eq!(pa["name"], "a");
    for stage in ["train", "embed", "retrieve", "cluster", "report"] {
        let dir = PathBuf::from(pa["artifacts"][stage].as_str().unwrap());
        assert!(
            dir.join("manifest.json").is_file(),
            "{stage}: {}",
            dir.display()
        );
    }
    let art =
        |p: &serde_json::Value, stage: &str| PathBuf::from(p["artifacts"][stage].as_str().unwrap());
    assert!(art(pa, "train").join("model.safetensors").is_file());
    let retrieve = json_file(&art(pa, "retrieve").join("metrics.json"));
    let cluster = json_file(&art(pa, "cluster").join("metrics.json"));
    let train_notes = json_file(&art(pa, "train").join("manifest.json"))["notes"].clone();
    assert_eq!(pa["metrics"]["recall_at_1"], retrieve["recall@1"]);
    assert_eq!(pa["metrics"]["map_at_r"], retrieve["map@r"]);
    assert_eq!(pa["metrics"]["nmi"], cluster["nmi"]);
    assert_eq!(pa["metrics"]["train_seconds"], train_notes["train_seconds"]);
    assert!(pa["metrics"].get("validation").is_none(), "{pa}");

    let ob = run_outcome(
        &store,
        &[
            cfg_b.to_str().unwrap(),
            "--set",
            "train.seed=1",
            "--set",
            "train.validation.every=4",
            "--set",
            "train.validation.on=\"test\"",
        ],
    );
    let pb = &ob["points"][0];
    assert_eq!(pb["metrics"]["validation"]["on"], "test", "{pb}");

    // `dml runs --json`: newest first, the same numbers.
    let listed: serde_json::Value = serde_json::from_str(&ok(&store, &["runs", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["name"], "b");
    assert_eq!(listed[1]["name"], "a");
    assert_eq!(listed[1]["status"], "ok");
    assert_eq!(listed[1]["points"][0]["metrics"], pa["metrics"]);
    assert_eq!(listed[0]["points"][0]["metrics"], pb["metrics"]);
    assert_eq!(
        listed[1]["record"].as_str().unwrap(),
        oa["record"].as_str().unwrap()
    );
    let only_a: serde_json::Value =
        serde_json::from_str(&ok(&store, &["runs", "--json", "--name", "a"])).unwrap();
    assert_eq!(only_a.as_array().unwrap().len(), 1);
    // The table: one line per point, with R@1 in percent.
    let text = ok(&store, &["runs"]);
    let r1 = format!("{:.2}", 100.0 * retrieve["recall@1"].as_f64().unwrap());
    let line_a = text
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("a"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line_a.contains(" ok ") && line_a.contains(&r1), "{text}");
    let first_run = text.lines().nth(1).unwrap();
    assert_eq!(first_run.split_whitespace().nth(2), Some("b"), "{text}");

    // `dml diff a b`: the setting changes and the metric changes side by side.
    let diff = ok(&store, &["diff", "a", "b"]);
    assert!(diff.contains("train.seed: 0 → 1"), "{diff}");
    assert!(diff.contains("metrics (A → B):"), "{diff}");
    let rb = json_file(&art(pb, "retrieve").join("metrics.json"));
    let (xa, xb) = (
        retrieve["recall@1"].as_f64().unwrap(),
        rb["recall@1"].as_f64().unwrap(),
    );
    let r1_line = diff
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some("R@1"))
        .unwrap_or_else(|| panic!("{diff}"));
    assert!(
        r1_line.contains(&format!("{xa:.4}"))
            && r1_line.contains(&format!("{xb:.4}"))
            && r1_line.contains(&format!("{:+.4}", xb - xa)),
        "{r1_line}"
    );
    assert!(diff.contains("val R@1"), "B's validation shows: {diff}");
    assert!(
        diff.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("train") && w.next() == Some("invalidated:")
        }),
        "{diff}"
    );

    // `dml report a b`: one table over both runs, from the store, nothing rebuilt.
    let (objects, records) = (count(&store.join("objects")), count(&store.join("runs")));
    let report = ok(&store, &["report", "a", "b"]);
    assert_eq!(count(&store.join("objects")), objects);
    assert_eq!(count(&store.join("runs")), records);
    assert!(
        report.contains("| a | 0 |")
            && report.contains("| b | 1 |")
            && report.contains("| train.seed |")
            && report.matches("hard_triplet").count() >= 2,
        "{report}"
    );
    let out = store.join("reports/a+b");
    let combined = json_file(&out.join("report.json"));
    let rows = combined["runs"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["recall"][0]["value"], retrieve["recall@1"]);
    assert_eq!(rows[1]["recall"][0]["value"], rb["recall@1"]);
    for png in ["recall.png", "r1.png", "loss_0.png", "loss_1.png"] {
        assert!(out.join(png).is_file(), "{png}");
    }
    let elsewhere = tmp.path().join("elsewhere");
    ok(
        &store,
        &["report", "a", "b", "--out", elsewhere.to_str().unwrap()],
    );
    assert!(elsewhere.join("report.md").is_file());

    // A run whose artifacts are gone is named, and nothing is rebuilt.
    std::fs::remove_dir_all(art(pa, "retrieve")).unwrap();
    let e = fails(&store, &["report", "a", "b"]);
    assert!(e.contains("run `a`") && e.contains("retrieve"), "{e}");
    let e = fails(&store, &["report", "nope"]);
    assert!(e.contains("no run record `nope`"), "{e}");
    // Rebuilt (the same key): `a` is whole again.
    ok(&store, &["run", cfg_a.to_str().unwrap()]);
    // A run that stopped before its report cannot be reported.
    ok(
        &store,
        &[
            "run",
            cfg_a.to_str().unwrap(),
            "--until",
            "train",
            "--set",
            "train.seed=2",
        ],
    );
    let e = fails(&store, &["report", "a~0"]);
    assert!(e.contains("did not reach its report"), "{e}");
    // …while the run's name still means its newest record that has one: a partial run
    // never shadows a complete one (report, path, show, latest/).
    let out = run_in(&store, &["report", "a"]);
    assert!(out.status.success(), "{out:?}");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("stopped before `report`"), "{note}");
    let report_link = store.join("latest/a/report");
    assert!(
        report_link.join("manifest.json").is_file(),
        "a --until run removed latest/a/report"
    );
    let embed_of_a = ok(&store, &["path", "embed", "--name", "a"]);
    assert_eq!(
        std::fs::canonicalize(embed_of_a.trim()).unwrap(),
        std::fs::canonicalize(art(pa, "embed")).unwrap()
    );
    // The new train (train.seed = 2) is what `path train` and `show train` name now,
    // and `show train` is the trained node, never its untrained baseline.
    let train_now = ok(&store, &["path", "train", "--name", "a"]);
    assert_ne!(
        std::fs::canonicalize(train_now.trim()).unwrap(),
        std::fs::canonicalize(art(pa, "train")).unwrap()
    );
    let shown = ok(&store, &["show", "train", "--name", "a"]);
    let key = std::fs::canonicalize(train_now.trim()).unwrap();
    let key = key.file_name().unwrap().to_string_lossy().into_owned();
    assert!(shown.starts_with(&format!("train {key}")), "{shown}");
    let untrained = ok(&store, &["show", "train:untrained", "--name", "a"]);
    assert!(
        !untrained.starts_with(&format!("train {key}")),
        "{untrained}"
    );
    // NAME~N names an earlier run; a name against itself is refused with that hint;
    // an ambiguous record prefix lists what it matches.
    let d = ok(&store, &["diff", "a~1", "a"]);
    assert!(d.contains("train.seed"), "{d}");
    let e = fails(&store, &["diff", "a", "a"]);
    assert!(e.contains("same run record") && e.contains("a~1"), "{e}");
    let e = fails(&store, &["diff", "a~9", "a"]);
    assert!(e.contains("has 3 record(s)"), "{e}");
    let e = fails(&store, &["diff", "2", "a"]);
    assert!(e.contains("matches") && e.contains("-a.json"), "{e}");
    // …but `runs` still lists it, with what it has.
    let listed: serde_json::Value = serde_json::from_str(&ok(&store, &["runs", "--json"])).unwrap();
    let newest = &listed[0];
    assert_eq!(newest["name"], "a");
    assert!(
        newest["points"][0]["artifacts"]["train"].is_string(),
        "{newest}"
    );
    assert!(
        newest["points"][0]["metrics"]["recall_at_1"].is_null(),
        "{newest}"
    );
}
