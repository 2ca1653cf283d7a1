//! Batch assembly: crop (random, random-resized or centre, + optional flip, for training; centre for test), scale to f32 and lay out NCHW.
//!
//! Training crops are drawn from `(seed, step, slot)` alone — never from a shared
//! generator — so a batch is identical whatever the number of threads or the order in
//! which slots are filled. The draw, a stable contract:
//!
//! ```text
//! key  = blake3("dml-augment-v1" ‖ seed u64 LE ‖ step u64 LE ‖ slot u64 LE)   (32 bytes)
//! rng  = ChaCha8Rng::from_seed(key)
//! random (the default) and center:
//!   x = below(rng, S - C + 1);  y = below(rng, S - C + 1);  flip = next_u32(rng) & 1 == 1
//!   (center then replaces x, y by the centred offsets; flip = false unless image.flip)
//! random_resized (torchvision's RandomResizedCrop on the S×S image, then resized to C×C):
//!   up to 10 attempts: area = S² · uniform(scale); r = exp(uniform(ln ratio));
//!     w = round(√(area·r)), h = round(√(area/r)); accepted if 0 < w ≤ S and 0 < h ≤ S,
//!     then y = below(rng, S - h + 1), x = below(rng, S - w + 1);
//!   otherwise the centred crop of the whole image clamped to the ratio range;
//!   flip = next_u32(rng) & 1 == 1 after that
//! below(rng, n): v = next_u32, rejected while v ≥ 2³² − (2³² mod n); returns v mod n
//! uniform([a, b]): a + (b − a) · (next_u64 >> 11) · 2⁻⁵³
//! ```
//!
//! A random-resized region is resized to C×C with antialiased bilinear filtering
//! (Pillow's / torchvision's `antialias=True`). Test crops are centred at
//! `((S - C) / 2, (S - C) / 2)`, rounded down, never flipped.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::cell::RefCell;

use fast_image_resize as fr;

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
    /// OpenAI CLIP: `(x / 255 − mean) / std` with CLIP's mean and std.
    ClipMeanStd,
    /// BN-Inception's Caffe weights: `x − (128, 117, 104)` (RGB order; the network reverses
    /// the channels to the BGR its weights expect, whose means are (104, 117, 128)).
    BnInception,
}

/// OpenAI CLIP's channel means in [0, 1].
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's channel standard deviations in [0, 1].
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// ImageNet channel means in [0, 1] (torchvision).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations in [0, 1] (torchvision).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// BN-Inception's channel means in 0–255, RGB order (pretrainedmodels' BGR `[104, 117, 128]`).
pub const BN_INCEPTION_MEAN_255: [f32; 3] = [128.0, 117.0, 104.0];
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
            InputScaling::ClipMeanStd => (x / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c],
            InputScaling::BnInception => x - BN_INCEPTION_MEAN_255[c],
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

/// How training crops are placed (`image.train_crop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainCrop {
    /// A C×C window at a random offset (the seed's).
    #[default]
    Random,
    /// torchvision's `RandomResizedCrop`: a random area and aspect ratio, resized to C×C.
    RandomResized,
    /// The centred C×C window (flips still apply).
    Center,
}

/// `image.random_resized_scale` by default: torchvision's (0.08, 1.0) is for ImageNet
/// classification; 0.16 is the Metric Learning Reality Check's.
pub const DEFAULT_SCALE: [f64; 2] = [0.16, 1.0];
/// `image.random_resized_ratio` by default: torchvision's (3/4, 4/3).
pub const DEFAULT_RATIO: [f64; 2] = [3.0 / 4.0, 4.0 / 3.0];
/// Attempts at a random area and ratio before falling back to the centre, as torchvision.
const RESIZED_ATTEMPTS: usize = 10;

/// The training augmentation: which crop, whether to flip, and the random-resized ranges.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentPolicy {
    /// Where the crop comes from.
    pub crop: TrainCrop,
    /// Random horizontal flips (off for text, digits, logos…).
    pub flip: bool,
    /// Fraction of the image's area a random-resized crop covers, `[min, max]` in (0, 1].
    pub scale: [f64; 2],
    /// Aspect ratio (w/h) range of a random-resized crop, `[min, max]`, positive.
    pub ratio: [f64; 2],
}

impl Default for AugmentPolicy {
    fn default() -> Self {
        AugmentPolicy {
            crop: TrainCrop::Random,
            flip: true,
            scale: DEFAULT_SCALE,
            ratio: DEFAULT_RATIO,
        }
    }
}

impl AugmentPolicy {
    /// Checks the ranges (`0 < scale.0 ≤ scale.1 ≤ 1`, `0 < ratio.0 ≤ ratio.1`, finite).
    pub fn validate(&self) -> Result<()> {
        let [s0, s1] = self.scale;
        if !(s0.is_finite() && s1.is_finite() && 0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            return Err(DatasetError::InvalidSetting {
                setting: "image.random_resized_scale",
                value: format!("{:?}", self.scale),
                reason: "must be [min, max] with 0 < min ≤ max ≤ 1, e.g. [0.16, 1.0]".into(),
            });
        }
        let [r0, r1] = self.ratio;
        if !(r0.is_finite() && r1.is_finite() && 0.0 < r0 && r0 <= r1) {
            return Err(DatasetError::InvalidSetting {
                setting: "image.random_resized_ratio",
                value: format!("{:?}", self.ratio),
                reason: "must be [min, max] with 0 < min ≤ max, e.g. [0.75, 1.3333333]".into(),
            });
        }
        Ok(())
    }
}

/// Which crop to take.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Augment {
    /// A training crop as `policy` says, drawn from `(seed, step, slot)`.
    Train {
        /// Run seed.
        seed: u64,
        /// Training step (or any per-batch counter).
        step: u64,
        /// Crop kind, flips, ranges.
        policy: AugmentPolicy,
    },
    /// Centre crop, no flip.
    Test,
}

/// Where to crop a `size`×`size` image, how large a region, and whether to mirror it. The
/// region `w`×`h` at (`x`, `y`) is resized to the crop size when it differs from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CropParams {
    /// Left column of the region.
    pub x: u32,
    /// Top row of the region.
    pub y: u32,
    /// Width of the region.
    pub w: u32,
    /// Height of the region.
    pub h: u32,
    /// Mirror left–right.
    pub flip: bool,
}

/// Uniform in `[lo, hi]` from 53 random bits (see the module docs).
fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    lo + (hi - lo) * u
}

/// torchvision's `RandomResizedCrop.get_params` on a `size`² image: (x, y, w, h).
fn random_resized_region(
    rng: &mut ChaCha8Rng,
    size: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> (u32, u32, u32, u32) {
    let area = f64::from(size) * f64::from(size);
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..RESIZED_ATTEMPTS {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w >= 1.0 && h >= 1.0 && w <= f64::from(size) && h <= f64::from(size) {
            let (w, h) = (w as u32, h as u32);
            let y = below(rng, size - h + 1);
            let x = below(rng, size - w + 1);
            return (x, y, w, h);
        }
    }
    // Fallback: the whole (square) image, clamped to the ratio range, centred.
    let side = f64::from(size);
    let (w, h) = if 1.0 < ratio[0] {
        (side, (side / ratio[0]).round())
    } else if 1.0 > ratio[1] {
        ((side * ratio[1]).round(), side)
    } else {
        (side, side)
    };
    let (w, h) = ((w as u32).max(1), (h as u32).max(1));
    ((size - w) / 2, (size - h) / 2, w, h)
}

impl Augment {
    /// The crop of batch slot `slot` for an image of `size`² and a crop of `crop`² (crop ≤ size).
    pub fn params(self, size: u32, crop: u32, slot: u64) -> CropParams {
        let room = size.saturating_sub(crop);
        let centred = CropParams {
            x: room / 2,
            y: room / 2,
            w: crop,
            h: crop,
            flip: false,
        };
        match self {
            Augment::Test => centred,
            Augment::Train { seed, step, policy } => {
                let mut h = blake3::Hasher::new();
                h.update(b"dml-augment-v1");
                h.update(&seed.to_le_bytes());
                h.update(&step.to_le_bytes());
                h.update(&slot.to_le_bytes());
                let mut rng = ChaCha8Rng::from_seed(*h.finalize().as_bytes());
                let (x, y, w, h) = match policy.crop {
                    TrainCrop::Random | TrainCrop::Center => {
                        let x = below(&mut rng, room + 1);
                        let y = below(&mut rng, room + 1);
                        if policy.crop == TrainCrop::Center {
                            (centred.x, centred.y, crop, crop)
                        } else {
                            (x, y, crop, crop)
                        }
                    }
                    TrainCrop::RandomResized => {
                        random_resized_region(&mut rng, size, policy.scale, policy.ratio)
                    }
                };
                let flip = rng.next_u32() & 1 == 1 && policy.flip;
                CropParams { x, y, w, h, flip }
            }
        }
    }
}

thread_local! {
    /// Per-thread resizer and C×C×3 buffer for random-resized crops.
    static RESIZE: RefCell<(fr::Resizer, Vec<u8>)> = RefCell::new((fr::Resizer::new(), Vec::new()));
}

/// Copies `crop` rows of `crop` pixels from `img` (`stride` pixels per row) starting at
/// (`x`, `y`), mirrored if `flip`, scaled by `table`, into the three planes of `out`.
#[allow(clippy::too_many_arguments)]
fn scale_window(
    img: &[u8],
    stride: usize,
    x: usize,
    y: usize,
    crop: usize,
    flip: bool,
    table: &[[f32; 256]; 3],
    out: &mut [f32],
) {
    let plane = crop * crop;
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    for row_i in 0..crop {
        let row_start = ((y + row_i) * stride + x) * 3;
        let row = &img[row_start..row_start + crop * 3];
        let o = row_i * crop;
        let (r, g, b) = (
            &mut r_out[o..o + crop],
            &mut g_out[o..o + crop],
            &mut b_out[o..o + crop],
        );
        if flip {
            for (i, px) in row.chunks_exact(3).rev().enumerate() {
                r[i] = table[0][px[0] as usize];
                g[i] = table[1][px[1] as usize];
                b[i] = table[2][px[2] as usize];
            }
        } else {
            for (i, px) in row.chunks_exact(3).enumerate() {
                r[i] = table[0][px[0] as usize];
                g[i] = table[1][px[1] as usize];
                b[i] = table[2][px[2] as usize];
            }
        }
    }
}

/// Crops `img` (`size`×`size`×3 HWC u8) at `p` into `out` (3×`crop`×`crop` CHW f32),
/// scaling with `table` (from [`InputScaling::table`]); a region other than `crop`² is
/// first resized to `crop`² (antialiased bilinear).
///
/// Errors: the region does not lie inside the image.
pub fn crop_into(
    img: &[u8],
    size: u32,
    crop: u32,
    p: CropParams,
    table: &[[f32; 256]; 3],
    out: &mut [f32],
) -> Result<()> {
    let (s, c) = (size as usize, crop as usize);
    debug_assert_eq!(img.len(), s * s * 3);
    debug_assert_eq!(out.len(), 3 * c * c);
    let fail = |reason: String| DatasetError::InvalidSetting {
        setting: "image.train_crop",
        value: format!("{}×{} at ({}, {})", p.w, p.h, p.x, p.y),
        reason,
    };
    if p.w == 0 || p.h == 0 || p.x + p.w > size || p.y + p.h > size {
        return Err(fail(format!("the region is not inside the {size}² image")));
    }
    if p.w == crop && p.h == crop {
        scale_window(img, s, p.x as usize, p.y as usize, c, p.flip, table, out);
        return Ok(());
    }
    RESIZE.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (resizer, buf) = &mut *guard;
        buf.resize(c * c * 3, 0);
        let src = fr::images::ImageRef::new(size, size, img, fr::PixelType::U8x3)
            .map_err(|e| fail(e.to_string()))?;
        let mut dst = fr::images::Image::from_slice_u8(crop, crop, buf, fr::PixelType::U8x3)
            .map_err(|e| fail(e.to_string()))?;
        let options = fr::ResizeOptions::new()
            .crop(
                f64::from(p.x),
                f64::from(p.y),
                f64::from(p.w),
                f64::from(p.h),
            )
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| fail(e.to_string()))?;
        scale_window(buf, c, 0, 0, c, p.flip, table, out);
        Ok(())
    })
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
    let mut out = vec![0f32; indices.len() * 3 * crop as usize * crop as usize];
    assemble_batch_into(cache, indices, crop, augment, scaling, &mut out, true)?;
    Ok(out)
}

/// [`assemble_batch`] into `out` (exactly `indices.len() × 3 × crop × crop` values, e.g. a
/// pinned host tensor's memory), on the rayon pool if `parallel`, else on this thread (a
/// batch loader with one thread per batch). The values do not depend on `parallel`.
pub fn assemble_batch_into(
    cache: &DecodeCache,
    indices: &[usize],
    crop: u32,
    augment: Augment,
    scaling: InputScaling,
    out: &mut [f32],
    parallel: bool,
) -> Result<()> {
    let size = cache.size();
    if crop == 0 || crop > size {
        return Err(DatasetError::InvalidSetting {
            setting: "image.crop",
            value: crop.to_string(),
            reason: format!("must be between 1 and the decode cache's image size {size}"),
        });
    }
    if let Augment::Train { policy, .. } = augment {
        policy.validate()?;
    }
    let per = 3 * crop as usize * crop as usize;
    if out.len() != indices.len() * per {
        return Err(DatasetError::InvalidSetting {
            setting: "batch buffer",
            value: out.len().to_string(),
            reason: format!("must hold {} × 3 × {crop}² values", indices.len()),
        });
    }
    let table = scaling.table();
    let fill = |(slot, (dst, &idx)): (usize, (&mut [f32], &usize))| -> Result<()> {
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
        crop_into(img, size, crop, p, &table, dst)
    };
    if parallel {
        out.par_chunks_mut(per)
            .zip(indices.par_iter())
            .enumerate()
            .try_for_each(fill)
    } else {
        out.chunks_mut(per)
            .zip(indices.iter())
            .enumerate()
            .try_for_each(fill)
    }
}

#[cfg(test)]
mod tests;
