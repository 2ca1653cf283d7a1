//! The training step the train stage drives: model + loss + optimiser on one device, with checkpoints that resume bit-for-bit on the CPU, the final weights file, and eval-mode embedding.

use std::collections::HashMap;
use std::path::Path;

pub use dml_jobspec::train_config::{Precision, TrainConfig};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use super::checkpoint;
use super::error::{Result, TrainError};
use super::losses::LossModule;
use super::model::{build_model, EmbeddingNet, ModelConfig};
use super::optim::Optimizer;
use super::torch_state::{self, lock_torch_rng, Autocast};

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The loss value.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// Fraction of the loss's triplets/pairs with non-zero loss.
    pub active_fraction: f64,
    /// Mean distance over positive pairs of the batch.
    pub mean_pos_dist: f64,
    /// Mean distance over negative pairs of the batch.
    pub mean_neg_dist: f64,
    /// Mean L2 norm of the embeddings.
    pub mean_norm: f64,
}

const CHECKPOINT_FORMAT: &str = "dml-train-checkpoint/1";
const WEIGHTS_FORMAT: &str = "dml-embedding-weights/1";

/// A model, loss and optimiser ready to take steps.
#[derive(Debug)]
pub struct Trainer {
    config: TrainConfig,
    device: Device,
    seed: u64,
    vs: nn::VarStore,
    net: EmbeddingNet,
    loss: LossModule,
    optimizer: Optimizer,
    autocast: bool,
    channels_last: bool,
}

impl Trainer {
    /// Seeds libtorch with `seed`, builds the network (loading pretrained backbone weights if
    /// configured), the loss and the optimiser on `device`. A loss with class parameters
    /// gets none (see [`Trainer::with_classes`]).
    pub fn new(config: &TrainConfig, device: Device, seed: u64) -> Result<Self> {
        Self::with_classes(config, device, seed, None)
    }

    /// Like [`Trainer::new`], with the training class ids (ascending) that a loss with
    /// class parameters (proxies, class weights, centres) needs one block for.
    pub fn with_classes(
        config: &TrainConfig,
        device: Device,
        seed: u64,
        classes: Option<&[i64]>,
    ) -> Result<Self> {
        config.validate()?;
        let mut model = config.model.clone();
        model.resolve(&config.loss);
        let normalize = model.normalizes(&config.loss);
        if normalize != config.loss.normalize_by_default() {
            tracing::warn!(
                "loss {} is usually trained with normalize = {}, this run uses {normalize}",
                config.loss.name(),
                config.loss.normalize_by_default(),
            );
        }
        let autocast = config.precision == Precision::Bf16;
        if autocast {
            torch_state::check_bf16(device, torch_state::cpu_has_bf16())?;
        }
        let vs = nn::VarStore::new(device);
        let (net, loss) = {
            let _rng = lock_torch_rng();
            tch::manual_seed(seed as i64);
            if device.is_cuda() {
                tch::Cuda::manual_seed_all(seed);
                torch_state::set_cudnn_mode(config.deterministic);
            }
            (
                build_model(&vs, &model)?,
                LossModule::with_classes(
                    &config.loss,
                    &(vs.root() / "loss"),
                    seed,
                    classes,
                    model.embedding_dim,
                )?,
            )
        };
        if model.freeze_bn {
            freeze_backbone_batch_norms(&vs);
        }
        let channels_last = device.is_cuda();
        if channels_last {
            // Tensor cores read NHWC: convolution weights and inputs in channels-last order
            // save cuDNN a transpose per layer (same values, other strides).
            torch_state::to_channels_last(&vs);
        }
        let optimizer =
            Optimizer::with_loss_multiplier(&vs, &config.optimizer, config.loss.lr_multiplier())?;
        Ok(Trainer {
            config: config.clone(),
            device,
            seed,
            vs,
            net,
            loss,
            optimizer,
            autocast,
            channels_last,
        })
    }

    /// The settings this trainer was built from.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The device everything lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The variables (`backbone.*`, `head.*`, `loss.*`).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Number of optimiser updates applied (including those restored from a checkpoint).
    pub fn updates(&self) -> u64 {
        self.optimizer.updates()
    }

    /// One training step on an NCHW f32 batch (already scaled with
    /// `config.model.input_scaling()`) and its int64 labels: forward in train mode, loss,
    /// backward and an update at the scheduled rate for `step` of `total`. A NaN or infinite
    /// loss is an error naming the step, and leaves the weights untouched.
    pub fn step(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        step: u64,
        total: u64,
    ) -> Result<StepStats> {
        self.net.check_images(images)?;
        if labels.size() != [images.size()[0]] || labels.kind() != Kind::Int64 {
            return Err(TrainError::Config(format!(
                "labels must be int64 with shape [{}], got {:?} {:?}",
                images.size()[0],
                labels.kind(),
                labels.size()
            )));
        }
        let images = self.prepare(images);
        let labels = labels.to_device(self.device);
        let lr = self.optimizer.learning_rate(step, total);
        self.optimizer.zero_grad();
        let backbone_grad = step >= self.config.freeze_backbone_steps;
        let embeddings = self.forward_train(&images, backbone_grad);
        let out = self.loss.forward(&embeddings, &labels, step)?;
        let value = out.loss.double_value(&[]);
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss { step, value });
        }
        out.loss.backward();
        self.optimizer.step(lr);
        let mean_norm = tch::no_grad(|| {
            embeddings
                .detach()
                .norm_scalaropt_dim(2.0, 1, false)
                .mean(Kind::Float)
                .double_value(&[])
        });
        Ok(StepStats {
            loss: value,
            lr,
            active_fraction: out.active_fraction,
            mean_pos_dist: out.mean_pos_dist,
            mean_neg_dist: out.mean_neg_dist,
            mean_norm,
        })
    }

    /// Embeds a batch in eval mode without gradients; `[N, D]` f32 on the trainer's device.
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        self.net.check_images(images)?;
        let images = self.prepare(images);
        Ok(tch::no_grad(|| self.forward(&images, false)))
    }

    /// The batch on the trainer's device as f32, in channels-last order on CUDA.
    fn prepare(&self, images: &Tensor) -> Tensor {
        let images = images.to_device(self.device).to_kind(Kind::Float);
        if self.channels_last {
            torch_state::channels_last(&images)
        } else {
            images
        }
    }

    /// The network's forward pass, under bf16 autocast when enabled, as f32.
    fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        if !self.autocast {
            return self.net.forward_t(images, train);
        }
        let out = {
            let _bf16 = Autocast::bf16(self.device);
            self.net.forward_t(images, train)
        };
        out.to_kind(Kind::Float)
    }

    /// The training forward pass; `backbone_grad = false` freezes the backbone.
    fn forward_train(&self, images: &Tensor, backbone_grad: bool) -> Tensor {
        if !self.autocast {
            return self.net.forward_parts(images, true, backbone_grad);
        }
        let out = {
            let _bf16 = Autocast::bf16(self.device);
            self.net.forward_parts(images, true, backbone_grad)
        };
        out.to_kind(Kind::Float)
    }

    /// The loss module (its class parameters, memory).
    pub fn loss_module(&self) -> &LossModule {
        &self.loss
    }

    fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    fn metadata(&self, format: &str) -> Result<HashMap<String, String>> {
        let config = serde_json::to_string(&self.config)
            .map_err(|e| TrainError::Config(format!("serialising the settings: {e}")))?;
        Ok(HashMap::from([
            ("format".to_string(), format.to_string()),
            ("config".to_string(), config),
            ("seed".to_string(), self.seed.to_string()),
            ("updates".to_string(), self.optimizer.updates().to_string()),
        ]))
    }

    /// Writes the final model (every variable, by its VarStore name, f32) as safetensors, for
    /// [`super::model::Embedder::load`] or `VarStore::load`.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        checkpoint::write(
            path,
            &self.named_variables(),
            self.metadata(WEIGHTS_FORMAT)?,
        )
    }

    /// Writes the initialised network alone (the untrained baseline): built from `model` and
    /// `seed` as [`Trainer::new`] builds it (the network first, so its weights are the same),
    /// saved like [`Trainer::save_weights`]. Only what the baseline's key holds is written —
    /// the network's settings and the seed, never a loss's parameters, the loss, the
    /// optimiser or the precision — so one key always has one byte content.
    pub fn save_initial_weights(
        model: &ModelConfig,
        device: Device,
        seed: u64,
        path: &Path,
    ) -> Result<()> {
        model.validate()?;
        let vs = nn::VarStore::new(device);
        {
            let _rng = lock_torch_rng();
            tch::manual_seed(seed as i64);
            if device.is_cuda() {
                tch::Cuda::manual_seed_all(seed);
            }
            build_model(&vs, model)?;
        }
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let config = serde_json::to_string(&untrained_model_json(model))
            .map_err(|e| TrainError::Config(format!("serialising the settings: {e}")))?;
        checkpoint::write(
            path,
            &vars,
            HashMap::from([
                ("format".to_string(), WEIGHTS_FORMAT.to_string()),
                ("config".to_string(), config),
                ("seed".to_string(), seed.to_string()),
                ("updates".to_string(), "0".to_string()),
            ]),
        )
    }

    /// Writes a resumable checkpoint: weights, batch-norm statistics, the margin loss's β,
    /// optimiser state and update count, with the settings it was made under.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with(path, Vec::new(), HashMap::new())
    }

    /// Writes a checkpoint like [`Trainer::save`] with `extra` tensors and metadata beside the
    /// trainer's own (the validation's best weights), so that both are published as one file;
    /// read them back with [`read_checkpoint_extras`]. Extra names must not start with
    /// `model.` or `optim`.
    pub fn save_with(
        &self,
        path: &Path,
        extra: Vec<(String, Tensor)>,
        extra_metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self
            .named_variables()
            .into_iter()
            .map(|(n, t)| (format!("model.{n}"), t))
            .collect();
        tensors.extend(self.optimizer.state_tensors());
        tensors.extend(self.loss.state_tensors());
        tensors.extend(extra);
        let mut metadata = self.metadata(CHECKPOINT_FORMAT)?;
        metadata.extend(extra_metadata);
        checkpoint::write(path, &tensors, metadata)
    }

    /// Deep copies of every variable (weights and batch-norm statistics) on the CPU, by
    /// VarStore name, sorted: the weights of this step, to restore later.
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        tch::no_grad(|| {
            self.named_variables()
                .into_iter()
                .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).copy()))
                .collect()
        })
    }

    /// Copies a [`Trainer::snapshot`] back into the variables (the optimiser state is left
    /// as it is: this is for choosing the weights to save, not for resuming).
    pub fn restore_snapshot(&mut self, weights: &HashMap<String, Tensor>) -> Result<()> {
        for (name, mut var) in self.named_variables() {
            checkpoint::restore_named(&mut var, weights, &name)
                .map_err(|e| TrainError::Config(format!("the saved weights: {e}")))?;
        }
        Ok(())
    }

    /// Restores a checkpoint written by [`Trainer::save`] under the same settings; continuing
    /// from it on the CPU gives the same weights as an uninterrupted run.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let refuse = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let contents = checkpoint::read(path)?;
        let meta = &contents.metadata;
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(refuse(format!("not a {CHECKPOINT_FORMAT} file")));
        }
        let saved: TrainConfig = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| refuse("settings missing or unreadable".into()))?;
        if saved != self.config {
            return Err(refuse("it was written under different settings".into()));
        }
        let updates: u64 = meta
            .get("updates")
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| refuse("update count missing".into()))?;
        for (name, mut var) in self.named_variables() {
            checkpoint::restore_named(&mut var, &contents.tensors, &format!("model.{name}"))
                .map_err(refuse)?;
        }
        self.loss
            .load_state(&contents.tensors)
            .map_err(|e| refuse(e.to_string()))?;
        self.optimizer
            .load_state(&contents.tensors, updates)
            .map_err(|e| refuse(e.to_string()))
    }
}

/// Stops training the backbone's batch-norm scales and shifts (the tensors `X.weight` and
/// `X.bias` beside an `X.running_mean`): `train.model.freeze_bn`.
fn freeze_backbone_batch_norms(vs: &nn::VarStore) {
    let vars = vs.variables();
    for (name, mut t) in vars.iter().map(|(n, t)| (n, t.shallow_clone())) {
        let Some(stem) = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"))
        else {
            continue;
        };
        if name.starts_with("backbone.") && vars.contains_key(&format!("{stem}.running_mean")) {
            let _ = t.requires_grad_(false);
        }
    }
}

/// The untrained baseline's `model.json` (and its weights' `config` metadata): the network's
/// settings only, which [`dml_jobspec::train_config::read_model_json`] reads with the other sections
/// at their defaults.
pub fn untrained_model_json(model: &ModelConfig) -> serde_json::Value {
    serde_json::json!({ "model": model })
}

/// The tensors whose names start with `prefix` (the prefix removed) and the metadata of a
/// checkpoint written by [`Trainer::save_with`].
pub fn read_checkpoint_extras(
    path: &Path,
    prefix: &str,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let contents = checkpoint::read(path)?;
    let tensors = contents
        .tensors
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix).map(|n| (n.to_string(), t)))
        .collect();
    Ok((tensors, contents.metadata))
}

#[cfg(test)]
mod tests;
