//! DenseNet-169 (torchvision layout: `features.{conv0,norm0}`, `features.denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}`, `features.transition{t}.{norm,conv}`, `features.norm5`).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{batch_norm, conv, global_avg_pool, relu_inplace};

const GROWTH: i64 = 32;
const BN_SIZE: i64 = 4;
const INIT_FEATURES: i64 = 64;
const BLOCKS_169: [usize; 4] = [6, 12, 32, 32];
/// Width of DenseNet-169's pooled features.
pub(crate) const FEATURES_169: i64 = 1664;

#[derive(Debug)]
struct DenseLayer {
    norm1: nn::BatchNorm,
    conv1: nn::Conv2D,
    norm2: nn::BatchNorm,
    conv2: nn::Conv2D,
}

impl DenseLayer {
    fn new(p: &nn::Path, c_in: i64) -> Self {
        DenseLayer {
            norm1: batch_norm(p / "norm1", c_in, 1e-5),
            conv1: conv(p / "conv1", c_in, BN_SIZE * GROWTH, 1, 1, 0),
            norm2: batch_norm(p / "norm2", BN_SIZE * GROWTH, 1e-5),
            conv2: conv(p / "conv2", BN_SIZE * GROWTH, GROWTH, 3, 1, 1),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = relu_inplace(xs.apply_t(&self.norm1, train)).apply(&self.conv1);
        relu_inplace(x.apply_t(&self.norm2, train)).apply(&self.conv2)
    }
}

#[derive(Debug)]
struct Transition {
    norm: nn::BatchNorm,
    conv: nn::Conv2D,
}

#[derive(Debug)]
struct Stage {
    layers: Vec<DenseLayer>,
    transition: Option<Transition>,
}

/// The torchvision DenseNet trunk, then ReLU and global average pooling as its `forward` does.
#[derive(Debug)]
pub(crate) struct DenseNet {
    conv0: nn::Conv2D,
    norm0: nn::BatchNorm,
    stages: Vec<Stage>,
    norm5: nn::BatchNorm,
}

impl DenseNet {
    pub(crate) fn densenet169(p: &nn::Path) -> Self {
        let f = p / "features";
        let conv0 = conv(&f / "conv0", 3, INIT_FEATURES, 7, 2, 3);
        let norm0 = batch_norm(&f / "norm0", INIT_FEATURES, 1e-5);
        let mut c = INIT_FEATURES;
        let mut stages = Vec::new();
        for (b, &n) in BLOCKS_169.iter().enumerate() {
            let bp = &f / format!("denseblock{}", b + 1);
            let layers = (0..n)
                .map(|l| {
                    DenseLayer::new(
                        &(&bp / format!("denselayer{}", l + 1)),
                        c + l as i64 * GROWTH,
                    )
                })
                .collect();
            c += n as i64 * GROWTH;
            let transition = (b + 1 < BLOCKS_169.len()).then(|| {
                let tp = &f / format!("transition{}", b + 1);
                let t = Transition {
                    norm: batch_norm(&tp / "norm", c, 1e-5),
                    conv: conv(&tp / "conv", c, c / 2, 1, 1, 0),
                };
                c /= 2;
                t
            });
            stages.push(Stage { layers, transition });
        }
        let norm5 = batch_norm(&f / "norm5", c, 1e-5);
        debug_assert_eq!(c, FEATURES_169);
        DenseNet {
            conv0,
            norm0,
            stages,
            norm5,
        }
    }
}

impl ModuleT for DenseNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = relu_inplace(xs.apply(&self.conv0).apply_t(&self.norm0, train)).max_pool2d(
            [3, 3],
            [2, 2],
            [1, 1],
            [1, 1],
            false,
        );
        for stage in &self.stages {
            let mut features = vec![x];
            for layer in &stage.layers {
                let input = Tensor::cat(&features, 1);
                features.push(layer.forward_t(&input, train));
            }
            x = Tensor::cat(&features, 1);
            if let Some(t) = &stage.transition {
                x = relu_inplace(x.apply_t(&t.norm, train))
                    .apply(&t.conv)
                    .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
            }
        }
        global_avg_pool(&relu_inplace(x.apply_t(&self.norm5, train)))
    }
}
