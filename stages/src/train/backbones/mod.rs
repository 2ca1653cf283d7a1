//! Convolutional backbones in torchvision's layouts and tensor names (so torchvision `state_dict`s load as they are), each returning globally average-pooled features, and the input scaling each one expects.

mod densenet;
mod googlenet;
mod pretrained;
mod resnet;
mod small_cnn;

pub use pretrained::{load_backbone_weights, LoadReport};

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// The feature extractor under the embedding head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// Four conv3×3–BN–ReLU–maxpool blocks (32, 64, 128, 256 channels): the CPU default, fast at
    /// 48–64 px. Not a torchvision model; its tensors are `features.{0..3}.{conv,bn}.*`.
    SmallCnn,
    /// torchvision `resnet18` (512 features).
    Resnet18,
    /// torchvision `resnet50` (2048 features).
    Resnet50,
    /// torchvision `densenet169` (1664 features, after its final norm5 + ReLU).
    Densenet169,
    /// torchvision `googlenet` (Inception V1) without auxiliary heads (1024 features).
    InceptionV1,
}

impl Backbone {
    /// Every backbone, in a fixed order.
    pub const ALL: [Backbone; 5] = [
        Backbone::SmallCnn,
        Backbone::Resnet18,
        Backbone::Resnet50,
        Backbone::Densenet169,
        Backbone::InceptionV1,
    ];

    /// The snake_case name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::SmallCnn => "small_cnn",
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet50 => "resnet50",
            Backbone::Densenet169 => "densenet169",
            Backbone::InceptionV1 => "inception_v1",
        }
    }

    /// The torchvision model whose `state_dict` this backbone loads (`None` for the small CNN).
    pub fn torchvision_name(self) -> Option<&'static str> {
        match self {
            Backbone::SmallCnn => None,
            Backbone::Resnet18 => Some("resnet18"),
            Backbone::Resnet50 => Some("resnet50"),
            Backbone::Densenet169 => Some("densenet169"),
            Backbone::InceptionV1 => Some("googlenet"),
        }
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(self) -> i64 {
        match self {
            Backbone::SmallCnn => small_cnn::FEATURES,
            Backbone::Resnet18 => 512,
            Backbone::Resnet50 => 2048,
            Backbone::Densenet169 => densenet::FEATURES_169,
            Backbone::InceptionV1 => 1024,
        }
    }

    /// The input scaling the backbone's (torchvision) weights expect.
    pub fn input_scaling(self) -> InputScaling {
        input_scaling(self)
    }

    /// Builds the backbone's variables under `p` and returns the module (NCHW f32 in,
    /// `[N, feature_dim]` out).
    pub fn build(self, p: &nn::Path) -> Box<dyn ModuleT> {
        match self {
            Backbone::SmallCnn => Box::new(small_cnn::SmallCnn::new(p)),
            Backbone::Resnet18 => Box::new(resnet::ResNet::resnet18(p)),
            Backbone::Resnet50 => Box::new(resnet::ResNet::resnet50(p)),
            Backbone::Densenet169 => Box::new(densenet::DenseNet::densenet169(p)),
            Backbone::InceptionV1 => Box::new(googlenet::GoogLeNet::new(p)),
        }
    }
}

/// How raw pixel values in 0..=255 are mapped before the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputScaling {
    /// (x/255 − 0.5)·2, into [−1, 1]: Inception V1 (the seed's, and what torchvision's
    /// `googlenet` weights see after their `transform_input`).
    SignedUnit,
    /// x/255: the seed's DenseNet-169 scaling (for its TF checkpoint).
    UnitRange,
    /// (x/255 − mean)/std with torchvision's ImageNet mean and std, per channel (RGB).
    ImagenetMeanStd,
}

/// torchvision's ImageNet channel means (RGB, 0..1 scale).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet channel standard deviations (RGB, 0..1 scale).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

impl InputScaling {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            InputScaling::SignedUnit => "signed_unit",
            InputScaling::UnitRange => "unit_range",
            InputScaling::ImagenetMeanStd => "imagenet_mean_std",
        }
    }

    /// Per-channel (scale, offset) such that scaled = x·scale + offset for x in 0..=255 (RGB).
    pub fn affine(self) -> [(f64, f64); 3] {
        match self {
            InputScaling::SignedUnit => [(2.0 / 255.0, -1.0); 3],
            InputScaling::UnitRange => [(1.0 / 255.0, 0.0); 3],
            InputScaling::ImagenetMeanStd => std::array::from_fn(|c| {
                (
                    1.0 / (255.0 * IMAGENET_STD[c]),
                    -IMAGENET_MEAN[c] / IMAGENET_STD[c],
                )
            }),
        }
    }

    /// Applies the scaling to an NCHW (RGB) float batch of 0..=255 values.
    pub fn apply(self, images: &Tensor) -> Tensor {
        let [r, g, b] = self.affine();
        let opts = (images.kind(), images.device());
        let scale = Tensor::from_slice(&[r.0, g.0, b.0])
            .to_kind(opts.0)
            .to_device(opts.1)
            .view([1, 3, 1, 1]);
        let offset = Tensor::from_slice(&[r.1, g.1, b.1])
            .to_kind(opts.0)
            .to_device(opts.1)
            .view([1, 3, 1, 1]);
        images * scale + offset
    }
}

/// The scaling each backbone's weights expect: Inception V1 (x/255 − 0.5)·2 as in the seed;
/// ResNet and DenseNet torchvision's ImageNet mean/std, because the weights are torchvision's
/// (the seed's ResNet subtracted the mean only and its DenseNet used x/255, both for its TF
/// checkpoints; `ModelConfig::input_scaling` can select those); the small CNN (x/255 − 0.5)·2.
pub fn input_scaling(backbone: Backbone) -> InputScaling {
    match backbone {
        Backbone::SmallCnn | Backbone::InceptionV1 => InputScaling::SignedUnit,
        Backbone::Resnet18 | Backbone::Resnet50 | Backbone::Densenet169 => {
            InputScaling::ImagenetMeanStd
        }
    }
}

/// Convolution without bias (a batch norm follows), He-normal (fan-out) initialised as
/// torchvision does.
pub(crate) fn conv(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// Batch norm with torchvision's initialisation (γ = 1, β = 0), momentum 0.1 and `eps`.
pub(crate) fn batch_norm(p: nn::Path, c: i64, eps: f64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        eps,
        momentum: 0.1,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

/// ReLU in place, as torchvision's `ReLU(inplace=True)`: only for tensors no backward pass
/// needs unmodified (batch-norm and addition outputs), saving an allocation per layer.
pub(crate) fn relu_inplace(mut xs: Tensor) -> Tensor {
    xs.relu_()
}

/// Global average pooling to `[N, C]`.
pub(crate) fn global_avg_pool(xs: &Tensor) -> Tensor {
    xs.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

/// Checks that a batch is NCHW with three channels and a float kind.
pub(crate) fn check_images(images: &Tensor) -> Result<(), String> {
    let s = images.size();
    if s.len() != 4 || s[1] != 3 {
        return Err(format!("images must be NCHW with 3 channels, got {s:?}"));
    }
    if !matches!(
        images.kind(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(format!(
            "images must be floating point, got {:?}",
            images.kind()
        ));
    }
    Ok(())
}
