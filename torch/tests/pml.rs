//! The modern losses against pytorch-metric-learning 2.9.0 itself: for every case the test makes (batch sizes 6 to 96, classes absent from the batch, classes with one row, identical rows, large scales), `scripts/pml_reference.py` computes PML's loss and its gradients with respect to the embeddings and to the loss's own parameters, and dml's must agree within 1e-5 (relative to the value's, or the gradient's, largest magnitude), in f64 and in f32. Cross-batch memory is compared over a sequence of batches that wraps the memory around.
//!
//! Needs the Python environment that supplies libtorch with pytorch-metric-learning 2.9.0
//! (`scripts/python-extras.sh` installs it; `DML_PYTHON` overrides the interpreter).

mod common;
use common::{python, repo_root};
use std::process::Command;

use dml_torch::train::losses::{
    arcface, circle, multi_similarity, proxy_anchor, proxy_nca, soft_triple, LossOutput, Memory,
    PairOptions, Reference,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

/// One comparison: a loss, its parameters, precision and the batches it sees.
struct Case {
    id: String,
    loss: &'static str,
    params: Value,
    f64: bool,
    dim: i64,
    /// Number of classes with parameters (proxy losses).
    classes: Option<i64>,
    miner_epsilon: Option<f64>,
    memory: i64,
    /// (embeddings [B, D] f64, class indices [B]) per step.
    batches: Vec<(Tensor, Tensor)>,
    /// PML-layout parameter (proxies [C, D], W [D, C], fc [D, C·K]).
    param: Option<Tensor>,
}

/// Random rows with `labels`; `duplicate` copies row 0 onto row 1 and row 2 onto row 3.
fn rows(rng: &mut ChaCha8Rng, labels: &[i64], dim: i64, scale: f64, duplicate: bool) -> Tensor {
    let b = labels.len();
    let mut v: Vec<f64> = (0..b * dim as usize)
        .map(|_| scale * (rng.gen::<f64>() * 2.0 - 1.0))
        .collect();
    if duplicate && b >= 4 {
        let d = dim as usize;
        let (r0, r2) = (v[..d].to_vec(), v[2 * d..3 * d].to_vec());
        v[d..2 * d].copy_from_slice(&r0);
        v[3 * d..4 * d].copy_from_slice(&r2);
    }
    Tensor::from_slice(&v).view([b as i64, dim])
}

/// Label layouts: P×K blocks, then ragged batches with singletons and missing classes.
fn layouts(rng: &mut ChaCha8Rng, classes: i64) -> Vec<(&'static str, Vec<i64>)> {
    let pk = |p: i64, k: i64| {
        (0..p)
            .flat_map(|c| std::iter::repeat_n(c, k as usize))
            .collect()
    };
    let ragged: Vec<i64> = (0..24).map(|_| rng.gen_range(0..classes.min(9))).collect();
    // Class 0 has one row, classes 1..3 several; classes ≥ 4 are absent.
    let singleton = vec![0, 1, 1, 2, 2, 2, 3, 3, 1, 2];
    vec![
        ("pk", pk(4, 3)),
        ("pk_large", pk(16, 6)),
        ("ragged", ragged),
        ("singleton", singleton),
    ]
}

fn param_for(loss: &str, classes: i64, dim: i64, params: &Value, rng: &mut ChaCha8Rng) -> Tensor {
    let randn = |n: usize, rng: &mut ChaCha8Rng| -> Vec<f64> {
        (0..n).map(|_| rng.gen::<f64>() * 2.0 - 1.0).collect()
    };
    match loss {
        "proxy_anchor" | "proxy_nca" => {
            Tensor::from_slice(&randn((classes * dim) as usize, rng)).view([classes, dim])
        }
        "arcface" => Tensor::from_slice(&randn((classes * dim) as usize, rng)).view([dim, classes]),
        "soft_triple" => {
            let k = params["centers_per_class"].as_i64().unwrap();
            Tensor::from_slice(&randn((classes * k * dim) as usize, rng)).view([dim, classes * k])
        }
        _ => unreachable!(),
    }
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut out = Vec::new();
    let dim = 12;
    let pair_losses: [(&str, Value); 4] = [
        (
            "multi_similarity",
            json!({"alpha": 2.0, "beta": 50.0, "base": 0.5}),
        ),
        (
            "multi_similarity",
            json!({"alpha": 10.0, "beta": 80.0, "base": 0.3}),
        ),
        ("circle", json!({"m": 0.25, "gamma": 256.0})),
        ("circle", json!({"m": 0.4, "gamma": 80.0})),
    ];
    let proxy_losses: [(&str, Value); 6] = [
        ("proxy_anchor", json!({"margin": 0.1, "alpha": 32.0})),
        ("proxy_nca", json!({"softmax_scale": 1.0})),
        ("proxy_nca", json!({"softmax_scale": 32.0})),
        ("arcface", json!({"margin": 28.6, "scale": 64.0})),
        (
            "soft_triple",
            json!({"centers_per_class": 10, "la": 20.0, "gamma": 0.1, "margin": 0.01, "tau": 0.0}),
        ),
        (
            "soft_triple",
            json!({"centers_per_class": 3, "la": 20.0, "gamma": 0.1, "margin": 0.01, "tau": 0.2}),
        ),
    ];
    let mut n = 0;
    for f64 in [true, false] {
        for (loss, params) in pair_losses.iter() {
            for (layout, labels) in layouts(&mut rng, 12) {
                for (miner, duplicate, scale) in [
                    (None, false, 1.0),
                    (Some(0.1), true, 50.0),
                    (Some(0.0), false, 1.0),
                ] {
                    let x = rows(&mut rng, &labels, dim, scale, duplicate);
                    out.push(Case {
                        id: format!("c{n}_{loss}_{layout}"),
                        loss,
                        params: params.clone(),
                        f64,
                        dim,
                        classes: None,
                        miner_epsilon: miner,
                        memory: 0,
                        batches: vec![(x, Tensor::from_slice(&labels))],
                        param: None,
                    });
                    n += 1;
                }
            }
            // Cross-batch memory: 7 batches of 8 (ragged labels) through a memory of 20,
            // which wraps around mid-batch; with and without the miner.
            for miner in [None, Some(0.1)] {
                let batches = (0..7)
                    .map(|_| {
                        let labels: Vec<i64> = (0..8).map(|_| rng.gen_range(0..5)).collect();
                        (
                            rows(&mut rng, &labels, dim, 1.0, false),
                            Tensor::from_slice(&labels),
                        )
                    })
                    .collect();
                out.push(Case {
                    id: format!("c{n}_{loss}_memory"),
                    loss,
                    params: params.clone(),
                    f64,
                    dim,
                    classes: None,
                    miner_epsilon: miner,
                    memory: 20,
                    batches,
                    param: None,
                });
                n += 1;
            }
        }
        for (loss, params) in proxy_losses.iter() {
            // 20 classes with parameters; no batch holds all of them.
            let classes = 20;
            for (layout, labels) in layouts(&mut rng, classes) {
                for (duplicate, scale) in [(false, 1.0), (true, 40.0)] {
                    let x = rows(&mut rng, &labels, dim, scale, duplicate);
                    out.push(Case {
                        id: format!("c{n}_{loss}_{layout}"),
                        loss,
                        params: params.clone(),
                        f64,
                        dim,
                        classes: Some(classes),
                        miner_epsilon: None,
                        memory: 0,
                        batches: vec![(x, Tensor::from_slice(&labels))],
                        param: Some(param_for(loss, classes, dim, params, &mut rng)),
                    });
                    n += 1;
                }
            }
        }
    }
    out
}

/// dml's value and gradients (embeddings, parameter) for every step of a case.
fn dml_side(case: &Case) -> Vec<(f64, Tensor, Option<Tensor>)> {
    let kind = if case.f64 { Kind::Double } else { Kind::Float };
    let param = case
        .param
        .as_ref()
        .map(|p| p.to_kind(kind).set_requires_grad(true));
    let mut memory = (case.memory > 0).then(|| Memory::new(case.memory, 0, Device::Cpu));
    let options = PairOptions {
        miner_epsilon: case.miner_epsilon,
    };
    let f = |name: &str| case.params[name].as_f64().unwrap();
    let mut out = Vec::new();
    for (x, labels) in &case.batches {
        let x = x.to_kind(kind).set_requires_grad(true);
        let slot;
        let contents;
        let reference = match memory.as_mut() {
            Some(m) => {
                slot = m.enqueue(&x, labels).unwrap();
                contents = m.contents();
                Some(Reference {
                    embeddings: &contents.0,
                    labels: &contents.1,
                    self_slot: &slot,
                })
            }
            None => None,
        };
        let result: LossOutput = match case.loss {
            "multi_similarity" => multi_similarity(
                &x,
                labels,
                f("alpha"),
                f("beta"),
                f("base"),
                options,
                reference.as_ref(),
            ),
            "circle" => circle(&x, labels, f("m"), f("gamma"), options, reference.as_ref()),
            "proxy_anchor" => proxy_anchor(
                &x,
                labels,
                labels,
                param.as_ref().unwrap(),
                f("margin"),
                f("alpha"),
            ),
            "proxy_nca" => proxy_nca(
                &x,
                labels,
                labels,
                param.as_ref().unwrap(),
                f("softmax_scale"),
            ),
            "arcface" => arcface(
                &x,
                labels,
                labels,
                param.as_ref().unwrap(),
                f("margin"),
                f("scale"),
            ),
            "soft_triple" => soft_triple(
                &x,
                labels,
                labels,
                param.as_ref().unwrap(),
                case.params["centers_per_class"].as_i64().unwrap(),
                f("la"),
                f("gamma"),
                f("margin"),
                f("tau"),
            ),
            other => panic!("no loss {other}"),
        }
        .unwrap_or_else(|e| panic!("{}: {e}", case.id));
        result.loss.backward();
        let grad = x.grad();
        let grad = if grad.defined() {
            grad.to_kind(Kind::Double)
        } else {
            x.zeros_like().to_kind(Kind::Double)
        };
        let param_grad = param.as_ref().map(|p| {
            let g = p.grad();
            let g = if g.defined() {
                g.to_kind(Kind::Double).copy()
            } else {
                p.zeros_like().to_kind(Kind::Double)
            };
            let mut pg = p.grad();
            if pg.defined() {
                let _ = pg.zero_();
            }
            g
        });
        out.push((result.loss.double_value(&[]), grad, param_grad));
    }
    out
}

fn close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let diff = (got - want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]).max(1e-6);
    assert!(
        diff <= TOLERANCE * scale,
        "{what}: max |dml − PML| = {diff:e} against a largest magnitude of {scale:e}"
    );
}

#[test]
fn modern_losses_equal_pytorch_metric_learning() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let spec: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "loss": c.loss,
                "params": c.params,
                "dtype": if c.f64 { "f64" } else { "f32" },
                "dim": c.dim,
                "classes": c.classes,
                "miner_epsilon": c.miner_epsilon,
                "memory": c.memory,
                "steps": c.batches.len(),
            })
        })
        .collect();
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for c in &cases {
        for (s, (x, l)) in c.batches.iter().enumerate() {
            inputs.push((format!("{}.emb{s}", c.id), x.shallow_clone()));
            inputs.push((format!("{}.labels{s}", c.id), l.shallow_clone()));
        }
        if let Some(p) = &c.param {
            inputs.push((format!("{}.param", c.id), p.shallow_clone()));
        }
    }
    let inputs_path = dir.path().join("inputs.safetensors");
    Tensor::write_safetensors(&inputs, &inputs_path).unwrap();
    let out_path = dir.path().join("pml.safetensors");
    let run = Command::new(python())
        .arg(repo_root().join("scripts/pml_reference.py"))
        .args([&spec_path, &inputs_path, &out_path])
        .output()
        .expect("run scripts/pml_reference.py");
    assert!(
        run.status.success(),
        "pytorch-metric-learning failed (scripts/python-extras.sh installs it): {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let pml: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out_path)
        .unwrap()
        .into_iter()
        .collect();
    let mut compared = 0;
    let mut nonzero = 0;
    for c in &cases {
        for (s, (value, grad, param_grad)) in dml_side(c).into_iter().enumerate() {
            let what = format!("{} step {s}", c.id);
            let want = pml[&format!("{}.loss{s}", c.id)].double_value(&[0]);
            assert!(
                (value - want).abs() <= TOLERANCE * want.abs().max(1e-6),
                "{what}: loss {value} vs PML {want}"
            );
            close(
                &format!("{what}: d/d embeddings"),
                &grad,
                &pml[&format!("{}.grad_emb{s}", c.id)],
            );
            if let Some(g) = param_grad {
                close(
                    &format!("{what}: d/d parameters"),
                    &g,
                    &pml[&format!("{}.grad_param{s}", c.id)],
                );
            }
            compared += 1;
            nonzero += usize::from(want.abs() > 1e-9);
        }
    }
    eprintln!("{compared} values and gradients equal PML's ({nonzero} non-zero losses)");
    assert!(
        nonzero * 10 > compared * 8,
        "too many zero losses to be a test: {nonzero}/{compared}"
    );
}
