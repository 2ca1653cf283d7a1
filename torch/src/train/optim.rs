//! Optimisers (Adam and SGD with momentum, in the TF update forms the seed trained with, and PyTorch's AdamW for the modern recipes) whose state is plain named tensors for checkpoints, and learning-rate schedules as pure functions.
//!
//! Learning-rate groups: the loss's parameters (`loss.*`) train at `beta_learning_rate` (the
//! margin loss's β) or at the loss's `lr_multiplier` × the rate, the head (`head.*`) at
//! `head_lr_multiplier` × the rate. Gradient clipping (`clip_grad_norm`) rescales all
//! gradients together as `torch.nn.utils.clip_grad_norm_` does, before weight decay.
//!
//! Weight decay: the seed declared a 1e-3 L2 regulariser on its head's weights but never added
//! it to the loss, so it trained without decay; here `weight_decay` defaults to 0 and, when
//! set, adds `weight_decay·θ` to the gradient of every weight matrix/kernel (tensors with ≥ 2
//! dimensions: conv and linear weights, not biases, batch-norm parameters or the margin loss's
//! β), which is TF's `l2_regularizer(scale)` gradient. AdamW decays every tensor (PyTorch's
//! single parameter group) unless `timm_weight_decay` selects timm's rule: no decay on 1-D
//! tensors (norms, biases) nor on a ViT's `pos_embed` and `cls_token`.
//!
//! Layer-wise learning-rate decay (`layer_decay`, ViT backbones), as timm's
//! `param_groups_layer_decay` groups a ViT of depth D: the stem
//! (`backbone.{cls_token,pos_embed,patch_embed.*}`) is group 0, `backbone.blocks.{i}.*` group
//! i + 1, everything else (the final norms, the head, the loss) group D, the last block's; group
//! g trains at `layer_decay`^(D − g) × the rate.

use std::collections::HashMap;

pub use dml_jobspec::train_config::{Algorithm, LrSchedule, OptimConfig, END_LEARNING_RATE};
use tch::nn::{self, OptimizerConfig as _};
use tch::Tensor;

use super::error::{Result, TrainError};

#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    lr_scale: f64,
    decay: bool,
    /// Adam: [m, v]; SGD: [accumulator].
    slots: Vec<Tensor>,
    /// Updates this tensor received (AdamW's per-parameter step, as PyTorch counts it:
    /// a tensor without a gradient, e.g. a frozen backbone, is not stepped).
    steps: u64,
}

/// An optimiser over the trainable variables of a VarStore, with named, saveable state.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimConfig,
    params: Vec<Param>,
    updates: u64,
    /// A libtorch optimiser over the same variables that never steps: tch exposes libtorch's
    /// set-to-none gradient reset only through it.
    grad_reset: nn::Optimizer,
}

const SLOT_NAMES_ADAM: [&str; 2] = ["m", "v"];
const SLOT_NAMES_SGD: [&str; 1] = ["accumulator"];

impl Optimizer {
    /// Tracks every trainable variable of `vs` (sorted by name); variables named `loss.beta`
    /// get `beta_learning_rate` when set.
    pub fn new(vs: &nn::VarStore, config: &OptimConfig) -> Result<Self> {
        Self::with_loss_multiplier(vs, config, 1.0)
    }

    /// Like [`Optimizer::new`], the loss's parameters training at `loss_lr_multiplier` × the
    /// rate (unless `beta_learning_rate` is set) and the head at `head_lr_multiplier` × it.
    pub fn with_loss_multiplier(
        vs: &nn::VarStore,
        config: &OptimConfig,
        loss_lr_multiplier: f64,
    ) -> Result<Self> {
        config.validate()?;
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = match config.algorithm {
            Algorithm::Adam { .. } | Algorithm::Adamw { .. } => 2,
            Algorithm::Sgd { .. } => 1,
        };
        let depth = vars
            .iter()
            .filter_map(|(n, _)| block_index(n))
            .max()
            .map_or(0, |i| i + 1);
        let params = vars
            .into_iter()
            .map(|(name, tensor)| {
                let lr_scale = match (name.starts_with("loss."), config.beta_learning_rate) {
                    (true, Some(beta_lr)) => beta_lr / config.learning_rate,
                    (true, None) => loss_lr_multiplier,
                    _ if name.starts_with("head.") => config.head_lr_multiplier,
                    _ => 1.0,
                } * layer_scale(&name, depth, config.layer_decay);
                let decay = if config.timm_weight_decay {
                    !(tensor.dim() <= 1
                        || name == "backbone.pos_embed"
                        || name == "backbone.cls_token")
                } else {
                    match config.algorithm {
                        Algorithm::Adamw { .. } => true,
                        _ => tensor.dim() >= 2 && !name.starts_with("loss."),
                    }
                };
                let slots = (0..slots).map(|_| tensor.zeros_like().detach()).collect();
                Param {
                    name,
                    tensor,
                    lr_scale,
                    decay,
                    slots,
                    steps: 0,
                }
            })
            .collect();
        let grad_reset = nn::Sgd::default()
            .build(vs, 0.0)
            .map_err(TrainError::torch("creating the gradient reset"))?;
        Ok(Optimizer {
            config: config.clone(),
            params,
            updates: 0,
            grad_reset,
        })
    }

    /// The learning rate the schedule (and warm-up) gives for `step` of `total`.
    pub fn learning_rate(&self, step: u64, total: u64) -> f64 {
        self.config.learning_rate_at(step, total)
    }

    /// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: the global L2 norm of all
    /// gradients; when it exceeds `max_norm`, every gradient is scaled by
    /// max_norm/(norm + 1e-6). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.tensor.grad())
                .filter(Tensor::defined)
                .collect();
            if grads.is_empty() {
                return 0.0;
            }
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            let coef = (max_norm / (total + 1e-6)).min(1.0);
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
            total
        })
    }

    /// Number of updates applied so far (Adam's t).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Drops the gradients of all tracked variables (libtorch's `set_to_none`), so the next
    /// backward pass writes fresh gradients instead of accumulating into zeroed ones.
    pub fn zero_grad(&mut self) {
        self.grad_reset.zero_grad();
    }

    /// Applies one update with learning rate `lr` from the current gradients (variables
    /// without a gradient are left alone, as TF does for unused variables).
    pub fn step(&mut self, lr: f64) {
        self.updates += 1;
        let t = self.updates as i32;
        let wd = self.config.weight_decay;
        let algorithm = self.config.algorithm;
        if let Some(max_norm) = self.config.clip_grad_norm {
            self.clip_grad_norm(max_norm);
        }
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                p.steps += 1;
                if let Algorithm::Adamw {
                    beta1,
                    beta2,
                    epsilon,
                } = algorithm
                {
                    // torch.optim.AdamW (single tensor, no amsgrad), step by step.
                    let lr = lr * p.lr_scale;
                    let t = p.steps as i32;
                    if wd != 0.0 && p.decay {
                        let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
                    }
                    let (m, v) = p.slots.split_at_mut(1);
                    let (m, v) = (&mut m[0], &mut v[0]);
                    let _ = m.lerp_(&grad, 1.0 - beta1);
                    let _ = v.g_mul_scalar_(beta2);
                    let _ = v.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                    let step_size = lr / (1.0 - beta1.powi(t));
                    let mut denom = v.sqrt();
                    let _ = denom.g_div_scalar_((1.0 - beta2.powi(t)).sqrt());
                    let _ = denom.g_add_scalar_(epsilon);
                    let _ = denom.g_mul_scalar_(-1.0 / step_size);
                    let _ = p.tensor.addcdiv_(m, &denom);
                    continue;
                }
                let grad = if p.decay && wd > 0.0 {
                    grad + &p.tensor * wd
                } else {
                    grad
                };
                let lr = lr * p.lr_scale;
                match algorithm {
                    Algorithm::Adam {
                        beta1,
                        beta2,
                        epsilon,
                    } => {
                        let (m, v) = p.slots.split_at_mut(1);
                        let (m, v) = (&mut m[0], &mut v[0]);
                        // m + (1 − β₁)(g − m) = β₁m + (1 − β₁)g.
                        let _ = m.lerp_(&grad, 1.0 - beta1);
                        let _ = v.g_mul_scalar_(beta2);
                        let _ = v.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                        let lr_t = lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t));
                        // θ += m / (−(√v + ε)/lr_t), with one temporary.
                        let mut denom = v.sqrt();
                        let _ = denom.g_add_scalar_(epsilon);
                        let _ = denom.g_mul_scalar_(-1.0 / lr_t);
                        let _ = p.tensor.addcdiv_(m, &denom);
                    }
                    Algorithm::Sgd { momentum, nesterov } => {
                        let a = &mut p.slots[0];
                        let _ = a.g_mul_scalar_(momentum);
                        let _ = a.g_add_(&grad);
                        let update = if nesterov {
                            &grad + &*a * momentum
                        } else {
                            a.shallow_clone()
                        };
                        let _ = p.tensor.g_add_(&(update * -lr));
                    }
                    Algorithm::Adamw { .. } => unreachable!("handled above"),
                }
            }
        });
    }

    /// The optimiser state as named tensors (`optim.<variable>.<slot>`, and AdamW's
    /// per-tensor step counts as `optim_steps.<variable>`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let names: &[&str] = match self.config.algorithm {
            Algorithm::Adam { .. } | Algorithm::Adamw { .. } => &SLOT_NAMES_ADAM,
            Algorithm::Sgd { .. } => &SLOT_NAMES_SGD,
        };
        let mut out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .flat_map(|p| {
                p.slots
                    .iter()
                    .zip(names)
                    .map(move |(s, n)| (format!("optim.{}.{}", p.name, n), s.shallow_clone()))
            })
            .collect();
        if matches!(self.config.algorithm, Algorithm::Adamw { .. }) {
            out.extend(self.params.iter().map(|p| {
                (
                    format!("optim_steps.{}", p.name),
                    Tensor::from_slice(&[p.steps as i64]),
                )
            }));
        }
        out
    }

    /// Restores state written by [`Optimizer::state_tensors`] and the update count.
    pub(crate) fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        updates: u64,
    ) -> Result<()> {
        let names: Vec<String> = self.state_tensors().into_iter().map(|(n, _)| n).collect();
        let adamw = matches!(self.config.algorithm, Algorithm::Adamw { .. });
        let mut i = 0;
        for p in &mut self.params {
            for slot in &mut p.slots {
                let name = &names[i];
                i += 1;
                super::checkpoint::restore_named(slot, tensors, name)
                    .map_err(|e| TrainError::Config(format!("optimiser state: {e}")))?;
            }
            p.steps = if adamw {
                let name = format!("optim_steps.{}", p.name);
                tensors
                    .get(&name)
                    .map(|t| t.int64_value(&[0]) as u64)
                    .ok_or_else(|| {
                        TrainError::Config(format!("optimiser state: `{name}` is missing"))
                    })?
            } else {
                updates
            };
        }
        self.updates = updates;
        Ok(())
    }
}

/// The block of a ViT variable (`backbone.blocks.{i}.…`).
fn block_index(name: &str) -> Option<u64> {
    name.strip_prefix("backbone.blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// timm's `param_groups_layer_decay` scale of `name` in a ViT of `depth` blocks: groups
/// 0 (the stem) and 1..=depth (the blocks); everything else shares the last block's group
/// `depth` (timm's `^norm` matcher lands there); group g trains at `decay`^(depth − g).
fn layer_scale(name: &str, depth: u64, decay: f64) -> f64 {
    if decay == 1.0 {
        return 1.0;
    }
    let top = depth;
    let group = match name.strip_prefix("backbone.") {
        Some("cls_token" | "pos_embed") => 0,
        Some(n) if n.starts_with("patch_embed.") => 0,
        Some(_) => block_index(name).map_or(top, |i| i + 1),
        None => top,
    };
    decay.powi((top - group) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn linear_schedule_is_the_seed_polynomial_decay() {
        let s = LrSchedule::Linear;
        assert_eq!(s.lr(0, 10_000, 3e-4), 3e-4);
        assert!((s.lr(5_000, 10_000, 3e-4) - (3e-4 + 1e-7) / 2.0).abs() < 1e-15);
        assert!((s.lr(10_000, 10_000, 3e-4) - 1e-7).abs() < 1e-18);
        assert!((s.lr(9_999, 10_000, 3e-4) - ((3e-4 - 1e-7) / 10_000.0 + 1e-7)).abs() < 1e-18);
        assert!(
            (s.lr(20_000, 10_000, 3e-4) - 1e-7).abs() < 1e-18,
            "clamped past the end"
        );
        let lrs: Vec<f64> = (0..=100).map(|i| s.lr(i, 100, 1.0)).collect();
        assert!(lrs.windows(2).all(|w| w[1] < w[0]), "strictly decreasing");
        assert_eq!(s.lr(3, 0, 0.5), 0.5);
    }

    #[test]
    fn constant_and_cosine_schedules() {
        assert_eq!(LrSchedule::Constant.lr(77, 100, 0.01), 0.01);
        let c = LrSchedule::Cosine;
        assert_eq!(c.lr(0, 100, 0.01), 0.01);
        assert!((c.lr(50, 100, 0.01) - (0.01 + 1e-7) / 2.0).abs() < 1e-15);
        assert!((c.lr(100, 100, 0.01) - 1e-7).abs() < 1e-15);
        assert!(c.lr(25, 100, 0.01) > LrSchedule::Linear.lr(25, 100, 0.01));
    }

    /// Variables are f32 (the VarStore's kind): compare at f32 precision.
    const TOL: f64 = 1e-6;

    fn one_param(value: &[f64], grad: &[f64]) -> (nn::VarStore, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs
            .root()
            .var_copy("w", &Tensor::from_slice(value).to_kind(Kind::Double));
        let g = Tensor::from_slice(grad);
        // d/dp Σ p·g = g.
        (&p * &g).sum(Kind::Double).backward();
        (vs, p)
    }

    #[test]
    fn adam_takes_tf_steps() {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        let (vs, p) = one_param(&[1.0, -2.0], &[0.5, -0.25]);
        let mut opt = Optimizer::new(&vs, &OptimConfig::default()).unwrap();
        opt.step(0.1);
        // t = 1: m = 0.1g, v = 0.001g², lr_t = 0.1·√0.001/0.1 → θ −= lr_t·m/(√v + ε).
        let lr_t = 0.1 * (1.0f64 - b2).sqrt() / (1.0 - b1);
        for (i, (start, g)) in [(1.0f64, 0.5f64), (-2.0, -0.25)].iter().enumerate() {
            let m = (1.0 - b1) * g;
            let v = (1.0 - b2) * g * g;
            let want = start - lr_t * m / (v.sqrt() + eps);
            assert!((p.double_value(&[i as i64]) - want).abs() < TOL);
        }
        assert_eq!(opt.updates(), 1);
        assert_eq!(opt.state_tensors().len(), 2);
    }

    #[test]
    fn momentum_accumulates_like_tf() {
        let (vs, p) = one_param(&[1.0], &[2.0]);
        let cfg = OptimConfig {
            algorithm: Algorithm::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            ..OptimConfig::default()
        };
        let mut opt = Optimizer::new(&vs, &cfg).unwrap();
        opt.step(0.1); // a = 2, θ = 1 − 0.2
        opt.step(0.1); // same gradient kept: a = 0.9·2 + 2 = 3.8, θ = 0.8 − 0.38
        assert!((p.double_value(&[0]) - 0.42).abs() < TOL);
        opt.zero_grad();
        // Gradients are dropped, not zeroed: a variable without a gradient is not updated (no
        // momentum coasting), as TF and PyTorch do for unused variables.
        opt.step(0.1);
        assert!((p.double_value(&[0]) - 0.42).abs() < TOL);
        assert!(!p.grad().defined());
    }

    #[test]
    fn weight_decay_only_touches_weight_matrices() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let w = root.var_copy("w", &Tensor::ones([2, 2], (Kind::Double, Device::Cpu)));
        let b = root.var_copy("b", &Tensor::ones([2], (Kind::Double, Device::Cpu)));
        (w.sum(Kind::Double) * 0.0 + b.sum(Kind::Double) * 0.0).backward();
        let cfg = OptimConfig {
            algorithm: Algorithm::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            weight_decay: 0.5,
            ..OptimConfig::default()
        };
        let mut opt = Optimizer::new(&vs, &cfg).unwrap();
        opt.step(0.1);
        assert!((w.double_value(&[0, 0]) - 0.95).abs() < TOL);
        assert_eq!(b.double_value(&[0]), 1.0);
    }

    #[test]
    fn timm_rule_and_layer_decay() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let ones = |shape: &[i64]| Tensor::ones(shape, (Kind::Double, Device::Cpu));
        let names = [
            ("backbone.pos_embed", vec![1, 5, 2]),
            ("backbone.cls_token", vec![1, 1, 2]),
            ("backbone.patch_embed.proj.weight", vec![2, 3, 1, 1]),
            ("backbone.blocks.0.attn.qkv.weight", vec![6, 2]),
            ("backbone.blocks.0.norm1.weight", vec![2]),
            ("backbone.blocks.1.mlp.fc1.bias", vec![8]),
            ("backbone.norm.weight", vec![2]),
            ("head.fc.weight", vec![3, 2]),
        ];
        let vars: Vec<Tensor> = names
            .iter()
            .map(|(n, s)| {
                let mut p = root.clone();
                let parts: Vec<&str> = n.split('.').collect();
                for part in &parts[..parts.len() - 1] {
                    p = p / *part;
                }
                p.var_copy(parts[parts.len() - 1], &ones(s))
            })
            .collect();
        let sums: Vec<Tensor> = vars.iter().map(|v| v.sum(Kind::Double)).collect();
        let loss = Tensor::stack(&sums, 0).sum(Kind::Double) * 0.0;
        loss.backward();
        let cfg = OptimConfig {
            algorithm: Algorithm::Adamw {
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
            weight_decay: 0.5,
            timm_weight_decay: true,
            layer_decay: 0.5,
            ..OptimConfig::default()
        };
        let opt = Optimizer::new(&vs, &cfg).unwrap();
        let by_name = |n: &str| opt.params.iter().find(|p| p.name == n).unwrap();
        // Two blocks: groups stem 0, blocks 1..=2, the rest with the last block (2); scale
        // 0.5^(2 − group), as timm 1.0.22 groups vit_small_patch16_224 (stem 0, blocks.11 and
        // norm 12).
        for (n, decay, scale) in [
            ("backbone.pos_embed", false, 0.25),
            ("backbone.cls_token", false, 0.25),
            ("backbone.patch_embed.proj.weight", true, 0.25),
            ("backbone.blocks.0.attn.qkv.weight", true, 0.5),
            ("backbone.blocks.0.norm1.weight", false, 0.5),
            ("backbone.blocks.1.mlp.fc1.bias", false, 1.0),
            ("backbone.norm.weight", false, 1.0),
            ("head.fc.weight", true, 1.0),
        ] {
            let p = by_name(n);
            assert_eq!((p.decay, p.lr_scale), (decay, scale), "{n}");
        }
        // With zero gradients, an AdamW step only decays: θ·(1 − lr·scale·wd) where decayed.
        let mut opt = opt;
        opt.step(0.1);
        let w = &vars[3];
        assert!((w.double_value(&[0, 0]) - (1.0 - 0.1 * 0.5 * 0.5)).abs() < TOL);
        assert_eq!(vars[0].double_value(&[0, 0, 0]), 1.0);
        // Off by default: AdamW decays everything at the full rate.
        let opt = Optimizer::new(
            &vs,
            &OptimConfig {
                timm_weight_decay: false,
                layer_decay: 1.0,
                ..cfg
            },
        )
        .unwrap();
        assert!(opt.params.iter().all(|p| p.decay && p.lr_scale == 1.0));
    }

    #[test]
    fn settings_are_validated() {
        let bad = |c: OptimConfig| c.validate().is_err();
        assert!(bad(OptimConfig {
            learning_rate: 0.0,
            ..OptimConfig::default()
        }));
        assert!(bad(OptimConfig {
            weight_decay: -1.0,
            ..OptimConfig::default()
        }));
        assert!(bad(OptimConfig {
            beta_learning_rate: Some(f64::NAN),
            ..OptimConfig::default()
        }));
        assert!(bad(OptimConfig {
            algorithm: Algorithm::Sgd {
                momentum: 1.0,
                nesterov: false
            },
            ..OptimConfig::default()
        }));
        assert!(OptimConfig::default().validate().is_ok());
    }
}
