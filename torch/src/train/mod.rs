//! Training: backbones, heads, ranking losses, optimisers and schedules (tch).
//!
//! The train stage builds a [`Trainer`] from a [`TrainConfig`] and calls [`Trainer::step`] per
//! P×K batch; the embed stage rebuilds the network with [`Embedder::load`]. Images reach both
//! as NCHW f32 already scaled with [`ModelConfig::input_scaling`].

pub mod backbones;
mod checkpoint;
pub mod error;
pub mod losses;
pub mod model;
pub mod optim;
pub mod torch_state;
pub mod trainer;

pub use backbones::{input_scaling, Backbone, InputScaling, Pool};
pub use checkpoint::all_finite;
pub use dml_jobspec::train_config::ConfigError;
pub use error::{Result, TrainError};
pub use losses::{Loss, LossModule, LossOutput, Margin};
pub use model::{build_model, Embedder, EmbeddingNet, Head, ModelConfig};
pub use optim::{Algorithm, LrSchedule, OptimConfig};
pub use torch_state::{resolve_device, resolve_device_in_slot};
pub use trainer::{read_checkpoint_extras, Precision, StepStats, TrainConfig, Trainer};
