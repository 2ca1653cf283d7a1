//! What a new user touches, through the real `dml` binary: files from pandas,
//! polars and pyarrow; the evaluation rules; switching the loss; errors before
//! anything expensive; logs without a terminal; Ctrl-C; explanations; help.
use crate::common::*;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

fn python() -> Command {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import pyarrow, polars, pandas, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "this test needs pyarrow, polars, pandas and numpy in `{py}`: run scripts/python-extras.sh (scripts/test.sh does)");
    Command::new(py)
}

fn py_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = python().arg("-c").arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The same embeddings written every way pandas, polars and pyarrow write them,
/// plus brute-force Recall@1 under both rules for queries without positives.
const WRITE_ALL: &str = r#"
import json, sys, os
import numpy as np, pandas as pd, polars as pl
import pyarrow as pa, pyarrow.parquet as pq, pyarrow.ipc as ipc
out = sys.argv[1]
rng = np.random.default_rng(7)
n, d = 90, 6
labels = rng.integers(0, 9, n)
labels[-1] = 99  # a class of one: under leave-one-out it has no positive
x = (rng.normal(size=(9, d))[np.minimum(labels, 8)] + 0.8 * rng.normal(size=(n, d))).astype(np.float32)
names = [f"item_{l}" for l in labels]
files = []
base = pa.table({"emb": pa.array(list(x), type=pa.list_(pa.float32())), "label": pa.array(names)})
for codec in ["snappy", "zstd", "lz4", "gzip", "brotli", "none"]:
    p = os.path.join(out, f"pa_{codec}.parquet"); pq.write_table(base, p, compression=codec); files.append(p)
for codec in ["zstd", "lz4"]:
    p = os.path.join(out, f"pa_{codec}.arrow")
    with ipc.new_file(p, base.schema, options=ipc.IpcWriteOptions(compression=codec)) as w:
        w.write_table(base)
    files.append(p)
# large types and a dictionary (categorical) label column
big = pa.table({"emb": pa.array(list(x), type=pa.large_list(pa.float64())),
                "label": pa.array(names, type=pa.large_string()).dictionary_encode()})
p = os.path.join(out, "pa_large_dict.parquet"); pq.write_table(big, p); files.append(p)
# pandas: a categorical column, written by pandas' default engine (pyarrow, snappy)
df = pd.DataFrame({"emb": list(x), "label": pd.Categorical(names)})
p = os.path.join(out, "pandas.parquet"); df.to_parquet(p); files.append(p)
# polars: its defaults (zstd, string views in the Arrow schema), a Categorical label
pf = pl.DataFrame({"emb": [list(map(float, r)) for r in x], "label": names}).with_columns(pl.col("label").cast(pl.Categorical))
p = os.path.join(out, "polars.parquet"); pf.write_parquet(p); files.append(p)
p = os.path.join(out, "polars.arrow"); pf.write_ipc(p); files.append(p)
p = os.path.join(out, "polars_zstd.arrow"); pf.write_ipc(p, compression="zstd"); files.append(p)
# brute force Recall@1, leave-one-out
x64 = x.astype(np.float64)
hits, with_pos = 0, 0
for q in range(n):
    dist = ((x64 - x64[q]) ** 2).sum(1); dist[q] = np.inf
    j = min(range(n), key=lambda g: (dist[g], g))
    has = (labels == labels[q]).sum() > 1
    with_pos += has
    hits += labels[j] == labels[q]
print(json.dumps({"files": files, "exclude": hits / with_pos, "count_as_miss": hits / n, "without": int(n - with_pos)}))
"#;

fn eval_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&ok(dir, &all)).unwrap()
}

#[test]
fn eval_reads_what_pandas_polars_and_pyarrow_write_and_leaves_out_queries_without_positives() {
    let tmp = tempfile::tempdir().unwrap();
    let made = py_json(WRITE_ALL, &[tmp.path().to_str().unwrap()]);
    let (exclude, miss) = (
        made["exclude"].as_f64().unwrap(),
        made["count_as_miss"].as_f64().unwrap(),
    );
    assert!(exclude > miss, "the lone query must make a difference");
    for file in made["files"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        let cols = [
            file,
            "--embedding-column",
            "emb",
            "--labels-column",
            "label",
            "--k",
            "1",
        ];
        let got = eval_json(tmp.path(), &cols);
        let r1 = got["recall@1"].as_f64().unwrap();
        assert!((r1 - exclude).abs() < 1e-12, "{file}: {r1} vs {exclude}");
        assert_eq!(got["queries_without_positives"], made["without"], "{file}");
        let mut miss_args = cols.to_vec();
        miss_args.extend(["--queries-without-positives", "count-as-miss"]);
        let got = eval_json(tmp.path(), &miss_args);
        let r1 = got["recall@1"].as_f64().unwrap();
        assert!((r1 - miss).abs() < 1e-12, "{file}: {r1} vs {miss}");
    }
}

#[test]
fn eval_cosine_applies_to_nmi_and_bad_files_are_named_once() {
    let tmp = tempfile::tempdir().unwrap();
    // Rows at very different scales: cosine k-means must see only directions, so its
    // NMI equals Euclidean k-means on the normalised rows.
    let script = r#"
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
rng = np.random.default_rng(1)
labels = np.repeat(np.arange(6), 12)
dirs = rng.normal(size=(6, 5))[labels] + 0.3 * rng.normal(size=(72, 5))
x = dirs * rng.uniform(0.1, 30.0, size=(72, 1))
xn = x / np.linalg.norm(x, axis=1, keepdims=True)
for name, v in [("raw", x), ("unit", xn)]:
    pq.write_table(pa.table({"embedding": pa.array(list(v.astype(np.float32)), type=pa.list_(pa.float32())), "class_id": labels}), sys.argv[1] + f"/{name}.parquet")
pq.write_table(pa.table({"embedding": pa.array([[1.0, 2.0]], type=pa.list_(pa.float32())), "class_id": [3]}), sys.argv[1] + "/one.parquet")
print("{}")
"#;
    py_json(script, &[tmp.path().to_str().unwrap()]);
    let f = |n: &str| tmp.path().join(n).display().to_string();
    let (raw, unit) = (f("raw.parquet"), f("unit.parquet"));
    let cos = eval_json(
        tmp.path(),
        &[&raw, "--metrics", "nmi", "--distance", "cosine"],
    );
    let euc_unit = eval_json(tmp.path(), &[&unit, "--metrics", "nmi"]);
    assert_eq!(cos["nmi"], euc_unit["nmi"], "{cos} vs {euc_unit}");
    // One row: no gallery to speak of, and no "Ks up to 0".
    let e = fails(tmp.path(), &["eval", &f("one.parquet")]);
    assert!(
        e.contains("at least two rows") && !e.contains("up to 0"),
        "{e}"
    );
    // A missing file: the OS's reason appears once.
    let e = fails(tmp.path(), &["eval", &f("absent.parquet")]);
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
}

#[test]
fn the_loss_switches_from_the_command_line_and_k_is_checked_first() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    // From the default preset (semi-hard, margin 0.2), npairs takes no margin.
    ok(
        &store,
        &[
            "run",
            "--dry-run",
            "--set",
            "train.loss.name=npairs",
            "--set",
            "plan.k=2",
        ],
    );
    let p = plan(&store, &[cfg, "--set", "train.loss=npairs"]);
    assert!(p.iter().any(|n| n.id == "train"));
    // Contrastive needs K = 4: said before anything runs, with the exact --set.
    let e = fails(&store, &["run", cfg, "--set", "train.loss=contrastive"]);
    assert!(e.contains("--set plan.k=4"), "{e}");
    assert!(!e.contains("rerun"), "{e}");
    assert!(!store.join("objects").exists() || dir_is_empty(&store.join("objects")));
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn what_can_be_known_is_checked_before_anything_expensive() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    for (set, needle) in [
        ("plan.steps=0", "plan.steps = 0"),
        ("plan.k=1", "--set plan.k=2"),
        (
            "train.model.pretrained=/nonexistent/inception.safetensors",
            "/nonexistent/inception.safetensors",
        ),
    ] {
        let e = fails(&store, &["run", cfg, "--set", set]);
        assert!(e.contains(needle), "{set}: {e}");
        assert!(!e.contains("rerun"), "{set}: {e}");
        assert!(!store.join("objects").exists() || dir_is_empty(&store.join("objects")));
    }
    // A wrong type in the file: named with the file and the line.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}\n[retrieve]\nneighbors = \"ten\"\n",
            Config::tiny().train()
        ),
    )
    .unwrap();
    let e = fails(&store, &["run", bad.to_str().unwrap()]);
    let line = Config::tiny().train().to_toml().lines().count() + 3;
    assert!(e.contains(&format!("bad.toml:{line}:")), "{e}");
    assert!(e.contains("retrieve.neighbors"), "{e}");
    // Ks beyond the gallery: stopped right after index, before decode and train.
    let e = fails(&store, &["run", cfg, "--set", "retrieve.ks=1,1000"]);
    assert!(
        e.contains("K = 1000") && e.contains("--set retrieve.ks=1"),
        "{e}"
    );
    assert!(!e.contains("rerun"), "{e}");
    assert!(store.join("objects/index").exists());
    assert!(!store.join("objects/decode").exists() && !store.join("objects/train").exists());
    // A number where a string is meant stays a string.
    ok(
        &store,
        &["run", cfg, "--set", "name=2024", "--until", "index"],
    );
    assert!(store.join("latest/2024/index").exists());
}

#[test]
fn progress_is_logged_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let out = dml()
        .env("DML_LOG_INTERVAL", "0.05")
        .args(["--store", store.to_str().unwrap(), "run"])
        .arg(&cfg)
        .args([
            "--set",
            "plan.steps=200",
            "--set",
            "train.checkpoint_every=1000",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("train: ") && l.contains("/200"))
        .unwrap_or_else(|| panic!("no progress line for train in:\n{err}"));
    for part in ["loss", "lr", "img/s", "ETA"] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
}

#[test]
fn ctrl_c_says_what_was_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let mut child = dml()
        .args(["--store", store.to_str().unwrap(), "run"])
        .arg(&cfg)
        .args(["--set", "plan.steps=100000"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let started = std::time::Instant::now();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("run     train ") {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "train did not start in time"
        );
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let code = child.wait().unwrap();
    let rest = rest.join("\n");
    assert_eq!(code.code(), Some(130), "{rest}");
    assert!(
        rest.contains("interrupted: every finished stage is kept"),
        "{rest}"
    );
    assert!(
        rest.contains("stopped while running: train") && rest.contains("checkpoint"),
        "{rest}"
    );
    assert!(
        store.join("objects/decode").exists(),
        "finished stages are kept"
    );
    // The interrupted run has a record, `dml runs` says how it ended, and nothing of
    // the run is left behind in tmp/ or runs/live/.
    let runs = ok(&store, &["runs"]);
    assert!(runs.contains("interrupted"), "{runs}");
    let leftovers = |d: &str| {
        std::fs::read_dir(store.join(d))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert_eq!(leftovers("tmp"), 0, "tmp/ is empty after Ctrl-C");
    assert_eq!(
        leftovers("runs/live"),
        0,
        "the live registration is removed"
    );
}

fn reason<'a>(p: &'a [Planned], id: &str) -> &'a str {
    &p.iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no {id} in {p:?}"))
        .reason
}

#[test]
fn explanations_name_every_cause_in_the_users_words() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    ok(&store, &["run", cfg]);
    let p = plan(
        &store,
        &[
            cfg,
            "--set",
            "image.resize=36",
            "--set",
            "image.crop=30",
            "--set",
            "retrieve.ks=1,2",
        ],
    );
    let train = reason(&p, "train");
    assert!(
        train.contains("image.crop changed 28 → 30") && train.contains("input decode changed"),
        "{train}"
    );
    assert!(
        reason(&p, "retrieve").contains("retrieve.ks changed 1,2,4,8 → 1,2"),
        "{p:?}"
    );
    let report = reason(&p, "report");
    assert!(
        report.contains("input retrieve:untrained changed"),
        "{report}"
    );
    assert!(!report.contains("baseline_"), "{report}");
    // A run that stops at train: the stages after it were never built, not "removed".
    let e = fails(
        &store,
        &[
            "run",
            cfg,
            "--set",
            "train.optimizer.learning_rate=1e30",
            "--set",
            "train.seed=3",
        ],
    );
    assert!(e.contains("step"), "{e}");
    let p = plan(
        &store,
        &[
            cfg,
            "--set",
            "train.optimizer.learning_rate=1e30",
            "--set",
            "train.seed=3",
        ],
    );
    assert_eq!(
        reason(&p, "embed"),
        "not built yet (the last run stopped before it)"
    );
}

#[test]
fn an_interrupted_train_is_announced_as_resuming() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let out = dml()
        .env("DML_FAULT_ABORT_AFTER_STEP", "4")
        .args(["--store", store.to_str().unwrap(), "run", cfg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let p = plan(&store, &[cfg]);
    assert!(
        reason(&p, "train").contains("resumes from the checkpoint at step 4"),
        "{p:?}"
    );
}

#[test]
fn a_changed_dataset_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    folder_dataset(&data, 4, 3);
    let store = tmp.path().join("store");
    let a = on_folder(&["--until", "index"], &data, &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut run = vec!["run"];
    run.extend_from_slice(&a);
    ok(&store, &run);
    image::RgbImage::from_pixel(16, 12, image::Rgb([1, 2, 3]))
        .save(data.join("class_01/img_2.png"))
        .unwrap();
    let p = plan(&store, &a);
    assert_eq!(
        reason(&p, "index"),
        "dataset files changed: class_01/img_2.png (content)"
    );
}

#[test]
fn help_browsing_and_reports_for_people() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let help = ok(&store, &["run", "--help"]);
    assert!(!help.contains("train.lr="), "{help}");
    let e = fails(&store, &["run", "--set", "oops"]);
    assert!(e.contains("train.optimizer.learning_rate"), "{e}");
    for args in [
        &["presets", "--show", "cub/npair"][..],
        &["run", "--preset", "cub/npair", "--dry-run"][..],
    ] {
        let e = fails(&store, args);
        assert!(e.contains("did you mean `cub/npairs`?"), "{args:?}: {e}");
    }
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    ok(&store, &["run", cfg]);
    // Long lists are abbreviated; a closed pipe ends `show` quietly.
    let show = ok(&store, &["show", "embed"]);
    assert!(show.contains("… (16 values)]"), "{show}");
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --store {} show embed | head -n 2",
            env!("CARGO_BIN_EXE_dml"),
            store.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success() && !err.contains("panicked"), "{err}");
    // The report links each loss plot to its run.
    let md = std::fs::read_to_string(store.join("latest/tiny/report/report.md")).unwrap();
    assert!(md.contains("[loss_0.png](loss_0.png): tiny"), "{md}");
    // In a sweep, a stage name alone lists the points.
    let sweep = write_config(
        tmp.path(),
        &format!("{}\n[sweep]\n\"plan.seed\" = [0, 1]\n", Config::tiny()),
    );
    ok(&store, &["run", sweep.to_str().unwrap(), "--until", "plan"]);
    let e = fails(&store, &["path", "plan", "--name", "tiny"]);
    assert!(
        e.contains("plan[plan.seed=0]") && e.contains("plan[plan.seed=1]"),
        "{e}"
    );
    let one = ok(&store, &["path", "plan[plan.seed=1", "--name", "tiny"]);
    assert!(one.trim().ends_with("plan@plan.seed=1"), "{one}");
}

#[test]
fn the_index_keeps_the_datasets_own_image_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cub");
    let mut images = String::new();
    let mut labels = String::new();
    let mut id = 1;
    for class in [1u32, 2, 101, 102] {
        let dir = format!("{class:03}.Bird_{class}");
        std::fs::create_dir_all(data.join("images").join(&dir)).unwrap();
        for i in 0..2 {
            let rel = format!("{dir}/b_{i}.png");
            image::RgbImage::from_pixel(8, 8, image::Rgb([class as u8, i, 0]))
                .save(data.join("images").join(&rel))
                .unwrap();
            images.push_str(&format!("{id} {rel}\n"));
            labels.push_str(&format!("{id} {class}\n"));
            id += 1;
        }
    }
    std::fs::write(data.join("images.txt"), images).unwrap();
    std::fs::write(data.join("image_class_labels.txt"), labels).unwrap();
    let store = tmp.path().join("store");
    let root = format!("dataset.root={}", data.display());
    ok(
        &store,
        &[
            "run",
            "--until",
            "index",
            "--set",
            "dataset.kind=\"cub\"",
            "--set",
            &root,
            "--set",
            "retrieve.ks=1",
        ],
    );
    let script = r#"
import sys, json, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1]).to_pydict()
print(json.dumps({"row": t["image_id"], "dataset": t["dataset_image_id"]}))
"#;
    let index =
        std::path::PathBuf::from(ok(&store, &["path", "index"]).trim()).join("index.parquet");
    let got = py_json(script, &[index.to_str().unwrap()]);
    assert_eq!(got["row"], serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7]));
    assert_eq!(got["dataset"], serde_json::json!([1, 2, 3, 4, 5, 6, 7, 8]));
}

#[test]
fn a_folder_of_small_images_is_described_before_anything_runs() {
    // The README's Configuration example on a folder of small images, with what a new
    // user's folder holds: formats dml does not read and classes smaller than K.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    folder_dataset(&root, 6, 3);
    std::fs::write(root.join("class_00/extra.webp"), b"RIFF....WEBPVP8 ").unwrap();
    std::fs::write(root.join("class_01/scan.BMP"), b"BM").unwrap();
    let single = root.join("class_00b");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::copy(root.join("class_00/img_0.png"), single.join("only.png")).unwrap();
    let cfg = write_config(
        tmp.path(),
        &format!(
            "name = \"mine\"\n[dataset]\nkind = \"folder\"\nroot = \"{}\"\n",
            root.display()
        ),
    );
    let store = tmp.path().join("store");
    let out = run_in(&store, &["run", cfg.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("no `preset = …` line"), "{text}");
    assert!(text.contains("image.resize = 256"), "{text}");
    assert!(text.contains("median side 16 px"), "{text}");
    assert!(
        text.contains("2 image file(s) of formats dml does not read")
            && text.contains("1 .bmp, 1 .webp"),
        "{text}"
    );
    assert!(
        text.contains("fewer than plan.k") && text.contains("a single image, paired with itself"),
        "{text}"
    );
    assert!(!store.join("objects").exists() || dir_is_empty(&store.join("objects")));
    // The synthetic set ignores dataset.root: said.
    let out = run_in(
        &store,
        &[
            "run",
            "--dry-run",
            "--set",
            &format!("dataset.root={}", root.display()),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not read: dataset.kind = \"synthetic\""),
        "{err}"
    );
}

#[test]
fn the_issues_bad_inputs_fail_at_start_up_with_the_setting_named_and_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "train.model.embedding_dim=4000000000"],
            "train.model.embedding_dim",
        ),
        (&["--set", "image.resize=0"], "image.resize"),
        (&["--set", "image.crop=0"], "image.crop"),
        (&["--set", "image.crop=64"], "image.crop"),
        (&["--set", "retrieve.ks=0,1"], "retrieve.ks"),
        (&["--set", "embed.batch_size=0"], "embed.batch_size"),
        (&["--set", "plan.p=100000"], "plan.p"),
        (&["--set", "plan.k=1"], "plan.k"),
        (&["--set", "plan.steps=0"], "plan.steps"),
        (&["--set", "plan=3"], "`plan` is a table"),
        (&["--set", "plann.p=3"], "did you mean `plan`"),
        (
            &["--set", "train.optimizer.learning_rate=-1"],
            "train.optimizer.learning_rate",
        ),
        (&["--set", "train.optimizer.learning_rate=-1"], "from --set"),
        (&["--set", "name=.."], "name"),
        (&["--set", "name=."], "name"),
        (&["--set", "name="], "name"),
        (&["--set", "name=a/b"], "name"),
        (&["--jobs", "0"], "--jobs"),
        (&["--until", "nosuchstage"], "is not a stage"),
        (&["--preset", "cub"], "cub/margin"),
        // The modern recipes' settings (`Config::train` trains 8 steps).
        (
            &[
                "--set",
                "train.loss.name=proxy_anchor",
                "--set",
                "train.loss.miner=multi_similarity",
            ],
            "train.loss.miner is a setting of multi_similarity, circle only",
        ),
        (
            &[
                "--set",
                "train.loss.name=proxy_anchor",
                "--set",
                "train.loss.memory=1000",
            ],
            "train.loss.memory is a setting of multi_similarity, circle only",
        ),
        (
            &[
                "--set",
                "train.loss.name=proxy_anchor",
                "--set",
                "train.loss.lr_multiplier=0",
            ],
            "train.loss.lr_multiplier",
        ),
        (
            &["--set", "train.optimizer.head_lr_multiplier=-1"],
            "train.optimizer.head_lr_multiplier",
        ),
        (
            &["--set", "train.optimizer.warmup_steps=8"],
            "train.optimizer.warmup_steps = 8 is not shorter than training",
        ),
        (
            &["--set", "train.freeze_backbone_steps=9"],
            "train.freeze_backbone_steps",
        ),
    ];
    for (args, needle) in cases {
        for dry in [true, false] {
            let mut all = vec!["run", cfg];
            all.extend_from_slice(args);
            if dry {
                all.push("--dry-run");
            }
            let out = run_in(&store, &all);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{all:?} succeeded");
            assert_ne!(out.status.code(), Some(101), "{all:?} panicked: {err}");
            assert!(!err.contains("panicked"), "{all:?}: {err}");
            assert!(
                err.contains(needle),
                "{all:?}: expected `{needle}` in: {err}"
            );
            assert!(
                !err.contains("Cub") && !err.contains("Settings`") && !err.contains("struct "),
                "{all:?} leaks a Rust name: {err}"
            );
        }
        assert!(
            !store.join("objects").exists() || dir_is_empty(&store.join("objects")),
            "{args:?} built something"
        );
        assert!(!tmp.path().join("latest").exists() && !tmp.path().join("report").exists());
    }
}
