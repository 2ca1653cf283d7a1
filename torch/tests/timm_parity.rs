//! Parity of dml's Vision Transformers with timm: a seeded random-init timm model (no download) is exported with `scripts/export_timm.py`, loaded into dml's backbone through `train.model.pretrained`, and both compute eval-mode pooled features for the same input, which must agree within 1e-4 (relative to the features' magnitude when it exceeds 1): at 224 px and at another size, where both resample the position embeddings; with the class token and with mean pooling. A file of another architecture, or with a tensor added, is refused with the tensor named.
//!
//! Needs the Python environment that supplies libtorch with timm 1.0.22 and safetensors
//! (`scripts/python-extras.sh` installs them; `DML_PYTHON` overrides the interpreter).

mod common;
use common::{python, repo_root};
use std::path::{Path, PathBuf};
use std::process::Command;

use dml_torch::train::{build_model, Backbone, Head, ModelConfig, Pool, TrainError};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// Runs `scripts/export_timm.py`; with `size`, also writes the reference input and features.
fn export(model: &str, dir: &Path, pool: &str, size: Option<i64>) -> (PathBuf, Option<PathBuf>) {
    let weights = dir.join(format!("{model}.{pool}.safetensors"));
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("scripts/export_timm.py"))
        .args([
            "--model",
            model,
            "--random-init",
            "--seed",
            "5",
            "--pool",
            pool,
        ])
        .arg("--out")
        .arg(&weights);
    let reference = size.map(|s| {
        let r = dir.join(format!("{model}.{pool}.{s}.reference.safetensors"));
        cmd.args(["--reference-batch", "2", "--reference-size", &s.to_string()])
            .arg("--reference-out")
            .arg(&r);
        r
    });
    let out = cmd.output().expect("run scripts/export_timm.py");
    assert!(
        out.status.success(),
        "export_timm.py failed (timm 1.0.22 is installed by scripts/python-extras.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (weights, reference)
}

fn config(backbone: Backbone, pool: Pool, weights: &Path) -> ModelConfig {
    ModelConfig {
        backbone,
        head: Head::Direct,
        embedding_dim: 8,
        normalize: Some(false),
        pretrained: Some(weights.to_path_buf()),
        pool,
        ..ModelConfig::default()
    }
}

fn parity(backbone: Backbone, pool: Pool, size: i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = backbone.timm_name().expect("a timm backbone");
    let pool_name = match pool {
        Pool::Token => "token",
        Pool::Mean => "mean",
    };
    let (weights, reference) = export(model, dir.path(), pool_name, Some(size));
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build_model(&vs, &config(backbone, pool, &weights)).expect("load the export");
    let tensors = Tensor::read_safetensors(reference.unwrap()).expect("read the reference");
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
        "{} {pool_name} {size} px: max |dml − timm| = {max_diff:e} (features up to {scale:.3})",
        backbone.name()
    );
    assert!(spread > 1e-3, "reference features are degenerate");
    assert!(
        max_diff <= TOLERANCE * scale.max(1.0),
        "{} at {size} px: max |dml − timm| = {max_diff:e} > {TOLERANCE:e} × max(1, {scale})",
        backbone.name()
    );
    let train = tch::no_grad(|| net.forward_t(&input, true));
    assert_eq!(train.size(), [2, 8]);
}

#[test]
fn vit_s16_matches_timm_at_224_and_at_other_sizes() {
    parity(Backbone::VitS16, Pool::Token, 224);
    // 96 px: a 6 × 6 grid, the 14 × 14 position embeddings downsampled.
    parity(Backbone::VitS16, Pool::Token, 96);
    // 288 px: an 18 × 18 grid, upsampled; mean pooling.
    parity(Backbone::VitS16, Pool::Mean, 288);
}

#[test]
fn vit_b16_matches_timm() {
    parity(Backbone::VitB16, Pool::Token, 224);
    parity(Backbone::VitB16, Pool::Mean, 160);
}

#[test]
fn vit_b16_clip_matches_timm() {
    parity(Backbone::VitB16Clip, Pool::Token, 224);
    parity(Backbone::VitB16Clip, Pool::Token, 128);
}

#[test]
fn wrong_weights_are_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (small, _) = export("vit_small_patch16_224", dir.path(), "token", None);
    let (clip, _) = export("vit_base_patch16_clip_224", dir.path(), "token", None);
    let load = |backbone: Backbone, path: &Path| {
        let vs = nn::VarStore::new(Device::Cpu);
        build_model(&vs, &config(backbone, Pool::Token, path))
            .map(|_| ())
            .unwrap_err()
    };
    // ViT-S weights for ViT-B: the first tensor (by name) of another width.
    let err = load(Backbone::VitB16, &small);
    assert!(
        matches!(&err, TrainError::ShapeMismatch { name, expected, found, .. }
            if name == "blocks.0.attn.proj.bias" && expected == &[768] && found == &[384]),
        "{err}"
    );
    // CLIP's tower for the plain ViT-B: no patch-embedding bias in the file.
    let err = load(Backbone::VitB16, &clip);
    assert!(
        matches!(&err, TrainError::MissingTensor { name, .. } if name == "patch_embed.proj.bias"),
        "{err}"
    );
    // A file with a tensor dml has no place for (a register token).
    let mut tensors = Tensor::read_safetensors(&small).expect("read the export");
    tensors.push((
        "reg_token".into(),
        Tensor::zeros([1, 4, 384], (Kind::Float, Device::Cpu)),
    ));
    // timm's classifier is allowed beside the trunk.
    tensors.push((
        "head.weight".into(),
        Tensor::zeros([10, 384], (Kind::Float, Device::Cpu)),
    ));
    let extra = dir.path().join("extra.safetensors");
    Tensor::write_safetensors(&tensors, &extra).expect("write");
    let err = load(Backbone::VitS16, &extra);
    assert!(
        matches!(&err, TrainError::UnexpectedTensor { name, .. } if name == "reg_token"),
        "{err}"
    );
    assert!(err.to_string().contains("`reg_token`"), "{err}");
    tensors.retain(|(n, _)| n != "reg_token");
    Tensor::write_safetensors(&tensors, &extra).expect("write");
    let vs = nn::VarStore::new(Device::Cpu);
    build_model(&vs, &config(Backbone::VitS16, Pool::Token, &extra))
        .expect("the trunk with timm's classifier loads");
}
