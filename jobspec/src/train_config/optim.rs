//! The optimiser and its learning-rate schedule (`[train.optimizer]`).
use super::base::*;
use serde::{Deserialize, Serialize};

/// The learning rate the `linear` and `cosine` schedules reach at the end (the seed's 1e-7).
pub const END_LEARNING_RATE: f64 = 1e-7;

/// How the learning rate moves over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The seed's `tf.train.polynomial_decay(base, step, total, 1e-7, power=1)`:
    /// (base − 1e-7)·(1 − min(step, total)/total) + 1e-7. TF evaluates it with the global step
    /// before the update, so step 0 uses `base` and the last update (step total − 1) uses
    /// (base − 1e-7)/total + 1e-7; 1e-7 itself is reached at step = total.
    #[default]
    Linear,
    /// `base` throughout.
    Constant,
    /// 1e-7 + (base − 1e-7)·(1 + cos(π·min(step, total)/total))/2.
    Cosine,
    /// `torch.optim.lr_scheduler.StepLR`: base·γ^⌊step / N⌋, with N =
    /// `optimizer.decay_every` steps and γ = `optimizer.decay_gamma`.
    Step,
}

impl LrSchedule {
    /// The learning rate for (0-based) `step` of `total`; `total = 0` gives `base`.
    /// (`Step` needs its period and factor: see [`OptimConfig::learning_rate_at`]; here
    /// it is constant.)
    pub fn lr(self, step: u64, total: u64, base: f64) -> f64 {
        if total == 0 {
            return base;
        }
        let progress = step.min(total) as f64 / total as f64;
        match self {
            LrSchedule::Constant | LrSchedule::Step => base,
            LrSchedule::Linear => (base - END_LEARNING_RATE) * (1.0 - progress) + END_LEARNING_RATE,
            LrSchedule::Cosine => {
                END_LEARNING_RATE
                    + (base - END_LEARNING_RATE)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Algorithm {
    /// `tf.train.AdamOptimizer`: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²,
    /// θ ← θ − lr·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε).
    Adam {
        /// β₁ (0.9).
        #[serde(default = "beta1")]
        beta1: f64,
        /// β₂ (0.999).
        #[serde(default = "beta2")]
        beta2: f64,
        /// ε (1e-8, TF's default).
        #[serde(default = "epsilon")]
        epsilon: f64,
    },
    /// `tf.train.MomentumOptimizer` (the seed's CUB setting): a ← μa + g, θ ← θ − lr·a
    /// (Nesterov: θ ← θ − lr·(g + μa)).
    Sgd {
        /// μ (0.9).
        #[serde(default = "momentum")]
        momentum: f64,
        /// Nesterov momentum (false).
        #[serde(default)]
        nesterov: bool,
    },
    /// `torch.optim.AdamW` (Loshchilov & Hutter): θ ← θ·(1 − lr·wd), then
    /// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − lr/(1−β₁ᵗ)·m/(√v/√(1−β₂ᵗ) + ε),
    /// with wd = `optimizer.weight_decay` decoupled from the gradient and applied to every
    /// trained tensor (PyTorch's single parameter group), the loss's included.
    Adamw {
        /// β₁ (0.9).
        #[serde(default = "beta1")]
        beta1: f64,
        /// β₂ (0.999).
        #[serde(default = "beta2")]
        beta2: f64,
        /// ε (1e-8).
        #[serde(default = "epsilon")]
        epsilon: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn epsilon() -> f64 {
    1e-8
}
fn momentum() -> f64 {
    0.9
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Adam {
            beta1: beta1(),
            beta2: beta2(),
            epsilon: epsilon(),
        }
    }
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Adam (default) or SGD with momentum.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Base learning rate (the seed's 3e-4).
    #[serde(default = "base_lr")]
    pub learning_rate: f64,
    /// Schedule applied to the base rate (the seed's linear decay).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// L2 weight decay on weight matrices and kernels (0; see the module documentation).
    #[serde(default)]
    pub weight_decay: f64,
    /// Base learning rate for the margin loss's β (same schedule); `None` uses
    /// `learning_rate`. Wu et al. trained β with a larger rate than the network.
    #[serde(default)]
    pub beta_learning_rate: Option<f64>,
    /// Learning-rate multiplier of the embedding head (1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub head_lr_multiplier: f64,
    /// `schedule = "step"`: steps between decays (`StepLR`'s `step_size`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub decay_every: u64,
    /// `schedule = "step"`: the factor of each decay (`StepLR`'s `gamma`, 0.1).
    #[serde(default = "epsilon_0_1", skip_serializing_if = "is_0_1")]
    pub decay_gamma: f64,
    /// Linear warm-up: the first N steps scale the scheduled rate by (step + 1)/(N + 1)
    /// (0: none).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub warmup_steps: u64,
    /// Clip the gradients to this global L2 norm before each update
    /// (`torch.nn.utils.clip_grad_norm_`; unset: no clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// timm's weight-decay rule (`param_groups_weight_decay`): no decay on 1-D tensors (norms,
    /// biases) nor on a ViT's `pos_embed` and `cls_token`, for every algorithm (false: AdamW
    /// decays every tensor, as PyTorch's single parameter group; Adam and SGD decay tensors
    /// of ≥ 2 dimensions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timm_weight_decay: bool,
    /// Layer-wise learning-rate decay of a ViT backbone, as timm's `param_groups_layer_decay`
    /// groups it: with depth D, block i trains at `layer_decay`^(D − 1 − i) × the rate, the
    /// patch embedding and position/class tokens at `layer_decay`^D, the final norm, the head
    /// and the loss (with the last block) at the full rate (1: off).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub layer_decay: f64,
}

fn base_lr() -> f64 {
    3e-4
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            algorithm: Algorithm::default(),
            learning_rate: base_lr(),
            schedule: LrSchedule::default(),
            weight_decay: 0.0,
            beta_learning_rate: None,
            head_lr_multiplier: 1.0,
            decay_every: 0,
            decay_gamma: epsilon_0_1(),
            warmup_steps: 0,
            clip_grad_norm: None,
            timm_weight_decay: false,
            layer_decay: 1.0,
        }
    }
}

impl OptimConfig {
    /// The learning rate for (0-based) `step` of `total`: the schedule (with `step`'s
    /// period and factor), then the linear warm-up.
    pub fn learning_rate_at(&self, step: u64, total: u64) -> f64 {
        let base = self.learning_rate;
        let scheduled = match self.schedule {
            LrSchedule::Step if self.decay_every > 0 => {
                base * self
                    .decay_gamma
                    .powi((step / self.decay_every).min(i32::MAX as u64) as i32)
            }
            s => s.lr(step, total, base),
        };
        if step < self.warmup_steps {
            scheduled * (step + 1) as f64 / (self.warmup_steps + 1) as f64
        } else {
            scheduled
        }
    }

    /// Checks the settings once.
    pub fn validate(&self) -> Result<()> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let fraction = |x: f64| (0.0..1.0).contains(&x);
        if !positive(self.head_lr_multiplier) {
            return Err(ConfigError::new(
                "train.optimizer.head_lr_multiplier",
                format!(
                    "train.optimizer.head_lr_multiplier = {} must be > 0",
                    self.head_lr_multiplier
                ),
            ));
        }
        if self.schedule == LrSchedule::Step && self.decay_every == 0 {
            return Err(ConfigError::new("train.optimizer.decay_every", 
                "train.optimizer.schedule = \"step\" needs train.optimizer.decay_every = N (steps between decays)",
            ));
        }
        if !(self.decay_gamma.is_finite() && self.decay_gamma > 0.0 && self.decay_gamma <= 1.0) {
            return Err(ConfigError::new(
                "train.optimizer.decay_gamma",
                format!(
                    "train.optimizer.decay_gamma = {} must lie in (0, 1]",
                    self.decay_gamma
                ),
            ));
        }
        if !(self.layer_decay.is_finite() && self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return Err(ConfigError::new(
                "train.optimizer.layer_decay",
                format!(
                    "train.optimizer.layer_decay = {} must lie in (0, 1] (1: off)",
                    self.layer_decay
                ),
            ));
        }
        if !self.clip_grad_norm.is_none_or(positive) {
            return Err(ConfigError::new(
                "train.optimizer.clip_grad_norm",
                "train.optimizer.clip_grad_norm must be > 0 (or left out for no clipping)",
            ));
        }
        if !positive(self.learning_rate) {
            return Err(ConfigError::new(
                "train.optimizer.learning_rate",
                format!(
                    "train.optimizer.learning_rate = {} must be finite and > 0",
                    self.learning_rate
                ),
            ));
        }
        if let Some(b) = self.beta_learning_rate.filter(|&b| !positive(b)) {
            return Err(ConfigError::new(
                "train.optimizer.beta_learning_rate",
                format!("train.optimizer.beta_learning_rate = {b} must be finite and > 0"),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError::new(
                "train.optimizer.weight_decay",
                format!(
                    "train.optimizer.weight_decay = {} must be ≥ 0",
                    self.weight_decay
                ),
            ));
        }
        match self.algorithm {
            Algorithm::Adam {
                beta1,
                beta2,
                epsilon,
            }
            | Algorithm::Adamw {
                beta1,
                beta2,
                epsilon,
            } if !(fraction(beta1) && fraction(beta2) && positive(epsilon)) => {
                Err(ConfigError::new(
                    "train.optimizer.algorithm",
                    "train.optimizer.algorithm: adam needs 0 ≤ beta1, beta2 < 1 and epsilon > 0",
                ))
            }
            Algorithm::Sgd { momentum, .. } if !fraction(momentum) => Err(ConfigError::new(
                "train.optimizer.algorithm",
                "sgd needs 0 ≤ momentum < 1",
            )),
            _ => Ok(()),
        }
    }
}
