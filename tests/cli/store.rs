//! End-to-end tests of the store and its caches through the real `dml` binary:
//! verification that rebuilds, self-verifying manifests, what gc may and may not
//! remove, `latest/` links, a full disk, checkpoints published as one unit,
//! diverging training, and browsing a read-only store.
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNTIL_PLAN: [&str; 2] = ["--until", "plan"];

/// The tiny training experiment without the untrained baseline, so that a fault
/// hook naming the `train` stage hits the trained network's node.
fn train_config(dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!(
            "{}\n[report]\nuntrained_baseline = false\n",
            Config::tiny().train()
        ),
    )
}

fn with<'a>(cfg: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cfg];
    v.extend_from_slice(extra);
    v
}

/// The only artifact directory of a stage.
fn object(store: &Path, stage: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(store.join("objects").join(stage))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Flips one byte in the middle of a file, keeping its size and its mtime (as
/// bit rot or a careless copy would): only a full re-hash can see it.
fn corrupt_keeping_mtime(file: &Path) {
    let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(file, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn verify_rebuilds_a_corrupt_artifact_and_what_was_computed_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    run_json(&store, &with(cfg, &UNTIL_PLAN));
    let index = object(&store, "index");
    let good = file_hash(
        &serde_json::from_str(&std::fs::read_to_string(index.join("manifest.json")).unwrap())
            .unwrap(),
        "index.parquet",
    );
    corrupt_keeping_mtime(&index.join("index.parquet"));
    // Size and mtime unchanged: trusted without --verify, caught with it.
    let p = plan(&store, &with(cfg, &UNTIL_PLAN));
    assert!(p.iter().all(|n| n.status == "cached"), "{p:?}");
    let p = plan(&store, &with(cfg, &["--until", "plan", "--verify"]));
    let by = |id: &str| p.iter().find(|n| n.id == id).unwrap().clone();
    assert_eq!(by("synth").status, "cached");
    assert_eq!(by("index").status, "run");
    assert!(
        by("index")
            .reason
            .contains("failed verification: its file `index.parquet` does not match"),
        "{:?}",
        by("index")
    );
    assert_eq!(by("plan").status, "run");
    assert_eq!(
        by("plan").reason,
        "input index failed verification; rebuilding what was computed from it"
    );

    let out = dml()
        .arg("--store")
        .arg(&store)
        .args(["run", "--json", cfg, "--until", "plan", "--verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(!err.contains("built by another run"), "{err}");
    assert!(err.contains("moved the old artifact aside"), "{err}");
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |id: &str| {
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("synth"), "cached");
    assert_eq!(status("index"), "ran");
    assert_eq!(status("plan"), "ran");
    // The rebuilt index is the original one, byte for byte.
    let rebuilt = latest_manifest(&store, "tiny", "index");
    assert_eq!(file_hash(&rebuilt, "index.parquet"), good);
    assert!(
        run_json(&store, &with(cfg, &["--until", "plan", "--verify"]))
            .iter()
            .all(|(_, s)| s == "cached")
    );
    // The corrupt copy (and the plan built from it) wait in quarantine for gc.
    assert_eq!(entries(&store.join("quarantine")).len(), 2);
    let gc = ok(&store, &["gc"]);
    assert!(gc.contains("removed quarantined artifact"), "{gc}");
    assert!(entries(&store.join("quarantine")).is_empty());
}

#[test]
fn a_manifest_edited_into_other_valid_json_fails_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    run_json(&store, &with(cfg, &UNTIL_PLAN));
    let manifest_path = object(&store, "plan").join("manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    assert!(original.starts_with("{\n  \"digest\": \""), "{original}");
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 4] = [
        ("a blake3 digit flipped", |m| {
            let h = m["files"][0]["blake3"].as_str().unwrap().to_string();
            let flipped = if h.starts_with('0') { "1" } else { "0" };
            m["files"][0]["blake3"] = format!("{flipped}{}", &h[1..]).into();
        }),
        ("a setting edited", |m| {
            m["settings"]["plan"]["seed"] = 7.into()
        }),
        ("an input edited", |m| {
            m["inputs"]["index"] = "0123456789abcdef0123456789abcdef".into()
        }),
        ("a file removed from `files`", |m| {
            m["files"].as_array_mut().unwrap().clear()
        }),
    ];
    for (what, edit) in edits {
        let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
        edit(&mut m);
        std::fs::write(&manifest_path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        let p = plan(&store, &with(cfg, &UNTIL_PLAN));
        let node = p.iter().find(|n| n.id == "plan").unwrap();
        assert_eq!(node.status, "run", "{what}: {node:?}");
        assert!(
            node.reason.contains("its digest does not match"),
            "{what}: {node:?}"
        );
        std::fs::write(&manifest_path, &original).unwrap();
    }
    // A manifest from before digests is accepted as long as its settings and
    // inputs still give its key.
    let mut old: serde_json::Value = serde_json::from_str(&original).unwrap();
    old.as_object_mut().unwrap().remove("digest");
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let p = plan(&store, &with(cfg, &UNTIL_PLAN));
    assert!(p.iter().all(|n| n.status == "cached"), "{p:?}");
    old["settings"]["plan"]["seed"] = 7.into();
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let p = plan(&store, &with(cfg, &UNTIL_PLAN));
    let node = p.iter().find(|n| n.id == "plan").unwrap();
    assert_eq!(node.status, "run");
    assert!(node.reason.contains("give the key"), "{node:?}");
    // A real run repairs it.
    let out = run_json(&store, &with(cfg, &UNTIL_PLAN));
    assert_eq!(status_of(&out, "plan"), "ran");
    assert!(
        run_json(&store, &with(cfg, &["--until", "plan", "--verify"]))
            .iter()
            .all(|(_, s)| s == "cached")
    );
}

#[test]
fn gc_keeps_what_latest_links_reach_and_latest_holds_only_the_last_run() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let sweep = format!("{}\n[sweep]\n\"plan.seed\" = [0, 1]\n", Config::tiny());
    let swept = write_config(tmp.path(), &sweep);
    let swept = swept.to_str().unwrap();
    run_json(&store, &with(swept, &UNTIL_PLAN));
    assert_eq!(
        entries(&store.join("latest/tiny")),
        ["index", "plan@plan.seed=0", "plan@plan.seed=1", "synth"]
    );
    // The same name without the sweep: the sweep points' links go.
    let single = tmp.path().join("single.toml");
    std::fs::write(&single, Config::tiny().set("plan.steps", 11).to_toml()).unwrap();
    let single = single.to_str().unwrap();
    run_json(&store, &with(single, &UNTIL_PLAN));
    assert_eq!(
        entries(&store.join("latest/tiny")),
        ["index", "plan", "synth"]
    );
    // Another run name last: with --keep-runs 1, only the latest/ link still
    // reaches tiny's plan, and gc must keep it.
    run_json(
        &store,
        &with(
            single,
            &[
                "--until",
                "plan",
                "--set",
                "name=\"other\"",
                "--set",
                "plan.seed=5",
            ],
        ),
    );
    let gc = ok(&store, &["gc", "--keep-runs", "1"]);
    assert!(gc.contains("removed plan"), "{gc}");
    assert!(
        store.join("latest/tiny/plan/plan.parquet").exists(),
        "gc removed what latest/ points to:\n{gc}"
    );
    let ls = ok(&store, &["ls"]);
    // tiny's plan (steps 11) and other's plan (seed 5); the two sweep plans went.
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("plan")).count(),
        2,
        "{ls}"
    );
    let path = ok(&store, &["path", "plan", "--name", "tiny"]);
    assert!(
        Path::new(path.trim()).join("plan.parquet").exists(),
        "{path}"
    );
}

#[test]
fn gc_never_removes_what_a_live_run_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny()
        .train()
        .set("plan.steps", 600)
        .set("train.checkpoint_every", 100)
        .write(tmp.path());
    let mut child = dml()
        .arg("--store")
        .arg(&store)
        .args(["run", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run has committed decode and is training (nothing recorded yet).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while entries(&store.join("objects/decode")).is_empty()
        || entries(&store.join("cache/checkpoints")).is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got to train"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let gc = ok(&store, &["gc", "--keep-runs", "0"]);
    let finished = child.wait_with_output().unwrap();
    assert!(
        gc.contains("and 1 live run(s) reach"),
        "the run was no longer live when gc ran (a slow machine?):\n{gc}"
    );
    assert!(!gc.contains("removed "), "{gc}");
    assert!(
        finished.status.success(),
        "the live run failed after gc:\n{}",
        stderr_of(&finished)
    );
    // Once it has finished, its record and links keep its artifacts; its
    // checkpoints went with the commit of train.
    assert!(entries(&store.join("cache/checkpoints")).is_empty());
    assert!(entries(&store.join("runs/live")).is_empty());
    let gc = ok(&store, &["gc", "--keep-runs", "0"]);
    assert!(gc.contains("freed 0 artifacts"), "{gc}");
}

#[test]
fn gc_and_reruns_collect_what_killed_runs_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = train_config(tmp.path());
    let cfg = cfg.to_str().unwrap();
    // A run killed before plan's commit leaves a temporary directory; the next
    // run removes it on its own.
    let killed = dml()
        .env("DML_FAULT_ABORT_BEFORE_COMMIT", "plan")
        .arg("--store")
        .arg(&store)
        .args(["run", cfg, "--until", "plan"])
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert_eq!(entries(&store.join("tmp")).len(), 1);
    run_json(&store, &with(cfg, &UNTIL_PLAN));
    assert!(entries(&store.join("tmp")).is_empty());
    // A train killed mid-way leaves its checkpoints and a temporary directory.
    let lr = "train.optimizer.learning_rate=0.001";
    let killed = dml()
        .env("DML_FAULT_ABORT_AFTER_STEP", "4")
        .arg("--store")
        .arg(&store)
        .args(["run", cfg, "--until", "train", "--set", lr])
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert_eq!(entries(&store.join("cache/checkpoints")).len(), 1);
    assert_eq!(entries(&store.join("tmp")).len(), 1);
    // Both killed runs left their registration.
    assert_eq!(entries(&store.join("runs/live")).len(), 2);
    // A run-record temporary file of a process killed while saving its record.
    let record_tmp = store.join("runs/.20240101T000000.000Z-1.0.tmp");
    std::fs::write(&record_tmp, "{").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&record_tmp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    // The killed run has a record (written when it started, status `running`, shown as
    // `killed` once its process is gone): its checkpoint is its resume point and is kept.
    let runs = ok(&store, &["runs"]);
    assert!(runs.contains("killed"), "{runs}");
    let dry = ok(&store, &["gc", "--dry-run"]);
    assert!(!dry.contains("would remove checkpoints"), "{dry}");
    for what in [
        "would remove stale temporary",
        "would remove registration of a run that is gone",
        "would remove stale temporary file",
    ] {
        assert!(dry.contains(what), "{what}:\n{dry}");
    }
    ok(&store, &["gc"]);
    assert!(entries(&store.join("tmp")).is_empty());
    assert_eq!(entries(&store.join("cache/checkpoints")).len(), 1);
    assert!(entries(&store.join("runs/live")).is_empty());
    assert!(!record_tmp.exists());
    // Once no kept record reaches it, the checkpoint is abandoned and collected.
    ok(&store, &["gc", "--keep-runs", "0"]);
    assert!(entries(&store.join("cache/checkpoints")).is_empty());
    // Nothing that a recorded run reached was touched.
    assert!(run_json(&store, &with(cfg, &UNTIL_PLAN))
        .iter()
        .all(|(_, s)| s == "cached"));
}

/// A mounted file system, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts with `mount ARGS… DIR`; where that is not permitted (no root, a
/// container without CAP_SYS_ADMIN), the test is skipped with a note, except in
/// CI (`CI` set), where it must run.
fn mount_or_skip(args: &[&str], dir: &Path, test: &str) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount").args(args).arg(dir).output();
    match out {
        Ok(o) if o.status.success() => Some(Mount(dir.to_path_buf())),
        other => {
            let why = match other {
                Ok(o) => stderr_of(&o),
                Err(e) => e.to_string(),
            };
            let msg = format!(
                "{test}: `mount {}` is not permitted here ({}); this test needs root or CAP_SYS_ADMIN",
                args.join(" "),
                why.trim()
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED {msg}");
            None
        }
    }
}

#[test]
fn a_full_disk_during_decode_is_an_error_naming_the_stage_and_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("small-disk");
    let Some(_mount) = mount_or_skip(
        &["-t", "tmpfs", "-o", "size=4m", "tmpfs"],
        &store,
        "a_full_disk_during_decode",
    ) else {
        return;
    };
    let cfg = Config::tiny().write(tmp.path());
    // 48 images of 512×512×3 bytes: 37,748,736 bytes on a 4 MiB disk.
    let out = run_in(
        &store,
        &[
            "run",
            cfg.to_str().unwrap(),
            "--until",
            "decode",
            "--set",
            "image.resize=512",
            "--set",
            "image.crop=448",
        ],
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stage `decode` failed")
            && err.contains("not enough disk space")
            && err.contains("37748736 bytes"),
        "{err}"
    );
    // Nothing half-written is left to fill the disk.
    assert!(
        entries(&store.join("tmp")).is_empty(),
        "{:?}",
        entries(&store.join("tmp"))
    );
    assert!(entries(&store.join("objects/decode")).is_empty());
}

#[test]
fn a_checkpoint_is_published_as_one_unit_and_outlives_the_train_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = train_config(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let straight = tmp.path().join("straight");
    ok(&straight, &["run", cfg, "--until", "train"]);
    let weights = |store: &Path| {
        file_hash(
            &latest_manifest(store, "tiny", "train"),
            "model.safetensors",
        )
    };
    let log_rows = |store: &Path| {
        let key = latest_manifest(store, "tiny", "train")["key"]
            .as_str()
            .unwrap()
            .to_string();
        let show = ok(store, &["show", &key, "--rows", "0"]);
        assert!(show.contains("train_log.parquet (8 rows)"), "{show}");
    };
    let killed = |store: &Path, hook: &str, value: &str| {
        let out = dml()
            .env(hook, value)
            .arg("--store")
            .arg(store)
            .args(["run", cfg, "--until", "train"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{hook}={value} did not stop the run");
    };

    // Killed while publishing the step-6 checkpoint (weights and log written, not
    // yet renamed): the rerun resumes from step 4 with every log row.
    let store = tmp.path().join("in-checkpoint");
    killed(&store, "DML_FAULT_ABORT_IN_CHECKPOINT", "6");
    let out = run_json(&store, &[cfg, "--until", "train"]);
    assert_eq!(status_of(&out, "train"), "ran");
    assert_eq!(
        latest_manifest(&store, "tiny", "train")["notes"]["resumed_from_step"],
        4
    );
    log_rows(&store);
    assert_eq!(weights(&store), weights(&straight));

    // Killed after the train stage returned, before its commit: the checkpoint is
    // still there, so the rerun resumes from step 6, not from 0.
    let store = tmp.path().join("before-commit");
    killed(&store, "DML_FAULT_ABORT_BEFORE_COMMIT", "train");
    run_json(&store, &[cfg, "--until", "train"]);
    assert_eq!(
        latest_manifest(&store, "tiny", "train")["notes"]["resumed_from_step"],
        6
    );
    log_rows(&store);
    assert_eq!(weights(&store), weights(&straight));
    assert!(entries(&store.join("cache/checkpoints")).is_empty());

    // Killed right after the commit: the artifact stands (no retraining) and the
    // checkpoints it made useless are collected by gc.
    let store = tmp.path().join("after-commit");
    killed(&store, "DML_FAULT_ABORT_AFTER_COMMIT", "train");
    assert_eq!(entries(&store.join("cache/checkpoints")).len(), 1);
    let out = run_json(&store, &[cfg, "--until", "train"]);
    assert_eq!(status_of(&out, "train"), "cached");
    let gc = ok(&store, &["gc"]);
    assert!(gc.contains("removed checkpoints of a finished"), "{gc}");
    assert!(entries(&store.join("cache/checkpoints")).is_empty());
}

/// Every floating-point value of every tensor in a safetensors file is finite.
fn safetensors_all_finite(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header.as_object().unwrap().iter().all(|(name, t)| {
        if name == "__metadata__" {
            return true;
        }
        let off = &t["data_offsets"];
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        match t["dtype"].as_str().unwrap() {
            "F32" => data[a..b]
                .chunks_exact(4)
                .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
            "F64" => data[a..b]
                .chunks_exact(8)
                .all(|c| f64::from_le_bytes(c.try_into().unwrap()).is_finite()),
            _ => true,
        }
    })
}

#[test]
fn a_diverging_run_never_keeps_a_non_finite_checkpoint_and_says_what_to_change() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}\n[report]\nuntrained_baseline = false\n",
            Config::tiny().train()
        )
        .replace("checkpoint_every = 2", "checkpoint_every = 1"),
    );
    let cfg = cfg.to_str().unwrap();
    // 1e12: the loss stays finite but the embeddings overflow; 1e20: a NaN loss.
    for lr in ["1e12", "1e20"] {
        let set = format!("train.optimizer.learning_rate={lr}");
        for attempt in 0..2 {
            let e = fails(&store, &["run", cfg, "--until", "embed", "--set", &set]);
            assert!(
                e.contains("lower train.optimizer.learning_rate") && e.contains("diverged"),
                "lr {lr}, attempt {attempt}: {e}"
            );
            assert!(
                entries(&store.join("objects/train")).is_empty(),
                "lr {lr}: {e}"
            );
            assert!(
                entries(&store.join("objects/embed")).is_empty(),
                "lr {lr}: {e}"
            );
            for key in entries(&store.join("cache/checkpoints")) {
                let dir = store.join("cache/checkpoints").join(key);
                for step in entries(&dir) {
                    let file = dir.join(&step).join("checkpoint.safetensors");
                    assert!(
                        safetensors_all_finite(&file),
                        "lr {lr}: {} holds non-finite values",
                        file.display()
                    );
                }
            }
        }
    }
}

#[test]
fn a_read_only_store_can_be_browsed_and_planned_against() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    folder_dataset(&data, 6, 3);
    let store = tmp.path().join("store");
    let a = on_folder(&["--until", "plan"], &data, &FOLDER_PLAN);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    run_json(&store, &a);
    let ro = tmp.path().join("read-only");
    let Some(_bind) = mount_or_skip(&["--bind", store.to_str().unwrap()], &ro, "read_only_store")
    else {
        return;
    };
    let remount = Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(remount.success());
    assert!(
        std::fs::write(ro.join("probe"), b"").is_err(),
        "the bind mount is writable"
    );
    // A dataset file touched without change: the stat cache wants an update it
    // cannot write, and the plan must still come out.
    let img = data.join("class_00/img_0.png");
    let bytes = std::fs::read(&img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&img, &bytes).unwrap();

    let ls = ok(&ro, &["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("plan")).count(),
        1,
        "{ls}"
    );
    let show = ok(&ro, &["show", "plan"]);
    assert!(show.contains("plan.parquet"), "{show}");
    let path = ok(&ro, &["path", "plan"]);
    assert!(path.trim().starts_with(ro.to_str().unwrap()), "{path}");
    let p = plan(&ro, &a);
    assert!(p.iter().all(|n| n.status == "cached"), "{p:?}");
    let e = fails(&ro, &{
        let mut v = vec!["run"];
        v.extend_from_slice(&a);
        v
    });
    assert!(e.contains("not writable"), "{e}");
}

/// Every path under `root` with its size, mtime and kind (symlinks not followed): what
/// a command that only reads must leave exactly as it found it (a file created and
/// removed again still changes its directory's mtime).
fn snapshot(
    root: &Path,
) -> std::collections::BTreeMap<PathBuf, (u64, std::time::SystemTime, bool)> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.insert(p, (m.len(), m.modified().unwrap(), m.is_dir()));
    }
    out
}

#[test]
fn runs_status_gc_dry_run_and_a_report_elsewhere_only_read_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    run_json(&store, &[cfg]);
    // Leftovers for the dry run to name: a build's temporary directory whose key lock
    // file does not exist (looking must not create it) and the rest of an artifact
    // whose removal was killed after its move out of objects/.
    std::fs::create_dir_all(store.join("tmp/plan-0123456789abcdef-0000000000000001")).unwrap();
    let plan_dir = object(&store, "plan");
    let trash = store.join(format!(
        "tmp/trash.plan-{}-0000000000000002",
        plan_dir.file_name().unwrap().to_string_lossy()
    ));
    let copy = Command::new("cp")
        .arg("-a")
        .arg(&plan_dir)
        .arg(&trash)
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::remove_file(trash.join("manifest.json")).unwrap();
    let before = snapshot(&store);

    // A read-only bind mount where mounting is permitted (root or CAP_SYS_ADMIN; CI
    // must), else the store itself: either way, the snapshot proves nothing changed.
    let ro = tmp.path().join("read-only");
    let bind = mount_or_skip(&["--bind", store.to_str().unwrap()], &ro, "read_only_store");
    let target = match &bind {
        Some(_) => {
            let remount = Command::new("mount")
                .args(["-o", "remount,ro,bind"])
                .arg(&ro)
                .status()
                .unwrap();
            assert!(remount.success());
            assert!(
                std::fs::write(ro.join("probe"), b"").is_err(),
                "the bind mount is writable"
            );
            ro.clone()
        }
        None => store.clone(),
    };
    let runs = ok(&target, &["runs"]);
    assert!(runs.contains("tiny") && runs.contains("ok"), "{runs}");
    let status = ok(&target, &["status"]);
    assert!(status.contains("run `tiny`"), "{status}");
    let dry = ok(&target, &["gc", "--dry-run", "--keep-runs", "0"]);
    for what in [
        "would remove stale temporary",
        "would remove the rest of an artifact whose removal was interrupted",
    ] {
        assert!(dry.contains(what), "{what}:\n{dry}");
    }
    let elsewhere = tmp.path().join("report-elsewhere");
    let report = ok(
        &target,
        &["report", "tiny", "--out", elsewhere.to_str().unwrap()],
    );
    assert!(report.contains("R@1"), "{report}");
    assert!(elsewhere.join("report.md").is_file());
    // The half-removed artifact never shows as one.
    let ls = ok(&target, &["ls"]);
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("plan")).count(),
        1,
        "{ls}"
    );
    drop(bind);
    assert!(
        before == snapshot(&store),
        "a read-only command changed the store"
    );

    // The next gc finishes the interrupted removal; the artifact in objects/ stays.
    let gc = ok(&store, &["gc"]);
    assert!(
        gc.contains("removed the rest of an artifact whose removal was interrupted"),
        "{gc}"
    );
    assert!(entries(&store.join("tmp")).is_empty());
    assert!(plan_dir.join("manifest.json").is_file());
}

#[test]
fn commands_that_read_a_store_refuse_a_path_without_one_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("dml-stroe");
    for args in [
        &["runs"][..],
        &["ls"],
        &["status"],
        &["show", "train"],
        &["path", "train"],
        &["diff", "a", "b"],
        &["report", "tiny"],
        &["gc", "--dry-run"],
        &["gc"],
        &["tensorboard", "tb"],
    ] {
        let e = fails(&typo, args);
        assert!(
            e.contains("no artifact store at") && e.contains(typo.to_str().unwrap()),
            "{args:?}: {e}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // Nor the default `dml-store` in the current directory.
    for args in [&["runs"][..], &["gc", "--dry-run"], &["ls"]] {
        let out = dml().current_dir(tmp.path()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no artifact store at `dml-store`"),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert!(!tmp.path().join("dml-store").exists(), "{args:?}");
    }
}
