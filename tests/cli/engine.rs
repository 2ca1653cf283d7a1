//! End-to-end tests of the engine, the store and the data stages, through the
//! real `dml` binary on small generated data.
use crate::common::*;
use std::path::Path;

const UNTIL: [&str; 2] = ["--until", "plan"];

fn args<'a>(cfg: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cfg, UNTIL[0], UNTIL[1]];
    v.extend_from_slice(extra);
    v
}

#[test]
fn second_identical_run_runs_nothing_and_a_plan_setting_reruns_only_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();

    let first = run_json(&store, &args(cfg, &[]));
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first.iter().all(|(_, s)| s == "ran"), "{first:?}");

    let second = run_json(&store, &args(cfg, &[]));
    assert!(second.iter().all(|(_, s)| s == "cached"), "{second:?}");

    let p = plan(&store, &args(cfg, &["--set", "plan.seed=1"]));
    let by = |id: &str| p.iter().find(|n| n.id == id).unwrap().clone();
    assert_eq!(by("synth").status, "cached");
    assert_eq!(by("index").status, "cached");
    assert_eq!(by("plan").status, "run");
    assert_eq!(by("plan").reason, "plan.seed changed 0 → 1");

    let third = run_json(&store, &args(cfg, &["--set", "plan.seed=1"]));
    assert_eq!(status_of(&third, "plan"), "ran");
    assert_eq!(status_of(&third, "index"), "cached");
}

#[test]
fn keys_change_downstream_only_and_explicit_defaults_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let key = |p: &[Planned], id: &str| p.iter().find(|n| n.id == id).unwrap().key.clone();
    let base = plan(&store, &args(cfg, &[]));
    // Writing a default explicitly (plan.allow_repeated_classes defaults to false).
    let explicit = plan(
        &store,
        &args(
            cfg,
            &[
                "--set",
                "plan.allow_repeated_classes=false",
                "--set",
                "synthetic.seed=0",
            ],
        ),
    );
    assert_eq!(
        base.iter().map(|n| &n.key).collect::<Vec<_>>(),
        explicit.iter().map(|n| &n.key).collect::<Vec<_>>()
    );
    // A plan setting: plan changes, index and synth do not.
    let p2 = plan(&store, &args(cfg, &["--set", "plan.k=3"]));
    assert_eq!(key(&base, "synth"), key(&p2, "synth"));
    assert_eq!(key(&base, "index"), key(&p2, "index"));
    assert_ne!(key(&base, "plan"), key(&p2, "plan"));
    // A synth setting: everything downstream changes.
    let p3 = plan(&store, &args(cfg, &["--set", "synthetic.seed=5"]));
    for id in ["synth", "index", "plan"] {
        assert_ne!(key(&base, id), key(&p3, id), "{id}");
    }
    // Floats and integers by value: 1e1 vs 10 for an integer setting is a type
    // error, but the same integer spelled twice is the same key.
    let p4 = plan(&store, &args(cfg, &["--set", "plan.steps=10"]));
    assert_eq!(key(&base, "plan"), key(&p4, "plan"));
}

#[test]
fn golden_keys_for_a_fixed_config() {
    // If this fails, the canonical form of keys changed: every user's store is
    // invalidated. Bump SCHEMA_SALT deliberately and update these, never silently.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::tiny().write(tmp.path());
    let p = plan(&tmp.path().join("store"), &args(cfg.to_str().unwrap(), &[]));
    let keys: Vec<(&str, &str)> = p.iter().map(|n| (n.id.as_str(), n.key.as_str())).collect();
    assert_eq!(keys, GOLDEN_KEYS.to_vec());
}
// index and plan changed when the index stage's code version went 1 → 2 (the
// `dataset_image_id` column): a version bump, not a change of the canonical form.
const GOLDEN_KEYS: [(&str, &str); 3] = [
    ("synth", "181a797bf5b8393ec0d6f7e8f7c95811"),
    ("index", "d131e272a3b57408121bc0660aec7a4f"),
    ("plan", "4092bc418ed938f09f84c6fa33ebca57"),
];

#[test]
fn external_dataset_touch_reruns_nothing_and_a_changed_byte_reruns_index() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    folder_dataset(&data, 6, 3);
    let store = tmp.path().join("store");
    let a = on_folder(&["--until", "plan"], &data, &FOLDER_PLAN);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let first = run_json(&store, &a);
    assert_eq!(
        first.len(),
        2,
        "no synth stage for an external dataset: {first:?}"
    );
    // Touch without change: same content, so the same keys.
    let img = data.join("class_00/img_0.png");
    let bytes = std::fs::read(&img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    std::fs::write(&img, &bytes).unwrap();
    let again = run_json(&store, &a);
    assert!(again.iter().all(|(_, s)| s == "cached"), "{again:?}");
    // One byte changed in place (same size).
    let mut changed = bytes.clone();
    let last = changed.len() - 5;
    changed[last] ^= 0xff;
    std::fs::write(&img, &changed).unwrap();
    let p = plan(&store, &a);
    assert_eq!(p[0].status, "run");
    assert_eq!(
        p[0].reason,
        "dataset files changed: class_00/img_0.png (content)"
    );
    assert_eq!(p[1].status, "run");
    assert_eq!(p[1].reason, "input index changed");
}

#[test]
fn a_stage_killed_before_commit_leaves_nothing_and_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let killed = dml()
        .env("DML_FAULT_ABORT_BEFORE_COMMIT", "index")
        .arg("--store")
        .arg(&store)
        .arg("run")
        .args(args(cfg.to_str().unwrap(), &[]))
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert!(
        store.join("objects/synth").read_dir().unwrap().count() == 1,
        "synth finished before the crash and is kept"
    );
    assert!(
        !store.join("objects/index").exists()
            || store.join("objects/index").read_dir().unwrap().count() == 0
    );
    // The half-written directory is in tmp/, never in objects/, and gc removes it.
    assert_eq!(
        store
            .join("tmp")
            .read_dir()
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count(),
        1
    );
    let gc = ok(&store, &["gc", "--dry-run"]);
    assert!(gc.contains("stale temporary"), "{gc}");
    let next = run_json(&store, &args(cfg.to_str().unwrap(), &[]));
    assert_eq!(status_of(&next, "synth"), "cached");
    assert_eq!(status_of(&next, "index"), "ran");
    assert_eq!(status_of(&next, "plan"), "ran");
}

#[test]
fn a_corrupted_artifact_is_detected_and_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    run_json(&store, &args(cfg, &[]));
    let plan_dir = store
        .join("objects/plan")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = plan_dir.join("plan.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&file, &bytes).unwrap();
    let p = plan(&store, &args(cfg, &[]));
    let node = p.iter().find(|n| n.id == "plan").unwrap();
    assert_eq!(node.status, "run");
    assert!(
        node.reason.starts_with("artifact failed verification"),
        "{}",
        node.reason
    );
    let next = run_json(&store, &args(cfg, &[]));
    assert_eq!(status_of(&next, "plan"), "ran");
    assert!(run_json(&store, &args(cfg, &["--verify"]))
        .iter()
        .all(|(_, s)| s == "cached"));
}

#[test]
fn two_concurrent_runs_both_finish_with_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny()
        .set("synthetic.classes", 40)
        .set("synthetic.images_per_class", 10)
        .write(tmp.path());
    let spawn = || {
        dml()
            .arg("--store")
            .arg(&store)
            .args(["run", "--json"])
            .args(args(cfg.to_str().unwrap(), &[]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let parse = |o: &std::process::Output| -> Vec<(String, String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap().into(),
                    n["key"].as_str().unwrap().into(),
                    n["status"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let (pa, pb) = (parse(&a), parse(&b));
    for (x, y) in pa.iter().zip(&pb) {
        assert_eq!(x.1, y.1, "same keys");
        // Each stage was built exactly once between the two runs.
        let built = [&x.2, &y.2].iter().filter(|s| s.as_str() == "ran").count();
        assert_eq!(built, 1, "{} built {built} times: {x:?} {y:?}", x.0);
    }
    assert_eq!(store.join("objects/plan").read_dir().unwrap().count(), 1);
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // A config typo names the nearest key.
    let e = fails(&store, &["run", "--dry-run", "--set", "plan.stpes=3"]);
    assert!(
        e.contains("unknown setting `plan.stpes`; did you mean `plan.steps`?"),
        "{e}"
    );
    let cfg = write_config(tmp.path(), "[plann]\nseed = 1\n");
    let e = fails(&store, &["run", "--dry-run", cfg.to_str().unwrap()]);
    assert!(e.contains("did you mean `plan`?"), "{e}");
    // A missing dataset root.
    let e = fails(
        &store,
        &[
            "run",
            "--dry-run",
            "--set",
            "dataset.kind=\"cub\"",
            "--set",
            "dataset.root=/nonexistent/CUB",
        ],
    );
    assert!(e.contains("/nonexistent/CUB"), "{e}");
    let e = fails(
        &store,
        &["run", "--dry-run", "--set", "dataset.kind=\"cub\""],
    );
    assert!(e.contains("dataset.root is not set"), "{e}");
    // A store on a read-only path (a dry run only looks: tests/store.rs).
    let e = fails(Path::new("/proc/dml-store"), &["run", "--until", "index"]);
    assert!(
        e.contains("not writable") && e.contains("/proc/dml-store"),
        "{e}"
    );
    // P larger than the number of classes (6 train classes of 12).
    let cfg = Config::tiny().write(tmp.path());
    let e = fails(
        &store,
        &[
            "run",
            cfg.to_str().unwrap(),
            "--until",
            "plan",
            "--set",
            "plan.p=7",
        ],
    );
    assert!(e.contains("plan.p"), "{e}");
    // …unless the seed's tiling is asked for.
    ok(
        &store,
        &[
            "run",
            cfg.to_str().unwrap(),
            "--until",
            "plan",
            "--set",
            "plan.p=7",
            "--set",
            "plan.allow_repeated_classes=true",
        ],
    );
    // A CUB list line that does not parse: file and line number.
    let cub = tmp.path().join("cub");
    std::fs::create_dir_all(cub.join("images/001.A")).unwrap();
    std::fs::write(cub.join("images.txt"), "1 001.A/a.jpg\nbroken-line\n").unwrap();
    std::fs::write(cub.join("image_class_labels.txt"), "1 1\n").unwrap();
    let root = format!("dataset.root={}", cub.display());
    let e = fails(
        &store,
        &[
            "run",
            "--dry-run",
            "--set",
            "dataset.kind=\"cub\"",
            "--set",
            &root,
        ],
    );
    assert!(e.contains("images.txt") && e.contains('2'), "{e}");
}

#[test]
fn unreadable_images_are_named_and_can_be_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    folder_dataset(&data, 4, 3);
    std::fs::write(data.join("class_01/img_1.png"), b"\x89PNG\r\n").unwrap();
    let store = tmp.path().join("store");
    let a = on_folder(&["run", "--until", "index"], &data, &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let e = fails(&store, &a);
    assert!(
        e.contains("class_01/img_1.png") && e.contains("--skip-bad-images"),
        "{e}"
    );
    let mut skip = a.to_vec();
    skip.push("--skip-bad-images");
    ok(&store, &skip);
    let show = ok(&store, &["show", "index"]);
    assert!(
        show.contains("skipped_images") && show.contains("class_01/img_1.png"),
        "{show}"
    );
    assert!(show.contains("11 rows"), "{show}");
    // A listed image that does not exist (folder lists only what exists, so use CUB).
    let cub = tmp.path().join("cub");
    std::fs::create_dir_all(cub.join("images/001.A")).unwrap();
    std::fs::write(cub.join("images.txt"), "1 001.A/a.jpg\n").unwrap();
    std::fs::write(cub.join("image_class_labels.txt"), "1 1\n").unwrap();
    let root = format!("dataset.root={}", cub.display());
    let e = fails(
        &store,
        &[
            "run",
            "--dry-run",
            "--set",
            "dataset.kind=\"cub\"",
            "--set",
            &root,
        ],
    );
    assert!(e.contains("001.A/a.jpg"), "{e}");
}

#[test]
fn ls_show_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    run_json(&store, &args(cfg, &[]));
    run_json(&store, &args(cfg, &["--set", "plan.seed=3"]));
    let ls = ok(&store, &["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("plan")).count(),
        2,
        "{ls}"
    );
    let show = ok(&store, &["show", "plan"]);
    assert!(
        show.contains("plan.seed = 3")
            && show.contains("step: UInt32")
            && show.contains("image_id"),
        "{show}"
    );
    // Keep only the newest run: the first plan goes, synth/index stay.
    let dry = ok(&store, &["gc", "--keep-runs", "1", "--dry-run"]);
    assert!(dry.contains("would remove plan"), "{dry}");
    ok(&store, &["gc", "--keep-runs", "1"]);
    let ls = ok(&store, &["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("plan")).count(),
        1,
        "{ls}"
    );
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("index")).count(),
        1,
        "{ls}"
    );
}

/// The shared libraries a binary loads, as `ldd` lists them.
fn needed(bin: &str) -> String {
    let out = std::process::Command::new("ldd").arg(bin).output().unwrap();
    assert!(out.status.success(), "ldd {bin}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dml_itself_never_loads_libtorch_only_its_training_worker_does() {
    let dml = needed(env!("CARGO_BIN_EXE_dml"));
    for lib in ["libtorch", "libc10"] {
        assert!(!dml.contains(lib), "dml loads {lib}:\n{dml}");
    }
    let worker = needed(crate::common::worker().to_str().unwrap());
    assert!(worker.contains("libtorch_cpu"), "{worker}");
    // The worker answers the device question dml asks when the host has an NVIDIA driver.
    let probe = std::process::Command::new(crate::common::worker())
        .arg("probe")
        .output()
        .unwrap();
    assert!(probe.status.success());
    let p: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert!(p["cuda_devices"].is_u64(), "{p}");
}

/// The worker's crate stands on the plain job types of dml-jobspec, not on the stages: it
/// links neither the report's polars nor the plots' plotters, nor the remote cache's S3
/// client, nor the CLI's argument parser.
#[test]
fn the_training_worker_links_none_of_the_stages_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "-p",
            "dml-torch",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains("dml-jobspec") && names.contains("tch"),
        "{tree}"
    );
    for heavy in [
        "dml-stages",
        "polars",
        "plotters",
        "object_store",
        "tokio",
        "clap",
    ] {
        assert!(
            !names.contains(heavy),
            "dml-torch depends on {heavy}:\n{tree}"
        );
    }
}

#[test]
fn a_missing_training_worker_is_named_and_the_stages_before_train_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let missing = tmp.path().join("nowhere/dml-torch");
    let out = dml()
        .env("DML_TORCH", &missing)
        .arg("--store")
        .arg(&store)
        .args(["run", cfg.to_str().unwrap(), "--until", "train"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("starting the training worker") && err.contains(&*missing.to_string_lossy()),
        "{err}"
    );
    // Without the NVIDIA driver's device files (CI), planning never asks the worker
    // which devices it sees: a missing worker costs no warning before train.
    if !Path::new("/dev/nvidiactl").exists() && !Path::new("/proc/driver/nvidia/gpus").exists() {
        assert!(!err.contains("could not ask the training worker"), "{err}");
    }
    // Planning needed no worker: everything before train was built and stays.
    let p = plan(&store, &[cfg.to_str().unwrap(), "--until", "train"]);
    for Planned { id, status, .. } in &p {
        let want = if id.starts_with("train") {
            "run"
        } else {
            "cached"
        };
        assert_eq!(status, want, "{id}: {p:?}");
    }
}
