//! Parity of dml's `bn_inception` with its reference, Cadene's `pretrainedmodels.BNInception` (0.7.4): a seeded random-init reference (batch-norm parameters, running statistics and biases randomised; no download) is exported with `scripts/export_bninception.py`, loaded into dml's backbone through `train.model.pretrained`, and both compute eval-mode pooled features for the same batch (RGB for dml, reversed to BGR for the reference), which must agree within 1e-4 (relative to the features' magnitude when it exceeds 1): at 224 px, where the reference's own 7×7 `global_pool` is global, and at 160 and 256 px against the reference's `features` averaged globally (its fixed pool pools globally only at 224 px). A file of another network, or with a tensor added, is refused with the tensor named.
//!
//! Needs the Python environment that supplies libtorch with pretrainedmodels 0.7.4, munch and
//! safetensors (`scripts/python-extras.sh` installs them; `DML_PYTHON` overrides the
//! interpreter).

mod common;
use common::{get, python, read, repo_root};
use std::path::{Path, PathBuf};
use std::process::Command;

use dml_torch::train::{build_model, Backbone, Head, ModelConfig, TrainError};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// Runs `scripts/export_bninception.py --random-init`; with `size`, also writes the reference
/// input and features.
fn export(dir: &Path, seed: u64, size: Option<i64>) -> (PathBuf, Option<PathBuf>) {
    let weights = dir.join(format!("bn_inception.{seed}.safetensors"));
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("scripts/export_bninception.py"))
        .args(["--random-init", "--seed", &seed.to_string()])
        .arg("--out")
        .arg(&weights);
    let reference = size.map(|s| {
        let r = dir.join(format!("bn_inception.{seed}.{s}.reference.safetensors"));
        cmd.args(["--reference-batch", "2", "--reference-size", &s.to_string()])
            .arg("--reference-out")
            .arg(&r);
        r
    });
    let out = cmd.output().expect("run scripts/export_bninception.py");
    assert!(
        out.status.success(),
        "export_bninception.py failed (pretrainedmodels 0.7.4 is installed by scripts/python-extras.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (weights, reference)
}

fn config(weights: &Path) -> ModelConfig {
    ModelConfig {
        backbone: Backbone::BnInception,
        head: Head::Direct,
        embedding_dim: 8,
        normalize: Some(false),
        pretrained: Some(weights.to_path_buf()),
        ..ModelConfig::default()
    }
}

/// Max |dml − reference| over the batch, after checking it is within the tolerance.
fn parity(size: i64) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let (weights, reference) = export(dir.path(), 7, Some(size));
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build_model(&vs, &config(&weights)).expect("load the export");
    let tensors = read(&reference.unwrap());
    let (input, want) = (get(&tensors, "input"), get(&tensors, "features"));
    let got = tch::no_grad(|| net.features_t(&input, false));
    assert_eq!(got.size(), [2, 1024]);
    assert_eq!(got.size(), want.size());
    let max_diff = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    let spread = want.to_kind(Kind::Double).std(true).double_value(&[]);
    // The two images' features differ: the features depend on the input, not only on the
    // batch norms' shifts.
    let between = (want.get(0) - want.get(1)).abs().max().double_value(&[]);
    eprintln!(
        "bn_inception {size} px: max |dml − pretrainedmodels| = {max_diff:e} (features up to {scale:.3}, the two images' differ by up to {between:.3})"
    );
    assert!(
        spread > 1e-2 && between > 0.1,
        "reference features are degenerate"
    );
    assert!(
        max_diff <= TOLERANCE * scale.max(1.0),
        "bn_inception at {size} px: max |dml − pretrainedmodels| = {max_diff:e} > {TOLERANCE:e} × max(1, {scale})"
    );
    let train = tch::no_grad(|| net.forward_t(&input, true));
    assert_eq!(train.size(), [2, 8]);
    max_diff
}

#[test]
fn bn_inception_matches_pretrainedmodels_at_224() {
    parity(224);
}

#[test]
fn bn_inception_matches_pretrainedmodels_at_other_sizes() {
    // 160 px: a 5 × 5 final map; 256 px: 8 × 8 (the reference's 7 × 7 pool would give 2 × 2).
    parity(160);
    parity(256);
}

#[test]
fn wrong_bn_inception_weights_are_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (weights, _) = export(dir.path(), 1, None);
    let tensors = read(&weights);
    // The export holds the reference's classifier, which dml ignores.
    assert!(tensors.iter().any(|(n, _)| n == "last_linear.weight"));
    let load = |tensors: &[(String, Tensor)]| {
        let path = dir.path().join("edited.safetensors");
        Tensor::write_safetensors(tensors, &path).expect("write");
        let vs = nn::VarStore::new(Device::Cpu);
        build_model(&vs, &config(&path)).map(|_| ())
    };
    let copy = || {
        tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect::<Vec<_>>()
    };
    load(&copy()).expect("the reference's export loads, classifier included");

    // A missing tensor.
    let mut missing = copy();
    missing.retain(|(n, _)| n != "inception_4e_double_3x3_1_bn.running_mean");
    let err = load(&missing).unwrap_err();
    assert!(
        matches!(&err, TrainError::MissingTensor { name, .. }
            if name == "inception_4e_double_3x3_1_bn.running_mean"),
        "{err}"
    );

    // A mis-shaped one: the older ports' [1, C] batch norms (the export script reshapes them).
    let mut reshaped = copy();
    for (n, t) in &mut reshaped {
        if n == "conv2_3x3_bn.weight" {
            *t = t.view([1, 192]);
        }
    }
    let err = load(&reshaped).unwrap_err();
    assert!(
        matches!(&err, TrainError::ShapeMismatch { name, expected, found, .. }
            if name == "conv2_3x3_bn.weight" && expected == &[192] && found == &[1, 192]),
        "{err}"
    );

    // A tensor dml has no place for (torchvision GoogLeNet's, say).
    let mut extra = copy();
    extra.push((
        "inception3a.branch1.conv.weight".into(),
        Tensor::zeros([64, 192, 1, 1], (Kind::Float, Device::Cpu)),
    ));
    let err = load(&extra).unwrap_err();
    assert!(
        matches!(&err, TrainError::UnexpectedTensor { name, .. }
            if name == "inception3a.branch1.conv.weight"),
        "{err}"
    );
    assert!(
        err.to_string().contains("scripts/export_bninception.py"),
        "{err}"
    );

    // A batch counter, as a state dict saved by PyTorch ≥ 0.4 has, is ignored.
    let mut counted = copy();
    counted.push((
        "conv1_7x7_s2_bn.num_batches_tracked".into(),
        Tensor::from_slice(&[5i64]),
    ));
    load(&counted).expect("num_batches_tracked is ignored");
}
