//! Parity of dml's backbones with torchvision: a randomly initialised torchvision model is exported with `scripts/export_torchvision.py`, loaded into dml's backbone, and both compute eval-mode pooled features for the same input, which must agree within 1e-4 (relative to the features' magnitude when it exceeds 1).
//!
//! Needs the Python environment that supplies libtorch (`scripts/bootstrap.sh` puts it first on
//! PATH; `DML_PYTHON` overrides the interpreter). torchvision and safetensors are installed into
//! it with `pip install --no-deps` when missing.

mod common;
use common::{python, repo_root};
use std::process::Command;
use std::sync::OnceLock;

use dml_torch::train::{build_model, Backbone, Head, ModelConfig};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// torchvision release built against torch 2.11 (its metadata requires torch==2.11.0).
const TORCHVISION: &str = "torchvision==0.26.0";
const TOLERANCE: f64 = 1e-4;

/// Makes sure torchvision and safetensors import, installing them once if needed.
fn python_ready() -> &'static Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY.get_or_init(|| {
        let imports = || {
            Command::new(python())
                .args(["-c", "import torch, torchvision, safetensors"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if imports() {
            return Ok(());
        }
        let status = Command::new(python())
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                TORCHVISION,
                "safetensors",
            ])
            .status()
            .map_err(|e| format!("cannot run {}: {e}", python()))?;
        if status.success() && imports() {
            Ok(())
        } else {
            Err(format!(
                "could not install {TORCHVISION} and safetensors into {}",
                python()
            ))
        }
    })
}

fn parity(backbone: Backbone, size: i64) {
    if let Err(e) = python_ready() {
        panic!("parity needs torch, torchvision and safetensors in Python: {e}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("weights.safetensors");
    let reference = dir.path().join("reference.safetensors");
    let model = backbone.torchvision_name().expect("a torchvision backbone");
    let out = Command::new(python())
        .arg(repo_root().join("scripts/export_torchvision.py"))
        .args([
            "--model",
            model,
            "--random-init",
            "--seed",
            "3",
            "--reference-batch",
            "2",
        ])
        .arg("--reference-size")
        .arg(size.to_string())
        .arg("--out")
        .arg(&weights)
        .arg("--reference-out")
        .arg(&reference)
        .output()
        .expect("run export_torchvision.py");
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        backbone,
        head: Head::Direct,
        embedding_dim: 8,
        normalize: Some(false),
        pretrained: Some(weights),
        input_scaling: None,
        freeze_bn: false,
        pool: Default::default(),
    };
    let net = build_model(&vs, &cfg).expect("load the exported weights");
    let tensors = Tensor::read_safetensors(&reference).expect("read the reference");
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .unwrap_or_else(|| panic!("reference lacks `{name}`"))
    };
    let (input, want) = (get("input"), get("features"));
    let got = tch::no_grad(|| net.features_t(&input, false));
    assert_eq!(got.size(), want.size());
    let max_diff = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    let spread = want.to_kind(Kind::Double).std(true).double_value(&[]);
    eprintln!(
        "{}: max |dml − torchvision| = {max_diff:e} (features up to {scale:.3})",
        backbone.name()
    );
    assert!(
        spread > 1e-3,
        "{}: reference features are degenerate (std {spread})",
        backbone.name()
    );
    // 1e-4, relative to the features' magnitude once it exceeds 1 (random-init ResNet-50
    // features reach the hundreds, where f32 summation order alone moves the last digits).
    assert!(
        max_diff <= TOLERANCE * scale.max(1.0),
        "{}: max |dml − torchvision| = {max_diff:e} > {TOLERANCE:e} × max(1, {scale})",
        backbone.name()
    );
    // Training-mode forward must run on the loaded weights as well.
    let train = tch::no_grad(|| net.forward_t(&input, true));
    assert_eq!(train.size(), [2, 8]);
}

#[test]
fn resnet18_matches_torchvision() {
    parity(Backbone::Resnet18, 64);
}

#[test]
fn resnet50_matches_torchvision() {
    parity(Backbone::Resnet50, 64);
}

#[test]
fn densenet169_matches_torchvision() {
    parity(Backbone::Densenet169, 64);
}

#[test]
fn inception_v1_matches_torchvision() {
    // 96 px keeps every ceil-mode pooling stage non-trivial (96 → 48 → 24 → 12 → 6 → 3).
    parity(Backbone::InceptionV1, 96);
}
