//! The optimiser and the learning-rate schedules against PyTorch itself: for each case
//! (plain AdamW, weight decay with the head's and the loss's learning-rate multipliers,
//! gradient clipping, a warm-up chained with a step decay; in f64 and in f32),
//! `scripts/optim_reference.py` trains the same tensors on the same quadratic loss with
//! `torch.optim.AdamW`, `torch.nn.utils.clip_grad_norm_` and `torch.optim.lr_scheduler`
//! (`LinearLR` for the warm-up, `StepLR`, chained), and dml's learning rate at every step
//! and tensors after the last step must agree: within 1e-12 in f64 and 1e-5 in f32
//! (relative to the value's magnitude, at least 1).
//!
//! Needs the Python environment that supplies libtorch (`DML_PYTHON` overrides the
//! interpreter).

mod common;
use common::{python, repo_root};
use std::process::Command;

use dml_torch::train::optim::{Algorithm, LrSchedule, OptimConfig, Optimizer};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};

/// One tensor: its name (its learning-rate group follows from the prefix), start,
/// target and weight of the quadratic loss.
struct Param {
    name: &'static str,
    init: Vec<f64>,
    target: Vec<f64>,
    weight: Vec<f64>,
}

struct Case {
    id: String,
    f64: bool,
    steps: u64,
    config: OptimConfig,
    loss_multiplier: f64,
    params: Vec<Param>,
}

fn params() -> Vec<Param> {
    vec![
        Param {
            name: "backbone.w",
            init: vec![0.5, -1.25, 2.0, 0.0],
            target: vec![1.0, 1.0, -1.0, 0.3],
            weight: vec![1.0, 0.5, 2.0, 3.0],
        },
        Param {
            name: "head.w",
            init: vec![-0.75, 0.125, 1.5],
            target: vec![0.0, -2.0, 0.25],
            weight: vec![4.0, 1.0, 0.25],
        },
        Param {
            name: "loss.proxies",
            init: vec![0.3, -0.6],
            target: vec![-0.4, 0.9],
            weight: vec![1.5, 0.75],
        },
    ]
}

fn adamw(beta1: f64, beta2: f64, epsilon: f64) -> Algorithm {
    Algorithm::Adamw {
        beta1,
        beta2,
        epsilon,
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for f64 in [true, false] {
        let precision = if f64 { "f64" } else { "f32" };
        let base = OptimConfig {
            algorithm: adamw(0.9, 0.999, 1e-8),
            learning_rate: 0.05,
            schedule: LrSchedule::Constant,
            ..OptimConfig::default()
        };
        out.push(Case {
            id: format!("adamw-{precision}"),
            f64,
            steps: 6,
            config: base.clone(),
            loss_multiplier: 1.0,
            params: params(),
        });
        out.push(Case {
            id: format!("decay-multipliers-{precision}"),
            f64,
            steps: 7,
            config: OptimConfig {
                algorithm: adamw(0.8, 0.99, 1e-6),
                weight_decay: 0.1,
                head_lr_multiplier: 2.5,
                ..base.clone()
            },
            loss_multiplier: 100.0,
            params: params(),
        });
        out.push(Case {
            id: format!("clipped-{precision}"),
            f64,
            steps: 5,
            config: OptimConfig {
                clip_grad_norm: Some(0.5),
                weight_decay: 0.01,
                ..base.clone()
            },
            loss_multiplier: 10.0,
            params: params(),
        });
        out.push(Case {
            id: format!("warmup-step-{precision}"),
            f64,
            steps: 12,
            config: OptimConfig {
                schedule: LrSchedule::Step,
                decay_every: 4,
                decay_gamma: 0.5,
                warmup_steps: 3,
                weight_decay: 1e-4,
                head_lr_multiplier: 0.5,
                ..base.clone()
            },
            loss_multiplier: 100.0,
            params: params(),
        });
        out.push(Case {
            id: format!("step-{precision}"),
            f64,
            steps: 9,
            config: OptimConfig {
                schedule: LrSchedule::Step,
                decay_every: 2,
                decay_gamma: 0.25,
                ..base.clone()
            },
            loss_multiplier: 1.0,
            params: params(),
        });
        out.push(Case {
            id: format!("warmup-only-{precision}"),
            f64,
            steps: 6,
            config: OptimConfig {
                warmup_steps: 4,
                ..base
            },
            loss_multiplier: 1.0,
            params: params(),
        });
    }
    out
}

fn multiplier(case: &Case, name: &str) -> f64 {
    if name.starts_with("loss.") {
        case.loss_multiplier
    } else if name.starts_with("head.") {
        case.config.head_lr_multiplier
    } else {
        1.0
    }
}

fn spec(case: &Case) -> Value {
    let (beta1, beta2, eps) = match case.config.algorithm {
        Algorithm::Adamw {
            beta1,
            beta2,
            epsilon,
        } => (beta1, beta2, epsilon),
        _ => unreachable!("every case is AdamW"),
    };
    let c = &case.config;
    let step = c.schedule == LrSchedule::Step;
    json!({
        "id": case.id,
        "f64": case.f64,
        "lr": c.learning_rate,
        "beta1": beta1,
        "beta2": beta2,
        "eps": eps,
        "weight_decay": c.weight_decay,
        "steps": case.steps,
        "warmup": c.warmup_steps,
        "decay_every": if step { c.decay_every } else { 0 },
        "decay_gamma": c.decay_gamma,
        "clip": c.clip_grad_norm,
        "tensors": case.params.iter().map(|p| json!({
            "init": p.init,
            "target": p.target,
            "weight": p.weight,
            "multiplier": multiplier(case, p.name),
        })).collect::<Vec<_>>(),
    })
}

/// dml's side: the learning rate of every step and the tensors after the last one.
fn dml_side(case: &Case) -> (Vec<f64>, Vec<Vec<f64>>) {
    let kind = if case.f64 { Kind::Double } else { Kind::Float };
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(kind);
    let mut vars = Vec::new();
    for p in &case.params {
        let (group, name) = p.name.split_once('.').unwrap();
        let v = vs
            .root()
            .sub(group)
            .var_copy(name, &Tensor::from_slice(&p.init).to_kind(kind));
        let target = Tensor::from_slice(&p.target).to_kind(kind);
        let weight = Tensor::from_slice(&p.weight).to_kind(kind);
        vars.push((v, target, weight));
    }
    let mut opt = Optimizer::with_loss_multiplier(&vs, &case.config, case.loss_multiplier).unwrap();
    let mut lrs = Vec::new();
    for step in 0..case.steps {
        let lr = opt.learning_rate(step, case.steps);
        lrs.push(lr);
        opt.zero_grad();
        let loss = vars
            .iter()
            .map(|(p, c, w)| (w * (p - c).square()).sum(kind))
            .reduce(|a, b| a + b)
            .unwrap();
        loss.backward();
        opt.step(lr);
    }
    let values = vars
        .iter()
        .map(|(p, _, _)| Vec::<f64>::try_from(p.to_kind(Kind::Double)).unwrap())
        .collect();
    (lrs, values)
}

#[test]
fn adamw_clipping_and_schedules_equal_pytorchs() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    let spec = json!({ "cases": cases.iter().map(spec).collect::<Vec<_>>() });
    std::fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let out_path = dir.path().join("torch.json");
    let run = Command::new(python())
        .arg(repo_root().join("scripts/optim_reference.py"))
        .args([&spec_path, &out_path])
        .output()
        .expect("run scripts/optim_reference.py");
    assert!(
        run.status.success(),
        "scripts/optim_reference.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let torch: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let torch = torch["cases"].as_array().unwrap();
    assert_eq!(torch.len(), cases.len());
    let mut compared = 0;
    for (case, want) in cases.iter().zip(torch) {
        assert_eq!(want["id"], case.id.as_str());
        let tol = if case.f64 { 1e-12 } else { 1e-5 };
        let close = |what: &str, got: f64, want: f64| {
            assert!(
                (got - want).abs() <= tol * want.abs().max(1.0),
                "{}: {what}: dml {got} vs torch {want}",
                case.id
            );
        };
        let (lrs, values) = dml_side(case);
        let want_lrs: Vec<f64> = serde_json::from_value(want["lrs"].clone()).unwrap();
        assert_eq!(lrs.len(), want_lrs.len());
        for (s, (&got, &w)) in lrs.iter().zip(&want_lrs).enumerate() {
            // The schedule is plain f64 arithmetic on both sides.
            assert!(
                (got - w).abs() <= 1e-12 * w.abs(),
                "{}: lr at step {s}: dml {got} vs torch {w}",
                case.id
            );
        }
        let want_values: Vec<Vec<f64>> = serde_json::from_value(want["tensors"].clone()).unwrap();
        for ((p, got), w) in case.params.iter().zip(&values).zip(&want_values) {
            for (i, (&g, &w)) in got.iter().zip(w).enumerate() {
                close(&format!("{}[{i}]", p.name), g, w);
                compared += 1;
            }
            // The tensors moved: a test that compares starting values cannot pass.
            assert!(
                got.iter().zip(&p.init).any(|(g, i)| (g - i).abs() > 1e-3),
                "{}: {} did not move",
                case.id,
                p.name
            );
        }
    }
    assert_eq!(compared, cases.len() * 9);
}
