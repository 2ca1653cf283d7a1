//! Inception V1 as torchvision's `googlenet` (no auxiliary heads, no `transform_input`): `conv{1,2,3}.{conv,bn}`, `inception{3a..5b}.branch{1..4}`; BasicConv2d = conv (no bias) + BN (eps 1e-3) + ReLU; max pools with ceil mode; branch 3 uses a 3×3 conv, as torchvision does.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{batch_norm, conv, global_avg_pool, relu_inplace};

#[derive(Debug)]
struct BasicConv {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl BasicConv {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        BasicConv {
            conv: conv(p / "conv", c_in, c_out, k, stride, padding),
            bn: batch_norm(p / "bn", c_out, 1e-3),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        relu_inplace(xs.apply(&self.conv).apply_t(&self.bn, train))
    }
}

#[derive(Debug)]
struct Inception {
    branch1: BasicConv,
    branch2: [BasicConv; 2],
    branch3: [BasicConv; 2],
    branch4: BasicConv,
}

impl Inception {
    /// (in, 1×1, 3×3 reduce, 3×3, "5×5" reduce, "5×5", pool projection), torchvision's order.
    fn new(p: &nn::Path, c: [i64; 7]) -> Self {
        let [c_in, c1, c3r, c3, c5r, c5, pool] = c;
        let b2 = p / "branch2";
        let b3 = p / "branch3";
        Inception {
            branch1: BasicConv::new(&(p / "branch1"), c_in, c1, 1, 1, 0),
            branch2: [
                BasicConv::new(&(&b2 / "0"), c_in, c3r, 1, 1, 0),
                BasicConv::new(&(&b2 / "1"), c3r, c3, 3, 1, 1),
            ],
            branch3: [
                BasicConv::new(&(&b3 / "0"), c_in, c5r, 1, 1, 0),
                BasicConv::new(&(&b3 / "1"), c5r, c5, 3, 1, 1),
            ],
            // branch4.0 is the max pool, which has no tensors.
            branch4: BasicConv::new(&(p / "branch4" / "1"), c_in, pool, 1, 1, 0),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let b1 = self.branch1.forward_t(xs, train);
        let b2 = self.branch2[1].forward_t(&self.branch2[0].forward_t(xs, train), train);
        let b3 = self.branch3[1].forward_t(&self.branch3[0].forward_t(xs, train), train);
        let pooled = xs.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], true);
        let b4 = self.branch4.forward_t(&pooled, train);
        Tensor::cat(&[b1, b2, b3, b4], 1)
    }
}

/// torchvision GoogLeNet trunk up to the global average pool.
#[derive(Debug)]
pub(crate) struct GoogLeNet {
    conv1: BasicConv,
    conv2: BasicConv,
    conv3: BasicConv,
    /// (module, whether a 3×3/2 (`Some(3)`) or 2×2/2 (`Some(2)`) max pool follows).
    inceptions: Vec<(Inception, Option<i64>)>,
}

const INCEPTIONS: [(&str, [i64; 7], Option<i64>); 9] = [
    ("inception3a", [192, 64, 96, 128, 16, 32, 32], None),
    ("inception3b", [256, 128, 128, 192, 32, 96, 64], Some(3)),
    ("inception4a", [480, 192, 96, 208, 16, 48, 64], None),
    ("inception4b", [512, 160, 112, 224, 24, 64, 64], None),
    ("inception4c", [512, 128, 128, 256, 24, 64, 64], None),
    ("inception4d", [512, 112, 144, 288, 32, 64, 64], None),
    ("inception4e", [528, 256, 160, 320, 32, 128, 128], Some(2)),
    ("inception5a", [832, 256, 160, 320, 32, 128, 128], None),
    ("inception5b", [832, 384, 192, 384, 48, 128, 128], None),
];

impl GoogLeNet {
    pub(crate) fn new(p: &nn::Path) -> Self {
        GoogLeNet {
            conv1: BasicConv::new(&(p / "conv1"), 3, 64, 7, 2, 3),
            conv2: BasicConv::new(&(p / "conv2"), 64, 64, 1, 1, 0),
            conv3: BasicConv::new(&(p / "conv3"), 64, 192, 3, 1, 1),
            inceptions: INCEPTIONS
                .iter()
                .map(|(name, c, pool)| (Inception::new(&(p / *name), *c), *pool))
                .collect(),
        }
    }
}

impl ModuleT for GoogLeNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let pool3 = |x: &Tensor| x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        let x = pool3(&self.conv1.forward_t(xs, train));
        let mut x = pool3(
            &self
                .conv3
                .forward_t(&self.conv2.forward_t(&x, train), train),
        );
        for (module, pool) in &self.inceptions {
            x = module.forward_t(&x, train);
            x = match pool {
                Some(k) => x.max_pool2d([*k, *k], [2, 2], [0, 0], [1, 1], true),
                None => x,
            };
        }
        global_avg_pool(&x)
    }
}
