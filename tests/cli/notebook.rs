//! notebooks/explore.ipynb: in sync with notebooks/explore.py, valid nbformat 4,
//! and it runs headless against a freshly built store (through `latest/`),
//! writing the loss curve and the nearest-neighbour grid.
//!
//! Needs in the Python on PATH (or `$PYTHON`): polars, pyarrow, numpy, Pillow,
//! matplotlib; and nbconvert + ipykernel to execute the `.ipynb` itself (without
//! them only the script form runs).
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn has_modules(modules: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `cmd`, which must succeed; returns its standard output.
fn check(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG that decodes to a real figure.
fn assert_png(path: &Path, min_side: u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        img.width() >= min_side && img.height() >= min_side,
        "{}: {}×{}",
        path.display(),
        img.width(),
        img.height()
    );
}

fn explore_env<'a>(cmd: &'a mut Command, store: &Path, run: &str, out: &Path) -> &'a mut Command {
    cmd.env("DML_STORE", store)
        .env("DML_RUN", run)
        .env("DML_NOTEBOOK_OUT", out)
        .env_remove("MPLBACKEND")
        .env_remove("DML_POINT")
}

const SMALL: [&str; 16] = [
    "--set",
    "plan.steps=5",
    "--set",
    "plan.p=4",
    "--set",
    "plan.k=2",
    "--set",
    "image.resize=32",
    "--set",
    "image.crop=28",
    "--set",
    "train.device=cpu",
    "--set",
    "train.model.embedding_dim=16",
    "--set",
    "embed.batch_size=16",
];

#[test]
fn the_notebook_is_generated_from_the_script_and_is_nbformat_4() {
    check(
        Command::new(python())
            .arg(repo().join("notebooks/build_notebook.py"))
            .arg("--check"),
        "notebooks/explore.ipynb is stale: run `python notebooks/build_notebook.py`",
    );
    let text = std::fs::read_to_string(repo().join("notebooks/explore.ipynb")).unwrap();
    let nb: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(nb["nbformat"], 4);
    let cells = nb["cells"].as_array().unwrap();
    assert!(cells.len() >= 6, "{}", cells.len());
    let script = std::fs::read_to_string(repo().join("notebooks/explore.py")).unwrap();
    for cell in cells {
        assert!(cell["id"].is_string());
        let kind = cell["cell_type"].as_str().unwrap();
        assert!(kind == "code" || kind == "markdown", "{kind}");
        if kind == "code" {
            assert_eq!(
                cell["outputs"],
                serde_json::json!([]),
                "saved without outputs"
            );
            let source: String = cell["source"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();
            assert!(
                script.contains(&source),
                "cell not in explore.py:\n{source}"
            );
        }
    }
    if has_modules("nbformat") {
        check(
            Command::new(python()).args([
                "-c",
                "import sys, nbformat; nbformat.validate(nbformat.read(sys.argv[1], as_version=4))",
                repo().join("notebooks/explore.ipynb").to_str().unwrap(),
            ]),
            "nbformat.validate",
        );
    }
}

#[test]
fn the_notebook_runs_on_a_synthetic_store_and_draws_the_neighbour_grid() {
    assert!(
        has_modules("polars, pyarrow, numpy, PIL, matplotlib"),
        "this test needs polars, pyarrow, numpy, pillow and matplotlib in `{}`",
        python()
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("dml-store");
    let mut args = vec![
        "run",
        "--set",
        "synthetic.classes=12",
        "--set",
        "synthetic.images_per_class=4",
    ];
    args.extend_from_slice(&SMALL);
    ok(&store, &args);
    assert!(store
        .join("latest/synthetic/retrieve/neighbors.parquet")
        .is_file());

    // The plain script, which links the run's report.html.
    let out = tmp.path().join("script");
    let printed = check(
        explore_env(
            Command::new(python()).arg(repo().join("notebooks/explore.py")),
            &store,
            "synthetic",
            &out,
        )
        .current_dir(tmp.path()),
        "python notebooks/explore.py",
    );
    assert_png(&out.join("neighbors.png"), 200);
    assert_png(&out.join("loss.png"), 100);
    let report = std::fs::canonicalize(store.join("latest/synthetic/report/report.html")).unwrap();
    assert!(
        printed.contains(&format!("report: file://{}", report.display())),
        "{printed}"
    );

    // The notebook itself, headless, when nbconvert and a kernel are installed.
    if has_modules("nbconvert, ipykernel") {
        let out = tmp.path().join("notebook");
        check(
            explore_env(
                Command::new(python()).args([
                    "-m",
                    "nbconvert",
                    "--to",
                    "notebook",
                    "--execute",
                    "--ExecutePreprocessor.timeout=300",
                    "--output-dir",
                    tmp.path().to_str().unwrap(),
                    "--output",
                    "executed",
                    repo().join("notebooks/explore.ipynb").to_str().unwrap(),
                ]),
                &store,
                "synthetic",
                &out,
            ),
            "jupyter nbconvert --execute notebooks/explore.ipynb",
        );
        assert_png(&out.join("neighbors.png"), 200);
        let executed: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("executed.ipynb")).unwrap(),
        )
        .unwrap();
        let text = executed.to_string();
        assert!(text.contains("image/png"), "figures shown inline");
        assert!(text.contains("open report.html"), "the report is linked");
        assert!(!text.contains("\"output_type\":\"error\""));
    } else {
        eprintln!("nbconvert/ipykernel not installed: executed the script form only");
    }
}

/// A dataset on disk (not the synthetic set): images are found through the
/// index stage's `dataset_root` note; the run name is not the preset's.
#[test]
fn the_script_finds_a_folder_datasets_images_through_the_index_manifest() {
    assert!(
        has_modules("polars, pyarrow, numpy, PIL, matplotlib"),
        "this test needs polars, pyarrow, numpy, pillow and matplotlib in `{}`",
        python()
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("my images");
    folder_dataset(&data, 8, 4);
    let store = tmp.path().join("store");
    let root = format!("dataset.root={}", data.display());
    let mut args = vec![
        "run",
        "--set",
        "name=my-run.1",
        "--set",
        "dataset.kind=folder",
        "--set",
        &root,
        // Four training classes: none to spare for the default holdout.
        "--set",
        "train.validation.every=0",
    ];
    args.extend_from_slice(&SMALL);
    ok(&store, &args);
    let out = tmp.path().join("out");
    let script = Command::new(python())
        .arg(repo().join("notebooks/explore.py"))
        .env("DML_QUERIES", "3")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    // Without DML_STORE / DML_RUN it looks for ./dml-store and says what to set.
    assert!(!script.status.success());
    assert!(
        String::from_utf8_lossy(&script.stderr).contains("DML_STORE"),
        "{}",
        String::from_utf8_lossy(&script.stderr)
    );
    check(
        explore_env(
            Command::new(python())
                .arg(repo().join("notebooks/explore.py"))
                .env("DML_QUERIES", "3"),
            &store,
            "my-run.1",
            &out,
        ),
        "python notebooks/explore.py on a folder dataset",
    );
    assert_png(&out.join("neighbors.png"), 150);
}

/// A sweep: `DML_POINT` picks the point, and each stage resolves to the node
/// that point used (its own train, the plan it shared).
#[test]
fn the_script_follows_a_sweep_point() {
    assert!(
        has_modules("polars, pyarrow, numpy, PIL, matplotlib"),
        "this test needs polars, pyarrow, numpy, pillow and matplotlib in `{}`",
        python()
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut args = vec![
        "run",
        "--set",
        "name=swept",
        "--set",
        "synthetic.classes=12",
        "--set",
        "synthetic.images_per_class=4",
        "--set",
        "report.untrained_baseline=false",
    ];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&[
        "--set",
        "sweep.plan.seed=[0, 1]",
        "--set",
        "sweep.train.seed=[0, 1]",
    ]);
    ok(&store, &args);
    for (point, train, plan) in [
        (
            "plan.seed=1,train.seed=0",
            "train@plan.seed=1,train.seed=0",
            "plan@plan.seed=1",
        ),
        (
            "train.seed=1",
            "train@plan.seed=0,train.seed=1",
            "plan@plan.seed=0",
        ),
    ] {
        let out = tmp.path().join(point);
        let run = explore_env(
            Command::new(python()).arg(repo().join("notebooks/explore.py")),
            &store,
            "swept",
            &out,
        )
        .env("DML_POINT", point)
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{point}: {stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            stdout.contains(&format!("{train}: 5 steps, plan {plan}\n")),
            "{point}: {stdout}"
        );
        assert_png(&out.join("neighbors.png"), 150);
    }
    let run = explore_env(
        Command::new(python()).arg(repo().join("notebooks/explore.py")),
        &store,
        "swept",
        tmp.path(),
    )
    .env("DML_POINT", "train.seed=7")
    .output()
    .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("matches none"));
}
