//! End-to-end training: determinism, resume after an interruption, what
//! retrains and what does not, NaN handling, the report.
use crate::common::*;

#[test]
fn cpu_training_is_byte_identical_across_fresh_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&a, &["run", cfg]);
    ok(&b, &["run", cfg]);
    for (node, file) in [
        ("train", "model.safetensors"),
        ("embed", "embeddings.arrow"),
        ("retrieve", "metrics.json"),
    ] {
        let (ma, mb) = (
            latest_manifest(&a, "tiny", node),
            latest_manifest(&b, "tiny", node),
        );
        assert_eq!(file_hash(&ma, file), file_hash(&mb, file), "{node}/{file}");
    }
    // The artifacts a notebook opens.
    for f in [
        "train/train_log.parquet",
        "train/loss.png",
        "embed/embeddings.arrow",
        "report/report.md",
        "report/recall.png",
    ] {
        assert!(a.join("latest/tiny").join(f).exists(), "{f}");
    }
    let path = ok(&a, &["path", "embed"]);
    assert!(path.trim().ends_with("latest/tiny/embed"), "{path}");
}

/// Trains `Config::tiny().train()` with `sets` straight through, and in a second store aborted
/// (as by kill -9) after step 4 and rerun: the rerun resumes from the step-4 checkpoint
/// and writes byte-identical weights. Returns the straight run's `model.safetensors`.
fn resumes_to_the_same_weights(sets: &[&str]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let mut args = vec![cfg, "--until", "train"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let straight = tmp.path().join("straight");
    let mut run_args = vec!["run"];
    run_args.extend(&args);
    ok(&straight, &run_args);
    let resumed = tmp.path().join("resumed");
    let killed = dml()
        .env("DML_FAULT_ABORT_AFTER_STEP", "4")
        .arg("--store")
        .arg(&resumed)
        .args(&run_args)
        .output()
        .unwrap();
    assert!(!killed.status.success());
    assert!(
        !resumed.join("objects/train").exists()
            || resumed.join("objects/train").read_dir().unwrap().count() == 0
    );
    let out = run_json(&resumed, &args);
    assert_eq!(status_of(&out, "train"), "ran");
    let (ms, mr) = (
        latest_manifest(&straight, "tiny", "train"),
        latest_manifest(&resumed, "tiny", "train"),
    );
    assert_eq!(mr["notes"]["resumed_from_step"], 4, "{}", mr["notes"]);
    assert_eq!(
        file_hash(&ms, "model.safetensors"),
        file_hash(&mr, "model.safetensors")
    );
    assert_eq!(file_hash(&ms, "train_log.parquet").len(), 64);
    std::fs::read(straight.join("latest/tiny/train/model.safetensors")).unwrap()
}

#[test]
fn an_interrupted_train_stage_resumes_to_the_same_weights() {
    resumes_to_the_same_weights(&[]);
}

/// The Proxy-Anchor recipe's state survives a kill -9 too: the proxies (trained at 100×
/// the rate), AdamW's per-tensor moments and step counts, the head's multiplier, the
/// warm-up, the frozen backbone's first steps and uniform batches.
#[test]
fn an_interrupted_proxy_anchor_train_resumes_to_the_same_weights_and_proxies() {
    let weights = resumes_to_the_same_weights(&[
        "train.loss.name=proxy_anchor",
        "train.loss.lr_multiplier=100",
        "train.optimizer.algorithm.name=adamw",
        "train.optimizer.weight_decay=0.0001",
        "train.optimizer.head_lr_multiplier=2",
        "train.optimizer.warmup_steps=2",
        "train.optimizer.schedule=step",
        "train.optimizer.decay_every=3",
        "train.optimizer.decay_gamma=0.5",
        "train.freeze_backbone_steps=3",
        "plan.sampler=random",
    ]);
    let holds = |name: &[u8]| weights.windows(name.len()).any(|w| w == name);
    assert!(
        holds(b"loss.proxies"),
        "the proxies are saved with the weights"
    );
}

/// ViT-S/16 at 32 px (a 2 × 2 patch grid, the 14 × 14 position embeddings resampled),
/// AdamW with timm's weight-decay rule, layer-wise decay and a warm-up.
fn tiny_vit() -> Config {
    Config::tiny()
        .train()
        .set("image.crop", 32)
        .set("plan.steps", 6)
        .set("train.checkpoint_every", 3)
        .set("train.model.backbone", "vit_s16")
        .set("train.optimizer.learning_rate", 1e-4)
        .set("train.optimizer.weight_decay", 0.05)
        .set("train.optimizer.timm_weight_decay", true)
        .set("train.optimizer.layer_decay", 0.75)
        .set("train.optimizer.warmup_steps", 2)
        .set("train.optimizer.algorithm.name", "adamw")
}

#[test]
fn a_vit_trains_end_to_end_and_resumes_byte_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_vit().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let straight = tmp.path().join("straight");
    ok(&straight, &["run", cfg]);
    let model = std::fs::read_to_string(straight.join("latest/tiny/train/model.json")).unwrap();
    assert!(model.contains("\"vit_s16\""), "{model}");
    assert!(model.contains("\"layer_decay\""), "{model}");
    let report = std::fs::read_to_string(straight.join("latest/tiny/report/report.md")).unwrap();
    assert!(report.contains("| tiny | hard_triplet |"), "{report}");
    let resumed = tmp.path().join("resumed");
    let killed = dml()
        .env("DML_FAULT_ABORT_AFTER_STEP", "3")
        .arg("--store")
        .arg(&resumed)
        .args(["run", cfg, "--until", "train"])
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let out = run_json(&resumed, &[cfg]);
    assert_eq!(status_of(&out, "train"), "ran");
    let mr = latest_manifest(&resumed, "tiny", "train");
    assert_eq!(mr["notes"]["resumed_from_step"], 3, "{}", mr["notes"]);
    for (node, file) in [
        ("train", "model.safetensors"),
        ("embed", "embeddings.arrow"),
        ("retrieve", "metrics.json"),
    ] {
        assert_eq!(
            file_hash(&latest_manifest(&straight, "tiny", node), file),
            file_hash(&latest_manifest(&resumed, "tiny", node), file),
            "{node}/{file}"
        );
    }
}

/// A safetensors file holding only `tensors` (name, shape) of f32 zeros.
fn safetensors_of(path: &std::path::Path, tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(vec![0u8; offset]);
    std::fs::write(path, file).unwrap();
}

#[test]
fn a_wrong_vit_weights_file_is_refused_before_training_with_the_tensor_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_vit().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    // ViT-B/16 widths where ViT-S/16 is configured.
    let weights = tmp.path().join("vit_b16.safetensors");
    safetensors_of(
        &weights,
        &[
            ("blocks.0.attn.proj.bias", &[768]),
            ("cls_token", &[1, 1, 768]),
        ],
    );
    let set = format!("train.model.pretrained=\"{}\"", weights.display());
    let store = tmp.path().join("store");
    let err = fails(&store, &["run", cfg, "--set", &set]);
    assert!(
        err.contains("`blocks.0.attn.proj.bias`") && err.contains("[384]") && err.contains("[768]"),
        "{err}"
    );
    assert!(
        !store.join("latest/tiny/train").exists(),
        "nothing was trained"
    );
}

#[test]
fn evaluation_settings_do_not_retrain_and_loss_settings_do() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    ok(&store, &["run", cfg]);
    let p = plan(&store, &[cfg, "--set", "retrieve.ks=[1, 3]"]);
    let status = |p: &[Planned], id: &str| p.iter().find(|n| n.id == id).unwrap().status.clone();
    assert_eq!(status(&p, "train"), "cached");
    assert_eq!(status(&p, "embed"), "cached");
    assert_eq!(status(&p, "retrieve"), "run");
    assert_eq!(status(&p, "cluster"), "cached");
    let p = plan(
        &store,
        &[cfg, "--set", "train.loss.name=\"lifted_structure\""],
    );
    assert_eq!(status(&p, "plan"), "cached");
    assert_eq!(status(&p, "train"), "run");
    assert!(p
        .iter()
        .find(|n| n.id == "train")
        .unwrap()
        .reason
        .contains("train.loss.name changed hard_triplet → lifted_structure"));
    assert_eq!(status(&p, "embed"), "run");
    // The untrained baseline depends on neither the loss nor the plan.
    assert_eq!(status(&p, "train:untrained"), "cached");
    // A loss whose batch layout does not fit the plan is refused up front.
    let e = fails(
        &store,
        &[
            "run",
            cfg,
            "--dry-run",
            "--set",
            "train.loss.name=\"contrastive\"",
        ],
    );
    assert!(e.contains("plan.k=4"), "{e}");
}

#[test]
fn a_diverging_loss_stops_with_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let e = fails(
        &store,
        &[
            "run",
            cfg.to_str().unwrap(),
            "--set",
            "train.optimizer.learning_rate=1e30",
        ],
    );
    assert!(
        e.contains("step") && (e.contains("NaN") || e.contains("nan") || e.contains("infinite")),
        "{e}"
    );
    assert!(
        !store.join("objects/train").exists()
            || store.join("objects/train").read_dir().unwrap().count() == 0
    );
}

#[test]
fn the_report_shows_trained_and_untrained_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let out = ok(&store, &["run", cfg.to_str().unwrap()]);
    assert!(
        out.contains("| run | method |") && out.contains("untrained R@1"),
        "{out}"
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(store.join("latest/tiny/report/report.json")).unwrap(),
    )
    .unwrap();
    let retrieve: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(store.join("latest/tiny/retrieve/metrics.json")).unwrap(),
    )
    .unwrap();
    let cluster: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(store.join("latest/tiny/cluster/metrics.json")).unwrap(),
    )
    .unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["nmi"], cluster["nmi"]);
    assert_eq!(run["recall"][0]["value"], retrieve["recall@1"]);
    assert_eq!(run["map_at_r"], retrieve["map@r"]);
    let untrained: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(store.join("latest/tiny/retrieve@untrained/metrics.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(run["untrained_recall@1"], untrained["recall@1"]);
    for png in ["recall.png", "r1.png", "loss_0.png"] {
        assert!(store.join("latest/tiny/report").join(png).exists(), "{png}");
    }
}

#[test]
fn a_truncated_jpeg_is_named_at_index_and_can_be_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    folder_dataset(&data, 4, 3);
    // A JPEG whose header is intact but whose data is cut off: the index checks
    // the end marker, so it is named before anything is decoded.
    let img = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
    });
    let jpg = data.join("class_02/cut.jpg");
    img.save(&jpg).unwrap();
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 2]).unwrap();
    let store = tmp.path().join("store");
    let a = on_folder(
        &["run", "--until", "decode"],
        &data,
        &["image.resize=24", "image.crop=20"],
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let e = fails(&store, &a);
    assert!(e.contains("class_02/cut.jpg"), "{e}");
    assert!(
        e.contains("truncated") && e.contains("--skip-bad-images"),
        "{e}"
    );
    assert!(
        !store.join("objects/decode").exists(),
        "nothing was decoded before the bad image was named"
    );
    let mut skip = a.to_vec();
    skip.push("--skip-bad-images");
    ok(&store, &skip);
    let show = ok(&store, &["show", "index"]);
    assert!(
        show.contains("skipped_images") && show.contains("class_02/cut.jpg"),
        "{show}"
    );
}

#[test]
fn augmentation_and_precision_settings_retrain_but_never_redecode() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    ok(&store, &["run", cfg, "--until", "train"]);
    let m = latest_manifest(&store, "tiny", "train");
    assert!(
        m["notes"]["mean_data_wait_s"].as_f64().unwrap() >= 0.0,
        "{}",
        m["notes"]
    );
    let status = |p: &[Planned], id: &str| {
        let n = p.iter().find(|n| n.id == id).unwrap();
        (n.status.clone(), n.reason.clone())
    };
    let until = ["--until", "train"];
    let with = |set: &str| {
        let mut a = vec![cfg];
        a.extend_from_slice(&until);
        a.extend_from_slice(&["--set", set]);
        plan(&store, &a)
    };
    // Changing the flip retrains; the decode cache stays.
    let p = with("image.flip=false");
    assert_eq!(status(&p, "decode").0, "cached");
    let (s, why) = status(&p, "train");
    assert_eq!(s, "run");
    assert!(why.contains("image.flip"), "{why}");
    // Defaults written out, and ranges of a crop not in use, change nothing.
    for unchanged in [
        "image.flip=true",
        "image.train_crop=\"random\"",
        "image.random_resized_scale=[0.3, 1.0]",
        "train.deterministic=false",
    ] {
        assert_eq!(status(&with(unchanged), "train").0, "cached", "{unchanged}");
    }
    for changed in [
        "image.train_crop=\"random_resized\"",
        "train.deterministic=true",
    ] {
        let p = with(changed);
        assert_eq!(status(&p, "train").0, "run", "{changed}");
        assert_eq!(status(&p, "decode").0, "cached", "{changed}");
    }
    let e = fails(
        &store,
        &[
            "run",
            cfg,
            "--dry-run",
            "--set",
            "image.random_resized_scale=[0.5, 2.0]",
        ],
    );
    assert!(e.contains("random_resized_scale"), "{e}");
    // The random-resized crop without flips trains through the pipeline.
    let out = run_json(
        &store,
        &[
            cfg,
            "--until",
            "train",
            "--set",
            "image.train_crop=\"random_resized\"",
            "--set",
            "image.flip=false",
        ],
    );
    assert_eq!(status_of(&out, "train"), "ran");
    assert_eq!(status_of(&out, "decode"), "cached");
}

#[test]
fn bf16_trains_on_a_cpu_with_bf16_and_is_refused_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let args = [
        "run",
        cfg,
        "--until",
        "train",
        "--set",
        "train.precision=\"bf16\"",
    ];
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if flags.contains("avx512_bf16") {
        ok(&store, &args);
        let m = latest_manifest(&store, "tiny", "train");
        assert!(m["notes"]["final_loss"].as_f64().unwrap().is_finite());
        assert_eq!(m["settings"]["train"]["precision"], "bf16");
    } else {
        let e = fails(&store, &args);
        assert!(e.contains("avx512_bf16"), "{e}");
    }
}

/// The untrained baseline's directory in `store` (the train artifact whose key's
/// settings say `untrained`).
fn untrained_dir(store: &std::path::Path) -> std::path::PathBuf {
    let mut found = Vec::new();
    for e in std::fs::read_dir(store.join("objects/train")).unwrap() {
        let dir = e.unwrap().path();
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        if m["settings"]["train"]["untrained"] == true {
            found.push(dir);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

#[test]
fn the_untrained_baseline_is_the_same_bytes_whichever_loss_and_optimiser_built_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Config::tiny().train().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Both normalised, so that only the loss and the optimiser differ; the margin
    // loss has a learnable β (a loss parameter), the triplet loss none.
    let common = ["--until", "train", "--set", "train.model.normalize=true"];
    ok(&a, &[&["run", cfg][..], &common].concat());
    ok(
        &b,
        &[
            &["run", cfg][..],
            &common,
            &[
                "--set",
                "train.loss.name=\"margin\"",
                "--set",
                "train.optimizer.learning_rate=0.01",
            ],
        ]
        .concat(),
    );
    let (da, db) = (untrained_dir(&a), untrained_dir(&b));
    assert_eq!(da.file_name(), db.file_name(), "one key");
    for f in ["model.json", "model.safetensors"] {
        let (x, y) = (
            std::fs::read(da.join(f)).unwrap(),
            std::fs::read(db.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between configs that share its key");
    }
    // What it records is what its key holds: the network, not the loss or optimiser.
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(da.join("model.json")).unwrap()).unwrap();
    assert!(model.get("model").is_some(), "{model}");
    for absent in ["loss", "optimizer", "precision"] {
        assert!(model.get(absent).is_none(), "{model}");
    }
}
