//! `dml eval` on files written by pyarrow, against a brute-force numpy scorer.
use crate::common::*;
use std::process::Command;

/// Writes embeddings with pyarrow and prints brute-force metrics as JSON.
const MAKE: &str = r#"
import json, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, pyarrow.ipc as ipc
out, fmt, protocol = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(3)
n, d, classes = 150, 8, 12
labels = rng.integers(0, classes, n)
centers = rng.normal(size=(classes, d))
x = (centers[labels] + 0.9 * rng.normal(size=(n, d))).astype(np.float32)
x[5] = x[4]  # a duplicate embedding
split = np.where(np.arange(n) % 3 == 0, "query", "gallery")
names = np.array([f"item_{l:03d}" for l in labels])
table = pa.table({
    "vec": pa.array(list(x), type=pa.list_(pa.float32())),
    "item": pa.array(names),
    "split": pa.array(split),
})
if fmt == "parquet":
    pq.write_table(table, out)
else:
    with ipc.new_file(out, table.schema) as w:
        w.write_table(table)
ks = [1, 2, 4, 8]
if protocol == "query-gallery":
    qi, gi = np.where(split == "query")[0], np.where(split == "gallery")[0]
else:
    qi = gi = np.arange(n)
res = {f"recall@{k}": 0.0 for k in ks}
ap, rp, counted = 0.0, 0.0, 0
for q in qi:
    dist = ((x[gi].astype(np.float64) - x[q].astype(np.float64)) ** 2).sum(1)
    order = sorted(range(len(gi)), key=lambda j: (dist[j], gi[j]))
    order = [gi[j] for j in order if not (protocol != "query-gallery" and gi[j] == q)]
    rel = [labels[g] == labels[q] for g in order]
    r = sum(rel)
    if r == 0:
        continue  # no positive: left out of every metric (and counted)
    for k in ks:
        res[f"recall@{k}"] += float(any(rel[:k]))
    counted += 1
    hits, s = 0, 0.0
    for i in range(r):
        if rel[i]:
            hits += 1
            s += hits / (i + 1)
    ap += s / r
    rp += sum(rel[:r]) / r
for k in ks:
    res[f"recall@{k}"] /= counted
res["map@r"] = ap / counted
res["r_precision"] = rp / counted
res["queries"] = int(len(qi))
res["gallery"] = int(len(gi))
print(json.dumps(res))
"#;

fn python() -> Command {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import pyarrow, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "this test needs pyarrow and numpy in `{py}`: run scripts/python-extras.sh (scripts/test.sh does)");
    Command::new(py)
}

#[test]
fn eval_matches_brute_force_on_pyarrow_files() {
    let tmp = tempfile::tempdir().unwrap();
    for (fmt, protocol) in [("parquet", "leave-one-out"), ("arrow", "query-gallery")] {
        let file = tmp.path().join(format!("e.{fmt}"));
        let out = python()
            .args(["-c", MAKE, file.to_str().unwrap(), fmt, protocol])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = ok(
            tmp.path(),
            &[
                "eval",
                file.to_str().unwrap(),
                "--embedding-column",
                "vec",
                "--labels-column",
                "item",
                "--protocol",
                protocol,
                "--json",
            ],
        );
        let got: serde_json::Value = serde_json::from_str(&got).unwrap();
        for (k, v) in expected.as_object().unwrap() {
            let (e, g) = (v.as_f64().unwrap(), got[k].as_f64().unwrap_or(f64::NAN));
            assert!(
                (e - g).abs() < 1e-9,
                "{fmt} {protocol} {k}: expected {e}, got {g}"
            );
        }
        let nmi = got["nmi"].as_f64().unwrap();
        assert!(nmi > 0.2 && nmi <= 1.0, "{nmi}");
    }
}

#[test]
fn eval_bad_input_is_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("e.parquet");
    let out = python()
        .args([
            "-c",
            MAKE,
            file.to_str().unwrap(),
            "parquet",
            "leave-one-out",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let f = file.to_str().unwrap();
    let e = fails(tmp.path(), &["eval", f]);
    assert!(
        e.contains("no column `embedding`") && e.contains("vec, item, split"),
        "{e}"
    );
    assert!(e.contains("--embedding-column NAME"), "{e}");
    let e = fails(
        tmp.path(),
        &[
            "eval",
            f,
            "--embedding-column",
            "vec",
            "--labels-column",
            "item",
            "--k",
            "1,500",
        ],
    );
    assert!(e.contains("K = 500 is larger than the gallery"), "{e}");
    let e = fails(
        tmp.path(),
        &[
            "eval",
            f,
            "--embedding-column",
            "vec",
            "--labels-column",
            "vec",
        ],
    );
    assert!(e.contains("label column `vec`"), "{e}");
    let empty = tmp.path().join("empty.arrow");
    std::fs::write(&empty, b"").unwrap();
    let e = fails(tmp.path(), &["eval", empty.to_str().unwrap()]);
    assert!(e.contains("empty"), "{e}");
    // Unequal lengths and NaN.
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0], [1.0], [0.0, 1.0]]), "class_id": pa.array([1, 2, 1])}), sys.argv[1])
pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0], [1.0, float("nan")], [0.0, 1.0]]), "class_id": pa.array([1, 2, 1])}), sys.argv[2])
"#;
    let (a, b) = (
        tmp.path().join("ragged.parquet"),
        tmp.path().join("nan.parquet"),
    );
    assert!(python()
        .args(["-c", script, a.to_str().unwrap(), b.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let e = fails(tmp.path(), &["eval", a.to_str().unwrap()]);
    assert!(e.contains("row 1 has 1 values"), "{e}");
    let e = fails(tmp.path(), &["eval", b.to_str().unwrap()]);
    assert!(e.contains("NaN") && e.contains("row 1"), "{e}");
    // Metrics the data cannot define are said, and with none defined the exit is non-zero.
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
rows = [[float(i), float(i % 3)] for i in range(6)]
pq.write_table(pa.table({"embedding": pa.array(rows), "class_id": pa.array([0, 1, 2, 3, 4, 5])}), sys.argv[1])
pq.write_table(pa.table({"embedding": pa.array(rows), "class_id": pa.array([7] * 6)}), sys.argv[2])
"#;
    let (unique, single) = (
        tmp.path().join("unique.parquet"),
        tmp.path().join("single.parquet"),
    );
    assert!(python()
        .args([
            "-c",
            script,
            unique.to_str().unwrap(),
            single.to_str().unwrap()
        ])
        .status()
        .unwrap()
        .success());
    let unique = unique.to_str().unwrap();
    let e = fails(
        tmp.path(),
        &["eval", unique, "--metrics", "recall", "--k", "1,2"],
    );
    assert!(e.contains("Recall@K and MAP@R are undefined"), "{e}");
    assert!(e.contains("no metric asked for is defined"), "{e}");
    // NMI is defined there (6 classes), so the run succeeds but warns about recall.
    let out = run_in(tmp.path(), &["eval", unique, "--k", "1,2"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("protocol") && text.contains("distance "),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("undefined"));
    let e = fails(
        tmp.path(),
        &["eval", single.to_str().unwrap(), "--metrics", "nmi"],
    );
    assert!(
        e.contains("NMI is undefined") && e.contains("1 class"),
        "{e}"
    );
}
