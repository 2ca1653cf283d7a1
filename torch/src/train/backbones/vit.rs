//! Vision Transformers as timm's `VisionTransformer` (ViT-S/16, ViT-B/16 and CLIP's ViT-B/16), under timm's tensor names so its `state_dict`s load as they are: `patch_embed.proj`, `cls_token`, `pos_embed`, (CLIP) `norm_pre`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`.
//!
//! The forward pass: a stride-16 convolution cuts the image into patch tokens, the class token
//! is prepended and the learned position embeddings are added; pre-norm blocks
//! (x + attn(norm1(x)), then x + mlp(norm2(x))) with libtorch's fused
//! `scaled_dot_product_attention`; the final LayerNorm; the class token (or, with
//! `pool = "mean"`, the mean of the patch tokens) is the feature vector.
//!
//! Position embeddings are stored for the weights' 224 px (a 14 × 14 grid). For another
//! `image.crop` the grid's embeddings are resampled on every forward pass, the class token's
//! kept, exactly as timm's `resample_abs_pos_embed` with its defaults (bicubic, antialiased,
//! `align_corners = False`) does for `dynamic_img_size` models; the gradient flows back into the
//! stored 14 × 14 embeddings, so a checkpoint keeps the weights' shape at every crop.

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use dml_jobspec::train_config::{Pool, VitShape};

/// timm's `trunc_normal_(std=.02)` scale for random initialisation.
const INIT_STD: f64 = 0.02;

fn layer_norm(p: nn::Path, width: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![width],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

fn linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
}

impl Block {
    fn new(p: &nn::Path, shape: &VitShape, eps: f64) -> Self {
        let d = shape.width;
        Block {
            norm1: layer_norm(p / "norm1", d, eps),
            qkv: linear(p / "attn" / "qkv", d, 3 * d),
            proj: linear(p / "attn" / "proj", d, d),
            norm2: layer_norm(p / "norm2", d, eps),
            fc1: linear(p / "mlp" / "fc1", d, 4 * d),
            fc2: linear(p / "mlp" / "fc2", 4 * d, d),
            heads: shape.heads,
        }
    }

    /// Multi-head self-attention over `[B, N, D]` tokens.
    fn attention(&self, xs: &Tensor) -> Tensor {
        // The batch dimension is left to libtorch (-1) rather than read here, so a model
        // traced for `dml export` takes any batch size, as timm's does.
        let (_, n, d) = xs.size3().expect("tokens are [B, N, D]");
        let qkv = xs
            .apply(&self.qkv)
            .reshape([-1, n, 3, self.heads, d / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        Tensor::scaled_dot_product_attention::<Tensor>(
            &q,
            &k,
            &v,
            None,
            0.0,
            false,
            None::<f64>,
            false,
        )
        .transpose(1, 2)
        .reshape([-1, n, d])
        .apply(&self.proj)
    }

    fn mlp(&self, xs: &Tensor) -> Tensor {
        xs.apply(&self.fc1).gelu("none").apply(&self.fc2)
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = xs + self.attention(&xs.apply(&self.norm1));
        &xs + self.mlp(&xs.apply(&self.norm2))
    }
}

/// A timm Vision Transformer trunk up to its pooled feature vector.
#[derive(Debug)]
pub(crate) struct VisionTransformer {
    patch_embed: nn::Conv2D,
    cls_token: Tensor,
    pos_embed: Tensor,
    norm_pre: Option<nn::LayerNorm>,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    shape: VitShape,
    pool: Pool,
}

impl VisionTransformer {
    pub(crate) fn new(p: &nn::Path, shape: VitShape, pool: Pool) -> Self {
        let d = shape.width;
        let eps = if shape.clip { 1e-5 } else { 1e-6 };
        let grid = shape.image / shape.patch;
        let patch_embed = nn::conv2d(
            p / "patch_embed" / "proj",
            3,
            d,
            shape.patch,
            nn::ConvConfig {
                stride: shape.patch,
                bias: !shape.clip,
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: INIT_STD,
                },
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        let cls_token = p.var(
            "cls_token",
            &[1, 1, d],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1e-6,
            },
        );
        let pos_embed = p.var(
            "pos_embed",
            &[1, 1 + grid * grid, d],
            nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        );
        let norm_pre = shape.clip.then(|| layer_norm(p / "norm_pre", d, eps));
        let blocks = (0..shape.depth)
            .map(|i| Block::new(&(p / "blocks" / i), &shape, eps))
            .collect();
        VisionTransformer {
            patch_embed,
            cls_token,
            pos_embed,
            norm_pre,
            blocks,
            norm: layer_norm(p / "norm", d, eps),
            shape,
            pool,
        }
    }

    /// The position embeddings for an `h × w` patch grid: the stored ones when the grid is
    /// the weights' own, else their grid part resampled as timm's `resample_abs_pos_embed`.
    fn pos_embed_for(&self, h: i64, w: i64) -> Tensor {
        let grid = self.shape.image / self.shape.patch;
        if h == grid && w == grid {
            return self.pos_embed.shallow_clone();
        }
        let d = self.shape.width;
        let prefix = self.pos_embed.narrow(1, 0, 1);
        let kind = self.pos_embed.kind();
        let resampled = self
            .pos_embed
            .narrow(1, 1, grid * grid)
            .to_kind(Kind::Float)
            .reshape([1, grid, grid, d])
            .permute([0, 3, 1, 2])
            .internal_upsample_bicubic2d_aa([h, w], false, None::<f64>, None::<f64>)
            .permute([0, 2, 3, 1])
            .reshape([1, h * w, d])
            .to_kind(kind);
        Tensor::cat(&[prefix, resampled], 1)
    }

    /// Tokens after the final norm: `[B, 1 + h·w, D]`.
    pub(crate) fn tokens(&self, xs: &Tensor) -> Tensor {
        let patches = xs.apply(&self.patch_embed);
        let (_, _, h, w) = patches.size4().expect("NCHW patches");
        let patches = patches.flatten(2, 3).transpose(1, 2);
        // `expand_as` keeps the batch size a traced value (not a constant) in `dml export`.
        let cls = self.cls_token.expand_as(&patches.narrow(1, 0, 1));
        let mut x =
            Tensor::cat(&[cls.to_kind(patches.kind()), patches], 1) + self.pos_embed_for(h, w);
        if let Some(norm_pre) = &self.norm_pre {
            x = x.apply(norm_pre);
        }
        for block in &self.blocks {
            x = block.forward(&x);
        }
        x.apply(&self.norm)
    }
}

impl ModuleT for VisionTransformer {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let x = self.tokens(xs);
        match self.pool {
            Pool::Token => x.select(1, 0),
            Pool::Mean => {
                let n = x.size()[1];
                x.narrow(1, 1, n - 1).mean_dim(1, false, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::torch_state::lock_torch_rng;
    use tch::Device;

    fn tiny(clip: bool) -> VitShape {
        VitShape {
            width: 16,
            depth: 2,
            heads: 2,
            patch: 4,
            image: 16,
            clip,
        }
    }

    /// One block written out with plain tensor operations (softmax attention, no fusion).
    fn reference_block(vs: &nn::VarStore, prefix: &str, x: &Tensor, heads: i64) -> Tensor {
        let v = vs.variables();
        let t = |n: &str| v[&format!("{prefix}.{n}")].shallow_clone();
        let ln = |x: &Tensor, n: &str| {
            x.layer_norm(
                [x.size()[2]],
                Some(t(&format!("{n}.weight"))),
                Some(t(&format!("{n}.bias"))),
                1e-6,
                false,
            )
        };
        let lin = |x: &Tensor, n: &str| {
            x.matmul(&t(&format!("{n}.weight")).tr()) + t(&format!("{n}.bias"))
        };
        let (b, n, d) = x.size3().unwrap();
        let hd = d / heads;
        let qkv = lin(&ln(x, "norm1"), "attn.qkv").reshape([b, n, 3, heads, hd]);
        let q = qkv.select(2, 0).transpose(1, 2);
        let k = qkv.select(2, 1).transpose(1, 2);
        let vv = qkv.select(2, 2).transpose(1, 2);
        let att = (q.matmul(&k.transpose(2, 3)) / (hd as f64).sqrt()).softmax(-1, Kind::Float);
        let a = att.matmul(&vv).transpose(1, 2).reshape([b, n, d]);
        let x = x + lin(&a, "attn.proj");
        let h = lin(&ln(&x, "norm2"), "mlp.fc1").gelu("none");
        &x + lin(&h, "mlp.fc2")
    }

    #[test]
    fn fused_attention_equals_the_written_out_block() {
        let _rng = lock_torch_rng();
        let vs = nn::VarStore::new(Device::Cpu);
        let shape = tiny(false);
        let block = Block::new(&(vs.root() / "b"), &shape, 1e-6);
        let x = Tensor::randn([3, 5, 16], (Kind::Float, Device::Cpu));
        let got = tch::no_grad(|| block.forward(&x));
        let want = tch::no_grad(|| reference_block(&vs, "b", &x, 2));
        let diff = (&got - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max diff {diff}");
    }

    #[test]
    fn names_shapes_pooling_and_resampled_positions() {
        let _rng = lock_torch_rng();
        for clip in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let vit = VisionTransformer::new(&vs.root(), tiny(clip), Pool::Token);
            let v = vs.variables();
            assert_eq!(v["pos_embed"].size(), [1, 17, 16]);
            assert_eq!(v.contains_key("norm_pre.weight"), clip);
            assert_eq!(v.contains_key("patch_embed.proj.bias"), !clip);
            assert!(v.contains_key("blocks.1.mlp.fc2.bias"));
            // 16 px: the stored 4 × 4 grid; 24 px: 6 × 6, resampled; 8 px: 2 × 2.
            for (size, tokens) in [(16, 17), (24, 37), (8, 5)] {
                let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
                let t = tch::no_grad(|| vit.tokens(&x));
                assert_eq!(t.size(), [2, tokens, 16]);
                let f = tch::no_grad(|| vit.forward_t(&x, false));
                assert!(f.equal(&t.select(1, 0)));
            }
        }
        // Resampling to the stored grid's own size is the identity, and the class token's
        // embedding is never resampled.
        let vs = nn::VarStore::new(Device::Cpu);
        let vit = VisionTransformer::new(&vs.root(), tiny(false), Pool::Mean);
        let same = vit.pos_embed_for(4, 4);
        assert!(same.equal(&vs.variables()["pos_embed"]));
        let other = tch::no_grad(|| vit.pos_embed_for(6, 6));
        assert!(other.narrow(1, 0, 1).equal(&same.narrow(1, 0, 1)));
        // A constant grid stays constant (the antialiased bicubic weights sum to one).
        let flat = Tensor::ones([1, 1, 4, 4], (Kind::Float, Device::Cpu))
            .internal_upsample_bicubic2d_aa([6, 6], false, None::<f64>, None::<f64>);
        assert!((flat - 1.0).abs().max().double_value(&[]) < 1e-6);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let t = tch::no_grad(|| vit.tokens(&x));
        let f = tch::no_grad(|| vit.forward_t(&x, false));
        let mean = t.narrow(1, 1, 16).mean_dim(1, false, None);
        assert!((f - mean).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn gradients_reach_the_stored_position_embeddings_at_another_size() {
        let _rng = lock_torch_rng();
        let vs = nn::VarStore::new(Device::Cpu);
        let vit = VisionTransformer::new(&vs.root(), tiny(false), Pool::Token);
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        // A random projection: the plain sum of LayerNorm outputs has no gradient.
        let w = Tensor::randn([2, 16], (Kind::Float, Device::Cpu));
        (vit.forward_t(&x, true) * w).sum(Kind::Float).backward();
        let g = vs.variables()["pos_embed"].grad();
        assert!(g.defined());
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
