//! ResNet-18 and ResNet-50 (torchvision layout: `conv1`, `bn1`, `layer{1..4}.{i}.{conv,bn}{1..3}`, `downsample.{0,1}`; stride on the 3×3 conv, "v1.5").

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{batch_norm, conv, global_avg_pool, relu_inplace};

#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    downsample: Option<Downsample>,
}

/// (in channels, out channels, kernel, stride, padding) of one convolution.
type ConvSpec = (i64, i64, i64, i64, i64);

impl Block {
    /// BasicBlock (two 3×3 convs) or Bottleneck (1×1, 3×3 with the stride, 1×1 ×4).
    fn new(p: &nn::Path, c_in: i64, width: i64, stride: i64, bottleneck: bool) -> (Self, i64) {
        let (specs, c_out): (Vec<ConvSpec>, i64) = if bottleneck {
            (
                vec![
                    (c_in, width, 1, 1, 0),
                    (width, width, 3, stride, 1),
                    (width, width * 4, 1, 1, 0),
                ],
                width * 4,
            )
        } else {
            (
                vec![(c_in, width, 3, stride, 1), (width, width, 3, 1, 1)],
                width,
            )
        };
        let convs = specs
            .iter()
            .enumerate()
            .map(|(i, &(ci, co, k, s, pad))| {
                (
                    conv(p / format!("conv{}", i + 1), ci, co, k, s, pad),
                    batch_norm(p / format!("bn{}", i + 1), co, 1e-5),
                )
            })
            .collect();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            Downsample {
                conv: conv(&d / "0", c_in, c_out, 1, stride, 0),
                bn: batch_norm(&d / "1", c_out, 1e-5),
            }
        });
        (Block { convs, downsample }, c_out)
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.convs.len() - 1;
        let mut x = xs.shallow_clone();
        for (i, (c, bn)) in self.convs.iter().enumerate() {
            x = x.apply(c).apply_t(bn, train);
            if i != last {
                x = relu_inplace(x);
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => xs.apply(&d.conv).apply_t(&d.bn, train),
            None => xs.shallow_clone(),
        };
        // In place, as torchvision's `out += identity`: `x` is a batch-norm output, which no
        // backward pass needs.
        let _ = x.g_add_(&shortcut);
        relu_inplace(x)
    }
}

/// A torchvision ResNet trunk up to the global average pool.
#[derive(Debug)]
pub(crate) struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<Block>,
}

impl ResNet {
    fn new(p: &nn::Path, layers: [usize; 4], bottleneck: bool) -> Self {
        let conv1 = conv(p / "conv1", 3, 64, 7, 2, 3);
        let bn1 = batch_norm(p / "bn1", 64, 1e-5);
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, &n) in layers.iter().enumerate() {
            let width = 64 << stage;
            let lp = p / format!("layer{}", stage + 1);
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let (block, c_out) = Block::new(&lp.sub(i), c_in, width, stride, bottleneck);
                blocks.push(block);
                c_in = c_out;
            }
        }
        ResNet { conv1, bn1, blocks }
    }

    pub(crate) fn resnet18(p: &nn::Path) -> Self {
        Self::new(p, [2, 2, 2, 2], false)
    }

    pub(crate) fn resnet50(p: &nn::Path) -> Self {
        Self::new(p, [3, 4, 6, 3], true)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = relu_inplace(xs.apply(&self.conv1).apply_t(&self.bn1, train)).max_pool2d(
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            false,
        );
        for block in &self.blocks {
            x = block.forward_t(&x, train);
        }
        global_avg_pool(&x)
    }
}
