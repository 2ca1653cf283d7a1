//! Training-step throughput (images/s) on the CPU next to PyTorch-Python's on the same libtorch (it runs `scripts/bench_train_pytorch.py`): the body of `benches/train_step`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use dml_torch::train::losses::Margin;
use dml_torch::train::optim::LrSchedule;
use dml_torch::train::{
    Algorithm, Backbone, Head, Loss, ModelConfig, OptimConfig, Precision, Result, TrainConfig,
    TrainError, Trainer,
};

/// One throughput measurement: batch-hard loss (margin 1), Adam (3e-4), `fc1024` head with
/// 128-d embeddings, random images, P×K batches with K = 4.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainBench {
    /// The backbone to time.
    pub backbone: Backbone,
    /// Square input size in pixels.
    pub image_size: i64,
    /// Images per batch (a multiple of 4).
    pub batch: i64,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// f32, or bf16 autocast.
    pub precision: Precision,
}

/// The cases the project compares with PyTorch (small CNN at 64 px, ResNet-18 at 112 px,
/// batch 60), with PyTorch's figures measured on one 2-core machine: 301 and 63 images/s.
pub const REFERENCE_CASES: [(Backbone, i64, f64); 2] = [
    (Backbone::SmallCnn, 64, 301.0),
    (Backbone::Resnet18, 112, 63.0),
];

/// What a measurement gave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainBenchReport {
    /// Training images per second over all timed steps.
    pub images_per_sec: f64,
    /// Mean wall time per step in milliseconds.
    pub ms_per_step: f64,
    /// Images per second of the fastest step: the figure least disturbed by other work on a
    /// shared machine.
    pub best_images_per_sec: f64,
}

impl TrainBench {
    /// The settings the benchmark trains with.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            model: ModelConfig {
                backbone: self.backbone,
                head: Head::Fc1024,
                embedding_dim: 128,
                normalize: Some(false),
                pretrained: None,
                input_scaling: None,
                freeze_bn: false,
                pool: Default::default(),
            },
            loss: Loss::HardTriplet {
                margin: Margin::Value(1.0),
            },
            optimizer: OptimConfig {
                algorithm: Algorithm::default(),
                learning_rate: 3e-4,
                schedule: LrSchedule::Constant,
                weight_decay: 0.0,
                beta_learning_rate: None,
                ..OptimConfig::default()
            },
            precision: self.precision,
            deterministic: false,
            freeze_backbone_steps: 0,
        }
    }

    /// Runs the measurement on the CPU with libtorch's current thread count.
    pub fn run(&self) -> Result<TrainBenchReport> {
        if self.batch <= 0 || self.batch % 4 != 0 || self.steps == 0 {
            return Err(TrainError::Config(
                "bench needs a positive batch that is a multiple of 4 and ≥ 1 step".into(),
            ));
        }
        let mut trainer = Trainer::new(&self.config(), Device::Cpu, 0)?;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let n = (self.batch * 3 * self.image_size * self.image_size) as usize;
        let pixels: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let images =
            Tensor::from_slice(&pixels).view([self.batch, 3, self.image_size, self.image_size]);
        let labels = Tensor::from_slice(&(0..self.batch).map(|i| i / 4).collect::<Vec<i64>>());
        let total = (self.warmup + self.steps) as u64;
        for s in 0..self.warmup as u64 {
            trainer.step(&images, &labels, s, total)?;
        }
        let mut times = Vec::with_capacity(self.steps);
        for s in self.warmup as u64..total {
            let start = Instant::now();
            trainer.step(&images, &labels, s, total)?;
            times.push(start.elapsed().as_secs_f64());
        }
        let secs: f64 = times.iter().sum();
        let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
        Ok(TrainBenchReport {
            images_per_sec: (self.batch as f64 * self.steps as f64) / secs,
            ms_per_step: 1e3 * secs / self.steps as f64,
            best_images_per_sec: self.batch as f64 / fastest,
        })
    }
}

/// PyTorch's bf16 (CPU autocast) figure for ResNet-18 at 112 px, batch 60, 2 threads,
/// measured once on a 2-core machine with AVX512-BF16 (images/s; 164–169 measured).
pub const REFERENCE_PYTORCH_RESNET18_BF16: f64 = 164.0;

/// How to run the side-by-side comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareOptions {
    /// Timed steps per case.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// libtorch intra-op threads, for both sides.
    pub threads: i32,
    /// Images per batch.
    pub batch: i64,
    /// The Python interpreter (the one whose libtorch dml links), or `None` to skip PyTorch.
    pub python: Option<String>,
    /// `scripts/bench_train_pytorch.py`.
    pub script: PathBuf,
    /// The precisions to time (f32 and, where the CPU has it, bf16).
    pub precisions: Vec<Precision>,
    /// (backbone, image size) to time: [`REFERENCE_CASES`] unless `--backbone` picks one
    /// (`vit_s16` is compared with timm's `vit_small_patch16_224` in PyTorch eager).
    pub cases: Vec<(Backbone, i64)>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            steps: 10,
            warmup: 2,
            threads: 2,
            batch: 60,
            python: Some(std::env::var("DML_PYTHON").unwrap_or_else(|_| "python3".into())),
            script: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/bench_train_pytorch.py"
            )),
            precisions: if dml_jobspec::device::cpu_has_bf16() {
                vec![Precision::F32, Precision::Bf16]
            } else {
                vec![Precision::F32]
            },
            cases: REFERENCE_CASES.iter().map(|&(b, s, _)| (b, s)).collect(),
        }
    }
}

/// One line of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// The backbone.
    pub backbone: Backbone,
    /// Input size in pixels.
    pub image_size: i64,
    /// f32 or bf16.
    pub precision: Precision,
    /// dml's figures.
    pub dml: TrainBenchReport,
    /// PyTorch-Python's figures on the same libtorch and thread count, if run.
    pub pytorch: Option<TrainBenchReport>,
    /// PyTorch's figure measured once on a 2-core machine (images/s), where known.
    pub reference_pytorch: Option<f64>,
}

fn run_pytorch(
    opts: &CompareOptions,
    python: &str,
    backbone: Backbone,
    size: i64,
    precision: Precision,
) -> Result<TrainBenchReport> {
    let fail = |reason: String| {
        TrainError::Config(format!("PyTorch bench {}: {reason}", opts.script.display()))
    };
    let out = Command::new(python)
        .arg(&opts.script)
        .args([
            "--model",
            backbone.name(),
            "--size",
            &size.to_string(),
            "--batch",
            &opts.batch.to_string(),
        ])
        .args([
            "--threads",
            &opts.threads.to_string(),
            "--steps",
            &opts.steps.to_string(),
        ])
        .args(["--warmup", &opts.warmup.to_string()])
        .args([
            "--precision",
            match precision {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16",
            },
        ])
        .output()
        .map_err(|e| fail(format!("cannot run {python}: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("unreadable output: {e}")))
}

/// Times dml and (optionally) PyTorch on [`REFERENCE_CASES`], with `opts.threads` libtorch
/// threads (this sets the process-wide thread count).
pub fn compare_with_pytorch(opts: &CompareOptions) -> Result<Vec<ComparisonRow>> {
    tch::set_num_threads(opts.threads);
    let mut rows = Vec::new();
    for &(backbone, image_size) in &opts.cases {
        let reference_f32 = REFERENCE_CASES
            .iter()
            .find(|&&(b, s, _)| b == backbone && s == image_size)
            .map(|&(_, _, r)| r);
        for &precision in &opts.precisions {
            let bench = TrainBench {
                backbone,
                image_size,
                batch: opts.batch,
                warmup: opts.warmup,
                steps: opts.steps,
                precision,
            };
            let dml = bench.run()?;
            let pytorch = match &opts.python {
                Some(python) => Some(run_pytorch(opts, python, backbone, image_size, precision)?),
                None => None,
            };
            let reference_pytorch = match (precision, backbone) {
                (Precision::F32, _) => reference_f32,
                (Precision::Bf16, Backbone::Resnet18) => Some(REFERENCE_PYTORCH_RESNET18_BF16),
                (Precision::Bf16, _) => None,
            };
            rows.push(ComparisonRow {
                backbone,
                image_size,
                precision,
                dml,
                pytorch,
                reference_pytorch,
            });
        }
    }
    Ok(rows)
}

/// The comparison as a text table (images/s; "best" is the fastest single step).
pub fn format_table(opts: &CompareOptions, rows: &[ComparisonRow]) -> String {
    let mut out = format!(
        "CPU training step: {} threads, batch {}, Adam, batch-hard, fc1024 → 128; {} timed steps after {} warm-up\n",
        opts.threads, opts.batch, opts.steps, opts.warmup
    );
    out += &format!(
        "{:<12} {:>5} {:>5} {:>10} {:>10} {:>12} {:>12} {:>14} {:>12}\n",
        "backbone",
        "px",
        "prec",
        "dml",
        "dml best",
        "PyTorch",
        "PyTorch best",
        "PyTorch (ref)",
        "dml vs f32"
    );
    for r in rows {
        let (py, py_best) = match r.pytorch {
            Some(p) => (
                format!("{:.1}", p.images_per_sec),
                format!("{:.1}", p.best_images_per_sec),
            ),
            None => ("-".into(), "-".into()),
        };
        let f32_rate = rows
            .iter()
            .find(|o| {
                o.backbone == r.backbone
                    && o.image_size == r.image_size
                    && o.precision == Precision::F32
            })
            .map(|o| o.dml.images_per_sec);
        let speedup = match f32_rate {
            Some(f) if f > 0.0 => format!("{:.2}x", r.dml.images_per_sec / f),
            _ => "-".into(),
        };
        out += &format!(
            "{:<12} {:>5} {:>5} {:>10.1} {:>10.1} {:>12} {:>12} {:>14} {:>12}\n",
            r.backbone.name(),
            r.image_size,
            match r.precision {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16",
            },
            r.dml.images_per_sec,
            r.dml.best_images_per_sec,
            py,
            py_best,
            r.reference_pytorch
                .map_or_else(|| "-".to_string(), |v| format!("{v:.1}")),
            speedup
        );
    }
    out
}
