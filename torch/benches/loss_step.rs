//! Loss forward + backward time per step of the modern losses, dml next to
//! pytorch-metric-learning 2.9.0 on the same CPU, libtorch and thread count, in one run.
//!
//! `cargo bench -p dml-torch --bench loss_step -- [--steps N] [--warmup N] [--threads N] [--batch N] [--dim N] [--classes N]`
//!
//! Each step L2-normalises a `[batch, dim]` f32 leaf (P×K rows: `batch`/4 classes × 4,
//! spread over `classes` training classes, which the proxy losses hold parameters for),
//! computes the loss and back-propagates into the rows and the loss's parameters.
//! dml's side is [`LossModule::forward`] as the trainer calls it (with its batch
//! statistics); PML's side is `scripts/bench_loss_pml.py` (the loss object, with
//! `MultiSimilarityMiner` for the mined row). Prints the mean milliseconds per step.

use std::process::Command;
use std::time::Instant;

use dml_torch::train::losses::{Loss, LossModule};
use tch::{nn, Device, Kind, Tensor};

struct Options {
    steps: usize,
    warmup: usize,
    threads: i32,
    batch: i64,
    dim: i64,
    classes: i64,
}

fn parse_args() -> Options {
    let mut o = Options {
        steps: 50,
        warmup: 5,
        threads: 1,
        batch: 120,
        dim: 512,
        classes: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || -> i64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--steps" => o.steps = value() as usize,
            "--warmup" => o.warmup = value() as usize,
            "--threads" => o.threads = value() as i32,
            "--batch" => o.batch = value(),
            "--dim" => o.dim = value(),
            "--classes" => o.classes = value(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// The losses timed, as (row name, settings) with each loss's defaults.
fn losses() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        ("multi_similarity", json!({"name": "multi_similarity"})),
        (
            "multi_similarity+miner",
            json!({"name": "multi_similarity", "miner": "multi_similarity"}),
        ),
        ("circle", json!({"name": "circle"})),
        ("proxy_anchor", json!({"name": "proxy_anchor"})),
        ("proxy_nca", json!({"name": "proxy_nca"})),
        ("arcface", json!({"name": "arcface"})),
        ("soft_triple", json!({"name": "soft_triple"})),
    ]
}

fn labels(o: &Options) -> Vec<i64> {
    let p = o.batch / 4;
    let spread = (o.classes / p).max(1);
    (0..o.batch).map(|i| (i / 4) * spread % o.classes).collect()
}

fn time_dml(o: &Options, loss: &Loss) -> f64 {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let classes: Vec<i64> = (0..o.classes).collect();
    let module =
        LossModule::with_classes(loss, &vs.root().sub("loss"), 0, Some(&classes), o.dim).unwrap();
    let raw = Tensor::randn([o.batch, o.dim], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let labels = Tensor::from_slice(&labels(o));
    let mut total = 0.0;
    for step in 0..o.warmup + o.steps {
        let start = Instant::now();
        let mut grad = raw.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
        let x = &raw / raw.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        let out = module.forward(&x, &labels, step as u64).unwrap();
        out.loss.backward();
        let elapsed = start.elapsed().as_secs_f64();
        if step >= o.warmup {
            total += elapsed;
        }
    }
    1e3 * total / o.steps as f64
}

fn time_pml(o: &Options) -> Option<serde_json::Value> {
    let python = std::env::var("DML_PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_loss_pml.py");
    let labels: Vec<String> = labels(o).iter().map(i64::to_string).collect();
    let out = Command::new(python)
        .arg(script)
        .args(["--steps", &o.steps.to_string()])
        .args(["--warmup", &o.warmup.to_string()])
        .args(["--threads", &o.threads.to_string()])
        .args(["--batch", &o.batch.to_string()])
        .args(["--dim", &o.dim.to_string()])
        .args(["--classes", &o.classes.to_string()])
        .args(["--labels", &labels.join(",")])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "PML side failed (scripts/python-extras.sh installs pytorch-metric-learning): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    let o = parse_args();
    tch::set_num_threads(o.threads);
    let pml = time_pml(&o);
    println!(
        "loss forward + backward per step, batch {} × {}-d f32 ({} proxy classes), {} thread(s), mean of {} steps after {} warm-up:",
        o.batch, o.dim, o.classes, o.threads, o.steps, o.warmup
    );
    println!("| loss | dml ms/step | PML 2.9.0 ms/step | dml / PML |");
    println!("|---|---:|---:|---:|");
    for (name, settings) in losses() {
        let loss: Loss = serde_json::from_value(settings).unwrap();
        let dml = time_dml(&o, &loss);
        let theirs = pml.as_ref().and_then(|p| p[name].as_f64());
        match theirs {
            Some(t) => println!("| {name} | {dml:.2} | {t:.2} | {:.2} |", dml / t),
            None => println!("| {name} | {dml:.2} | — | — |"),
        }
    }
}
