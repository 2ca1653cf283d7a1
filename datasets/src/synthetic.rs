//! The built-in synthetic dataset: procedurally drawn object classes written as a folder per class.
//!
//! Each class is an object design drawn from `(seed, class)`: a **shape family**
//! (regular polygon with 3–8 sides, star, ring, cross, ellipse, crescent, arrow, or a
//! composite of two shapes) with its own proportions, a **colour scheme** of 2–3
//! colours, and a **texture** in the object's frame (solid with a rim, stripes, dots or
//! checker). Each image of the class draws the object with a random rotation, scale,
//! position and brightness on a random gradient background with 3–7 small distractor
//! shapes (sometimes one in front), plus per-pixel noise. Classes therefore differ in
//! combinations of shape, colour and texture, and no single cue (position, background,
//! colour alone) identifies them.
//!
//! [`generate`] writes `out_dir/class_XXXX/img_XXX.jpg` (or `.png`), one folder per class,
//! rendered in parallel. The output is a pure function of the [`SyntheticSpec`]: the
//! same spec gives byte-identical files (on the same platform and build; f32
//! trigonometry comes from the platform's libm). List it with
//! [`crate::DatasetKind::Folder`]; class ids there are the class indices.

use std::f32::consts::{PI, TAU};
use std::path::Path;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DatasetError, Result};
use crate::imaging::Rgb8Image;
use crate::raster::{arrow, cross, hsv, regular_polygon, star, Canvas, Placement, Shape};

/// File format of generated images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticFormat {
    /// JPEG, quality 90 (exercises the same decoder as real datasets).
    #[default]
    Jpeg,
    /// PNG (lossless).
    Png,
}

/// What to generate. The defaults (200 classes × 12 images of 64×64) suit a small CNN
/// trained for a couple of minutes on a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticSpec {
    /// Number of classes (folders `class_0000` …).
    pub classes: u32,
    /// Images per class.
    pub images_per_class: u32,
    /// Side of the square images, in pixels (at least 16).
    pub image_size: u32,
    /// Seed: the whole set is a function of the spec.
    pub seed: u64,
    /// File format.
    pub format: SyntheticFormat,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            classes: 200,
            images_per_class: 12,
            image_size: 64,
            seed: 0,
            format: SyntheticFormat::Jpeg,
        }
    }
}

impl SyntheticSpec {
    /// Relative path of image `index` of class `class` (`class_0007/img_003.jpg`).
    pub fn rel_path(&self, class: u32, index: u32) -> String {
        let ext = match self.format {
            SyntheticFormat::Jpeg => "jpg",
            SyntheticFormat::Png => "png",
        };
        format!("{}/img_{index:03}.{ext}", class_dir(class))
    }
}

fn class_dir(class: u32) -> String {
    format!("class_{class:04}")
}

/// A generator seeded from a domain tag and numbers, independent of any other draw.
fn rng_for(tag: &str, parts: &[u64]) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    for p in parts {
        h.update(&p.to_le_bytes());
    }
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Uniform f32 in `lo..hi`.
fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    let unit = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    lo + (hi - lo) * unit
}

/// Uniform integer in `lo..=hi`.
fn int(rng: &mut ChaCha8Rng, lo: u32, hi: u32) -> u32 {
    lo + crate::stable_rng::below(rng, hi - lo + 1)
}

/// The object's surface pattern, in its local frame.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Texture {
    Solid,
    Stripes { angle: f32, period: f32 },
    Dots { period: f32, radius: f32 },
    Checker { period: f32, angle: f32 },
}

/// One class's object design.
#[derive(Debug, Clone, PartialEq)]
struct ClassDesign {
    shape: Shape,
    colors: Vec<[f32; 3]>,
    texture: Texture,
    /// Draw a rim in the last colour (always for solid objects).
    rim: bool,
}

fn basic_shape(rng: &mut ChaCha8Rng, family: u32) -> Shape {
    match family {
        0 => {
            let n = int(rng, 3, 8) as usize;
            let stretch = uniform(rng, 0.7, 1.0);
            let pts = regular_polygon(n, uniform(rng, 0.0, TAU))
                .into_iter()
                .map(|[x, y]| [x, y * stretch])
                .collect();
            Shape::Polygon(pts)
        }
        1 => Shape::Polygon(star(int(rng, 4, 8) as usize, uniform(rng, 0.35, 0.6))),
        2 => Shape::Ring {
            rx: 1.0,
            ry: uniform(rng, 0.7, 1.0),
            inner: uniform(rng, 0.4, 0.7),
        },
        3 => Shape::Polygon(cross(uniform(rng, 0.22, 0.45))),
        4 => Shape::Ellipse {
            rx: 1.0,
            ry: uniform(rng, 0.45, 0.85),
        },
        5 => Shape::Crescent {
            cut: uniform(rng, 0.7, 0.9),
            offset: uniform(rng, 0.35, 0.6),
        },
        _ => Shape::Polygon(arrow(uniform(rng, 0.2, 0.35), uniform(rng, 0.1, 0.45))),
    }
}

fn scaled(shape: Shape, k: f32) -> Shape {
    match shape {
        Shape::Polygon(p) => Shape::Polygon(p.into_iter().map(|[x, y]| [x * k, y * k]).collect()),
        Shape::Ellipse { rx, ry } => Shape::Ellipse {
            rx: rx * k,
            ry: ry * k,
        },
        Shape::Ring { rx, ry, inner } => Shape::Ring {
            rx: rx * k,
            ry: ry * k,
            inner,
        },
        // crescents are only used unscaled
        other => other,
    }
}

fn design(seed: u64, class: u32) -> ClassDesign {
    let mut rng = rng_for("dml-synthetic-class-v1", &[seed, u64::from(class)]);
    let family = int(&mut rng, 0, 7);
    let shape = if family == 7 {
        // composite: two basic shapes side by side, overlapping
        let a = int(&mut rng, 0, 4);
        let b = int(&mut rng, 0, 4);
        let (sa, sb) = (uniform(&mut rng, 0.5, 0.65), uniform(&mut rng, 0.4, 0.6));
        let dir = uniform(&mut rng, 0.0, TAU);
        let d = uniform(&mut rng, 0.3, 0.45);
        Shape::Union(vec![
            (
                scaled(basic_shape(&mut rng, a), sa),
                [-d * dir.cos(), -d * dir.sin()],
            ),
            (
                scaled(basic_shape(&mut rng, b), sb),
                [d * dir.cos(), d * dir.sin()],
            ),
        ])
    } else {
        basic_shape(&mut rng, family)
    };
    let n_colors = int(&mut rng, 2, 3) as usize;
    let base_hue = uniform(&mut rng, 0.0, 1.0);
    let mut colors = Vec::with_capacity(n_colors);
    for i in 0..n_colors {
        // hues at least ~60° apart, saturation and value varied
        let hue = base_hue + i as f32 * uniform(&mut rng, 0.17, 0.5);
        let sat = uniform(&mut rng, 0.45, 1.0);
        let val = uniform(&mut rng, 0.35, 1.0);
        colors.push(hsv(hue, sat, val));
    }
    let texture = match int(&mut rng, 0, 3) {
        0 => Texture::Solid,
        1 => Texture::Stripes {
            angle: uniform(&mut rng, 0.0, PI),
            period: uniform(&mut rng, 0.25, 0.6),
        },
        2 => Texture::Dots {
            period: uniform(&mut rng, 0.3, 0.55),
            radius: uniform(&mut rng, 0.25, 0.4),
        },
        _ => Texture::Checker {
            period: uniform(&mut rng, 0.25, 0.5),
            angle: uniform(&mut rng, 0.0, PI / 2.0),
        },
    };
    let rim = texture == Texture::Solid || n_colors == 3;
    ClassDesign {
        shape,
        colors,
        texture,
        rim,
    }
}

impl ClassDesign {
    fn paint(&self, u: f32, v: f32, brightness: f32) -> [f32; 3] {
        let c = &self.colors;
        let rim_color = c[c.len() - 1];
        if self.rim && !self.shape.contains(u / 0.8, v / 0.8) {
            return rim_color.map(|x| x * brightness);
        }
        let second = match self.texture {
            Texture::Solid => false,
            Texture::Stripes { angle, period } => {
                ((u * angle.cos() + v * angle.sin()) / period)
                    .floor()
                    .rem_euclid(2.0)
                    >= 1.0
            }
            Texture::Dots { period, radius } => {
                let fu = (u / period).rem_euclid(1.0) - 0.5;
                let fv = (v / period).rem_euclid(1.0) - 0.5;
                fu * fu + fv * fv < radius * radius
            }
            Texture::Checker { period, angle } => {
                let (cs, sn) = (angle.cos(), angle.sin());
                let (a, b) = (u * cs + v * sn, -u * sn + v * cs);
                ((a / period).floor() + (b / period).floor()).rem_euclid(2.0) >= 1.0
            }
        };
        let base = if second { c[1] } else { c[0] };
        base.map(|x| x * brightness)
    }
}

fn random_distractor(rng: &mut ChaCha8Rng) -> Shape {
    match int(rng, 0, 3) {
        0 => Shape::Polygon(regular_polygon(
            int(rng, 3, 6) as usize,
            uniform(rng, 0.0, TAU),
        )),
        1 => Shape::Ellipse {
            rx: 1.0,
            ry: uniform(rng, 0.3, 1.0),
        },
        2 => Shape::Polygon(cross(uniform(rng, 0.15, 0.35))),
        _ => Shape::Polygon(vec![[-1.0, -0.15], [1.0, -0.15], [1.0, 0.15], [-1.0, 0.15]]),
    }
}

fn random_color(rng: &mut ChaCha8Rng) -> [f32; 3] {
    let (h, s, v) = (
        uniform(rng, 0.0, 1.0),
        uniform(rng, 0.1, 0.9),
        uniform(rng, 0.25, 0.95),
    );
    hsv(h, s, v)
}

/// Renders image `index` of a class design at `width`×`height`, `noise` = pixel noise
/// standard deviation (0–255 units).
fn render(
    design: &ClassDesign,
    width: u32,
    height: u32,
    mut rng: ChaCha8Rng,
    noise: f32,
) -> Vec<u8> {
    let side = width.min(height) as f32;
    let (w, h) = (width as f32, height as f32);
    // background: a gradient between two muted random colours
    let bg_a = random_color(&mut rng).map(|x| x * 0.8 + 20.0);
    let bg_b = random_color(&mut rng).map(|x| x * 0.8 + 20.0);
    let mut canvas = Canvas::gradient(width, height, bg_a, bg_b, uniform(&mut rng, 0.0, TAU));

    let clutter = int(&mut rng, 3, 7);
    let in_front = uniform(&mut rng, 0.0, 1.0) < 0.3;
    let mut distractors = Vec::with_capacity(clutter as usize);
    for _ in 0..clutter {
        let shape = random_distractor(&mut rng);
        let color = random_color(&mut rng);
        let place = Placement {
            cx: uniform(&mut rng, 0.0, w),
            cy: uniform(&mut rng, 0.0, h),
            scale: side * uniform(&mut rng, 0.05, 0.13),
            angle: uniform(&mut rng, 0.0, TAU),
        };
        distractors.push((shape, color, place));
    }
    let n_behind = if in_front {
        distractors.len() - 1
    } else {
        distractors.len()
    };
    for (shape, color, place) in &distractors[..n_behind] {
        canvas.fill(shape, *place, &|_, _| *color);
    }

    // the object
    let scale = side * uniform(&mut rng, 0.26, 0.40);
    let room = (side / 2.0 - scale).max(0.0) * 0.6 + side * 0.06;
    let place = Placement {
        cx: w / 2.0 + uniform(&mut rng, -room, room),
        cy: h / 2.0 + uniform(&mut rng, -room, room),
        scale,
        angle: uniform(&mut rng, 0.0, TAU),
    };
    let brightness = uniform(&mut rng, 0.8, 1.15);
    canvas.fill(&design.shape, place, &|u, v| design.paint(u, v, brightness));

    for (shape, color, place) in &distractors[n_behind..] {
        canvas.fill(shape, *place, &|_, _| *color);
    }

    // pixel noise: approximately normal (sum of three uniforms)
    if noise > 0.0 {
        for v in canvas.data.iter_mut() {
            let s = uniform(&mut rng, -1.0, 1.0)
                + uniform(&mut rng, -1.0, 1.0)
                + uniform(&mut rng, -1.0, 1.0);
            *v += s * noise;
        }
    }
    canvas.to_rgb8()
}

/// Standard deviation-ish of the pixel noise in the synthetic set (0–255 units).
const NOISE: f32 = 6.0;

/// Renders one image of the synthetic set in memory (what [`generate`] encodes).
pub fn render_image(spec: &SyntheticSpec, class: u32, index: u32) -> Rgb8Image {
    let d = design(spec.seed, class);
    let rng = rng_for(
        "dml-synthetic-image-v1",
        &[spec.seed, u64::from(class), u64::from(index)],
    );
    Rgb8Image {
        width: spec.image_size,
        height: spec.image_size,
        data: render(&d, spec.image_size, spec.image_size, rng, NOISE),
    }
}

/// A photo-like test scene of any size (gradient, clutter, a textured object, pixel
/// noise of standard deviation about `noise`), for benchmarks and tests.
pub fn render_scene(width: u32, height: u32, seed: u64, noise: f32) -> Rgb8Image {
    let d = design(seed, (seed % 1000) as u32);
    let rng = rng_for(
        "dml-synthetic-scene-v1",
        &[seed, u64::from(width), u64::from(height)],
    );
    Rgb8Image {
        width,
        height,
        data: render(&d, width, height, rng, noise),
    }
}

/// Encodes RGB8 pixels as JPEG with `quality` (1–100).
pub fn encode_jpeg(img: &Rgb8Image, quality: u8) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode(
            &img.data,
            img.width,
            img.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Encodes RGB8 pixels as PNG.
pub fn encode_png(img: &Rgb8Image) -> std::result::Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &img.data,
            img.width,
            img.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Writes the synthetic set described by `spec` under `out_dir` (created if needed;
/// existing files of the same names are overwritten). See the module docs.
pub fn generate(spec: &SyntheticSpec, out_dir: &Path) -> Result<()> {
    let bad = |setting: &'static str, value: u32, reason: &str| DatasetError::InvalidSetting {
        setting,
        value: value.to_string(),
        reason: reason.into(),
    };
    if spec.classes < 2 {
        return Err(bad(
            "synthetic.classes",
            spec.classes,
            "need at least 2 classes (a train and a test half)",
        ));
    }
    if spec.images_per_class < 2 {
        return Err(bad(
            "synthetic.images_per_class",
            spec.images_per_class,
            "need at least 2 images per class for positives to exist",
        ));
    }
    if !(16..=4096).contains(&spec.image_size) {
        return Err(bad(
            "synthetic.image_size",
            spec.image_size,
            "must be between 16 and 4096 pixels",
        ));
    }
    for c in 0..spec.classes {
        let dir = out_dir.join(class_dir(c));
        std::fs::create_dir_all(&dir).map_err(|e| DatasetError::io("creating folder", &dir, e))?;
    }
    let jobs: Vec<(u32, u32)> = (0..spec.classes)
        .flat_map(|c| (0..spec.images_per_class).map(move |i| (c, i)))
        .collect();
    let designs: Vec<ClassDesign> = (0..spec.classes)
        .into_par_iter()
        .map(|c| design(spec.seed, c))
        .collect();
    jobs.par_iter().try_for_each(|&(c, i)| {
        let path = out_dir.join(spec.rel_path(c, i));
        let rng = rng_for(
            "dml-synthetic-image-v1",
            &[spec.seed, u64::from(c), u64::from(i)],
        );
        let img = Rgb8Image {
            width: spec.image_size,
            height: spec.image_size,
            data: render(
                &designs[c as usize],
                spec.image_size,
                spec.image_size,
                rng,
                NOISE,
            ),
        };
        let bytes = match spec.format {
            SyntheticFormat::Jpeg => encode_jpeg(&img, 90),
            SyntheticFormat::Png => encode_png(&img),
        }
        .map_err(|reason| DatasetError::Encode {
            path: path.clone(),
            reason,
        })?;
        std::fs::write(&path, bytes).map_err(|e| DatasetError::io("writing", &path, e))
    })?;
    tracing::info!(
        classes = spec.classes,
        images = jobs.len(),
        dir = %out_dir.display(),
        "generated synthetic dataset"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
