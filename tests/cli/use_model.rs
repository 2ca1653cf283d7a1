//! `dml embed`, `dml search` and `dml export` against what the pipeline's own stages wrote:
//! the embed stage's embeddings (bit for bit), the retrieve stage's neighbours, and the
//! exported networks run in Python by the test venv's torch.
use crate::common::*;
use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, UInt32Type};
use dml_artifacts::tables;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A few steps of the small CNN on PNG images already at `image.resize` (so that Pillow's
/// decoding and resizing in the Python check are exact).
const USE_TRAIN: &str = r#"
name = "tiny"
[dataset]
kind = "synthetic"
[synthetic]
classes = 12
images_per_class = 4
image_size = 32
format = "png"
[image]
resize = 32
crop = 28
[plan]
p = 4
k = 2
steps = 8
[train]
device = "cpu"
[train.model]
backbone = "small_cnn"
head = "direct"
embedding_dim = 16
[train.loss]
name = "hard_triplet"
[embed]
batch_size = 5
"#;

/// Trains the tiny run in `store`; returns the synthetic images' root.
fn trained(dir: &Path, store: &Path, extra: &[&str]) -> PathBuf {
    let cfg = write_config(dir, USE_TRAIN);
    let mut args = vec!["run", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(store, &args);
    std::fs::canonicalize(store.join("latest/tiny/synth/images")).unwrap()
}

/// `(image_id, path, split)` of the index the run made, in index order.
fn index_rows(store: &Path, node: &str) -> Vec<(u32, String, tables::Split)> {
    tables::read_index(&store.join("latest/tiny").join(node).join("index.parquet"))
        .unwrap()
        .into_iter()
        .map(|r| (r.image_id, r.path, r.split))
        .collect()
}

/// `embedding` rows of a table, with a string column beside them.
fn embeddings_by(path: &Path, key: &str) -> Vec<(String, Vec<f32>)> {
    let b = tables::read_table(path).unwrap();
    let keys = b.column_by_name(key).unwrap().as_string::<i32>().clone();
    let emb = b.column_by_name("embedding").unwrap().as_fixed_size_list();
    (0..b.num_rows())
        .map(|i| {
            let v = emb.value(i);
            let v = v.as_primitive::<Float32Type>();
            (keys.value(i).to_string(), v.values().to_vec())
        })
        .collect()
}

/// The embed stage's `image_id → embedding`.
fn stage_embeddings(store: &Path, node: &str) -> HashMap<u32, Vec<f32>> {
    let path = store
        .join("latest/tiny")
        .join(node)
        .join("embeddings.arrow");
    let e = tables::Embeddings::read(&path).unwrap();
    e.image_id
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, e.values[i * e.dim..(i + 1) * e.dim].to_vec()))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The largest absolute difference.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn dml_embed_equals_the_embed_stage_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let root = trained(tmp.path(), &store, &[]);
    let stage = stage_embeddings(&store, "embed");
    let test: Vec<(u32, String)> = index_rows(&store, "index")
        .into_iter()
        .filter(|(_, _, s)| *s == tables::Split::Test)
        .map(|(id, p, _)| (id, root.join(p).display().to_string()))
        .collect();
    assert_eq!(test.len(), stage.len());

    // The test images named one by one, in the index's order.
    let out = tmp.path().join("test.arrow");
    let mut args = vec!["embed", "--run", "tiny", "--out", out.to_str().unwrap()];
    args.extend(test.iter().map(|(_, p)| p.as_str()));
    ok(&store, &args);
    let got = embeddings_by(&out, "path");
    assert_eq!(got.len(), test.len());
    for ((id, path), (p, v)) in test.iter().zip(&got) {
        assert_eq!(path, p);
        assert_eq!(bits(v), bits(&stage[id]), "{path}");
    }

    // A whole folder: train and test images mixed, so other batches, whose CPU kernels may
    // round the last bits differently; the same values to float precision, and each image's
    // class folder.
    let out = tmp.path().join("all.parquet");
    ok(
        &store,
        &[
            "embed",
            "--run",
            "tiny",
            "--dir",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let all: HashMap<String, Vec<f32>> = embeddings_by(&out, "path").into_iter().collect();
    assert_eq!(all.len(), 48);
    for (id, path) in &test {
        let diff = max_diff(&all[path], &stage[id]);
        assert!(diff <= 1e-5, "{path}: {diff}");
    }
    let classes = embeddings_by(&out, "class");
    assert!(classes
        .iter()
        .all(|(c, _)| c.starts_with("class_") && c.len() == 10));
    // `dml eval` reads it with the class folder as label.
    let eval = ok(
        &store,
        &[
            "eval",
            out.to_str().unwrap(),
            "--labels-column",
            "class",
            "--json",
        ],
    );
    assert!(
        eval.contains("\"recall@1\"") && eval.contains("\"queries\":48"),
        "{eval}"
    );

    // An image that cannot be decoded is named, the others still embedded, the exit non-zero.
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xFF\xD8\xFF not really a jpeg").unwrap();
    let out = tmp.path().join("some.parquet");
    let err = fails(
        &store,
        &[
            "embed",
            "--run",
            "tiny",
            &test[0].1,
            bad.to_str().unwrap(),
            &test[1].1,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("broken.jpg") && err.contains("could not"),
        "{err}"
    );
    let some = embeddings_by(&out, "path");
    assert_eq!(some.len(), 2);
    assert!(max_diff(&some[1].1, &stage[&test[1].0]) <= 1e-5);

    // Errors before anything runs: the run, the output's format, a missing image.
    let err = fails(&store, &["embed", "--run", "nope", &test[0].1]);
    assert!(err.contains("nope") && err.contains("dml runs"), "{err}");
    let err = fails(
        &store,
        &["embed", "--run", "tiny", &test[0].1, "--out", "e.csv"],
    );
    assert!(err.contains("e.csv") && err.contains(".parquet"), "{err}");
    let err = fails(&store, &["embed", "--run", "tiny", "missing.png"]);
    assert!(
        err.contains("missing.png") && err.contains("does not exist"),
        "{err}"
    );
    let err = fails(
        &store,
        &["embed", "--run", "tiny", "--point", "x=1", &test[0].1],
    );
    assert!(err.contains("no point `x=1`"), "{err}");
}

#[test]
fn an_untrained_point_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = write_config(tmp.path(), USE_TRAIN);
    ok(&store, &["run", cfg.to_str().unwrap(), "--until", "decode"]);
    let img = tmp.path().join("q.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(&img)
        .unwrap();
    let err = fails(&store, &["embed", "--run", "tiny", img.to_str().unwrap()]);
    assert!(err.contains("no trained network"), "{err}");
}

/// `neighbors.parquet` of the retrieve stage: query → neighbour ids (rank order) and distances.
fn retrieve_neighbours(store: &Path) -> HashMap<u32, Vec<(u32, f32)>> {
    let path = store.join("latest/tiny/retrieve/neighbors.parquet");
    let b = tables::read_table(&path).unwrap();
    let col = |n: &str| {
        b.column_by_name(n)
            .unwrap()
            .as_primitive::<UInt32Type>()
            .values()
            .to_vec()
    };
    let (q, rank, n) = (col("query_image_id"), col("rank"), col("neighbor_image_id"));
    let d = b
        .column_by_name("distance")
        .unwrap()
        .as_primitive::<Float32Type>()
        .values()
        .to_vec();
    let mut out: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
    for i in 0..b.num_rows() {
        let list = out.entry(q[i]).or_default();
        assert_eq!(rank[i] as usize, list.len() + 1);
        list.push((n[i], d[i]));
    }
    out
}

#[test]
fn dml_search_returns_the_retrieve_stage_neighbours() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let root = trained(tmp.path(), &store, &[]);
    let expected = retrieve_neighbours(&store);
    let test: Vec<(u32, String)> = index_rows(&store, "index")
        .into_iter()
        .filter(|(_, _, s)| *s == tables::Split::Test)
        .map(|(id, p, _)| (id, root.join(p).display().to_string()))
        .collect();
    let depth = expected.values().next().unwrap().len();
    let k = (depth + 1).to_string();
    let html = tmp.path().join("pages/search.html");
    let mut args = vec![
        "search",
        "--run",
        "tiny",
        "-k",
        &k,
        "--json",
        "--html",
        html.to_str().unwrap(),
    ];
    args.extend(test.iter().map(|(_, p)| p.as_str()));
    let out = ok(&store, &args);
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), test.len());
    for ((id, path), r) in test.iter().zip(results) {
        assert_eq!(r["query"], path.as_str());
        // The query is in the gallery (the test split): the stage leaves it out, the
        // search finds it (at distance ~0); without it the lists are the same.
        let hits: Vec<(u32, f64)> = r["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["image_id"].as_u64().unwrap() as u32,
                    h["distance"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(hits[0].0, *id, "{path}: itself first");
        assert!(hits[0].1 < 1e-2, "{hits:?}");
        let others: Vec<&(u32, f64)> = hits.iter().filter(|(g, _)| g != id).collect();
        let want = &expected[id];
        assert_eq!(
            others.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
            want.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
            "{path}"
        );
        for ((_, d), (_, w)) in others.iter().zip(want) {
            assert!(
                (d - f64::from(*w)).abs() <= 1e-5 * (1.0 + d.abs()),
                "{d} vs {w}"
            );
        }
        // Paths and classes come from the index.
        let first = &r["neighbors"][1];
        let p = first["path"].as_str().unwrap();
        assert!(Path::new(p).is_file(), "{p}");
        assert!(p.contains(first["class"].as_str().unwrap()), "{first}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("dml search: tiny"));
    assert!(
        page.matches("<img ").count() >= test.len() * (depth + 2),
        "every query and neighbour has a thumbnail"
    );

    // The text output: rank, distance, class, path.
    let text = ok(&store, &["search", "--run", "tiny", "-k", "3", &test[0].1]);
    assert!(text.starts_with(&format!("query {}", test[0].1)), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");

    // A gallery that `dml embed` wrote: the query finds itself first.
    let cat = tmp.path().join("catalogue.parquet");
    ok(
        &store,
        &[
            "embed",
            "--run",
            "tiny",
            "--dir",
            root.to_str().unwrap(),
            "--out",
            cat.to_str().unwrap(),
        ],
    );
    let out = ok(
        &store,
        &[
            "search",
            "--run",
            "tiny",
            "--gallery",
            cat.to_str().unwrap(),
            "-k",
            "2",
            "--json",
            &test[3].1,
        ],
    );
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["neighbors"][0]["path"], test[3].1.as_str());

    // A gallery of another dimension is refused before the queries are embedded.
    let other = tmp.path().join("other.parquet");
    let batch = dml_jobspec::use_model::embedded_to_batch(
        &["a.png".to_string()],
        &[None],
        3,
        vec![0.0, 1.0, 2.0],
    )
    .unwrap();
    dml_jobspec::use_model::write_table(&other, &batch).unwrap();
    let err = fails(
        &store,
        &[
            "search",
            "--run",
            "tiny",
            "--gallery",
            other.to_str().unwrap(),
            &test[0].1,
        ],
    );
    assert!(
        err.contains("dimension 3") && err.contains("into 16") && err.contains("dml embed"),
        "{err}"
    );
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `tests/cli/jit_load.cpp` compiled against the test venv's libtorch (its headers and
/// libraries ship in PyPI's torch wheel), once per test process: a C++ program that runs
/// `model.pt` with `torch::jit::load` and nothing else. `None` (with a message) where no
/// C++ compiler is installed and this is not CI; under CI that is a failure.
fn jit_load() -> Option<&'static Path> {
    static BIN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
        if Command::new(&cxx).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "`{cxx}` is needed to build the torch::jit::load check"
            );
            eprintln!("no C++ compiler (`{cxx}`): the torch::jit::load check in C++ is skipped");
            return None;
        }
        let out = Command::new(python())
            .args([
                "-c",
                "import os, torch; print(os.path.dirname(torch.__file__))",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let torch = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/jit_load.cpp");
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("jit_load");
        let (inc, lib) = (torch.join("include"), torch.join("lib"));
        let out = Command::new(&cxx)
            .args(["-std=c++17", "-O1", "-o"])
            .arg(&bin)
            .arg(&src)
            .arg(format!("-I{}", inc.display()))
            .arg(format!(
                "-I{}",
                inc.join("torch/csrc/api/include").display()
            ))
            .arg(format!("-L{}", lib.display()))
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-ltorch", "-ltorch_cpu", "-lc10"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "compiling {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(bin)
    })
    .as_deref()
}

/// Which forms an export check writes, and how close each must come to `dml embed`.
struct Forms<'a> {
    formats: &'a [&'a str],
    tolerance: f64,
}

/// Every form `dml export` writes, within 1e-5.
const ALL_FORMS: Forms<'static> = Forms {
    formats: &["torchscript", "safetensors", "onnx"],
    tolerance: 1e-5,
};

/// Exports the run `tiny` (at `point`) as TorchScript, safetensors + `load_model.py` and
/// ONNX, embeds the synthetic images with `dml embed`, and checks that each exported form
/// gives those embeddings within 1e-5: in Python (torch.jit.load, load_model.py,
/// onnxruntime) and, for model.pt, in C++ (torch::jit::load).
fn export_and_check(
    dir: &Path,
    store: &Path,
    root: &Path,
    point: Option<&str>,
    backbone: &str,
    crop: u64,
    forms: Forms<'_>,
) {
    let Forms { formats, tolerance } = forms;
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/check_export.py");
    let exp = dir.join(format!("export-{backbone}"));
    let emb = dir.join(format!("emb-{backbone}.parquet"));
    let out_dir = exp.to_str().unwrap();
    let (emb_out, images) = (emb.to_str().unwrap(), root.to_str().unwrap());
    let at: Vec<&str> = point.map(|p| vec!["--point", p]).unwrap_or_default();
    let export = [&["export", "--run", "tiny", "--out", out_dir][..], &at].concat();
    let joined = formats.join(",");
    ok(store, &[&export[..], &["--format", &joined]].concat());
    let mut files = vec![
        "model.pt",
        "model.safetensors",
        "model.json",
        "load_model.py",
    ];
    if formats.contains(&"onnx") {
        files.push("model.onnx");
    }
    for f in files {
        assert!(exp.join(f).is_file(), "{f}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("model.json")).unwrap()).unwrap();
    assert_eq!(meta["backbone"], backbone);
    assert_eq!(meta["input"]["crop"], crop);
    let embed = [
        &["embed", "--run", "tiny", "--dir", images, "--out", emb_out][..],
        &at,
    ]
    .concat();
    ok(store, &embed);
    let mut cmd = Command::new(python());
    cmd.arg(&check).arg(&exp).arg(&emb);
    if let Some(bin) = jit_load() {
        cmd.env("DML_JIT_LOAD", bin);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rows"], 48);
    let mut forms = formats.to_vec();
    if jit_load().is_some() {
        forms.push("cpp");
    }
    for form in forms {
        let d = r[form].as_f64().unwrap();
        assert!(d <= tolerance, "{backbone} {form}: max |diff| {d}");
    }
}

/// A ViT-S/16 at 32 px (its position embeddings resampled on each forward pass), mean
/// pooling: `load_model.py` rebuilds it from timm (`dynamic_img_size`), and the
/// TorchScript and ONNX forms carry the resampling.
#[test]
fn a_vit_export_reproduces_the_embeddings_in_python() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let root = trained(
        tmp.path(),
        &store,
        &[
            "--set",
            "train.model.backbone=vit_s16",
            "--set",
            "train.model.pool=mean",
            "--set",
            "image.crop=32",
            "--set",
            "plan.steps=3",
            "--set",
            "train.model.normalize=true",
        ],
    );
    export_and_check(tmp.path(), &store, &root, None, "vit_s16", 32, ALL_FORMS);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("export-vit_s16/model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["timm_model"], "vit_small_patch16_224");
    assert_eq!(meta["model"]["pool"], "mean");
    assert_eq!(meta["normalize"], true);
}

#[test]
fn exports_reproduce_the_embeddings_in_python() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let root = trained(
        tmp.path(),
        &store,
        &[
            "--sweep",
            "train.model.backbone=small_cnn,resnet18",
            "--set",
            "train.model.head=fc1024",
            "--set",
            "train.model.normalize=true",
        ],
    );
    let err = fails(&store, &["export", "--run", "tiny", "--out", "x"]);
    assert!(
        err.contains("sweep of 2 points") && err.contains("--point"),
        "{err}"
    );
    for (point, backbone) in [
        ("backbone=small_cnn", "small_cnn"),
        ("tiny[train.model.backbone=resnet18]", "resnet18"),
    ] {
        export_and_check(
            tmp.path(),
            &store,
            &root,
            Some(point),
            backbone,
            28,
            ALL_FORMS,
        );
    }

    // Formats that cannot be written are refused before anything is.
    let exp = tmp.path().join("none");
    let err = fails(
        &store,
        &[
            "export",
            "--run",
            "tiny",
            "--out",
            exp.to_str().unwrap(),
            "--format",
            "tflite",
        ],
    );
    assert!(
        err.contains("tflite") && err.contains("torchscript"),
        "{err}"
    );
    let out = dml()
        .env("DML_PYTHON", tmp.path().join("no-python"))
        .arg("--store")
        .arg(&store)
        .args([
            "export",
            "--run",
            "tiny",
            "--point",
            "backbone=small_cnn",
            "--format",
            "onnx",
            "--out",
        ])
        .arg(&exp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("torch.onnx.export") && err.contains("DML_PYTHON"),
        "{err}"
    );
    assert!(!exp.exists(), "nothing was written");
}

/// BN-Inception end to end at 32 px (its smallest crop: 1×1 after the last reduction): a
/// crop its reduction blocks cannot take is refused before anything runs; a few steps
/// train; the export's `model.json` describes its scaling (x − (128, 117, 104) in RGB) and
/// both TorchScript and `load_model.py`'s rebuild reproduce `dml embed`'s embeddings.
#[test]
fn a_bn_inception_trains_and_its_export_reproduces_the_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = write_config(tmp.path(), USE_TRAIN);
    let cfg = cfg.to_str().unwrap();
    let err = fails(
        &store,
        &["run", cfg, "--set", "train.model.backbone=bn_inception"],
    );
    assert!(
        err.contains("image.crop = 28") && err.contains("inception_3c"),
        "{err}"
    );
    assert!(!store.join("latest/tiny/train").exists(), "nothing ran");
    let root = trained(
        tmp.path(),
        &store,
        &[
            "--set",
            "train.model.backbone=bn_inception",
            "--set",
            "image.crop=32",
        ],
    );
    // Its 0–255 inputs make features of a few units, hence 1e-4.
    export_and_check(
        tmp.path(),
        &store,
        &root,
        None,
        "bn_inception",
        32,
        Forms {
            formats: &["torchscript", "safetensors"],
            tolerance: 1e-4,
        },
    );
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("export-bn_inception/model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["input"]["scaling"], "bn_inception");
    assert_eq!(meta["input"]["channels"], "RGB");
    let mean: Vec<f64> = serde_json::from_value(meta["input"]["mean"].clone()).unwrap();
    let std: Vec<f64> = serde_json::from_value(meta["input"]["std"].clone()).unwrap();
    for (c, m) in [128.0, 117.0, 104.0].into_iter().enumerate() {
        assert!((mean[c] * 255.0 - m).abs() < 1e-9, "{mean:?}");
        assert!((std[c] * 255.0 - 1.0).abs() < 1e-9, "{std:?}");
    }
}
