//! The Slurm executor against a real one-node cluster that the test starts
//! (`scripts/slurm-local.sh start`) and stops: the same artifacts as the local
//! executor, every stage built once by its own job, a rerun submits nothing, a
//! second submission reuses the queued jobs, and a job killed with `scancel`
//! mid-train is reported and resumes from its checkpoint.
//!
//! Without Slurm installed the test says so and passes, except under CI
//! (`CI` set), where it fails: CI must really run it.
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A one-node cluster, stopped (exactly the daemons it started) on drop.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `None` (skip) when Slurm cannot run here, unless under CI.
    fn start() -> Option<Cluster> {
        let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "squeue"]
            .into_iter()
            .filter(|t| !have(t))
            .collect();
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let why = if !missing.is_empty() {
            Some(format!(
                "Slurm is not installed ({} missing; `scripts/slurm-local.sh install` installs it)",
                missing.join(", ")
            ))
        } else if !is_root {
            Some("the local test cluster runs its daemons as root, and this is not root".into())
        } else {
            None
        };
        if let Some(why) = why {
            if std::env::var_os("CI").is_some() {
                panic!("{why}: CI must run the Slurm executor test");
            }
            eprintln!("SKIPPED the Slurm executor test: {why}");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("slurm-local.sh runs");
        assert!(
            out.status.success(),
            "starting the local Slurm cluster failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Cluster { dir })
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf());
        c
    }

    fn controller_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slurmctld.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Runs `dml --store STORE ARGS` against the cluster, killed after `limit`.
fn dml_on(cluster: &Cluster, store: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = dml();
    c.env("SLURM_CONF", cluster.conf())
        .arg("--store")
        .arg(store)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("dml runs");
    let limit = Duration::from_secs(150);
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waiting for dml").is_some() {
            return child.wait_with_output().expect("dml output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("dml output");
            panic!(
                "dml {args:?} ran over {limit:?}:\n{}\n{}\ncontroller log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.controller_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ok_on(cluster: &Cluster, store: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = dml_on(cluster, store, args, env);
    assert!(
        out.status.success(),
        "dml {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        .as_array()
        .expect("an array")
        .clone()
}

fn by_id<'a>(nodes: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    nodes
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {nodes:?}"))
}

/// Polls `cond` every 200 ms for at most `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The synthetic sweep preset (2 losses × 2 seeds) at tiny settings: the preset names the
/// run, the dataset, the network and the losses.
fn sweep() -> Config {
    let mut c = Config::tiny().train().set("preset", "synthetic/sweep");
    for decided in [
        "name",
        "dataset.kind",
        "train.model.backbone",
        "train.model.head",
        "train.loss.name",
    ] {
        c = c.unset(decided);
    }
    c
}

const RUN: &str = "synthetic-sweep";

#[test]
fn a_sweep_runs_as_slurm_jobs() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sweep().write(tmp.path());
    let cfg = cfg.to_str().unwrap();

    // The reference: the local executor.
    let local = tmp.path().join("local");
    ok(&local, &["run", cfg]);
    let local_keys: Vec<(String, String)> = plan(&local, &[cfg])
        .into_iter()
        .map(|n| (n.id, n.key))
        .collect();

    // Through Slurm, following the jobs.
    let shared = tmp.path().join("shared");
    let nodes = json(&ok_on(
        &cluster,
        &shared,
        &["run", cfg, "--executor", "slurm", "--wait", "--json"],
        &[],
    ));
    assert_eq!(nodes.len(), local_keys.len(), "{nodes:?}");
    let mut jobs: Vec<&str> = Vec::new();
    for n in &nodes {
        assert_eq!(n["status"], "ran", "{n}");
        jobs.push(
            n["job_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no job id: {n}")),
        );
    }
    jobs.sort_unstable();
    jobs.dedup();
    assert_eq!(jobs.len(), nodes.len(), "one job per stage");

    // Every stage built once, by its own job: one object per node, each
    // manifest naming the executor and the job, and the same keys as locally.
    let objects: usize = std::fs::read_dir(shared.join("objects"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(objects, nodes.len());
    let logs = std::fs::read_dir(shared.join("slurm/logs"))
        .unwrap()
        .count();
    assert_eq!(
        logs,
        nodes.len(),
        "one job log per stage: nothing ran twice"
    );
    for n in &nodes {
        let dir = shared
            .join("objects")
            .join(n["stage"].as_str().unwrap())
            .join(n["key"].as_str().unwrap());
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["provenance"]["executor"], "slurm", "{}", n["id"]);
        assert_eq!(m["provenance"]["job_id"], n["job_id"], "{}", n["id"]);
    }
    let shared_plan = plan(&shared, &[cfg]);
    assert!(shared_plan.iter().all(|n| n.status == "cached"));
    let shared_keys: Vec<(String, String)> =
        shared_plan.into_iter().map(|n| (n.id, n.key)).collect();
    assert_eq!(local_keys, shared_keys, "provenance never enters a key");

    // Byte-identical models and embeddings.
    let mut compared = 0;
    for entry in std::fs::read_dir(local.join("latest").join(RUN)).unwrap() {
        let node = entry.unwrap().file_name().to_string_lossy().to_string();
        let file = if node.starts_with("train") {
            "model.safetensors"
        } else if node.starts_with("embed") {
            "embeddings.arrow"
        } else {
            continue;
        };
        assert_eq!(
            file_hash(&latest_manifest(&local, RUN, &node), file),
            file_hash(&latest_manifest(&shared, RUN, &node), file),
            "{node}"
        );
        compared += 1;
    }
    let trained = local_keys
        .iter()
        .filter(|(id, _)| id.starts_with("train") || id.starts_with("embed"))
        .count();
    assert_eq!(compared, trained);

    // A rerun submits nothing.
    let out = dml_on(&cluster, &shared, &["run", cfg, "--executor", "slurm"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "no job ids"
    );
    let status = json(&ok_on(&cluster, &shared, &["status", "--json"], &[]));
    assert!(status.iter().all(|n| n["status"] == "cached"), "{status:?}");

    // A job killed mid-train: one sweep point, 40 slowed-down steps.
    let kill_args = [
        "run",
        cfg,
        "--executor",
        "slurm",
        "--until",
        "embed",
        "--set",
        "plan.steps=40",
        "--set",
        "sweep.train.seed=[0]",
        "--set",
        r#"sweep.train.loss.name=["hard_triplet"]"#,
    ];
    let slow = [("DML_FAULT_STEP_DELAY_MS", "150")];
    // Two submissions at once: one submits, the other finds the claims.
    let (one, two) = std::thread::scope(|s| {
        let a = s.spawn(|| ok_on(&cluster, &shared, &kill_args, &slow));
        let b = s.spawn(|| ok_on(&cluster, &shared, &kill_args, &slow));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut job_of_node = std::collections::BTreeMap::new();
    for line in one.lines().chain(two.lines()) {
        let (job, node) = line.split_once('\t').unwrap_or_else(|| panic!("{line}"));
        let previous = job_of_node.insert(node, job);
        assert!(
            previous.is_none_or(|p| p == job),
            "`{node}` submitted twice:\n{one}\n{two}"
        );
    }
    let first = if one.lines().count() >= two.lines().count() {
        one.clone()
    } else {
        two.clone()
    };
    let submitted: Vec<(String, String)> = first
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(j, n)| (n.to_string(), j.to_string()))
        .collect();
    let ids: Vec<&str> = submitted.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(ids, ["plan", "train", "embed"], "{first}");
    let train_job = submitted[1].1.clone();

    // Submitting again while the jobs are queued or running submits nothing.
    let again = dml_on(&cluster, &shared, &kill_args, &[]);
    assert!(again.status.success());
    // (plan may have finished meanwhile and be cached now; train is still running.)
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(
        again_out.lines().all(|l| first.lines().any(|f| f == l))
            && again_out.contains(&format!("{train_job}\ttrain")),
        "the same jobs, none new:\n{first}\nthen:\n{again_out}"
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("claimed") && !stderr.contains("submit  "),
        "{stderr}"
    );

    let status_of_run = || json(&ok_on(&cluster, &shared, &["status", "--json"], &[]));
    let train_key = by_id(&status_of_run(), "train")["key"]
        .as_str()
        .unwrap()
        .to_string();
    // A checkpoint is a `step-N/` directory, renamed into place when complete.
    let checkpoints = shared.join("cache/checkpoints").join(&train_key);
    wait_for(90, "the train job's first checkpoint", || {
        std::fs::read_dir(&checkpoints).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    });
    assert_eq!(by_id(&status_of_run(), "train")["status"], "running");
    let out = cluster
        .command("scancel")
        .arg(&train_job)
        .output()
        .expect("scancel runs");
    assert!(out.status.success(), "{out:?}");

    let mut last = Vec::new();
    wait_for(60, "train and embed reported cancelled", || {
        last = status_of_run();
        by_id(&last, "train")["status"] == "cancelled"
            && by_id(&last, "embed")["status"] == "cancelled"
    });
    let train = by_id(&last, "train");
    assert!(
        train["log_tail"]
            .as_str()
            .unwrap_or("")
            .contains("CANCELLED"),
        "{train}"
    );
    assert!(
        by_id(&last, "embed")["detail"]
            .as_str()
            .unwrap()
            .contains("DependencyNeverSatisfied"),
        "{last:?}"
    );
    let plan_status = &by_id(&last, "plan")["status"];
    assert!(plan_status == "done" || plan_status == "cached", "{last:?}");
    let text = ok_on(&cluster, &shared, &["status"], &[]);
    assert!(
        text.contains("cancelled") && text.contains(&train_job),
        "{text}"
    );

    // The rerun resubmits train and embed; train resumes from its checkpoint and
    // ends with the weights of an uninterrupted local run.
    let mut rerun: Vec<&str> = kill_args.to_vec();
    rerun.extend(["--wait", "--json"]);
    let nodes = json(&ok_on(&cluster, &shared, &rerun, &[]));
    assert_eq!(by_id(&nodes, "plan")["status"], "cached");
    let train = by_id(&nodes, "train");
    assert_eq!(train["status"], "ran");
    assert_ne!(train["job_id"], train_job.as_str());
    let m = latest_manifest(&shared, RUN, "train");
    let resumed = m["notes"]["resumed_from_step"].as_u64().unwrap_or(0);
    assert!(resumed >= 2, "train did not resume: {}", m["notes"]);
    assert_eq!(m["provenance"]["job_id"], train["job_id"]);
    ok(
        &local,
        &kill_args[..2]
            .iter()
            .chain(&kill_args[4..])
            .copied()
            .collect::<Vec<_>>(),
    );
    for (node, file) in [
        ("train", "model.safetensors"),
        ("embed", "embeddings.arrow"),
    ] {
        assert_eq!(
            file_hash(&latest_manifest(&local, RUN, node), file),
            file_hash(&latest_manifest(&shared, RUN, node), file),
            "{node} after a resume"
        );
    }

    // `dml cancel` cancels the queued and running jobs of a run, and releases their claims.
    let cancel_args: Vec<&str> = kill_args
        .iter()
        .map(|a| match *a {
            "plan.steps=40" => "plan.steps=12",
            "embed" => "train",
            a => a,
        })
        .collect();
    let submitted = ok_on(
        &cluster,
        &shared,
        &cancel_args,
        &[("DML_FAULT_STEP_DELAY_MS", "500")],
    );
    assert!(submitted.contains("\ttrain"), "{submitted}");
    let out = ok_on(&cluster, &shared, &["cancel", "--name", RUN], &[]);
    assert!(
        out.contains("cancelled job") && out.contains("\ttrain"),
        "{out}"
    );
    wait_for(30, "train reported cancelled", || {
        by_id(&status_of_run(), "train")["status"] == "cancelled"
    });

    let claims: Vec<_> = std::fs::read_dir(shared.join("claims"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| e.path())
        .collect();
    assert!(claims.is_empty(), "claims left behind: {claims:?}");
}

/// What runs without Slurm: `exec-stage` builds exactly one node from a request
/// and records the job in its manifest; it refuses a key that does not match
/// and a node whose inputs are not in the store; without `sbatch` on PATH,
/// `--executor slurm` says what it needs.
#[test]
fn exec_stage_builds_one_node_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let keys = plan(&store, &[cfg]);
    let with_executor = plan(
        &store,
        &[
            cfg,
            "--set",
            "executor.kind=slurm",
            "--set",
            "executor.partition=gpu",
        ],
    );
    assert_eq!(keys, with_executor, "[executor] is in no key");
    let key = |id: &str| keys.iter().find(|k| k.id == id).unwrap().key.clone();
    let request = tmp.path().join("request.json");
    let config = serde_json::json!({
        "name": "tiny",
        "dataset": {"kind": "synthetic"},
        "synthetic": {"classes": 12, "images_per_class": 4, "image_size": 32},
        "plan": {"p": 4, "k": 2, "steps": 10},
    });
    std::fs::write(
        &request,
        serde_json::json!({"name": "tiny", "config": config, "submitted": "now"}).to_string(),
    )
    .unwrap();
    let exec = |node: &str, key: &str| {
        dml()
            .env("SLURM_JOB_ID", "4242")
            .arg("--store")
            .arg(&store)
            .args(["exec-stage", "--request", request.to_str().unwrap()])
            .args(["--node", node, "--key", key])
            .output()
            .unwrap()
    };
    let out = exec("index", &key("index"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("input `synth`") && err.contains("is not in the store"),
        "{err}"
    );
    let out = exec("synth", &"0".repeat(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("resolves here to key"), "{err}");
    assert!(
        !store.join("objects").exists()
            || std::fs::read_dir(store.join("objects")).unwrap().count() == 0
    );

    let out = exec("synth", &key("synth"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<String> = std::fs::read_dir(store.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(objects, ["synth"], "exactly the one node");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            store
                .join("objects/synth")
                .join(key("synth"))
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["provenance"]["executor"], "slurm");
    assert_eq!(manifest["provenance"]["job_id"], "4242");
    let after = plan(&store, &[cfg]);
    assert_eq!(
        after.iter().find(|n| n.id == "synth").unwrap().status,
        "cached"
    );
    assert_eq!(
        after.iter().find(|n| n.id == "index").unwrap().status,
        "run"
    );

    let out = dml()
        .env("PATH", "/nonexistent")
        .arg("--store")
        .arg(&store)
        .args(["run", cfg, "--executor", "slurm"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs Slurm's client commands"), "{err}");
    let claims = std::fs::read_dir(store.join("claims"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert_eq!(claims, 0, "a failed submission claims nothing");
}
