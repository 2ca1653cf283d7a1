//! The small CPU backbone: four conv3×3–BN–ReLU–maxpool blocks and global average pooling.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{batch_norm, conv, global_avg_pool, relu_inplace};

/// Channels of the four blocks.
pub(crate) const WIDTHS: [i64; 4] = [32, 64, 128, 256];
/// Width of the pooled features.
#[cfg(test)]
pub(crate) const FEATURES: i64 = WIDTHS[3];

#[derive(Debug)]
pub(crate) struct SmallCnn {
    blocks: Vec<(nn::Conv2D, nn::BatchNorm)>,
}

impl SmallCnn {
    pub(crate) fn new(p: &nn::Path) -> Self {
        let f = p / "features";
        let mut c_in = 3;
        let blocks = WIDTHS
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let block = f.sub(i);
                let layer = (
                    conv(&block / "conv", c_in, c, 3, 1, 1),
                    batch_norm(&block / "bn", c, 1e-5),
                );
                c_in = c;
                layer
            })
            .collect();
        SmallCnn { blocks }
    }
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for (c, bn) in &self.blocks {
            x = relu_inplace(x.apply(c).apply_t(bn, train)).max_pool2d(
                [2, 2],
                [2, 2],
                [0, 0],
                [1, 1],
                false,
            );
        }
        global_avg_pool(&x)
    }
}
