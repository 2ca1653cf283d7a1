//! Backbones in their reference layouts and tensor names (so torchvision's, timm's and pretrainedmodels' `state_dict`s load as they are): the convolutional ones returning globally average-pooled features, the Vision Transformers their class token (or mean patch token); and the input scaling each one expects.

mod bninception;
mod densenet;
mod googlenet;
mod pretrained;
mod resnet;
mod small_cnn;
mod vit;

pub use pretrained::{load_backbone_weights, load_strict_weights, LoadReport};

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

pub use dml_jobspec::train_config::{
    input_scaling, Backbone, InputScaling, Pool, IMAGENET_MEAN, IMAGENET_STD,
};

/// Builds a [`Backbone`]'s network (the settings type is plain data in `dml-stages`).
pub trait BuildBackbone {
    /// Builds the backbone's variables under `p` and returns the module (NCHW f32 in,
    /// `[N, feature_dim]` out).
    fn build(self, p: &nn::Path, pool: Pool) -> Box<dyn ModuleT>;
}

impl BuildBackbone for Backbone {
    fn build(self, p: &nn::Path, pool: Pool) -> Box<dyn ModuleT> {
        if let Some(shape) = self.vit() {
            return Box::new(vit::VisionTransformer::new(p, shape, pool));
        }
        match self {
            Backbone::SmallCnn => Box::new(small_cnn::SmallCnn::new(p)),
            Backbone::Resnet18 => Box::new(resnet::ResNet::resnet18(p)),
            Backbone::Resnet50 => Box::new(resnet::ResNet::resnet50(p)),
            Backbone::Densenet169 => Box::new(densenet::DenseNet::densenet169(p)),
            Backbone::InceptionV1 => Box::new(googlenet::GoogLeNet::new(p)),
            Backbone::BnInception => Box::new(bninception::BnInception::new(p)),
            Backbone::VitS16 | Backbone::VitB16 | Backbone::VitB16Clip => {
                unreachable!("a ViT has a shape")
            }
        }
    }
}

/// Applies an [`InputScaling`] to image tensors.
pub trait ScaleImages {
    /// Applies the scaling to an NCHW (RGB) float batch of 0..=255 values.
    fn apply(self, images: &Tensor) -> Tensor;
}

impl ScaleImages for InputScaling {
    fn apply(self, images: &Tensor) -> Tensor {
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

#[cfg(test)]
mod width_tests {
    use super::*;

    /// The plain-data `feature_dim` (in dml-stages) agrees with the networks built here.
    #[test]
    fn feature_dims_match_the_networks() {
        assert_eq!(Backbone::SmallCnn.feature_dim(), small_cnn::FEATURES);
        assert_eq!(Backbone::Densenet169.feature_dim(), densenet::FEATURES_169);
    }
}
