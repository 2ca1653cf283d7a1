//! Batch assembly: crop (random + flip for training, centre for test), scale to f32 and lay out NCHW.
//!
//! Training crops are drawn from `(seed, step, slot)` alone — never from a shared
//! generator — so a batch is identical whatever the number of threads or the order in
//! which slots are filled. The draw, a stable contract:
//!
//! ```text
//! key  = blake3("dml-augment-v1" ‖ seed u64 LE ‖ step u64 LE ‖ slot u64 LE)   (32 bytes)
//! rng  = ChaCha8Rng::from_seed(key)
//! x    = below(rng, S - C + 1);  y = below(rng, S - C + 1);  flip = next_u32(rng) & 1 == 1
//! below(rng, n): v = next_u32, rejected while v ≥ 2³² − (2³² mod n); returns v mod n
//! ```
//!
//! Test crops are centred at `((S - C) / 2, (S - C) / 2)`, rounded down, never flipped.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decode_cache::DecodeCache;
use crate::error::{DatasetError, Result};
use crate::stable_rng::below;

/// How to turn 0–255 pixel values into network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputScaling {
    /// Inception / TF-slim: `(x / 255 − 0.5) · 2`, in [−1, 1].
    Inception,
    /// DenseNet (seed): `x / 255`, in [0, 1].
    Unit,
    /// torchvision: `(x / 255 − mean) / std` with mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
    ImagenetMeanStd,
    /// ResNet, caffe / TF-slim `vgg_preprocessing` style: `x − (123.68, 116.78, 103.94)` (RGB order).
    ImagenetMean,
}

/// ImageNet channel means in [0, 1] (torchvision).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations in [0, 1] (torchvision).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// ImageNet channel means in 0–255 as TF-slim's `vgg_preprocessing` subtracts them.
pub const IMAGENET_MEAN_255: [f32; 3] = [123.68, 116.78, 103.94];

impl InputScaling {
    /// The input value of pixel value `x` in channel `c` (0 = R, 1 = G, 2 = B).
    pub fn apply(self, x: u8, c: usize) -> f32 {
        let x = f32::from(x);
        match self {
            InputScaling::Inception => (x / 255.0 - 0.5) * 2.0,
            InputScaling::Unit => x / 255.0,
            InputScaling::ImagenetMeanStd => (x / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c],
            InputScaling::ImagenetMean => x - IMAGENET_MEAN_255[c],
        }
    }

    /// `apply` tabulated for every value and channel.
    pub fn table(self) -> [[f32; 256]; 3] {
        let mut t = [[0f32; 256]; 3];
        for (c, row) in t.iter_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v = self.apply(x as u8, c);
            }
        }
        t
    }
}

/// Which crop to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Augment {
    /// Random crop and random horizontal flip, drawn from `(seed, step, slot)`.
    Train {
        /// Run seed.
        seed: u64,
        /// Training step (or any per-batch counter).
        step: u64,
    },
    /// Centre crop, no flip.
    Test,
}

/// Where to crop a `size`×`size` image and whether to mirror it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropParams {
    /// Left column of the crop.
    pub x: u32,
    /// Top row of the crop.
    pub y: u32,
    /// Mirror left–right.
    pub flip: bool,
}

impl Augment {
    /// The crop of batch slot `slot` for an image of `size`² and a crop of `crop`² (crop ≤ size).
    pub fn params(self, size: u32, crop: u32, slot: u64) -> CropParams {
        let room = size.saturating_sub(crop);
        match self {
            Augment::Test => CropParams {
                x: room / 2,
                y: room / 2,
                flip: false,
            },
            Augment::Train { seed, step } => {
                let mut h = blake3::Hasher::new();
                h.update(b"dml-augment-v1");
                h.update(&seed.to_le_bytes());
                h.update(&step.to_le_bytes());
                h.update(&slot.to_le_bytes());
                let mut rng = ChaCha8Rng::from_seed(*h.finalize().as_bytes());
                let x = below(&mut rng, room + 1);
                let y = below(&mut rng, room + 1);
                let flip = rng.next_u32() & 1 == 1;
                CropParams { x, y, flip }
            }
        }
    }
}

/// Crops `img` (`size`×`size`×3 HWC u8) at `p` into `out` (3×`crop`×`crop` CHW f32),
/// scaling with `table` (from [`InputScaling::table`]).
pub fn crop_into(
    img: &[u8],
    size: u32,
    crop: u32,
    p: CropParams,
    table: &[[f32; 256]; 3],
    out: &mut [f32],
) {
    let (s, c) = (size as usize, crop as usize);
    let plane = c * c;
    debug_assert_eq!(img.len(), s * s * 3);
    debug_assert_eq!(out.len(), 3 * plane);
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    for y in 0..c {
        let row_start = ((p.y as usize + y) * s + p.x as usize) * 3;
        let row = &img[row_start..row_start + c * 3];
        let o = y * c;
        let (r, g, b) = (
            &mut r_out[o..o + c],
            &mut g_out[o..o + c],
            &mut b_out[o..o + c],
        );
        if p.flip {
            for (x, px) in row.chunks_exact(3).rev().enumerate() {
                r[x] = table[0][px[0] as usize];
                g[x] = table[1][px[1] as usize];
                b[x] = table[2][px[2] as usize];
            }
        } else {
            for (x, px) in row.chunks_exact(3).enumerate() {
                r[x] = table[0][px[0] as usize];
                g[x] = table[1][px[1] as usize];
                b[x] = table[2][px[2] as usize];
            }
        }
    }
}

/// Assembles a batch from the decode cache: for each slot `i`, image `indices[i]`
/// cropped to `crop`² as `augment` says, scaled by `scaling`, laid out NCHW
/// (`indices.len() × 3 × crop × crop` f32, RGB channel order), filled in parallel.
///
/// Errors: `crop` is 0 or larger than the cache's image size (`image.crop`), an index
/// is out of range, or an index names an image that was skipped when the cache was built.
pub fn assemble_batch(
    cache: &DecodeCache,
    indices: &[usize],
    crop: u32,
    augment: Augment,
    scaling: InputScaling,
) -> Result<Vec<f32>> {
    let size = cache.size();
    if crop == 0 || crop > size {
        return Err(DatasetError::InvalidSetting {
            setting: "image.crop",
            value: crop.to_string(),
            reason: format!("must be between 1 and the decode cache's image size {size}"),
        });
    }
    let table = scaling.table();
    let per = 3 * crop as usize * crop as usize;
    let mut out = vec![0f32; indices.len() * per];
    out.par_chunks_mut(per)
        .zip(indices.par_iter())
        .enumerate()
        .try_for_each(|(slot, (dst, &idx))| {
            let img = cache.try_get(idx).ok_or_else(|| DatasetError::BatchImage {
                slot,
                reason: if idx >= cache.len() {
                    format!("image index {idx} is out of range (the decode cache holds {})", cache.len())
                } else {
                    format!(
                        "image {idx} (`{}`) was skipped when the decode cache was built; leave it out of the plan",
                        cache.path(idx).unwrap_or("?")
                    )
                },
            })?;
            let p = augment.params(size, crop, slot as u64);
            crop_into(img, size, crop, p, &table, dst);
            Ok(())
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests;
