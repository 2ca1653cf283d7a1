//! Training-step throughput (images/s) on the CPU, the figure `dml bench train` and `benches/train_step.rs` print next to PyTorch's.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::backbones::Backbone;
use super::error::{Result, TrainError};
use super::losses::{Loss, Margin};
use super::model::{Head, ModelConfig};
use super::optim::{Algorithm, LrSchedule, OptimConfig};
use super::trainer::{Precision, TrainConfig, Trainer};

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
    /// Training images per second over the timed steps.
    pub images_per_sec: f64,
    /// Mean wall time per step in milliseconds.
    pub ms_per_step: f64,
}

impl TrainBench {
    /// The settings the benchmark trains with.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            model: ModelConfig {
                backbone: self.backbone,
                head: Head::Fc1024,
                embedding_dim: 128,
                normalize: false,
                pretrained: None,
                input_scaling: None,
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
            },
            precision: Precision::F32,
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
        let start = Instant::now();
        for s in self.warmup as u64..total {
            trainer.step(&images, &labels, s, total)?;
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(TrainBenchReport {
            images_per_sec: (self.batch as f64 * self.steps as f64) / secs,
            ms_per_step: 1e3 * secs / self.steps as f64,
        })
    }
}
