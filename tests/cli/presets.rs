//! The built-in presets: every one parses, carries the seed's settings
//! (checked against the values of REFERENCE.md written out here, not against
//! `src/presets.rs`), resolves on small on-disk fixtures in each dataset's exact
//! format, and one row per dataset runs end to end on its fixture, shrunk.
use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use toml::Value;

// ---------------------------------------------------------------------------
// The seed's settings and published table (REFERENCE.md), written out by hand.

/// A loss's recommended setting: K, normalisation, `[train.loss]` keys besides `name`.
struct SeedLoss {
    name: &'static str,
    k: i64,
    normalize: bool,
    params: &'static [(&'static str, f64)],
}

const fn loss(
    name: &'static str,
    k: i64,
    normalize: bool,
    params: &'static [(&'static str, f64)],
) -> SeedLoss {
    SeedLoss {
        name,
        k,
        normalize,
        params,
    }
}

/// The seed's six losses, in its table's row order.
const SEED_LOSSES: [SeedLoss; 6] = [
    loss("semi_hard_triplet", 6, true, &[("margin", 0.2)]),
    loss("hard_triplet", 6, false, &[("margin", 1.0)]),
    loss("lifted_structure", 6, false, &[("margin", 1.0)]),
    loss("npairs", 2, false, &[("lambda", 0.002)]),
    loss(
        "angular",
        2,
        true,
        &[("alpha_degrees", 45.0), ("lambda", 0.002)],
    ),
    loss("contrastive", 4, true, &[("margin", 1.0)]),
];

struct Seed {
    kind: &'static str,
    backbone: &'static str,
    /// P for K = 6, 2, 4.
    p: [(i64, i64); 3],
    steps: i64,
    momentum_sgd: bool,
    /// NMI / R@1 / R@4 as printed in the seed's README, per loss in SEED_LOSSES order.
    published: [&'static str; 6],
}

const SEEDS: [Seed; 3] = [
    Seed {
        kind: "cub",
        backbone: "inception_v1",
        p: [(6, 20), (2, 60), (4, 30)],
        steps: 10_000,
        momentum_sgd: true,
        published: [
            "NMI .587 / R@1 49.03 / R@4 73.43",
            "NMI .561 / R@1 46.55 / R@4 71.03",
            "NMI .502 / R@1 35.26 / R@4 59.82",
            "NMI .573 / R@1 46.52 / R@4 59.26",
            "NMI .546 / R@1 45.50 / R@4 68.43",
            "NMI .476 / R@1 37.27 / R@4 62.39",
        ],
    },
    Seed {
        kind: "sop",
        backbone: "inception_v1",
        p: [(6, 20), (2, 60), (4, 30)],
        steps: 30_000,
        momentum_sgd: false,
        published: [
            "NMI .893 / R@1 71.22 / R@4 81.77",
            "NMI .895 / R@1 72.03 / R@4 82.55",
            "NMI .889 / R@1 68.26 / R@4 79.72",
            "NMI .893 / R@1 72.60 / R@4 82.59",
            "NMI .878 / R@1 60.30 / R@4 72.78",
            "NMI .825 / R@1 19.05 / R@4 32.28",
        ],
    },
    Seed {
        kind: "inshop",
        backbone: "densenet169",
        p: [(6, 10), (2, 30), (4, 15)],
        steps: 25_000,
        momentum_sgd: false,
        published: [
            "NMI .902 / R@1 87.43 / R@4 95.42",
            "NMI .904 / R@1 88.38 / R@4 95.74",
            "NMI .903 / R@1 87.32 / R@4 95.59",
            "NMI .903 / R@1 89.12 / R@4 96.13",
            "NMI .893 / R@1 84.70 / R@4 92.32",
            "NMI .826 / R@1 44.09 / R@4 67.17",
        ],
    },
];

impl Seed {
    fn p_for(&self, k: i64) -> i64 {
        self.p.iter().find(|(kk, _)| *kk == k).unwrap().1
    }
}

// ---------------------------------------------------------------------------
// Fixtures: each dataset's exact on-disk format, with tiny real images.

fn jpeg(path: &Path, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Not square, so the resize really resizes; a colour per class and image.
    let img = image::RgbImage::from_fn(20, 14, |x, y| {
        image::Rgb([
            (x * 12) as u8,
            (y * 17) as u8,
            (seed.wrapping_mul(37) % 256) as u8,
        ])
    });
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .unwrap();
}

const PER_CLASS: u32 = 4;

/// CUB-200-2011: `images.txt`, `image_class_labels.txt` (LF, single spaces),
/// `images/<NNN.Class_Name>/<file>.jpg`; classes 1–3 train, 101–103 test; plus the
/// classification split file the adapter must ignore.
fn cub_fixture(root: &Path) {
    let (mut images, mut labels, mut split) = (String::new(), String::new(), String::new());
    let mut id = 0;
    for class in [1u32, 2, 3, 101, 102, 103] {
        let dir = format!("{class:03}.Bird_Number_{class}");
        for i in 0..PER_CLASS {
            id += 1;
            let rel = format!("{dir}/Bird_Number_{class}_{:04}_{}.jpg", i + 1, 700 + id);
            jpeg(&root.join("images").join(&rel), id);
            images.push_str(&format!("{id} {rel}\n"));
            labels.push_str(&format!("{id} {class}\n"));
            split.push_str(&format!("{id} {}\n", i % 2));
        }
    }
    std::fs::write(root.join("images.txt"), images).unwrap();
    std::fs::write(root.join("image_class_labels.txt"), labels).unwrap();
    std::fs::write(root.join("train_test_split.txt"), split).unwrap();
}

/// Stanford Online Products: `Ebay_train.txt` / `Ebay_test.txt` with the header
/// `image_id class_id super_class_id path`, paths `<super>_final/<id>_<n>.JPG`.
fn sop_fixture(root: &Path) {
    let header = "image_id class_id super_class_id path\n";
    let (mut train, mut test) = (header.to_string(), header.to_string());
    let mut id = 0;
    for (class, super_id, super_name) in [
        (1u32, 1u32, "bicycle"),
        (2, 1, "bicycle"),
        (3, 2, "cabinet"),
        (11319, 1, "bicycle"),
        (11320, 2, "cabinet"),
        (11321, 2, "cabinet"),
    ] {
        for i in 0..PER_CLASS {
            id += 1;
            let rel = format!(
                "{super_name}_final/{}_{i}.JPG",
                111085122800u64 + class as u64
            );
            jpeg(&root.join(&rel), id);
            let line = format!("{id} {class} {super_id} {rel}\n");
            if class < 11319 {
                train.push_str(&line);
            } else {
                test.push_str(&line);
            }
        }
    }
    std::fs::write(root.join("Ebay_train.txt"), train).unwrap();
    std::fs::write(root.join("Ebay_test.txt"), test).unwrap();
    std::fs::write(
        root.join("Ebay_info.txt"),
        "image_id class_id super_class_id path\n",
    )
    .unwrap();
}

/// DeepFashion In-shop: `list_eval_partition.txt` with the image count, the header
/// and rows whose columns are padded with runs of spaces; items 2–4 train, 10–12
/// two query and two gallery images each.
fn inshop_fixture(root: &Path) {
    let mut rows = Vec::new();
    let mut n = 0;
    for (item, cloth) in [
        (2u32, "WOMEN/Dresses"),
        (3, "WOMEN/Blouses_Shirts"),
        (4, "MEN/Denim"),
        (10, "WOMEN/Dresses"),
        (11, "MEN/Tees_Tanks"),
        (12, "WOMEN/Skirts"),
    ] {
        for i in 0..PER_CLASS {
            n += 1;
            let view = ["front", "side", "back", "full"][i as usize];
            let rel = format!("img/{cloth}/id_{item:08}/0{}_{}_{view}.jpg", i + 1, i + 1);
            jpeg(&root.join(&rel), n);
            let status = match (item < 10, i % 2) {
                (true, _) => "train",
                (false, 0) => "query",
                (false, _) => "gallery",
            };
            let pad = " ".repeat(72 - rel.len());
            rows.push(format!("{rel}{pad}id_{item:08}                  {status}"));
        }
    }
    let text = format!(
        "{}\nimage_name item_id evaluation_status\n{}\n",
        rows.len(),
        rows.join("\n")
    );
    std::fs::write(root.join("list_eval_partition.txt"), text).unwrap();
}

/// Cars196: `cars_annos.txt` (`relpath class`), classes 1–98 train, 99–196 test.
fn cars_fixture(root: &Path) {
    let mut annos = String::new();
    let mut id = 0;
    for class in [1u32, 2, 3, 99, 100, 101] {
        for _ in 0..PER_CLASS {
            id += 1;
            let rel = format!("car_ims/{id:06}.jpg");
            jpeg(&root.join(&rel), id);
            annos.push_str(&format!("{rel} {class}\n"));
        }
    }
    std::fs::write(root.join("cars_annos.txt"), annos).unwrap();
}

fn fixture(kind: &str, root: &Path) {
    match kind {
        "cars196" => cars_fixture(root),
        "cub" => cub_fixture(root),
        "sop" => sop_fixture(root),
        "inshop" => inshop_fixture(root),
        other => panic!("no fixture for {other}"),
    }
}

/// The modern baselines each dataset has a preset of.
const MODERN_LOSSES: [&str; 2] = ["proxy_anchor", "multi_similarity"];

// ---------------------------------------------------------------------------
// Helpers.

/// `dml presets` as (name, description).
fn listed() -> Vec<(String, String)> {
    let out = dml().arg("presets").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, desc) = l.split_once(' ').unwrap_or((l, ""));
            (name.to_string(), desc.trim().to_string())
        })
        .collect()
}

/// `dml presets --show NAME`, parsed.
fn show(name: &str) -> Value {
    let out = dml().args(["presets", "--show", name]).output().unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{name} is not TOML: {e}\n{text}"))
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(v, |cur, part| cur.get(part))
        .unwrap_or_else(|| panic!("no `{path}` in {v}"))
}

fn float(v: &Value, path: &str) -> f64 {
    let x = get(v, path);
    x.as_float()
        .or_else(|| x.as_integer().map(|i| i as f64))
        .unwrap_or_else(|| panic!("`{path}` = {x} is not a number"))
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string"))
}

fn int(v: &Value, path: &str) -> i64 {
    get(v, path)
        .as_integer()
        .unwrap_or_else(|| panic!("`{path}` is not an integer"))
}

/// The settings every row and table preset of a dataset shares.
fn assert_dataset_settings(name: &str, v: &Value, seed: &Seed) {
    assert_eq!(str_at(v, "dataset.kind"), seed.kind, "{name}");
    assert!(
        v["dataset"].get("root").is_none(),
        "{name}: the root is the user's"
    );
    assert_eq!(int(v, "image.resize"), 256, "{name}");
    assert_eq!(int(v, "image.crop"), 224, "{name}");
    assert_eq!(int(v, "plan.steps"), seed.steps, "{name}");
    assert_eq!(str_at(v, "train.device"), "auto", "{name}");
    assert_eq!(str_at(v, "train.model.backbone"), seed.backbone, "{name}");
    assert_eq!(str_at(v, "train.model.head"), "fc1024", "{name}");
    assert_eq!(int(v, "train.model.embedding_dim"), 128, "{name}");
    assert_eq!(float(v, "train.optimizer.learning_rate"), 3e-4, "{name}");
    assert_eq!(str_at(v, "train.optimizer.schedule"), "linear", "{name}");
    let algo = get(v, "train.optimizer.algorithm");
    if seed.momentum_sgd {
        assert_eq!(str_at(algo, "name"), "sgd", "{name}");
        assert_eq!(float(algo, "momentum"), 0.9, "{name}");
    } else {
        assert_eq!(str_at(algo, "name"), "adam", "{name}");
    }
    if seed.kind == "inshop" {
        assert_eq!(str_at(v, "retrieve.protocol"), "auto", "{name}");
    }
}

/// The dry-run plan: node id → key.
fn keys(store: &Path, args: &[&str]) -> BTreeMap<String, String> {
    plan(store, args)
        .into_iter()
        .map(|n| (n.id, n.key))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn the_presets_are_listed_and_each_shows_as_toml() {
    let names: Vec<String> = listed().into_iter().map(|(n, _)| n).collect();
    let mut expected = vec!["synthetic".to_string(), "synthetic/sweep".to_string()];
    for s in &SEEDS {
        for l in &SEED_LOSSES {
            expected.push(format!("{}/{}", s.kind, l.name));
        }
        expected.push(format!("{}/margin", s.kind));
        expected.push(format!("{}/seed-table", s.kind));
        for modern in MODERN_LOSSES {
            expected.push(format!("{}/{modern}", s.kind));
        }
    }
    expected.push("synthetic/modern".to_string());
    for kind in OML_KINDS {
        expected.push(format!("{kind}/oml-vit-s16"));
    }
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>(),
        expected.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(names.len(), expected.len(), "no duplicates: {names:?}");
    assert_eq!(names[0], "synthetic", "the default comes first");
    let mut run_names = BTreeSet::new();
    for name in &names {
        let v = show(name);
        let run = str_at(&v, "name").to_string();
        assert!(run_names.insert(run.clone()), "run name {run} used twice");
        assert!(
            run.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "run name {run} is not file-safe"
        );
    }
    let out = dml()
        .args(["presets", "--show", "cub/semi_hard_triplett"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn each_row_preset_has_the_seeds_settings_and_published_numbers() {
    let listed: BTreeMap<String, String> = listed().into_iter().collect();
    for seed in &SEEDS {
        for (i, sl) in SEED_LOSSES.iter().enumerate() {
            let (loss, k, normalize, params) = (&sl.name, &sl.k, &sl.normalize, sl.params);
            let name = format!("{}/{loss}", seed.kind);
            let v = show(&name);
            assert_dataset_settings(&name, &v, seed);
            assert_eq!(int(&v, "plan.k"), *k, "{name}");
            assert_eq!(int(&v, "plan.p"), seed.p_for(*k), "{name}");
            assert_eq!(
                get(&v, "train.model.normalize").as_bool(),
                Some(*normalize),
                "{name}"
            );
            let l = get(&v, "train.loss").as_table().unwrap();
            assert_eq!(l["name"].as_str(), Some(*loss), "{name}");
            assert_eq!(l.len(), params.len() + 1, "{name}: {l:?}");
            for (key, value) in params {
                assert_eq!(float(&v, &format!("train.loss.{key}")), *value, "{name}");
            }
            let desc = &listed[&name];
            assert!(desc.contains(seed.published[i]), "{name}: {desc}");
            assert!(
                desc.contains(&format!("P{}×K{k}", seed.p_for(*k))),
                "{name}: {desc}"
            );
        }
        // The margin loss of Wu et al. (2017): α 0.2, β₀ 1.2, learnt, normalised,
        // distance-weighted sampling, on the dataset's triplet batches.
        let name = format!("{}/margin", seed.kind);
        let v = show(&name);
        assert_dataset_settings(&name, &v, seed);
        assert_eq!(
            (int(&v, "plan.p"), int(&v, "plan.k")),
            (seed.p_for(6), 6),
            "{name}"
        );
        assert_eq!(str_at(&v, "train.loss.name"), "margin");
        assert_eq!(float(&v, "train.loss.alpha"), 0.2);
        assert_eq!(float(&v, "train.loss.beta_init"), 1.2);
        assert_eq!(str_at(&v, "train.loss.sampling.kind"), "distance_weighted");
        assert_eq!(get(&v, "train.model.normalize").as_bool(), Some(true));
    }
}

#[test]
fn each_table_preset_sweeps_the_six_rows_with_their_own_p_and_k() {
    let listed: BTreeMap<String, String> = listed().into_iter().collect();
    for seed in &SEEDS {
        let name = format!("{}/seed-table", seed.kind);
        let v = show(&name);
        assert_dataset_settings(&name, &v, seed);
        // Normalisation and margins are left to each loss's recommended setting.
        assert!(get(&v, "train.model").get("normalize").is_none(), "{name}");
        assert!(get(&v, "train").get("loss").is_none(), "{name}");
        let sweep = get(&v, "sweep").as_table().unwrap();
        assert_eq!(sweep.len(), 1, "{name}: one zipped axis");
        let (axis, rows) = sweep.iter().next().unwrap();
        let paths: Vec<&str> = axis.split(',').map(str::trim).collect();
        assert_eq!(paths, ["train.loss.name", "plan.p", "plan.k"], "{name}");
        let rows: Vec<(String, i64, i64)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let r = r.as_array().unwrap();
                assert_eq!(r.len(), 3);
                (
                    r[0].as_str().unwrap().to_string(),
                    r[1].as_integer().unwrap(),
                    r[2].as_integer().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(String, i64, i64)> = SEED_LOSSES
            .iter()
            .map(|l| (l.name.to_string(), seed.p_for(l.k), l.k))
            .collect();
        assert_eq!(rows, expected, "{name}");
        let desc = &listed[&name];
        for p in seed.published {
            let r1 = p.split(" / ").nth(1).unwrap().trim_start_matches("R@1 ");
            assert!(desc.contains(r1), "{name}: {desc} lacks {r1}");
        }
    }
}

/// The dry-run keys of the preset's nodes, as (stage or `stage:label`, key),
/// leaving out the report (it names the runs).
fn stage_keys(store: &Path, preset: &str, root_set: &str) -> BTreeSet<(String, String)> {
    let out = run_in(
        store,
        &[
            "run",
            "--dry-run",
            "--json",
            "--preset",
            preset,
            "--set",
            root_set,
        ],
    );
    assert!(
        out.status.success(),
        "{preset} does not resolve on its fixture:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap();
            (
                id.split('[').next().unwrap().to_string(),
                n["key"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(stage, _)| stage != "report")
        .collect()
}

/// Every row resolves (`--dry-run`) on its dataset's fixture; without a root
/// the error says what to set; the synthetic presets need none.
#[test]
fn every_row_preset_resolves_on_its_datasets_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    for seed in &SEEDS {
        let root = tmp.path().join(seed.kind);
        fixture(seed.kind, &root);
        let root_set = format!("dataset.root={}", root.display());
        for loss in SEED_LOSSES
            .iter()
            .map(|l| l.name)
            .chain(["margin"])
            .chain(MODERN_LOSSES)
        {
            let name = format!("{}/{loss}", seed.kind);
            let k = stage_keys(&store, &name, &root_set);
            for stage in [
                "index",
                "plan",
                "decode",
                "train",
                "embed",
                "retrieve",
                "cluster",
                "train:untrained",
            ] {
                assert_eq!(
                    k.iter().filter(|(s, _)| s == stage).count(),
                    1,
                    "{name}: {stage} in {k:?}"
                );
            }
        }
        let err = fails(
            &store,
            &[
                "run",
                "--dry-run",
                "--preset",
                &format!("{}/hard_triplet", seed.kind),
            ],
        );
        assert!(err.contains("dataset.root"), "{err}");
    }
    let sweep = keys(&store, &["--preset", "synthetic/sweep"]);
    let trained: BTreeSet<&String> = sweep
        .iter()
        .filter(|(id, _)| id.starts_with("train["))
        .map(|(_, k)| k)
        .collect();
    assert_eq!(trained.len(), 4, "2 losses × 2 seeds: {sweep:?}");
    assert_eq!(
        sweep.keys().filter(|id| id.starts_with("plan")).count(),
        1,
        "one plan shared by the sweep: {sweep:?}"
    );
    keys(&store, &["--preset", "synthetic"]);
}

/// Each table sweep resolves to exactly its six rows' artifacts: the same plan,
/// train, embed, retrieve and cluster keys (and untrained baselines), so every
/// sweep point has its loss's P, K, margin and normalisation. Needs zipped
/// sweep axes (`"train.loss.name, plan.p, plan.k" = [[…], …]`).
#[test]
fn each_seed_table_resolves_to_exactly_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    for seed in &SEEDS {
        let root = tmp.path().join(seed.kind);
        fixture(seed.kind, &root);
        let root_set = format!("dataset.root={}", root.display());
        let name = format!("{}/seed-table", seed.kind);
        let table = stage_keys(&store, &name, &root_set);
        let mut rows = BTreeSet::new();
        for l in &SEED_LOSSES {
            rows.extend(stage_keys(
                &store,
                &format!("{}/{}", seed.kind, l.name),
                &root_set,
            ));
        }
        assert_eq!(table, rows, "{name}");
        let count = |stage: &str| table.iter().filter(|(s, _)| s == stage).count();
        assert_eq!(count("train"), 6, "{name}: six trained networks");
        assert_eq!(count("plan"), 3, "{name}: one plan per P×K");
        assert_eq!(count("index"), 1, "{name}: one index");
    }
}

/// One row per dataset, shrunk, runs every stage on its fixture: the list
/// files, the image paths and the splits flow through index → … → report.
#[test]
fn a_row_per_dataset_runs_end_to_end_on_its_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    // CUB keeps its Recall@K cut-offs (1, 2, 4, 8 < 12 test images); SOP's go to
    // 1000 and In-shop's to 50, more than the fixtures hold.
    for (preset, kind, k, ks) in [
        ("cub/semi_hard_triplet", "cub", 6, "retrieve.ks=[]"),
        ("sop/npairs", "sop", 2, "retrieve.ks=[1, 2, 4]"),
        ("inshop/contrastive", "inshop", 4, "retrieve.ks=[1, 2, 4]"),
    ] {
        let root = tmp.path().join(kind);
        fixture(kind, &root);
        let store = tmp.path().join(format!("store-{kind}"));
        let root_set = format!("dataset.root={}", root.display());
        let nodes = run_json(
            &store,
            &[
                "--preset",
                preset,
                "--set",
                &root_set,
                "--set",
                "plan.steps=2",
                "--set",
                "plan.p=2",
                "--set",
                "image.resize=40",
                "--set",
                "image.crop=32",
                "--set",
                "train.model.backbone=small_cnn",
                "--set",
                "train.model.embedding_dim=16",
                "--set",
                "train.device=cpu",
                "--set",
                "embed.batch_size=8",
                "--set",
                ks,
            ],
        );
        assert!(nodes.iter().all(|(_, s)| s == "ran"), "{preset}: {nodes:?}");
        let run = format!("{kind}-{}", preset.split('/').nth(1).unwrap());
        let index = latest_manifest(&store, &run, "index");
        assert_eq!(
            index["notes"]["dataset_root"].as_str(),
            Some(root.to_str().unwrap()),
            "{preset}: {index}"
        );
        // 3 train classes × 4 images; the test side as the adapter splits it.
        let per_split = &index["notes"]["per_split"];
        assert_eq!(per_split["train"], 12, "{preset}: {index}");
        let plan = latest_manifest(&store, &run, "plan");
        assert_eq!(plan["settings"]["plan"]["k"], k, "{preset}: {plan}");
        assert_eq!(plan["settings"]["plan"]["p"], 2, "{preset}: {plan}");
        // The evaluation saw the fixture's test side: CUB and SOP leave-one-out
        // over 12 test images, In-shop its 6 queries against 6 gallery images.
        let metrics: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                store
                    .join("latest")
                    .join(&run)
                    .join("retrieve/metrics.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let (protocol, queries, gallery) = match kind {
            "inshop" => ("query_gallery", 6, 6),
            _ => ("leave_one_out", 12, 12),
        };
        assert_eq!(metrics["protocol"], protocol, "{preset}: {metrics}");
        assert_eq!(metrics["queries"], queries, "{preset}: {metrics}");
        assert_eq!(metrics["gallery"], gallery, "{preset}: {metrics}");
        let r1 = metrics["recall@1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r1), "{preset}: {metrics}");
        if kind == "cub" {
            assert!(metrics.get("recall@8").is_some(), "CUB's Ks: {metrics}");
        }
    }
}

/// The modern presets carry their papers' recipes: ResNet-50 at 512-d, the optimiser,
/// rate, multiplier, warm-up, batch and image sizes; each names its published number.
#[test]
fn the_modern_presets_hold_their_papers_recipes() {
    for kind in ["cub", "sop", "inshop"] {
        let name = format!("{kind}/proxy_anchor");
        let v = show(&name);
        assert_eq!(str_at(&v, "train.model.backbone"), "resnet50", "{name}");
        assert_eq!(int(&v, "train.model.embedding_dim"), 512, "{name}");
        assert_eq!(str_at(&v, "train.optimizer.algorithm.name"), "adamw");
        assert_eq!(float(&v, "train.loss.lr_multiplier"), 100.0);
        assert_eq!(float(&v, "train.loss.alpha"), 32.0);
        assert_eq!(float(&v, "train.loss.margin"), 0.1);
        assert_eq!(float(&v, "train.optimizer.weight_decay"), 1e-4);
        assert_eq!(str_at(&v, "plan.sampler"), "random");
        assert_eq!(str_at(&v, "image.train_crop"), "random_resized");
        assert_eq!(int(&v, "image.crop"), 224);
        let (batch, lr, freeze, decay, gamma, images) = match kind {
            "cub" => (120, 1e-4, 240, 240, 0.5, 5_864),
            "sop" => (180, 6e-4, 330, 6_600, 0.25, 59_551),
            _ => (180, 6e-4, 143, 2_860, 0.25, 25_882),
        };
        let epoch = images / batch;
        assert_eq!(int(&v, "plan.batch_size"), batch, "{name}");
        assert_eq!(int(&v, "plan.steps"), 60 * epoch, "{name}: 60 epochs");
        assert_eq!(float(&v, "train.optimizer.learning_rate"), lr, "{name}");
        assert_eq!(int(&v, "train.freeze_backbone_steps"), freeze, "{name}");
        assert_eq!(int(&v, "train.optimizer.decay_every"), decay, "{name}");
        assert_eq!(float(&v, "train.optimizer.decay_gamma"), gamma, "{name}");
        assert_eq!(
            v["train"]["model"]
                .get("freeze_bn")
                .and_then(Value::as_bool),
            (kind == "cub").then_some(true),
            "{name}: --bn-freeze 1 on CUB only"
        );
        let name = format!("{kind}/multi_similarity");
        let v = show(&name);
        assert_eq!(str_at(&v, "train.model.backbone"), "resnet50", "{name}");
        assert_eq!(int(&v, "train.model.embedding_dim"), 512, "{name}");
        assert_eq!(str_at(&v, "train.optimizer.algorithm.name"), "adam");
        assert_eq!(float(&v, "train.optimizer.learning_rate"), 3e-5);
        assert_eq!(float(&v, "train.optimizer.weight_decay"), 5e-4);
        assert_eq!(int(&v, "train.optimizer.decay_every"), 1200);
        assert_eq!(int(&v, "plan.steps"), 3000);
        assert_eq!((int(&v, "plan.p"), int(&v, "plan.k")), (16, 5), "{name}");
        assert_eq!(str_at(&v, "train.loss.miner"), "multi_similarity");
        assert_eq!(
            (
                float(&v, "train.loss.alpha"),
                float(&v, "train.loss.beta"),
                float(&v, "train.loss.base")
            ),
            (2.0, 40.0, 0.5)
        );
        assert_eq!(int(&v, "image.crop"), 227);
    }
    let listed = listed();
    for (name, r1) in [
        ("cub/proxy_anchor", "69.7"),
        ("sop/proxy_anchor", "80.3"),
        ("inshop/proxy_anchor", "92.0"),
        ("cub/multi_similarity", "65.7"),
        ("sop/multi_similarity", "78.2"),
        ("inshop/multi_similarity", "89.7"),
    ] {
        let (_, desc) = listed.iter().find(|(n, _)| n == name).unwrap();
        let text = String::from_utf8(
            dml()
                .args(["presets", "--show", name])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(
            text.contains(&format!("Published Recall@1: {r1}"))
                || text.contains(&format!("(paper, Table 1, ResNet-50, 512-d): {r1}"))
                || text.contains(&format!("ResNet-50, 512-d): {r1}")),
            "{name} names its published number: {text}"
        );
        assert!(
            desc.contains(&format!("R@1 {r1}")) && desc.contains("512-d"),
            "{name}: {desc}"
        );
    }
}

/// OML's ViT-S/16 DINO recipes: (dataset kind, P, K, margin, normalise, optimiser, R@1), from
/// open-metric-learning's `pipelines/features_extraction/extractor_*/train_*.yaml` and README.
const OML_KINDS: [&str; 4] = ["cub", "cars196", "sop", "inshop"];
#[allow(clippy::type_complexity)]
const OML: [(&str, i64, i64, &str, bool, &str, &str); 4] = [
    ("cub", 8, 4, "soft", false, "adam", "83.7"),
    ("cars196", 20, 10, "soft", false, "adam", "90.7"),
    ("sop", 32, 6, "0.15", true, "adam", "86.6"),
    ("inshop", 30, 4, "soft", false, "adamw", "92.1"),
];

#[test]
fn the_oml_vit_presets_carry_omls_settings_and_resolve_on_fixtures() {
    let listed = listed();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    for (kind, p, k, margin, normalize, algorithm, r1) in OML {
        let name = format!("{kind}/oml-vit-s16");
        let (_, desc) = listed.iter().find(|(n, _)| *n == name).unwrap();
        assert!(desc.contains(&format!("OML: R@1 {r1}")), "{name}: {desc}");
        let v = show(&name);
        assert_eq!(str_at(&v, "train.model.backbone"), "vit_s16", "{name}");
        assert_eq!(int(&v, "plan.p"), p, "{name}");
        assert_eq!(int(&v, "plan.k"), k, "{name}");
        assert_eq!(int(&v, "image.crop"), 224, "{name}");
        match get(&v, "train.loss.margin") {
            Value::String(m) => assert_eq!(m, margin, "{name}"),
            m => assert_eq!(m.as_float().unwrap().to_string(), margin, "{name}"),
        }
        assert_eq!(str_at(&v, "train.loss.name"), "hard_triplet", "{name}");
        assert_eq!(
            get(&v, "train.model.normalize").as_bool(),
            Some(normalize),
            "{name}"
        );
        assert_eq!(float(&v, "train.optimizer.learning_rate"), 1e-5, "{name}");
        assert_eq!(
            str_at(&v, "train.optimizer.algorithm.name"),
            algorithm,
            "{name}"
        );
        let text = String::from_utf8(
            dml()
                .args(["presets", "--show", &name])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(text.contains("Where dml differs"), "{text}");
        assert!(text.contains("export_timm.py --model vit_small_patch16_224.dino"));

        let root = tmp.path().join(kind);
        fixture(kind, &root);
        let keys = stage_keys(&store, &name, &format!("dataset.root={}", root.display()));
        for stage in ["index", "plan", "decode", "train", "embed", "retrieve"] {
            assert!(
                keys.iter().any(|(s, _)| s == stage),
                "{name}: {stage} in {keys:?}"
            );
        }
    }
}
