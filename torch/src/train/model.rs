//! The embedding network: a backbone, an embedding head (`direct` or `fc1024`) and optional L2 normalisation, built from a typed [`ModelConfig`].

use std::path::Path;

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use super::backbones::{
    check_images, load_backbone_weights, load_strict_weights, BuildBackbone, LoadReport,
};
use super::error::{Result, TrainError};
pub use dml_jobspec::train_config::{Head, ModelConfig};

#[derive(Debug)]
enum HeadModule {
    Direct(nn::Linear),
    Fc1024 {
        fc1: nn::Linear,
        bn1: nn::BatchNorm,
        fc2: nn::Linear,
    },
}

impl HeadModule {
    fn new(p: &nn::Path, head: Head, c_in: i64, dim: i64) -> Self {
        match head {
            Head::Direct => HeadModule::Direct(nn::linear(p / "fc", c_in, dim, Default::default())),
            Head::Fc1024 => {
                let fc1 = nn::linear(
                    p / "fc1",
                    c_in,
                    1024,
                    nn::LinearConfig {
                        bias: false,
                        ..Default::default()
                    },
                );
                let bn_cfg = nn::BatchNormConfig {
                    eps: 1e-5,
                    momentum: 0.1,
                    ws_init: nn::Init::Const(1.0),
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                };
                let bn1 = nn::batch_norm1d(p / "bn1", 1024, bn_cfg);
                let fc2 = nn::linear(
                    p / "fc2",
                    1024,
                    dim,
                    nn::LinearConfig {
                        ws_init: nn::Init::Orthogonal { gain: 1.0 },
                        bs_init: Some(nn::Init::Const(0.0)),
                        bias: true,
                    },
                );
                HeadModule::Fc1024 { fc1, bn1, fc2 }
            }
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            HeadModule::Direct(fc) => xs.apply(fc),
            HeadModule::Fc1024 { fc1, bn1, fc2 } => {
                let mut h = xs.apply(fc1).apply_t(bn1, train);
                h.relu_().apply(fc2)
            }
        }
    }
}

/// Backbone + head (+ L2 normalisation): NCHW images (already scaled) in, `[N, D]` out.
#[derive(Debug)]
pub struct EmbeddingNet {
    backbone: Box<dyn ModuleT>,
    head: HeadModule,
    config: ModelConfig,
}

impl EmbeddingNet {
    /// Creates the variables under `p / "backbone"` and `p / "head"` (random init; see
    /// [`build_model`] for pretrained weights).
    pub fn new(p: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let backbone = config.backbone.build(&(p / "backbone"), config.pool);
        let head = HeadModule::new(
            &(p / "head"),
            config.head,
            config.backbone.feature_dim(),
            config.embedding_dim,
        );
        Ok(EmbeddingNet {
            backbone,
            head,
            config: config.clone(),
        })
    }

    /// The settings the network was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Pooled backbone features, before the head.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.backbone.forward_t(xs, train)
    }

    /// The forward pass with the backbone's batch norms in evaluation mode when
    /// `config.freeze_bn`, and, when `backbone_grad` is false, without gradients through
    /// the backbone (its features detached: a frozen backbone).
    pub fn forward_parts(&self, xs: &Tensor, train: bool, backbone_grad: bool) -> Tensor {
        let features = if backbone_grad {
            self.backbone.forward_t(xs, train && !self.config.freeze_bn)
        } else {
            tch::no_grad(|| self.backbone.forward_t(xs, train && !self.config.freeze_bn))
        };
        let e = self.head.forward_t(&features, train);
        self.normalize(e)
    }

    fn normalize(&self, e: Tensor) -> Tensor {
        // Unset only in a configuration that was never resolved: off, the default.
        if self.config.normalize == Some(true) {
            // TF's l2_normalize: x / sqrt(max(Σx², 1e-12)).
            let norm = e
                .square()
                .sum_dim_intlist(1, true, e.kind())
                .clamp_min(1e-12)
                .sqrt();
            e / norm
        } else {
            e
        }
    }

    /// Checks an image batch's shape and kind.
    pub fn check_images(&self, images: &Tensor) -> Result<()> {
        check_images(images).map_err(TrainError::Config)
    }
}

impl ModuleT for EmbeddingNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_parts(xs, train, true)
    }
}

/// Builds the network at the root of `vs` (`backbone.*`, `head.*`) and, when
/// `config.pretrained` is set, loads the torchvision weights into the backbone.
pub fn build_model(vs: &nn::VarStore, config: &ModelConfig) -> Result<EmbeddingNet> {
    let net = EmbeddingNet::new(&vs.root(), config)?;
    if let Some(path) = &config.pretrained {
        if !config.backbone.has_pretrained_weights() {
            return Err(TrainError::Config(format!(
                "backbone {} has no torchvision, timm or pretrainedmodels weights to load from {}",
                config.backbone.name(),
                path.display()
            )));
        }
        let report: LoadReport = if config.backbone.strict_weights() {
            load_strict_weights(vs, "backbone.", path, config.backbone)?
        } else {
            load_backbone_weights(vs, "backbone.", path)?
        };
        tracing::info!(
            loaded = report.loaded,
            ignored = report.ignored.len(),
            "loaded pretrained {} backbone from {}",
            config.backbone.name(),
            path.display()
        );
    }
    Ok(net)
}

/// Copies every variable of `vs` from the safetensors file at `path`, by name, checking
/// shapes; tensors in the file that `vs` lacks are ignored (e.g. the margin loss's β when only
/// the network is rebuilt). Returns the number of tensors copied.
pub fn load_weights(vs: &nn::VarStore, path: &Path) -> Result<usize> {
    load_backbone_weights(vs, "", path).map(|r| r.loaded)
}

/// An embedding network restored from saved weights, for the embed stage.
#[derive(Debug)]
pub struct Embedder {
    vs: nn::VarStore,
    net: EmbeddingNet,
}

impl Embedder {
    /// Rebuilds the network of `config` on `device` and loads `weights` (a file written by
    /// `Trainer::save_weights`).
    pub fn load(config: &ModelConfig, weights: &Path, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let config = ModelConfig {
            pretrained: None,
            ..config.clone()
        };
        // Building the network draws initial weights from libtorch's process-wide
        // generator; hold its lock so a concurrent Trainer::new (another stage of a
        // sweep run with --jobs > 1) keeps its seeded sequence.
        let net = {
            let _rng = crate::train::torch_state::lock_torch_rng();
            EmbeddingNet::new(&vs.root(), &config)?
        };
        load_weights(&vs, weights)?;
        Ok(Embedder { vs, net })
    }

    /// Embeds an NCHW batch (already scaled with [`ModelConfig::input_scaling`]) in eval mode
    /// without gradients; returns `[N, D]` f32 on the model's device.
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        self.net.check_images(images)?;
        Ok(tch::no_grad(|| {
            self.net
                .forward_t(
                    &images.to_device(self.vs.device()).to_kind(Kind::Float),
                    false,
                )
                .to_kind(Kind::Float)
        }))
    }

    /// The network's settings.
    pub fn config(&self) -> &ModelConfig {
        self.net.config()
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Stops tracking gradients of every weight (TorchScript tracing takes the weights as
    /// constants, which must not require gradients).
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }

    /// The network's tensors by name (`backbone.*` under torchvision's names, `head.*`).
    pub fn variables(&self) -> std::collections::HashMap<String, Tensor> {
        self.vs.variables()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backbones::{input_scaling, Backbone, InputScaling, ScaleImages};
    use crate::train::torch_state::lock_torch_rng;

    fn names(vs: &nn::VarStore) -> Vec<String> {
        let mut n: Vec<String> = vs.variables().into_keys().collect();
        n.sort();
        n
    }

    #[test]
    fn every_backbone_pools_to_its_feature_width() {
        let _rng = lock_torch_rng();
        for (backbone, size) in [
            (Backbone::SmallCnn, 32),
            (Backbone::Resnet18, 64),
            (Backbone::Resnet50, 64),
            (Backbone::Densenet169, 64),
            (Backbone::InceptionV1, 64),
            (Backbone::VitS16, 32),
            (Backbone::VitB16Clip, 32),
            (Backbone::BnInception, 32),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ModelConfig {
                backbone,
                head: Head::Direct,
                embedding_dim: 8,
                ..ModelConfig::default()
            };
            let net = EmbeddingNet::new(&vs.root(), &cfg).unwrap();
            let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
            let f = tch::no_grad(|| net.features_t(&x, false));
            assert_eq!(f.size(), [2, backbone.feature_dim()], "{}", backbone.name());
            let e = tch::no_grad(|| net.forward_t(&x, true));
            assert_eq!(e.size(), [2, 8]);
        }
    }

    #[test]
    fn tensor_names_follow_torchvision() {
        let _rng = lock_torch_rng();
        let expect = [
            (
                Backbone::Resnet18,
                "backbone.layer2.0.downsample.1.running_var",
                100,
            ),
            (Backbone::Resnet50, "backbone.layer4.2.conv3.weight", 265),
            (
                Backbone::Densenet169,
                "backbone.features.denseblock3.denselayer32.norm2.running_mean",
                844,
            ),
            (
                Backbone::InceptionV1,
                "backbone.inception4e.branch4.1.bn.running_var",
                285,
            ),
            (Backbone::SmallCnn, "backbone.features.3.bn.weight", 20),
            // timm's state_dict minus the classifier (`head.*`).
            (Backbone::VitS16, "backbone.blocks.11.attn.qkv.bias", 150),
            (Backbone::VitB16, "backbone.patch_embed.proj.bias", 150),
            (Backbone::VitB16Clip, "backbone.norm_pre.bias", 151),
            // pretrainedmodels' BNInception: 69 conv (with bias) + BN units.
            (
                Backbone::BnInception,
                "backbone.inception_5b_double_3x3_2_bn.running_var",
                414,
            ),
            (Backbone::BnInception, "backbone.inception_3c_3x3.bias", 414),
        ];
        for (backbone, name, count) in expect {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ModelConfig {
                backbone,
                head: Head::Direct,
                ..ModelConfig::default()
            };
            EmbeddingNet::new(&vs.root(), &cfg).unwrap();
            let all = names(&vs);
            assert!(
                all.iter().any(|n| n == name),
                "{} lacks {name}",
                backbone.name()
            );
            let in_backbone = all.iter().filter(|n| n.starts_with("backbone.")).count();
            // torchvision's state_dict minus the classifier and `num_batches_tracked`.
            assert_eq!(in_backbone, count, "{}", backbone.name());
        }
    }

    #[test]
    fn heads_and_normalisation() {
        let _rng = lock_torch_rng();
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            normalize: Some(true),
            ..ModelConfig::default()
        };
        let net = EmbeddingNet::new(&vs.root(), &cfg).unwrap();
        let head: Vec<String> = names(&vs)
            .into_iter()
            .filter(|n| n.starts_with("head."))
            .collect();
        assert_eq!(
            head,
            [
                "head.bn1.bias",
                "head.bn1.running_mean",
                "head.bn1.running_var",
                "head.bn1.weight",
                "head.fc1.weight",
                "head.fc2.bias",
                "head.fc2.weight"
            ]
        );
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let e = tch::no_grad(|| net.forward_t(&x, true));
        let norms = e.norm_scalaropt_dim(2.0, 1, false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        assert!(ModelConfig {
            embedding_dim: 0,
            ..ModelConfig::default()
        }
        .validate()
        .is_err());
        let cfg = ModelConfig {
            pretrained: Some("x.safetensors".into()),
            ..ModelConfig::default()
        };
        let err = build_model(&nn::VarStore::new(Device::Cpu), &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no torchvision, timm or pretrainedmodels weights"),
            "{err}"
        );
    }

    #[test]
    fn pretrained_loading_checks_names_and_shapes() {
        let _rng = lock_torch_rng();
        let dir = tempfile::tempdir().unwrap();
        let src = nn::VarStore::new(Device::Cpu);
        EmbeddingNet::new(&src.root(), &ModelConfig::default()).unwrap();
        // A torchvision-style file: backbone names without the prefix, plus extras.
        let mut tensors: Vec<(String, Tensor)> = src
            .variables()
            .into_iter()
            .filter_map(|(n, t)| n.strip_prefix("backbone.").map(|s| (s.to_string(), t)))
            .collect();
        tensors.push((
            "fc.weight".into(),
            Tensor::zeros([10, 256], (Kind::Float, Device::Cpu)),
        ));
        tensors.push((
            "features.0.bn.num_batches_tracked".into(),
            Tensor::from_slice(&[3i64]),
        ));
        let good = dir.path().join("good.safetensors");
        crate::train::checkpoint::write(&good, &tensors, Default::default()).unwrap();

        let dst = nn::VarStore::new(Device::Cpu);
        EmbeddingNet::new(&dst.root(), &ModelConfig::default()).unwrap();
        let report = load_backbone_weights(&dst, "backbone.", &good).unwrap();
        assert_eq!(report.loaded, 20);
        assert_eq!(
            report.ignored,
            ["fc.weight", "features.0.bn.num_batches_tracked"]
        );
        let (s, d) = (src.variables(), dst.variables());
        assert!(s["backbone.features.2.conv.weight"].equal(&d["backbone.features.2.conv.weight"]));
        assert!(
            !s["head.fc1.weight"].equal(&d["head.fc1.weight"]),
            "the head is not touched"
        );

        let copy = |v: &[(String, Tensor)]| {
            v.iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect::<Vec<_>>()
        };
        let missing: Vec<_> = copy(&tensors)
            .into_iter()
            .filter(|(n, _)| n != "features.1.bn.running_mean")
            .collect();
        let path = dir.path().join("missing.safetensors");
        crate::train::checkpoint::write(&path, &missing, Default::default()).unwrap();
        let err = load_backbone_weights(&dst, "backbone.", &path).unwrap_err();
        assert!(
            matches!(&err, TrainError::MissingTensor { name, .. } if name == "features.1.bn.running_mean"),
            "{err}"
        );

        let mut reshaped = copy(&tensors);
        for (n, t) in &mut reshaped {
            if n == "features.2.conv.weight" {
                *t = Tensor::zeros([128, 64, 1, 1], (Kind::Float, Device::Cpu));
            }
        }
        let path = dir.path().join("reshaped.safetensors");
        crate::train::checkpoint::write(&path, &reshaped, Default::default()).unwrap();
        let err = load_backbone_weights(&dst, "backbone.", &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("features.2.conv.weight") && err.contains("[128, 64, 3, 3]"),
            "{err}"
        );
        let err = load_backbone_weights(&dst, "backbone.", &dir.path().join("nope.safetensors"))
            .unwrap_err();
        assert!(matches!(err, TrainError::Io { .. }));
    }

    #[test]
    fn input_scalings() {
        assert_eq!(
            input_scaling(Backbone::InceptionV1),
            InputScaling::SignedUnit
        );
        assert_eq!(
            input_scaling(Backbone::Resnet50),
            InputScaling::ImagenetMeanStd
        );
        let x = Tensor::from_slice(&[0.0f32, 255.0, 0.0, 255.0, 0.0, 255.0]).view([1, 3, 1, 2]);
        let y = InputScaling::SignedUnit.apply(&x);
        assert_eq!(
            Vec::<f32>::try_from(y.flatten(0, -1)).unwrap(),
            [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]
        );
        let y = InputScaling::ImagenetMeanStd.apply(&(x.ones_like() * 255.0 * 0.485));
        assert!(y.double_value(&[0, 0, 0, 0]).abs() < 1e-6);
        // BN-Inception: x − (128, 117, 104) in RGB, and its mean/std form says the same.
        assert_eq!(
            input_scaling(Backbone::BnInception),
            InputScaling::BnInception
        );
        let y = InputScaling::BnInception.apply(&x);
        assert_eq!(
            Vec::<f32>::try_from(y.flatten(0, -1)).unwrap(),
            [-128.0, 127.0, -117.0, 138.0, -104.0, 151.0]
        );
        let (mean, std) = InputScaling::BnInception.mean_std();
        for (c, (scale, offset)) in InputScaling::BnInception.affine().into_iter().enumerate() {
            assert!((1.0 / (255.0 * std[c]) - scale).abs() < 1e-9);
            assert!((-mean[c] / std[c] - offset).abs() < 1e-9);
        }
        let cfg = ModelConfig {
            backbone: Backbone::Densenet169,
            input_scaling: Some(InputScaling::UnitRange),
            ..ModelConfig::default()
        };
        assert_eq!(cfg.input_scaling(), InputScaling::UnitRange);
    }
}
