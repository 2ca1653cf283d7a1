//! The network: backbone, input scaling, head and embedding (`[train.model]`).
use super::base::*;
use super::loss::Loss;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Width of the small CNN's pooled features (its last block's channels).
pub const SMALL_CNN_FEATURES: i64 = 256;
/// Width of DenseNet-169's pooled features.
pub const DENSENET169_FEATURES: i64 = 1664;

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
    /// timm `vit_small_patch16_224` (ViT-S/16: 12 pre-norm blocks, width 384, 6 heads;
    /// 384 features), loading timm's tensor names (DINO, AugReg weights).
    VitS16,
    /// timm `vit_base_patch16_224` (ViT-B/16: 12 blocks, width 768, 12 heads; 768 features).
    VitB16,
    /// timm `vit_base_patch16_clip_224` (CLIP's ViT-B/16 image tower: a LayerNorm before the
    /// blocks, no patch-embedding bias, LayerNorm ε 1e-5; 768 features). timm runs OpenAI's
    /// weights with exact GELU (not CLIP's QuickGELU), and so does dml.
    VitB16Clip,
    /// BN-Inception (Ioffe & Szegedy 2015) as the loss papers use it: Cadene's
    /// `pretrainedmodels.BNInception` (Xiong's Caffe model ported to PyTorch) under its tensor
    /// names, 1024 features after global average pooling. The weights see BGR: the network
    /// takes RGB like every dml backbone and reverses the channels first.
    BnInception,
}

/// The shape of a Vision Transformer backbone (timm's `VisionTransformer` arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitShape {
    /// Token width.
    pub width: i64,
    /// Transformer blocks.
    pub depth: i64,
    /// Attention heads.
    pub heads: i64,
    /// Patch side in pixels.
    pub patch: i64,
    /// The image side the position embeddings are for (their grid is `image / patch`).
    pub image: i64,
    /// CLIP's variant: `norm_pre` before the blocks, no patch bias, LayerNorm ε 1e-5 (else
    /// ε 1e-6).
    pub clip: bool,
}

impl Backbone {
    /// Every backbone, in a fixed order.
    pub const ALL: [Backbone; 9] = [
        Backbone::SmallCnn,
        Backbone::Resnet18,
        Backbone::Resnet50,
        Backbone::Densenet169,
        Backbone::InceptionV1,
        Backbone::VitS16,
        Backbone::VitB16,
        Backbone::VitB16Clip,
        Backbone::BnInception,
    ];

    /// The snake_case name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::SmallCnn => "small_cnn",
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet50 => "resnet50",
            Backbone::Densenet169 => "densenet169",
            Backbone::InceptionV1 => "inception_v1",
            Backbone::VitS16 => "vit_s16",
            Backbone::VitB16 => "vit_b16",
            Backbone::VitB16Clip => "vit_b16_clip",
            Backbone::BnInception => "bn_inception",
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
            Backbone::VitS16 | Backbone::VitB16 | Backbone::VitB16Clip | Backbone::BnInception => {
                None
            }
        }
    }

    /// The timm architecture whose `state_dict` this backbone loads (`None` for the CNNs).
    pub fn timm_name(self) -> Option<&'static str> {
        match self {
            Backbone::VitS16 => Some("vit_small_patch16_224"),
            Backbone::VitB16 => Some("vit_base_patch16_224"),
            Backbone::VitB16Clip => Some("vit_base_patch16_clip_224"),
            _ => None,
        }
    }

    /// The `pretrainedmodels` (Cadene) network whose `state_dict` this backbone loads, as
    /// `scripts/export_bninception.py` writes it (`None` for the others).
    pub fn pretrainedmodels_name(self) -> Option<&'static str> {
        match self {
            Backbone::BnInception => Some("bninception"),
            _ => None,
        }
    }

    /// Whether pretrained weights exist for it (torchvision's, timm's or pretrainedmodels'
    /// layout).
    pub fn has_pretrained_weights(self) -> bool {
        self.torchvision_name().is_some()
            || self.timm_name().is_some()
            || self.pretrainedmodels_name().is_some()
    }

    /// The script that exports weights for it (`None` for the small CNN).
    pub fn weights_script(self) -> Option<&'static str> {
        if self.timm_name().is_some() {
            Some("scripts/export_timm.py")
        } else if self.pretrainedmodels_name().is_some() {
            Some("scripts/export_bninception.py")
        } else if self.torchvision_name().is_some() {
            Some("scripts/export_torchvision.py")
        } else {
            None
        }
    }

    /// Whether a weights file must hold exactly the backbone's tensors (timm's and
    /// pretrainedmodels' exports, which the scripts write without extras besides the
    /// classifier), rather than a torchvision `state_dict` whose auxiliary heads are ignored.
    pub fn strict_weights(self) -> bool {
        self.timm_name().is_some() || self.pretrainedmodels_name().is_some()
    }

    /// The Vision Transformer's shape (`None` for the CNNs).
    pub fn vit(self) -> Option<VitShape> {
        let (width, heads, clip) = match self {
            Backbone::VitS16 => (384, 6, false),
            Backbone::VitB16 => (768, 12, false),
            Backbone::VitB16Clip => (768, 12, true),
            _ => return None,
        };
        Some(VitShape {
            width,
            depth: 12,
            heads,
            patch: 16,
            image: 224,
            clip,
        })
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(self) -> i64 {
        match self {
            Backbone::SmallCnn => SMALL_CNN_FEATURES,
            Backbone::Resnet18 => 512,
            Backbone::Resnet50 => 2048,
            Backbone::Densenet169 => DENSENET169_FEATURES,
            Backbone::InceptionV1 | Backbone::BnInception => 1024,
            Backbone::VitS16 => 384,
            Backbone::VitB16 | Backbone::VitB16Clip => 768,
        }
    }

    /// The input scaling the backbone's (torchvision) weights expect.
    pub fn input_scaling(self) -> InputScaling {
        input_scaling(self)
    }

    /// Checks that the network can take `crop`² images. BN-Inception's reduction blocks
    /// (3c, 4e) concatenate a stride-2 convolution (padding 1) with a ceil-mode stride-2 max
    /// pool (no padding), whose outputs agree only on an even input side, as in the
    /// reference: 224 px (28 and 14 there) and every multiple of 32 work, 28 px does not.
    pub fn check_crop(self, crop: u32) -> Result<()> {
        if self != Backbone::BnInception {
            return Ok(());
        }
        // PyTorch's pooling output size: ⌊(n − k + s − 1 (ceil mode)) / s⌋ + 1, less one when
        // the last window would start past the input.
        let pool = |n: i64| {
            let out = (n - 3 + 1).div_euclid(2) + 1;
            if (out - 1) * 2 >= n {
                out - 1
            } else {
                out
            }
        };
        let conv_s2 = |n: i64| (n - 1).div_euclid(2) + 1;
        let mut n = pool(pool(conv_s2(i64::from(crop))));
        for block in ["inception_3c", "inception_4e"] {
            if n < 1 || conv_s2(n) != pool(n) {
                return Err(ConfigError::new("image.crop", format!(
                    "image.crop = {crop}: bn_inception's {block} gets a {n}×{n} map, on which its stride-2 convolution and max pool disagree (the reference's too); use a multiple of 32 (e.g. 224, 256, 160, 64)"
                )));
            }
            n = conv_s2(n);
        }
        Ok(())
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
    /// (x/255 − mean)/std with OpenAI CLIP's mean and std (what its image tower was trained on).
    ClipMeanStd,
    /// x − mean with BN-Inception's Caffe means, 0..255 range, std 1: (R, G, B) − (128, 117,
    /// 104), i.e. pretrainedmodels' BGR `mean = [104, 117, 128]`. The channels stay RGB; the
    /// `bn_inception` network reverses them to the BGR its weights expect.
    BnInception,
}

/// BN-Inception's channel means in 0..255, RGB order (pretrainedmodels' BGR `[104, 117, 128]`
/// reversed).
pub const BN_INCEPTION_MEAN_255: [f64; 3] = [128.0, 117.0, 104.0];

/// OpenAI CLIP's channel means (RGB, 0..1 scale), as timm's `OPENAI_CLIP_MEAN`.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's channel standard deviations (RGB, 0..1 scale), as timm's `OPENAI_CLIP_STD`.
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

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
            InputScaling::ClipMeanStd => "clip_mean_std",
            InputScaling::BnInception => "bn_inception",
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
            InputScaling::ClipMeanStd => {
                std::array::from_fn(|c| (1.0 / (255.0 * CLIP_STD[c]), -CLIP_MEAN[c] / CLIP_STD[c]))
            }
            InputScaling::BnInception => std::array::from_fn(|c| (1.0, -BN_INCEPTION_MEAN_255[c])),
        }
    }

    /// The same scaling as `(x / 255 − mean[c]) / std[c]` per RGB channel (`model.json` of
    /// `dml export` and `load_model.py` describe every scaling so).
    pub fn mean_std(self) -> ([f64; 3], [f64; 3]) {
        match self {
            InputScaling::SignedUnit => ([0.5; 3], [0.5; 3]),
            InputScaling::UnitRange => ([0.0; 3], [1.0; 3]),
            InputScaling::ImagenetMeanStd => (IMAGENET_MEAN, IMAGENET_STD),
            InputScaling::ClipMeanStd => (CLIP_MEAN, CLIP_STD),
            InputScaling::BnInception => {
                (BN_INCEPTION_MEAN_255.map(|m| m / 255.0), [1.0 / 255.0; 3])
            }
        }
    }
}

impl InputScaling {
    /// The same scaling as the batch assembler names it.
    pub fn for_batches(self) -> dml_datasets::InputScaling {
        match self {
            InputScaling::SignedUnit => dml_datasets::InputScaling::Inception,
            InputScaling::UnitRange => dml_datasets::InputScaling::Unit,
            InputScaling::ImagenetMeanStd => dml_datasets::InputScaling::ImagenetMeanStd,
            InputScaling::ClipMeanStd => dml_datasets::InputScaling::ClipMeanStd,
            InputScaling::BnInception => dml_datasets::InputScaling::BnInception,
        }
    }
}

/// The scaling each backbone's weights expect: Inception V1 (x/255 − 0.5)·2 as in the seed;
/// ResNet and DenseNet torchvision's ImageNet mean/std, because the weights are torchvision's
/// (the seed's ResNet subtracted the mean only and its DenseNet used x/255, both for its TF
/// checkpoints; `ModelConfig::input_scaling` can select those); the small CNN (x/255 − 0.5)·2.
/// ViT-S/16 and ViT-B/16: the ImageNet mean/std the DINO weights expect (timm's AugReg weights
/// expect mean = std = 0.5, i.e. `signed_unit`: set `input_scaling` for them); CLIP's ViT-B/16
/// its own mean/std. BN-Inception: its Caffe weights' x − mean in 0..255 (BGR inside the
/// network).
pub fn input_scaling(backbone: Backbone) -> InputScaling {
    match backbone {
        Backbone::SmallCnn | Backbone::InceptionV1 => InputScaling::SignedUnit,
        Backbone::Resnet18
        | Backbone::Resnet50
        | Backbone::Densenet169
        | Backbone::VitS16
        | Backbone::VitB16 => InputScaling::ImagenetMeanStd,
        Backbone::VitB16Clip => InputScaling::ClipMeanStd,
        Backbone::BnInception => InputScaling::BnInception,
    }
}

/// The embedding head on the pooled backbone features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// One linear layer (`head.fc.{weight,bias}`).
    Direct,
    /// Linear 1024 (no bias, as slim omits it before a batch norm) + BN + ReLU + linear to the
    /// embedding (orthogonal init, as the seed): `head.fc1.weight`, `head.bn1.*`, `head.fc2.*`.
    #[default]
    Fc1024,
}

impl Head {
    /// The snake_case name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            Head::Direct => "direct",
            Head::Fc1024 => "fc1024",
        }
    }
}

/// Settings of the embedding network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The feature extractor.
    #[serde(default = "default_backbone")]
    pub backbone: Backbone,
    /// The embedding head (the seed's default is `fc1024`).
    #[serde(default)]
    pub head: Head,
    /// Embedding width (128).
    #[serde(default = "default_embedding_dim")]
    pub embedding_dim: i64,
    /// L2-normalise the embeddings (the seed's `*_normalize` heads). Unset: the loss's
    /// recommended setting ([`Loss::normalize_by_default`]), decided by
    /// [`ModelConfig::resolve`] before anything is built or hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// torchvision `state_dict` (safetensors) to initialise the backbone from.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Overrides the backbone's input scaling (see [`Backbone::input_scaling`]).
    #[serde(default)]
    pub input_scaling: Option<InputScaling>,
    /// Freeze the backbone's batch norms in training: their running statistics are used
    /// and never updated, and their scale and shift are not trained (the Proxy-Anchor
    /// recipe's `bn_freeze`). The head's batch norm is not affected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze_bn: bool,
    /// How a Vision Transformer's tokens become the feature vector: the class token (timm's
    /// `global_pool = "token"`, the default) or the mean of the patch tokens after the final
    /// norm (`"mean"`: timm's `global_pool = "avg", fc_norm = False`). ViT backbones only.
    #[serde(default, skip_serializing_if = "is_default_pool")]
    pub pool: Pool,
}

/// A Vision Transformer's pooling of its output tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// The class token.
    #[default]
    Token,
    /// The mean of the patch tokens.
    Mean,
}

fn is_default_pool(p: &Pool) -> bool {
    *p == Pool::Token
}

impl ModelConfig {
    /// Whether the embeddings are L2-normalised under `loss`: the setting, or the
    /// loss's recommendation when it is unset.
    pub fn normalizes(&self, loss: &Loss) -> bool {
        self.normalize
            .unwrap_or_else(|| loss.normalize_by_default())
    }

    /// Decides `normalize` for `loss`.
    pub fn resolve(&mut self, loss: &Loss) {
        self.normalize = Some(self.normalizes(loss));
    }
}

fn default_backbone() -> Backbone {
    Backbone::SmallCnn
}
fn default_embedding_dim() -> i64 {
    128
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            backbone: default_backbone(),
            head: Head::default(),
            embedding_dim: default_embedding_dim(),
            normalize: None,
            pretrained: None,
            input_scaling: None,
            freeze_bn: false,
            pool: Pool::Token,
        }
    }
}

impl ModelConfig {
    /// The input scaling in effect (the override, else the backbone's).
    pub fn input_scaling(&self) -> InputScaling {
        self.input_scaling
            .unwrap_or_else(|| self.backbone.input_scaling())
    }

    /// Checks the settings once, before anything is built.
    pub fn validate(&self) -> Result<()> {
        if self.embedding_dim <= 0 {
            return Err(ConfigError::new(
                "train.model.embedding_dim",
                format!("embedding_dim must be > 0, got {}", self.embedding_dim),
            ));
        }
        if self.pool != Pool::Token && self.backbone.vit().is_none() {
            return Err(ConfigError::new(
                "train.model.pool",
                format!(
                    "train.model.pool = \"mean\" is for the ViT backbones, not {}",
                    self.backbone.name()
                ),
            ));
        }
        if self.freeze_bn && self.backbone.vit().is_some() {
            return Err(ConfigError::new(
                "train.model.freeze_bn",
                format!(
                    "train.model.freeze_bn: {} has no batch norms to freeze",
                    self.backbone.name()
                ),
            ));
        }
        Ok(())
    }
}
