//! BN-Inception (Ioffe & Szegedy 2015) as Cadene's `pretrainedmodels.BNInception` (0.7.4), the network the deep-metric-learning papers start from: its flat tensor names (`conv1_7x7_s2`, `conv1_7x7_s2_bn`, `inception_3a_double_3x3_2_bn`, …); every unit a convolution with bias + batch norm (ε 1e-5, momentum 0.1) + ReLU; max pools with ceil mode; 3×3 average pools (padding counted) before the pool projections, a max pool in 5b; the reduction blocks 3c and 4e with stride-2 3×3 convolutions and a stride-2 max pool. The input is RGB like every dml backbone and is reversed to the BGR the Caffe weights expect; the features are globally average pooled (the reference's fixed 7×7 pool, which is global at 224 px only).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{global_avg_pool, relu_inplace};

/// Batch-norm ε of the reference (PyTorch's default).
const BN_EPS: f64 = 1e-5;

/// Convolution (with bias, PyTorch's default initialisation) + batch norm + ReLU, named
/// `{name}` and `{name}_bn` directly under the backbone, as the reference's flat names.
#[derive(Debug)]
struct Unit {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl Unit {
    fn new(p: &nn::Path, name: &str, c_in: i64, c_out: i64, k: i64, stride: i64) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding: k / 2,
            bias: true,
            ..Default::default()
        };
        let bn = nn::BatchNormConfig {
            eps: BN_EPS,
            momentum: 0.1,
            ws_init: nn::Init::Const(1.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        Unit {
            conv: nn::conv2d(p / name, c_in, c_out, k, cfg),
            bn: nn::batch_norm2d(p / format!("{name}_bn"), c_out, bn),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        relu_inplace(xs.apply(&self.conv).apply_t(&self.bn, train))
    }
}

/// The pooling branch of a block.
#[derive(Debug, Clone, Copy)]
enum PoolBranch {
    /// 3×3 stride-1 average pool (padding 1, counted) then the `pool_proj` unit.
    AvgProj(i64),
    /// 3×3 stride-1 max pool (padding 1) then the `pool_proj` unit (block 5b).
    MaxProj(i64),
    /// 3×3 stride-2 max pool, no projection (the reduction blocks 3c, 4e).
    MaxStride2,
}

/// One Inception block: `{n}_1x1` (absent in the reduction blocks), `{n}_3x3_reduce` →
/// `{n}_3x3`, `{n}_double_3x3_reduce` → `{n}_double_3x3_1` → `{n}_double_3x3_2`, and the pool
/// branch, concatenated in that order.
#[derive(Debug)]
struct Block {
    b1x1: Option<Unit>,
    b3x3: [Unit; 2],
    double: [Unit; 3],
    pool: PoolBranch,
    pool_proj: Option<Unit>,
}

/// (name, input channels, 1×1, 3×3 reduce, 3×3, double reduce, double 3×3, pool branch).
type BlockShape = (&'static str, i64, i64, i64, i64, i64, i64, PoolBranch);

/// The reference's blocks (a 1×1 width of 0: no 1×1 branch, the stride-2 reduction blocks).
const BLOCKS: [BlockShape; 10] = [
    (
        "inception_3a",
        192,
        64,
        64,
        64,
        64,
        96,
        PoolBranch::AvgProj(32),
    ),
    (
        "inception_3b",
        256,
        64,
        64,
        96,
        64,
        96,
        PoolBranch::AvgProj(64),
    ),
    (
        "inception_3c",
        320,
        0,
        128,
        160,
        64,
        96,
        PoolBranch::MaxStride2,
    ),
    (
        "inception_4a",
        576,
        224,
        64,
        96,
        96,
        128,
        PoolBranch::AvgProj(128),
    ),
    (
        "inception_4b",
        576,
        192,
        96,
        128,
        96,
        128,
        PoolBranch::AvgProj(128),
    ),
    (
        "inception_4c",
        576,
        160,
        128,
        160,
        128,
        160,
        PoolBranch::AvgProj(128),
    ),
    (
        "inception_4d",
        608,
        96,
        128,
        192,
        160,
        192,
        PoolBranch::AvgProj(128),
    ),
    (
        "inception_4e",
        608,
        0,
        128,
        192,
        192,
        256,
        PoolBranch::MaxStride2,
    ),
    (
        "inception_5a",
        1056,
        352,
        192,
        320,
        160,
        224,
        PoolBranch::AvgProj(128),
    ),
    (
        "inception_5b",
        1024,
        352,
        192,
        320,
        192,
        224,
        PoolBranch::MaxProj(128),
    ),
];

impl Block {
    fn new(p: &nn::Path, shape: &BlockShape) -> Self {
        let &(n, c_in, c1, c3r, c3, cdr, cd, pool) = shape;
        let stride = if matches!(pool, PoolBranch::MaxStride2) {
            2
        } else {
            1
        };
        let unit = |suffix: &str, c_in, c_out, k, stride| {
            Unit::new(p, &format!("{n}_{suffix}"), c_in, c_out, k, stride)
        };
        Block {
            b1x1: (c1 > 0).then(|| unit("1x1", c_in, c1, 1, 1)),
            b3x3: [
                unit("3x3_reduce", c_in, c3r, 1, 1),
                unit("3x3", c3r, c3, 3, stride),
            ],
            double: [
                unit("double_3x3_reduce", c_in, cdr, 1, 1),
                unit("double_3x3_1", cdr, cd, 3, 1),
                unit("double_3x3_2", cd, cd, 3, stride),
            ],
            pool,
            pool_proj: match pool {
                PoolBranch::AvgProj(c) | PoolBranch::MaxProj(c) => {
                    Some(unit("pool_proj", c_in, c, 1, 1))
                }
                PoolBranch::MaxStride2 => None,
            },
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut out = Vec::with_capacity(4);
        if let Some(u) = &self.b1x1 {
            out.push(u.forward_t(xs, train));
        }
        out.push(self.b3x3[1].forward_t(&self.b3x3[0].forward_t(xs, train), train));
        let d = self.double[0].forward_t(xs, train);
        let d = self.double[1].forward_t(&d, train);
        out.push(self.double[2].forward_t(&d, train));
        let pooled = match self.pool {
            PoolBranch::AvgProj(_) => xs.avg_pool2d([3, 3], [1, 1], [1, 1], true, true, None),
            PoolBranch::MaxProj(_) => xs.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], true),
            PoolBranch::MaxStride2 => xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true),
        };
        out.push(match &self.pool_proj {
            Some(u) => u.forward_t(&pooled, train),
            None => pooled,
        });
        Tensor::cat(&out, 1)
    }
}

/// The BN-Inception trunk up to the global average pool (1024 features).
#[derive(Debug)]
pub(crate) struct BnInception {
    conv1: Unit,
    conv2_reduce: Unit,
    conv2: Unit,
    blocks: Vec<Block>,
}

impl BnInception {
    pub(crate) fn new(p: &nn::Path) -> Self {
        BnInception {
            conv1: Unit::new(p, "conv1_7x7_s2", 3, 64, 7, 2),
            conv2_reduce: Unit::new(p, "conv2_3x3_reduce", 64, 64, 1, 1),
            conv2: Unit::new(p, "conv2_3x3", 64, 192, 3, 1),
            blocks: BLOCKS.iter().map(|b| Block::new(p, b)).collect(),
        }
    }
}

impl ModuleT for BnInception {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let pool = |x: &Tensor| x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], true);
        // RGB (dml's channel order) to the BGR the Caffe weights were trained on.
        let bgr = xs.flip([1]);
        let x = pool(&self.conv1.forward_t(&bgr, train));
        let x = self.conv2_reduce.forward_t(&x, train);
        let mut x = pool(&self.conv2.forward_t(&x, train));
        for block in &self.blocks {
            x = block.forward_t(&x, train);
        }
        global_avg_pool(&x)
    }
}
