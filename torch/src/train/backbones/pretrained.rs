//! Loading a torchvision, timm or pretrainedmodels `state_dict` saved as safetensors into the backbone part of a VarStore, with every tensor checked by name and shape (and, for timm's Vision Transformers and BN-Inception, no tensor of the file left unused but the classifier).

use std::collections::BTreeSet;
use std::path::Path;

use safetensors::SafeTensors;
use tch::{nn, Tensor};

use super::Backbone;
use crate::train::checkpoint::kind_of;
use crate::train::error::{Result, TrainError};

/// What a pretrained load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors copied into the model (weights and batch-norm running statistics).
    pub loaded: usize,
    /// Tensors in the file the backbone has no use for (classifier, auxiliary heads,
    /// `num_batches_tracked`), sorted.
    pub ignored: Vec<String>,
}

/// Copies the tensors of `path` (torchvision `state_dict` names, e.g. `layer1.0.bn1.running_mean`)
/// into the variables of `vs` whose names start with `prefix` (e.g. `"backbone."`), running
/// statistics included. Every such variable must be present in the file with the same shape;
/// file tensors without a counterpart are reported as ignored.
pub fn load_backbone_weights(vs: &nn::VarStore, prefix: &str, path: &Path) -> Result<LoadReport> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("not a safetensors file: {e}"),
    })?;
    let mut wanted: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| name.strip_prefix(prefix).map(|n| (n.to_string(), t)))
        .collect();
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut used = BTreeSet::new();
    for (name, mut var) in wanted {
        let view = file.tensor(&name).map_err(|_| TrainError::MissingTensor {
            path: path.to_path_buf(),
            name: name.clone(),
        })?;
        let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let expected = var.size();
        if found != expected {
            return Err(TrainError::ShapeMismatch {
                path: path.to_path_buf(),
                name,
                expected,
                found,
            });
        }
        let kind = kind_of(view.dtype()).ok_or_else(|| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
        })?;
        let src = Tensor::f_from_data_size(view.data(), &found, kind).map_err(
            TrainError::torch(format!("reading `{name}` from {}", path.display())),
        )?;
        tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind()).to_device(var.device())))
            .map_err(TrainError::torch(format!("copying `{name}`")))?;
        used.insert(name);
    }
    let ignored = file
        .names()
        .into_iter()
        .filter(|n| !used.contains(*n))
        .cloned()
        .collect::<BTreeSet<_>>();
    Ok(LoadReport {
        loaded: used.len(),
        ignored: ignored.into_iter().collect(),
    })
}

/// Whether a file tensor may be left unused by a strictly loaded backbone: the classifier of
/// timm's Vision Transformers (`head.*`) and of pretrainedmodels' BN-Inception
/// (`last_linear.*`), and batch-norm batch counters (dml keeps none).
fn strictly_ignorable(backbone: Backbone, name: &str) -> bool {
    let classifier: &[&str] = if backbone.timm_name().is_some() {
        &["head.weight", "head.bias"]
    } else {
        &["last_linear.weight", "last_linear.bias"]
    };
    classifier.contains(&name) || name.ends_with(".num_batches_tracked")
}

/// [`load_backbone_weights`] for the exports of `scripts/export_timm.py` (Vision Transformers)
/// and `scripts/export_bninception.py` (BN-Inception): besides a missing or mis-shaped tensor,
/// a tensor of the file that the backbone lacks (other than the classifier, `head.*` or
/// `last_linear.*`, and `num_batches_tracked`) is an error naming it, since it means weights of
/// another architecture (CLIP's `norm_pre` in a plain ViT, a register token, a `fc_norm`).
pub fn load_strict_weights(
    vs: &nn::VarStore,
    prefix: &str,
    path: &Path,
    backbone: Backbone,
) -> Result<LoadReport> {
    let report = load_backbone_weights(vs, prefix, path)?;
    if let Some(extra) = report
        .ignored
        .iter()
        .find(|n| !strictly_ignorable(backbone, n))
    {
        return Err(TrainError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: extra.clone(),
            backbone: backbone.name().to_string(),
            script: backbone.weights_script().unwrap_or("the export scripts"),
        });
    }
    Ok(report)
}
