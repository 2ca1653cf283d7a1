//! Helpers shared by the end-to-end tests: run the real `dml` binary.
#![allow(dead_code)]
mod config;
pub use config::{on_folder, Config, FOLDER_PLAN};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn dml() -> Command {
    static FRESH: std::sync::Once = std::sync::Once::new();
    FRESH.call_once(check_worker_is_fresh);
    let mut c = Command::new(env!("CARGO_BIN_EXE_dml"));
    c.env_remove("DML_STORE")
        .env_remove("DML_REMOTE")
        .env_remove("RUST_LOG");
    c
}

/// The training worker `dml` starts (`dml-torch` beside `dml`: a binary of the dml-torch
/// package, which `cargo build` and `cargo test --workspace` build with `dml`).
pub fn worker() -> PathBuf {
    let w = Path::new(env!("CARGO_BIN_EXE_dml")).with_file_name("dml-torch");
    assert!(
        w.is_file(),
        "the training worker {} is missing: build it with `cargo build --release` (or test with `--workspace`)",
        w.display()
    );
    w
}

/// The source folders the worker is built from.
const WORKER_SOURCES: [&str; 6] = [
    "torch/src",
    "jobspec/src",
    "pipeline/src",
    "artifacts/src",
    "datasets/src",
    "metrics/src",
];

/// Refuses a worker older than a source file it is built from: `cargo test --test cli`
/// builds `dml` but not `dml-torch` (another package's binary), so after a change the tests
/// would otherwise run the old worker. `cargo build`, `cargo test --workspace` and
/// `scripts/test.sh` build both.
fn check_worker_is_fresh() {
    fn newest(dir: &Path, best: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                newest(&p, best);
            } else if p.extension().is_some_and(|x| x == "rs") {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    if best.as_ref().is_none_or(|(b, _)| t > *b) {
                        *best = Some((t, p));
                    }
                }
            }
        }
    }
    let w = worker();
    let built = std::fs::metadata(&w).and_then(|m| m.modified()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut best = None;
    for dir in WORKER_SOURCES {
        newest(&root.join(dir), &mut best);
    }
    if let Some((t, p)) = best {
        assert!(
            t <= built,
            "the training worker {} is older than {}: `cargo test --test cli` does not rebuild it \
             (it is a binary of the dml-torch package); run `cargo build --release` first, or \
             test with `--workspace`",
            w.display(),
            p.display()
        );
    }
}

/// Runs `dml --store STORE ARGS…`, returning the output (not asserting success).
pub fn run_in(store: &Path, args: &[&str]) -> Output {
    dml()
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("dml runs")
}

/// Runs and asserts success, returning stdout.
pub fn ok(store: &Path, args: &[&str]) -> String {
    let out = run_in(store, args);
    assert!(
        out.status.success(),
        "dml {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and asserts failure, returning stderr.
pub fn fails(store: &Path, args: &[&str]) -> String {
    let out = run_in(store, args);
    assert!(
        !out.status.success(),
        "dml {args:?} should have failed:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One node of `dml run --dry-run --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The node id (`train[train.loss.name=npairs]`).
    pub id: String,
    /// `cached`, `run` or `remote`.
    pub status: String,
    /// Why, as `dml run` says it.
    pub reason: String,
    /// The artifact key.
    pub key: String,
}

/// The nodes of `dml run --dry-run --json ARGS…`.
pub fn plan(store: &Path, args: &[&str]) -> Vec<Planned> {
    let mut all = vec!["run", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let out = ok(store, &all);
    let v: serde_json::Value = serde_json::from_str(&out).expect("dry-run JSON");
    let text = |n: &serde_json::Value, k: &str| n[k].as_str().unwrap().to_string();
    v.as_array()
        .expect("array")
        .iter()
        .map(|n| Planned {
            id: text(n, "id"),
            status: text(n, "status"),
            reason: text(n, "reason"),
            key: text(n, "key"),
        })
        .collect()
}

pub fn run_outcome(store: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    let out = ok(store, &all);
    serde_json::from_str(&out).expect("run JSON")
}

/// `(id, status)` of each node after `dml run --json`.
pub fn run_json(store: &Path, args: &[&str]) -> Vec<(String, String)> {
    let v = run_outcome(store, args);
    v["nodes"]
        .as_array()
        .expect("an array of nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn status_of<'a>(nodes: &'a [(String, String)], id: &str) -> &'a str {
    &nodes
        .iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no node {id} in {nodes:?}"))
        .1
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes a small folder-per-class dataset of real PNG files.
pub fn folder_dataset(root: &Path, classes: usize, per_class: usize) {
    for c in 0..classes {
        let dir = root.join(format!("class_{c:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(16, 12, |x, y| {
                image::Rgb([(x * 10) as u8, (y * 20) as u8, (c * 20 + i) as u8])
            });
            img.save(dir.join(format!("img_{i}.png"))).unwrap();
        }
    }
}

/// The manifest of the artifact `latest/<run>/<node>` points to.
pub fn latest_manifest(store: &Path, run: &str, node: &str) -> serde_json::Value {
    let path = store
        .join("latest")
        .join(run)
        .join(node)
        .join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// blake3 of an artifact file, from its manifest.
pub fn file_hash(manifest: &serde_json::Value, file: &str) -> String {
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == file)
        .unwrap_or_else(|| panic!("no {file} in {manifest}"))["blake3"]
        .as_str()
        .unwrap()
        .to_string()
}
