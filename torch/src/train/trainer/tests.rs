//! Trainer tests on the CPU with a tiny model: determinism, bit-exact resume, NaN handling, weights round trip.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::*;
use crate::train::losses::{Loss, Margin, MarginLossConfig};
use crate::train::model::{Embedder, Head, ModelConfig};
use crate::train::optim::{Algorithm, LrSchedule, OptimConfig};
use crate::train::Backbone;

fn tiny_config(loss: Loss, algorithm: Algorithm) -> TrainConfig {
    TrainConfig {
        model: ModelConfig {
            backbone: Backbone::SmallCnn,
            head: Head::Fc1024,
            embedding_dim: 16,
            normalize: Some(loss.normalize_by_default()),
            pretrained: None,
            input_scaling: None,
            freeze_bn: false,
            pool: Default::default(),
        },
        loss,
        optimizer: OptimConfig {
            algorithm,
            learning_rate: 1e-3,
            schedule: LrSchedule::Linear,
            ..OptimConfig::default()
        },
        precision: Precision::F32,
        deterministic: false,
        freeze_backbone_steps: 0,
    }
}

/// A deterministic P×K batch (P = 4, K = 2) of 16×16 images.
fn batch(step: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + step);
    let pixels: Vec<f32> = (0..8 * 3 * 16 * 16)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let images = Tensor::from_slice(&pixels).view([8, 3, 16, 16]);
    let labels = Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2, 3, 3]);
    (images, labels)
}

fn run(trainer: &mut Trainer, steps: std::ops::Range<u64>, total: u64) -> Vec<StepStats> {
    steps
        .map(|s| {
            let (x, y) = batch(s);
            trainer.step(&x, &y, s, total).unwrap()
        })
        .collect()
}

fn assert_same_weights(a: &Trainer, b: &Trainer) {
    let (va, vb) = (a.named_variables(), b.named_variables());
    assert_eq!(va.len(), vb.len());
    for ((na, ta), (nb, tb)) in va.iter().zip(&vb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "variable {na} differs");
    }
}

#[test]
fn same_seed_gives_byte_identical_weights() {
    let cfg = tiny_config(
        Loss::HardTriplet {
            margin: Margin::Value(1.0),
        },
        Algorithm::default(),
    );
    let mut a = Trainer::new(&cfg, Device::Cpu, 3).unwrap();
    let mut b = Trainer::new(&cfg, Device::Cpu, 3).unwrap();
    let sa = run(&mut a, 0..3, 3);
    let sb = run(&mut b, 0..3, 3);
    assert_eq!(sa, sb);
    assert_same_weights(&a, &b);
    let c = Trainer::new(&cfg, Device::Cpu, 4).unwrap();
    let differs = a
        .named_variables()
        .iter()
        .zip(c.named_variables())
        .any(|((_, x), (_, y))| !x.equal(&y));
    assert!(differs, "a different seed should initialise differently");
    assert!(sa.iter().all(|s| s.loss.is_finite() && s.mean_norm > 0.0));
    assert_eq!(sa[0].lr, 1e-3);
}

fn resume_matches(cfg: &TrainConfig) {
    let dir = tempfile::tempdir().unwrap();
    let total = 4;
    let mut straight = Trainer::new(cfg, Device::Cpu, 11).unwrap();
    run(&mut straight, 0..total, total);

    let mut first = Trainer::new(cfg, Device::Cpu, 11).unwrap();
    run(&mut first, 0..total / 2, total);
    let ckpt = dir.path().join("step2.safetensors");
    first.save(&ckpt).unwrap();
    drop(first);
    // A fresh trainer that has already moved away from the checkpointed state: everything
    // (weights, running statistics, optimiser state, update count) must come from the file.
    let mut resumed = Trainer::new(cfg, Device::Cpu, 11).unwrap();
    run(&mut resumed, 0..1, total);
    resumed.load(&ckpt).unwrap();
    assert_eq!(resumed.updates(), total / 2);
    run(&mut resumed, total / 2..total, total);
    assert_same_weights(&straight, &resumed);
}

#[test]
fn resumed_run_matches_uninterrupted_run_adam_margin_loss() {
    resume_matches(&tiny_config(
        Loss::Margin(MarginLossConfig::default()),
        Algorithm::default(),
    ));
}

#[test]
fn resumed_run_matches_uninterrupted_run_sgd_semi_hard() {
    let sgd = Algorithm::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    resume_matches(&tiny_config(
        Loss::SemiHardTriplet {
            margin: Margin::Value(0.2),
        },
        sgd,
    ));
}

#[test]
fn checkpoint_from_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(
        Loss::HardTriplet {
            margin: Margin::Soft,
        },
        Algorithm::default(),
    );
    let t = Trainer::new(&cfg, Device::Cpu, 1).unwrap();
    let path = dir.path().join("c.safetensors");
    t.save(&path).unwrap();
    let other = TrainConfig {
        optimizer: OptimConfig {
            learning_rate: 5e-4,
            ..cfg.optimizer.clone()
        },
        ..cfg.clone()
    };
    let mut u = Trainer::new(&other, Device::Cpu, 1).unwrap();
    let err = u.load(&path).unwrap_err().to_string();
    assert!(err.contains("different settings"), "{err}");
    let weights = dir.path().join("w.safetensors");
    t.save_weights(&weights).unwrap();
    let err = u.load(&weights).unwrap_err().to_string();
    assert!(err.contains("not a dml-train-checkpoint"), "{err}");
    assert!(matches!(
        u.load(&dir.path().join("missing.safetensors")),
        Err(TrainError::Io { .. })
    ));
}

#[test]
fn nan_loss_is_an_error_naming_the_step_and_leaves_weights_alone() {
    let cfg = tiny_config(
        Loss::HardTriplet {
            margin: Margin::Value(1.0),
        },
        Algorithm::default(),
    );
    let mut t = Trainer::new(&cfg, Device::Cpu, 2).unwrap();
    let before: Vec<Tensor> = t
        .named_variables()
        .into_iter()
        .map(|(_, v)| v.copy())
        .collect();
    let (x, y) = batch(0);
    let x = x.fill(f64::NAN);
    match t.step(&x, &y, 7, 10) {
        Err(TrainError::NonFiniteLoss { step, .. }) => assert_eq!(step, 7),
        other => panic!("expected a non-finite loss error, got {other:?}"),
    }
    assert!(t
        .step(&x, &y, 7, 10)
        .unwrap_err()
        .to_string()
        .contains("step 7"));
    for ((name, v), b) in t.named_variables().into_iter().zip(before) {
        // Batch-norm running statistics absorb the forward pass; parameters must not move.
        if !name.contains("running_") {
            assert!(v.equal(&b), "{name} changed");
        }
    }
}

#[test]
fn saved_weights_reload_into_an_embedder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(
        Loss::SemiHardTriplet {
            margin: Margin::Value(0.2),
        },
        Algorithm::default(),
    );
    let mut t = Trainer::new(&cfg, Device::Cpu, 5).unwrap();
    run(&mut t, 0..2, 2);
    let path = dir.path().join("model.safetensors");
    t.save_weights(&path).unwrap();
    let embedder = Embedder::load(&cfg.model, &path, Device::Cpu).unwrap();
    let (x, _) = batch(9);
    let a = t.embed(&x).unwrap();
    let b = embedder.embed(&x).unwrap();
    assert_eq!(a.size(), [8, 16]);
    assert!(a.equal(&b));
    // Normalised embeddings have unit norm.
    let norms = a.norm_scalaropt_dim(2.0, 1, false);
    assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    // Eval mode uses the running statistics: one image alone embeds as it does in the batch.
    let single = embedder.embed(&x.narrow(0, 0, 1)).unwrap();
    assert!((single - b.narrow(0, 0, 1)).abs().max().double_value(&[]) < 1e-5);
    let wrong = ModelConfig {
        embedding_dim: 32,
        ..cfg.model.clone()
    };
    let err = Embedder::load(&wrong, &path, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head.fc2.bias"), "{err}");
}

#[test]
fn bad_inputs_are_refused() {
    let cfg = tiny_config(
        Loss::HardTriplet {
            margin: Margin::Value(1.0),
        },
        Algorithm::default(),
    );
    let mut t = Trainer::new(&cfg, Device::Cpu, 2).unwrap();
    let (x, y) = batch(0);
    assert!(t.step(&x.narrow(1, 0, 1), &y, 0, 1).is_err());
    assert!(t.step(&x, &y.to_kind(Kind::Int), 0, 1).is_err());
    assert!(t.step(&x, &y.narrow(0, 0, 4), 0, 1).is_err());
    let bad = TrainConfig {
        optimizer: OptimConfig {
            learning_rate: -1.0,
            ..OptimConfig::default()
        },
        ..cfg
    };
    assert!(Trainer::new(&bad, Device::Cpu, 0).is_err());
}

#[test]
fn bf16_on_cpu_trains_under_autocast_and_follows_f32() {
    let f32_cfg = tiny_config(
        Loss::HardTriplet {
            margin: Margin::Value(0.5),
        },
        Algorithm::default(),
    );
    let cfg = TrainConfig {
        precision: Precision::Bf16,
        ..f32_cfg.clone()
    };
    if !torch_state::cpu_has_bf16() {
        let err = Trainer::new(&cfg, Device::Cpu, 2).unwrap_err().to_string();
        assert!(err.contains("bf16"), "{err}");
        return;
    }
    let mut t = Trainer::new(&cfg, Device::Cpu, 2).unwrap();
    assert!(t.autocast);
    let mut f = Trainer::new(&f32_cfg, Device::Cpu, 2).unwrap();
    let bf = run(&mut t, 0..4, 4);
    let full = run(&mut f, 0..4, 4);
    // Same initial weights and batches: the first loss agrees to bf16's ~3 digits, and the
    // steps that follow stay close (bf16 changes rounding, not the optimisation).
    assert!(
        (bf[0].loss - full[0].loss).abs() < 0.02 * full[0].loss.abs().max(1.0),
        "bf16 {} vs f32 {}",
        bf[0].loss,
        full[0].loss
    );
    assert!(bf.iter().all(|s| s.loss.is_finite()));
    assert_ne!(bf[0].loss, full[0].loss, "autocast really computed in bf16");
    // Weights, checkpoints and embeddings stay f32.
    assert!(t
        .var_store()
        .variables()
        .values()
        .all(|v| v.kind() == Kind::Float));
    let x = Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert_eq!(t.embed(&x).unwrap().kind(), Kind::Float);
}

#[test]
fn deterministic_is_left_out_of_the_settings_when_false() {
    let cfg = tiny_config(Loss::default(), Algorithm::default());
    let json = serde_json::to_value(&cfg).unwrap();
    assert!(json.get("deterministic").is_none(), "{json}");
    let on = TrainConfig {
        deterministic: true,
        ..cfg
    };
    let json = serde_json::to_value(&on).unwrap();
    assert_eq!(json["deterministic"], serde_json::json!(true));
    let back: TrainConfig = serde_json::from_value(json).unwrap();
    assert!(back.deterministic);
}

#[test]
fn settings_parse_with_defaults() {
    let cfg: TrainConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg.model.embedding_dim, 128);
    assert_eq!(cfg.model.head, Head::Fc1024);
    assert_eq!(cfg.optimizer.learning_rate, 3e-4);
    assert_eq!(cfg.optimizer.weight_decay, 0.0);
    assert_eq!(cfg.optimizer.schedule, LrSchedule::Linear);
    assert_eq!(cfg.loss.name(), "hard_triplet");
    let text = r#"{"model":{"backbone":"inception_v1","normalize":true},
                   "loss":{"name":"semi_hard_triplet","margin":"soft"},
                   "optimizer":{"algorithm":{"name":"sgd"},"schedule":"cosine"},
                   "precision":"bf16"}"#;
    let cfg: TrainConfig = serde_json::from_str(text).unwrap();
    assert_eq!(cfg.model.backbone, Backbone::InceptionV1);
    assert_eq!(
        cfg.optimizer.algorithm,
        Algorithm::Sgd {
            momentum: 0.9,
            nesterov: false
        }
    );
    assert_eq!(cfg.precision, Precision::Bf16);
    let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    assert!(serde_json::from_str::<TrainConfig>(r#"{"optimiser":{}}"#).is_err());
    assert!(serde_json::from_str::<TrainConfig>(r#"{"model":{"backbone":"vgg16"}}"#).is_err());
}
