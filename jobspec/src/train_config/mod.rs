//! The training settings as plain data: backbone, head, loss, optimiser, precision.
//!
//! These types are what the config file, the train key and `model.json` hold. They carry
//! no tensors, so everything that only reads or hashes settings (planning, `--dry-run`,
//! `dml eval`, the report) works without libtorch; `dml-torch` builds the network, the
//! loss and the optimiser from them.
mod base;
mod loss;
mod model;
mod optim;

pub use base::{ConfigError, Result};
pub use loss::*;
pub use model::*;
pub use optim::*;

pub(crate) use base::is_zero_u64;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 autocast for the forward pass, on CUDA and on CPUs with native bf16
    /// (AVX512-BF16/AMX; refused elsewhere): convolutions and matrix products in bf16, the
    /// weights, the loss and the optimiser in f32.
    Bf16,
}

/// Everything that shapes a training run except the data and the step count.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The embedding network.
    #[serde(default)]
    pub model: ModelConfig,
    /// The ranking loss.
    #[serde(default)]
    pub loss: Loss,
    /// Optimiser, learning rate and schedule.
    #[serde(default)]
    pub optimizer: OptimConfig,
    /// Forward-pass precision.
    #[serde(default)]
    pub precision: Precision,
    /// On CUDA: cuDNN's deterministic algorithms instead of autotuned ones (slower; the CPU
    /// is deterministic either way). Left out of the serialised form when false, so the
    /// settings of existing runs and checkpoints read the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deterministic: bool,
    /// Train only the head (and the loss's parameters) for the first N steps, the backbone
    /// frozen (the Proxy-Anchor recipe's warm-up; 0: never frozen).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub freeze_backbone_steps: u64,
}

impl TrainConfig {
    /// Checks every part once, before anything runs.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.loss.validate()?;
        self.optimizer.validate()?;
        if self.optimizer.layer_decay != 1.0 && self.model.backbone.vit().is_none() {
            return Err(ConfigError::new(
                "train.optimizer.layer_decay",
                format!(
                "train.optimizer.layer_decay = {} is for the ViT backbones (their blocks are the layers), not {}; remove it",
                self.optimizer.layer_decay,
                self.model.backbone.name()
            ),
            ));
        }
        Ok(())
    }

    /// Checks the settings that depend on the number of training steps.
    pub fn validate_steps(&self, steps: u64) -> Result<()> {
        let longer = |what: &str, n: u64| {
            Err(ConfigError::new(
                what,
                format!(
                "{what} = {n} is not shorter than training (plan.steps = {steps}); lower it or plan more steps"
            ),
            ))
        };
        if self.optimizer.warmup_steps > 0 && self.optimizer.warmup_steps >= steps {
            return longer("train.optimizer.warmup_steps", self.optimizer.warmup_steps);
        }
        if self.freeze_backbone_steps > 0 && self.freeze_backbone_steps >= steps {
            return longer("train.freeze_backbone_steps", self.freeze_backbone_steps);
        }
        if let Some((_, start)) = self.loss.memory() {
            if start > 0 && start >= steps {
                return longer("train.loss.memory_start_step", start);
            }
        }
        Ok(())
    }
}

/// The losses that take each setting only some losses have, for the message when a
/// `[train.loss]` table gives it to a loss that has no such setting.
const LOSS_SETTINGS_OF_SOME: [(&str, &str, &str); 5] = [
    (
        "miner",
        "multi_similarity, circle",
        "a pair miner selects pairs of a batch; the other losses take no miner: remove train.loss.miner or set train.loss.name = \"multi_similarity\" or \"circle\"",
    ),
    (
        "miner_epsilon",
        "multi_similarity, circle",
        "it is the ε of the pair miner, which only the pair losses take: remove train.loss.miner_epsilon or set train.loss.name = \"multi_similarity\" or \"circle\"",
    ),
    (
        "memory",
        "multi_similarity, circle",
        "the cross-batch memory (XBM) keeps embeddings of earlier batches as extra pairs; a proxy loss already compares every row with every class's proxy, and the seed's losses need P×K batches: remove train.loss.memory or set train.loss.name = \"multi_similarity\" or \"circle\"",
    ),
    (
        "memory_start_step",
        "multi_similarity, circle",
        "it delays the cross-batch memory, which only the pair losses take: remove train.loss.memory_start_step or set train.loss.name = \"multi_similarity\" or \"circle\"",
    ),
    (
        "lr_multiplier",
        "proxy_anchor, proxy_nca, arcface, soft_triple",
        "it scales the learning rate of the loss's own parameters (proxies, class weights, centres), which this loss does not have: remove train.loss.lr_multiplier (train.optimizer.head_lr_multiplier scales the head's)",
    ),
];

/// Why `field` is not a setting of the loss named `loss` when it is one of another loss
/// (a miner or a cross-batch memory on a loss that cannot use them, a learning-rate
/// multiplier on a loss without parameters): which losses take it and what to change.
/// `None` for a field no loss has, or one `loss` has.
pub fn misplaced_loss_setting(loss: &str, field: &str) -> Option<String> {
    let (_, takers, why) = LOSS_SETTINGS_OF_SOME
        .iter()
        .find(|(name, _, _)| *name == field)?;
    if takers.split(", ").any(|t| t == loss) {
        return None;
    }
    Some(format!(
        "train.loss.{field} is a setting of {takers} only, not of {loss}: {why}"
    ))
}

/// The settings in a train artifact's `model.json` (which also says, under `validation`,
/// which step's weights it holds when `[train.validation]` was on).
pub fn read_model_json(path: &Path) -> std::result::Result<TrainConfig, ModelJsonError> {
    let read = |what| {
        let path = path.to_path_buf();
        move |source| ModelJsonError::Json { what, path, source }
    };
    let text = std::fs::read_to_string(path).map_err(|source| ModelJsonError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(read("parsing"))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("validation");
    }
    serde_json::from_value(v).map_err(read("reading the settings in"))
}

/// Why [`read_model_json`] could not read a `model.json`.
#[derive(Debug, thiserror::Error)]
pub enum ModelJsonError {
    /// The file could not be read.
    #[error("reading {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not JSON (`what` = "parsing"), or not the settings ("reading the settings in").
    #[error("{what} {}", path.display())]
    Json {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps_error(cfg: &TrainConfig, steps: u64) -> String {
        cfg.validate_steps(steps).unwrap_err().message
    }

    #[test]
    fn bn_inception_takes_the_crops_its_reference_takes() {
        // The sizes pretrainedmodels' BNInception.features runs on (checked against it, 8 to
        // 320 px): its reduction blocks need an even map.
        for crop in [32, 64, 96, 100, 160, 224, 227, 256, 288] {
            assert!(Backbone::BnInception.check_crop(crop).is_ok(), "{crop}");
        }
        for crop in [8, 28, 30, 48, 80, 112] {
            let e = Backbone::BnInception.check_crop(crop).unwrap_err().message;
            assert!(
                e.contains(&format!("image.crop = {crop}")) && e.contains("multiple of 32"),
                "{e}"
            );
        }
        assert!(Backbone::InceptionV1.check_crop(28).is_ok());
        assert_eq!(Backbone::BnInception.feature_dim(), 1024);
        assert_eq!(
            Backbone::BnInception.input_scaling(),
            InputScaling::BnInception
        );
        assert_eq!(
            Backbone::BnInception.weights_script(),
            Some("scripts/export_bninception.py")
        );
        assert!(Backbone::BnInception.strict_weights() && !Backbone::Resnet50.strict_weights());
        let parsed: ModelConfig = serde_json::from_str(r#"{"backbone": "bn_inception"}"#).unwrap();
        assert_eq!(parsed.input_scaling().name(), "bn_inception");
    }

    #[test]
    fn warm_up_freezing_and_memory_start_must_end_before_training_does() {
        let mut cfg = TrainConfig::default();
        assert!(cfg.validate_steps(1).is_ok());
        cfg.optimizer.warmup_steps = 10;
        assert!(cfg.validate_steps(11).is_ok());
        let e = steps_error(&cfg, 10);
        assert!(
            e.contains("train.optimizer.warmup_steps = 10") && e.contains("plan.steps = 10"),
            "{e}"
        );
        cfg.optimizer.warmup_steps = 0;
        cfg.freeze_backbone_steps = 20;
        assert!(steps_error(&cfg, 5).contains("train.freeze_backbone_steps = 20"));
        assert!(cfg.validate_steps(21).is_ok());
        cfg.freeze_backbone_steps = 0;
        cfg.loss = serde_json::from_value(serde_json::json!({
            "name": "multi_similarity", "memory": 100, "memory_start_step": 50
        }))
        .unwrap();
        assert!(steps_error(&cfg, 50).contains("train.loss.memory_start_step = 50"));
        assert!(cfg.validate_steps(51).is_ok());
    }

    /// The message of the first check `cfg` fails.
    fn invalid(cfg: &TrainConfig) -> String {
        cfg.validate().unwrap_err().message
    }

    #[test]
    fn model_settings_that_do_not_fit_the_backbone_are_named() {
        let mut cfg = TrainConfig::default();
        cfg.validate().unwrap();
        cfg.model.embedding_dim = 0;
        assert_eq!(invalid(&cfg), "embedding_dim must be > 0, got 0");
        cfg.model.embedding_dim = 64;
        cfg.model.backbone = Backbone::Resnet50;
        cfg.model.pool = Pool::Mean;
        assert_eq!(
            invalid(&cfg),
            "train.model.pool = \"mean\" is for the ViT backbones, not resnet50"
        );
        cfg.model.backbone = Backbone::VitS16;
        cfg.validate().unwrap();
        cfg.model.freeze_bn = true;
        assert_eq!(
            invalid(&cfg),
            "train.model.freeze_bn: vit_s16 has no batch norms to freeze"
        );
        cfg.model.freeze_bn = false;
        // Layer-wise decay needs layers: a ViT's blocks.
        cfg.optimizer.layer_decay = 0.75;
        cfg.validate().unwrap();
        cfg.model.backbone = Backbone::Resnet50;
        cfg.model.pool = Pool::Token;
        let e = invalid(&cfg);
        assert!(
            e.starts_with("train.optimizer.layer_decay = 0.75 is for the ViT backbones")
                && e.contains("not resnet50; remove it"),
            "{e}"
        );
    }

    #[test]
    fn optimiser_settings_out_of_range_are_named_with_their_bounds() {
        type Case = (fn(&mut OptimConfig), &'static str);
        let bad: [Case; 9] = [
            (
                |o| o.schedule = LrSchedule::Step,
                "train.optimizer.schedule = \"step\" needs train.optimizer.decay_every = N (steps between decays)",
            ),
            (
                |o| o.decay_gamma = 1.5,
                "train.optimizer.decay_gamma = 1.5 must lie in (0, 1]",
            ),
            (
                |o| o.layer_decay = 0.0,
                "train.optimizer.layer_decay = 0 must lie in (0, 1] (1: off)",
            ),
            (
                |o| o.clip_grad_norm = Some(0.0),
                "train.optimizer.clip_grad_norm must be > 0 (or left out for no clipping)",
            ),
            (
                |o| o.learning_rate = -0.1,
                "train.optimizer.learning_rate = -0.1 must be finite and > 0",
            ),
            (
                |o| o.beta_learning_rate = Some(f64::NAN),
                "train.optimizer.beta_learning_rate = NaN must be finite and > 0",
            ),
            (
                |o| o.weight_decay = -1e-4,
                "train.optimizer.weight_decay = -0.0001 must be ≥ 0",
            ),
            (
                |o| {
                    o.algorithm = Algorithm::Adam {
                        beta1: 0.9,
                        beta2: 1.0,
                        epsilon: 1e-8,
                    }
                },
                "train.optimizer.algorithm: adam needs 0 ≤ beta1, beta2 < 1 and epsilon > 0",
            ),
            (
                |o| {
                    o.algorithm = Algorithm::Sgd {
                        momentum: 1.0,
                        nesterov: false,
                    }
                },
                "sgd needs 0 ≤ momentum < 1",
            ),
        ];
        for (set, message) in bad {
            let mut o = OptimConfig::default();
            o.validate().unwrap();
            set(&mut o);
            assert_eq!(o.validate().unwrap_err().message, message);
        }
        let stepped = OptimConfig {
            schedule: LrSchedule::Step,
            decay_every: 100,
            ..OptimConfig::default()
        };
        stepped.validate().unwrap();
    }

    #[test]
    fn loss_parameters_out_of_range_are_named_with_the_loss() {
        let loss = |v: serde_json::Value| -> Loss { serde_json::from_value(v).unwrap() };
        for (v, message) in [
            (
                serde_json::json!({"name": "hard_triplet", "margin": -0.1}),
                "hard_triplet: margin must be a finite number ≥ 0 or \"soft\"",
            ),
            (
                serde_json::json!({"name": "contrastive", "margin": -1.0}),
                "contrastive: margin must be a finite number ≥ 0",
            ),
            (
                serde_json::json!({"name": "angular", "alpha_degrees": 90.0}),
                "angular: alpha_degrees must lie in (0, 90)",
            ),
            (
                serde_json::json!({"name": "soft_triple", "centers_per_class": 1, "tau": 0.2}),
                "soft_triple: the centre regulariser (tau > 0) needs centers_per_class ≥ 2; set train.loss.tau = 0 or more centres",
            ),
        ] {
            let l = loss(v);
            assert_eq!(l.validate().unwrap_err().message, message);
        }
        loss(serde_json::json!({"name": "hard_triplet", "margin": "soft"}))
            .validate()
            .unwrap();
        loss(serde_json::json!({"name": "soft_triple", "centers_per_class": 2, "tau": 0.2}))
            .validate()
            .unwrap();
    }

    #[test]
    fn learning_rate_multipliers_must_be_positive() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let loss = Loss::ProxyAnchor {
                margin: 0.1,
                alpha: 32.0,
                lr_multiplier: bad,
            };
            let e = loss.validate().unwrap_err().message;
            assert!(e.contains("train.loss.lr_multiplier"), "{e}");
            let opt = OptimConfig {
                head_lr_multiplier: bad,
                ..OptimConfig::default()
            };
            let e = opt.validate().unwrap_err().message;
            assert!(e.contains("train.optimizer.head_lr_multiplier"), "{e}");
        }
    }

    #[test]
    fn a_miner_or_memory_on_a_loss_without_them_names_the_losses_that_take_them() {
        for field in ["miner", "miner_epsilon", "memory", "memory_start_step"] {
            for loss in ["proxy_anchor", "hard_triplet", "arcface"] {
                let m = misplaced_loss_setting(loss, field).unwrap();
                assert!(
                    m.contains(&format!("train.loss.{field}"))
                        && m.contains("multi_similarity, circle")
                        && m.contains(loss),
                    "{m}"
                );
            }
            assert_eq!(misplaced_loss_setting("circle", field), None);
            // Every loss named as taking it does take it.
            for loss in ["multi_similarity", "circle"] {
                let v = match field {
                    "miner" => serde_json::json!("multi_similarity"),
                    _ => serde_json::json!(1),
                };
                let parsed: std::result::Result<Loss, _> =
                    serde_json::from_value(serde_json::json!({ "name": loss, field: v }));
                assert!(parsed.is_ok(), "{loss} takes {field}");
            }
        }
        let m = misplaced_loss_setting("multi_similarity", "lr_multiplier").unwrap();
        assert!(
            m.contains("proxy_anchor, proxy_nca, arcface, soft_triple"),
            "{m}"
        );
        for loss in ["proxy_anchor", "proxy_nca", "arcface", "soft_triple"] {
            assert_eq!(misplaced_loss_setting(loss, "lr_multiplier"), None);
            let parsed: std::result::Result<Loss, _> =
                serde_json::from_value(serde_json::json!({ "name": loss, "lr_multiplier": 2.0 }));
            assert!(parsed.is_ok(), "{loss} takes lr_multiplier");
        }
        assert_eq!(
            misplaced_loss_setting("proxy_anchor", "no_such_field"),
            None
        );
    }
}
