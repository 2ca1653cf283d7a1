//! The training settings as plain data: backbone, head, loss, optimiser, precision.
//!
//! These types are what the config file, the train key and `model.json` hold. They carry
//! no tensors, so everything that only reads or hashes settings (planning, `--dry-run`,
//! `dml eval`, the report) works without libtorch; `dml-torch` builds the network, the
//! loss and the optimiser from them.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;

/// A setting that cannot work, found before anything is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Results of the checks here.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// Width of the small CNN's pooled features (its last block's channels).
pub const SMALL_CNN_FEATURES: i64 = 256;
/// Width of DenseNet-169's pooled features.
pub const DENSENET169_FEATURES: i64 = 1664;

// ---- the network ----

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
                return Err(ConfigError(format!(
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
            return Err(ConfigError(format!(
                "embedding_dim must be > 0, got {}",
                self.embedding_dim
            )));
        }
        if self.pool != Pool::Token && self.backbone.vit().is_none() {
            return Err(ConfigError(format!(
                "train.model.pool = \"mean\" is for the ViT backbones, not {}",
                self.backbone.name()
            )));
        }
        if self.freeze_bn && self.backbone.vit().is_some() {
            return Err(ConfigError(format!(
                "train.model.freeze_bn: {} has no batch norms to freeze",
                self.backbone.name()
            )));
        }
        Ok(())
    }
}

// ---- the loss ----

/// A triplet margin: a number (hinge) or `"soft"` (softplus).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Margin {
    /// max(x + m, 0).
    Value(f64),
    /// softplus(x) = ln(1 + eˣ).
    Soft,
}

impl Serialize for Margin {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Margin::Value(m) => s.serialize_f64(*m),
            Margin::Soft => s.serialize_str("soft"),
        }
    }
}

impl<'de> Deserialize<'de> for Margin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Value(f64),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Value(m) => Ok(Margin::Value(m)),
            Repr::Name(name) if name == "soft" => Ok(Margin::Soft),
            Repr::Name(other) => Err(serde::de::Error::custom(format!(
                "margin must be a number or \"soft\", got \"{other}\""
            ))),
        }
    }
}

/// The loss to train with and its parameters; defaults are the seed's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// Semi-hard triplet loss on squared distances (seed: margin 0.2, normalised embeddings).
    SemiHardTriplet {
        /// Hinge margin or soft.
        #[serde(default = "margin_0_2")]
        margin: Margin,
    },
    /// Batch-hard triplet loss (seed: margin 1.0, unnormalised embeddings).
    HardTriplet {
        /// Hinge margin or soft.
        #[serde(default = "margin_1")]
        margin: Margin,
    },
    /// Lifted structured loss (seed: margin 1.0, unnormalised embeddings).
    LiftedStructure {
        /// The margin inside the exponentials.
        #[serde(default = "one")]
        margin: f64,
    },
    /// N-pairs loss on K = 2 batches (unnormalised embeddings).
    Npairs {
        /// λ of the (λ/4)(mean‖a‖² + mean‖p‖²) regulariser (0.002).
        #[serde(default = "npairs_lambda")]
        lambda: f64,
    },
    /// Angular loss on K = 2 batches (normalised embeddings).
    Angular {
        /// α in degrees (45).
        #[serde(default = "alpha_45")]
        alpha_degrees: f64,
        /// λ of the same regulariser as N-pairs (0.002, i.e. 0.0005·(…)).
        #[serde(default = "npairs_lambda")]
        lambda: f64,
    },
    /// The seed's contrastive loss on K = 4 batches (normalised embeddings).
    Contrastive {
        /// Margin for negative pairs (1.0).
        #[serde(default = "one")]
        margin: f64,
    },
    /// Margin loss of Wu et al. 2017 (normalised embeddings).
    Margin(MarginLossConfig),
    /// Multi-similarity loss (Wang et al. 2019), pytorch-metric-learning's
    /// `MultiSimilarityLoss` on cosine similarities, optionally with its miner and a
    /// cross-batch memory.
    MultiSimilarity {
        /// Weight of positive pairs (2).
        #[serde(default = "ms_alpha")]
        alpha: f64,
        /// Weight of negative pairs (50).
        #[serde(default = "ms_beta")]
        beta: f64,
        /// The similarity offset λ (0.5).
        #[serde(default = "half")]
        base: f64,
        /// Pair mining before the loss (`"multi_similarity"`; none by default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<Miner>,
        /// ε of the multi-similarity miner (0.1).
        #[serde(default = "epsilon_0_1", skip_serializing_if = "is_0_1")]
        miner_epsilon: f64,
        /// Cross-batch memory: embeddings kept from earlier batches (0: off).
        #[serde(default, skip_serializing_if = "is_zero_usize")]
        memory: usize,
        /// Steps trained without the memory before it is used (XBM's warm-up; 0).
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        memory_start_step: u64,
    },
    /// Circle loss (Sun et al. 2020), pytorch-metric-learning's `CircleLoss` on cosine
    /// similarities; the paper's m = 0.25, γ = 256 (PML's defaults are 0.4 and 80).
    Circle {
        /// The relaxation m (0.25).
        #[serde(default = "circle_m")]
        m: f64,
        /// The scale γ (256).
        #[serde(default = "circle_gamma")]
        gamma: f64,
        /// Pair mining before the loss (`"multi_similarity"`; none by default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<Miner>,
        /// ε of the multi-similarity miner (0.1).
        #[serde(default = "epsilon_0_1", skip_serializing_if = "is_0_1")]
        miner_epsilon: f64,
        /// Cross-batch memory: embeddings kept from earlier batches (0: off).
        #[serde(default, skip_serializing_if = "is_zero_usize")]
        memory: usize,
        /// Steps trained without the memory before it is used (0).
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        memory_start_step: u64,
    },
    /// Proxy-Anchor loss (Kim et al. 2020), pytorch-metric-learning's `ProxyAnchorLoss`:
    /// one proxy per training class (`loss.proxies`).
    ProxyAnchor {
        /// δ (0.1).
        #[serde(default = "margin_0_1")]
        margin: f64,
        /// α (32).
        #[serde(default = "alpha_32")]
        alpha: f64,
        /// Learning-rate multiplier of the proxies (1; the paper's recipe uses 100).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
    /// Proxy-NCA (Movshovitz-Attias et al. 2017), pytorch-metric-learning's `ProxyNCALoss`:
    /// softmax over negative squared distances to one proxy per class (`loss.proxies`).
    ProxyNca {
        /// Scale of the distances inside the softmax (1).
        #[serde(default = "one")]
        softmax_scale: f64,
        /// Learning-rate multiplier of the proxies (1).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
    /// ArcFace (Deng et al. 2019), pytorch-metric-learning's `ArcFaceLoss`: class weights
    /// `loss.W` (`[embedding_dim, classes]`).
    Arcface {
        /// Additive angular margin in degrees (28.6, i.e. 0.5 rad).
        #[serde(default = "arcface_margin")]
        margin: f64,
        /// Logit scale s (64).
        #[serde(default = "arcface_scale")]
        scale: f64,
        /// Learning-rate multiplier of the class weights (1).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
    /// SoftTriple (Qian et al. 2019), pytorch-metric-learning's `SoftTripleLoss`: K centres
    /// per class, `loss.fc` (`[embedding_dim, classes·K]`).
    SoftTriple {
        /// Centres per class K (10).
        #[serde(default = "centers_10")]
        centers_per_class: usize,
        /// λ, the scale of the class logits (20).
        #[serde(default = "la_20")]
        la: f64,
        /// γ, the temperature of the soft assignment to centres (0.1).
        #[serde(default = "epsilon_0_1")]
        gamma: f64,
        /// δ, the margin on the true class (0.01).
        #[serde(default = "margin_0_01")]
        margin: f64,
        /// τ, the weight of the paper's centre regulariser (0, as in PML; the paper
        /// uses 0.2). PML's `SparseCentersRegularizer`; needs `centers_per_class` > 1.
        #[serde(default)]
        tau: f64,
        /// Learning-rate multiplier of the centres (1; the paper's recipe uses 100).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        lr_multiplier: f64,
    },
}

/// Pair mining for the pair-based losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Miner {
    /// Multi-similarity mining (Wang et al. 2019, PML's `MultiSimilarityMiner`): keep a
    /// positive less similar than the anchor's most similar negative + ε, and a negative
    /// more similar than its least similar positive − ε.
    MultiSimilarity,
}

fn ms_alpha() -> f64 {
    2.0
}
fn ms_beta() -> f64 {
    50.0
}
fn half() -> f64 {
    0.5
}
fn epsilon_0_1() -> f64 {
    0.1
}
fn is_0_1(x: &f64) -> bool {
    *x == 0.1
}
fn is_one(x: &f64) -> bool {
    *x == 1.0
}
fn is_zero_usize(x: &usize) -> bool {
    *x == 0
}
fn is_zero_u64(x: &u64) -> bool {
    *x == 0
}
fn circle_m() -> f64 {
    0.25
}
fn circle_gamma() -> f64 {
    256.0
}
fn margin_0_1() -> f64 {
    0.1
}
fn alpha_32() -> f64 {
    32.0
}
fn arcface_margin() -> f64 {
    28.6
}
fn arcface_scale() -> f64 {
    64.0
}
fn centers_10() -> usize {
    10
}
fn la_20() -> f64 {
    20.0
}
fn margin_0_01() -> f64 {
    0.01
}

fn margin_0_2() -> Margin {
    Margin::Value(0.2)
}
fn margin_1() -> Margin {
    Margin::Value(1.0)
}
fn one() -> f64 {
    1.0
}
fn npairs_lambda() -> f64 {
    0.002
}
fn alpha_45() -> f64 {
    45.0
}

impl Default for Loss {
    fn default() -> Self {
        Loss::HardTriplet { margin: margin_1() }
    }
}

impl Loss {
    /// The snake_case name used in settings.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::SemiHardTriplet { .. } => "semi_hard_triplet",
            Loss::HardTriplet { .. } => "hard_triplet",
            Loss::LiftedStructure { .. } => "lifted_structure",
            Loss::Npairs { .. } => "npairs",
            Loss::Angular { .. } => "angular",
            Loss::Contrastive { .. } => "contrastive",
            Loss::Margin(_) => "margin",
            Loss::MultiSimilarity { .. } => "multi_similarity",
            Loss::Circle { .. } => "circle",
            Loss::ProxyAnchor { .. } => "proxy_anchor",
            Loss::ProxyNca { .. } => "proxy_nca",
            Loss::Arcface { .. } => "arcface",
            Loss::SoftTriple { .. } => "soft_triple",
        }
    }

    /// Whether the loss trains one parameter block per training class (proxies, class
    /// weights, centres): it needs the number of training classes and no P×K layout.
    pub fn has_class_parameters(&self) -> bool {
        matches!(
            self,
            Loss::ProxyAnchor { .. }
                | Loss::ProxyNca { .. }
                | Loss::Arcface { .. }
                | Loss::SoftTriple { .. }
        )
    }

    /// The learning-rate multiplier of the loss's own parameters (1 when it has none).
    pub fn lr_multiplier(&self) -> f64 {
        match self {
            Loss::ProxyAnchor { lr_multiplier, .. }
            | Loss::ProxyNca { lr_multiplier, .. }
            | Loss::Arcface { lr_multiplier, .. }
            | Loss::SoftTriple { lr_multiplier, .. } => *lr_multiplier,
            _ => 1.0,
        }
    }

    /// The cross-batch memory (size, first step it is used at), when on.
    pub fn memory(&self) -> Option<(usize, u64)> {
        match self {
            Loss::MultiSimilarity {
                memory,
                memory_start_step,
                ..
            }
            | Loss::Circle {
                memory,
                memory_start_step,
                ..
            } if *memory > 0 => Some((*memory, *memory_start_step)),
            _ => None,
        }
    }

    /// The pair miner and its ε, when one is set.
    pub fn miner(&self) -> Option<(Miner, f64)> {
        match self {
            Loss::MultiSimilarity {
                miner: Some(m),
                miner_epsilon,
                ..
            }
            | Loss::Circle {
                miner: Some(m),
                miner_epsilon,
                ..
            } => Some((*m, *miner_epsilon)),
            _ => None,
        }
    }

    /// Whether the loss works on any batch (a class may have one image, or none of its
    /// pairs), so that `plan.sampler = "random"` can feed it; the seed's losses need P×K.
    pub fn accepts_random_batches(&self) -> bool {
        self.has_class_parameters()
            || matches!(self, Loss::MultiSimilarity { .. } | Loss::Circle { .. })
    }

    /// The loss with the seed's parameters, by name.
    pub fn with_defaults(name: &str) -> Result<Loss> {
        serde_json::from_value(serde_json::json!({ "name": name }))
            .map_err(|e| ConfigError(format!("unknown loss `{name}`: {e}")))
    }

    /// Whether the seed L2-normalises embeddings for this loss (its recommended setting).
    pub fn normalize_by_default(&self) -> bool {
        matches!(
            self,
            Loss::SemiHardTriplet { .. }
                | Loss::Angular { .. }
                | Loss::Contrastive { .. }
                | Loss::Margin(_)
                | Loss::MultiSimilarity { .. }
                | Loss::Circle { .. }
                | Loss::ProxyAnchor { .. }
                | Loss::ProxyNca { .. }
                | Loss::Arcface { .. }
                | Loss::SoftTriple { .. }
        )
    }

    /// The images per class (K of P×K) the loss's batch layout requires, if any.
    pub fn required_samples_per_class(&self) -> Option<usize> {
        match self {
            Loss::Npairs { .. } | Loss::Angular { .. } => Some(2),
            Loss::Contrastive { .. } => Some(4),
            _ => None,
        }
    }

    /// Checks the parameters once, before anything runs.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(ConfigError(format!("{}: {what}", self.name())));
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        match self {
            Loss::SemiHardTriplet { margin } | Loss::HardTriplet { margin } => match margin {
                Margin::Value(m) if !finite_nonneg(*m) => {
                    bad("margin must be a finite number ≥ 0 or \"soft\"")
                }
                _ => Ok(()),
            },
            Loss::LiftedStructure { margin } | Loss::Contrastive { margin }
                if !finite_nonneg(*margin) =>
            {
                bad("margin must be a finite number ≥ 0")
            }
            Loss::Npairs { lambda } if !finite_nonneg(*lambda) => bad("lambda must be ≥ 0"),
            Loss::Angular {
                alpha_degrees,
                lambda,
            } => {
                if !(alpha_degrees.is_finite() && *alpha_degrees > 0.0 && *alpha_degrees < 90.0) {
                    bad("alpha_degrees must lie in (0, 90)")
                } else if !finite_nonneg(*lambda) {
                    bad("lambda must be ≥ 0")
                } else {
                    Ok(())
                }
            }
            Loss::Margin(cfg) => {
                cfg.beta_len()?;
                if !finite_nonneg(cfg.alpha) || !cfg.beta_init.is_finite() || !finite_nonneg(cfg.nu)
                {
                    return bad("alpha and nu must be ≥ 0 and beta_init finite");
                }
                match cfg.sampling {
                    NegativeSampling::DistanceWeighted {
                        cutoff,
                        nonzero_loss_cutoff,
                    } if !(cutoff > 0.0 && nonzero_loss_cutoff > cutoff) => {
                        bad("distance-weighted sampling needs 0 < cutoff < nonzero_loss_cutoff")
                    }
                    _ => Ok(()),
                }
            }
            Loss::MultiSimilarity {
                alpha,
                beta,
                base,
                miner_epsilon,
                ..
            } => {
                if !(positive(*alpha) && positive(*beta) && base.is_finite()) {
                    bad("alpha and beta must be > 0 and base finite")
                } else if !finite_nonneg(*miner_epsilon) {
                    bad("miner_epsilon must be ≥ 0")
                } else {
                    Ok(())
                }
            }
            Loss::Circle {
                m,
                gamma,
                miner_epsilon,
                ..
            } => {
                if !(finite_nonneg(*m) && positive(*gamma)) {
                    bad("m must be ≥ 0 and gamma > 0")
                } else if !finite_nonneg(*miner_epsilon) {
                    bad("miner_epsilon must be ≥ 0")
                } else {
                    Ok(())
                }
            }
            Loss::ProxyAnchor { margin, alpha, .. } => {
                if !(margin.is_finite() && positive(*alpha)) {
                    bad("margin must be finite and alpha > 0")
                } else {
                    Ok(())
                }
            }
            Loss::ProxyNca { softmax_scale, .. } if !positive(*softmax_scale) => {
                bad("softmax_scale must be > 0")
            }
            Loss::Arcface { margin, scale, .. } => {
                if !(finite_nonneg(*margin) && *margin < 180.0 && positive(*scale)) {
                    bad("margin must lie in [0, 180) degrees and scale be > 0")
                } else {
                    Ok(())
                }
            }
            Loss::SoftTriple {
                centers_per_class,
                la,
                gamma,
                margin,
                tau,
                ..
            } => {
                if *centers_per_class == 0 {
                    bad("centers_per_class must be ≥ 1")
                } else if !(positive(*la) && positive(*gamma) && margin.is_finite()) {
                    bad("la and gamma must be > 0 and margin finite")
                } else if !finite_nonneg(*tau) {
                    bad("tau must be ≥ 0")
                } else if *tau > 0.0 && *centers_per_class < 2 {
                    bad("the centre regulariser (tau > 0) needs centers_per_class ≥ 2; set train.loss.tau = 0 or more centres")
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }?;
        if !(self.lr_multiplier().is_finite() && self.lr_multiplier() > 0.0) {
            return Err(ConfigError(format!(
                "train.loss.lr_multiplier = {} must be > 0 (it scales the learning rate of the loss's parameters)",
                self.lr_multiplier()
            )));
        }
        if let Some((memory, _)) = self.memory() {
            if memory > 10_000_000 {
                return bad("memory is larger than 10,000,000 embeddings");
            }
        }
        Ok(())
    }
}

/// Settings of the margin loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarginLossConfig {
    /// α, the margin around the boundary β (0.2).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Initial β (1.2).
    #[serde(default = "default_beta_init")]
    pub beta_init: f64,
    /// Whether β is trained (true) or held at `beta_init`.
    #[serde(default = "default_true")]
    pub learn_beta: bool,
    /// One β for all classes, or one per class.
    #[serde(default)]
    pub beta_scope: BetaScope,
    /// Number of training classes; required when `beta_scope` is `per_class`.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// ν, the weight of the β regulariser (0).
    #[serde(default)]
    pub nu: f64,
    /// How negatives are chosen.
    #[serde(default)]
    pub sampling: NegativeSampling,
}

fn default_alpha() -> f64 {
    0.2
}
fn default_beta_init() -> f64 {
    1.2
}
fn default_true() -> bool {
    true
}

impl Default for MarginLossConfig {
    fn default() -> Self {
        MarginLossConfig {
            alpha: default_alpha(),
            beta_init: default_beta_init(),
            learn_beta: true,
            beta_scope: BetaScope::default(),
            num_classes: None,
            nu: 0.0,
            sampling: NegativeSampling::default(),
        }
    }
}

/// Whether β is shared or per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaScope {
    /// A single β.
    #[default]
    Global,
    /// β indexed by the anchor's class.
    PerClass,
}

/// Negative selection for the margin loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NegativeSampling {
    /// One negative per positive pair, drawn with probability ∝ 1/q(d).
    DistanceWeighted {
        /// Lower clamp on distances before weighting (0.5).
        #[serde(default = "default_cutoff")]
        cutoff: f64,
        /// Negatives at this distance or farther are never drawn (1.4 = α + β₀).
        #[serde(default = "default_nonzero_cutoff")]
        nonzero_loss_cutoff: f64,
    },
    /// Every negative pair of the batch.
    All,
}

fn default_cutoff() -> f64 {
    0.5
}
fn default_nonzero_cutoff() -> f64 {
    1.4
}

impl Default for NegativeSampling {
    fn default() -> Self {
        NegativeSampling::DistanceWeighted {
            cutoff: default_cutoff(),
            nonzero_loss_cutoff: default_nonzero_cutoff(),
        }
    }
}
impl MarginLossConfig {
    /// Number of β values this configuration trains.
    pub fn beta_len(&self) -> Result<i64> {
        match self.beta_scope {
            BetaScope::Global => Ok(1),
            BetaScope::PerClass => match self.num_classes {
                Some(n) if n > 0 => Ok(n as i64),
                _ => Err(ConfigError(
                    "margin loss with beta_scope = per_class needs num_classes > 0".into(),
                )),
            },
        }
    }
}

// ---- the optimiser ----

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
            return Err(ConfigError(format!(
                "train.optimizer.head_lr_multiplier = {} must be > 0",
                self.head_lr_multiplier
            )));
        }
        if self.schedule == LrSchedule::Step && self.decay_every == 0 {
            return Err(ConfigError(
                "train.optimizer.schedule = \"step\" needs train.optimizer.decay_every = N (steps between decays)".into(),
            ));
        }
        if !(self.decay_gamma.is_finite() && self.decay_gamma > 0.0 && self.decay_gamma <= 1.0) {
            return Err(ConfigError(format!(
                "train.optimizer.decay_gamma = {} must lie in (0, 1]",
                self.decay_gamma
            )));
        }
        if !(self.layer_decay.is_finite() && self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return Err(ConfigError(format!(
                "train.optimizer.layer_decay = {} must lie in (0, 1] (1: off)",
                self.layer_decay
            )));
        }
        if !self.clip_grad_norm.is_none_or(positive) {
            return Err(ConfigError(
                "train.optimizer.clip_grad_norm must be > 0 (or left out for no clipping)".into(),
            ));
        }
        if !positive(self.learning_rate) {
            return Err(ConfigError(format!(
                "train.optimizer.learning_rate = {} must be finite and > 0",
                self.learning_rate
            )));
        }
        if let Some(b) = self.beta_learning_rate.filter(|&b| !positive(b)) {
            return Err(ConfigError(format!(
                "train.optimizer.beta_learning_rate = {b} must be finite and > 0"
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError(format!(
                "train.optimizer.weight_decay = {} must be ≥ 0",
                self.weight_decay
            )));
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
            } if !(fraction(beta1) && fraction(beta2) && positive(epsilon)) => Err(ConfigError(
                "train.optimizer.algorithm: adam needs 0 ≤ beta1, beta2 < 1 and epsilon > 0".into(),
            )),
            Algorithm::Sgd { momentum, .. } if !fraction(momentum) => {
                Err(ConfigError("sgd needs 0 ≤ momentum < 1".into()))
            }
            _ => Ok(()),
        }
    }
}

// ---- the whole ----

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
            return Err(ConfigError(format!(
                "train.optimizer.layer_decay = {} is for the ViT backbones (their blocks are the layers), not {}; remove it",
                self.optimizer.layer_decay,
                self.model.backbone.name()
            )));
        }
        Ok(())
    }

    /// Checks the settings that depend on the number of training steps.
    pub fn validate_steps(&self, steps: u64) -> Result<()> {
        let longer = |what: &str, n: u64| {
            Err(ConfigError(format!(
                "{what} = {n} is not shorter than training (plan.steps = {steps}); lower it or plan more steps"
            )))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn steps_error(cfg: &TrainConfig, steps: u64) -> String {
        cfg.validate_steps(steps).unwrap_err().0
    }

    #[test]
    fn bn_inception_takes_the_crops_its_reference_takes() {
        // The sizes pretrainedmodels' BNInception.features runs on (checked against it, 8 to
        // 320 px): its reduction blocks need an even map.
        for crop in [32, 64, 96, 100, 160, 224, 227, 256, 288] {
            assert!(Backbone::BnInception.check_crop(crop).is_ok(), "{crop}");
        }
        for crop in [8, 28, 30, 48, 80, 112] {
            let e = Backbone::BnInception.check_crop(crop).unwrap_err().0;
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
        cfg.validate().unwrap_err().0
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
            assert_eq!(o.validate().unwrap_err().0, message);
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
            assert_eq!(l.validate().unwrap_err().0, message);
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
            let e = loss.validate().unwrap_err().0;
            assert!(e.contains("train.loss.lr_multiplier"), "{e}");
            let opt = OptimConfig {
                head_lr_multiplier: bad,
                ..OptimConfig::default()
            };
            let e = opt.validate().unwrap_err().0;
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
