//! Helpers shared by the end-to-end tests: run the real `dml` binary.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn dml() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dml"));
    c.env_remove("DML_STORE").env_remove("RUST_LOG");
    c
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

/// `(id, status, reason, key)` of each node of `dml run --dry-run --json`.
pub fn plan(store: &Path, args: &[&str]) -> Vec<(String, String, String, String)> {
    let mut all = vec!["run", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let out = ok(store, &all);
    let v: serde_json::Value = serde_json::from_str(&out).expect("dry-run JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
                n["reason"].as_str().unwrap().to_string(),
                n["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `(id, status)` of each node after `dml run --json`.
pub fn run_json(store: &Path, args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    let out = ok(store, &all);
    let v: serde_json::Value = serde_json::from_str(&out).expect("run JSON");
    v.as_array()
        .expect("array")
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

/// A small synthetic config, quick to build.
pub const TINY: &str = r#"
name = "tiny"
[dataset]
kind = "synthetic"
[synthetic]
classes = 12
images_per_class = 4
image_size = 32
[plan]
p = 4
k = 2
steps = 10
"#;

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
