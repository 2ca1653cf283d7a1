//! Decode benchmark: JPEG 500×375 → RGB → resize 256×256 (bilinear) → centre crop 224, images/s on one thread and on all, against Pillow.
//!
//! `cargo bench -p dml-datasets --bench decode` (after `eval "$(scripts/bootstrap.sh)"`,
//! so that `python3` is the project venv; Pillow is used if `import PIL` works there).
//! Environment: `DML_BENCH_IMAGES` (default 300), `DML_BENCH_PASSES` (default 5; best and median pass are reported, the machine being shared),
//! `DML_BENCH_NOISE` (pixel noise std. dev. in 0–255 units, default 2.5; more noise
//! means larger, slower-to-decode files: 2.5 gives ~33 KB, 8 gives ~80 KB per image).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dml_datasets::imaging::{decode, load_resized_into, resize_rgb};
use dml_datasets::synthetic::{encode_jpeg, render_scene};
use rayon::prelude::*;

const W: u32 = 500;
const H: u32 = 375;
const SIZE: u32 = 256;
const CROP: u32 = 224;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The crate's test-time path: decode, resize to SIZE², copy out the centred CROP² (HWC u8).
fn decode_resize_crop(path: &Path, resized: &mut [u8], out: &mut [u8]) {
    load_resized_into(path, SIZE, resized).unwrap_or_else(|e| panic!("{e}"));
    let off = ((SIZE - CROP) / 2) as usize;
    let (s, c) = (SIZE as usize, CROP as usize);
    for y in 0..c {
        let src = ((off + y) * s + off) * 3;
        out[y * c * 3..(y + 1) * c * 3].copy_from_slice(&resized[src..src + c * 3]);
    }
}

/// Images per second of each of `passes` timed passes (after one warm-up pass) in a
/// pool of `threads`, sorted fastest first.
fn measure(files: &[PathBuf], threads: usize, passes: usize) -> Vec<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("thread pool: {e}"));
    let run = || {
        pool.install(|| {
            files.par_iter().for_each_init(
                || {
                    (
                        vec![0u8; (SIZE * SIZE * 3) as usize],
                        vec![0u8; (CROP * CROP * 3) as usize],
                    )
                },
                |(resized, out), p| {
                    decode_resize_crop(p, resized, out);
                    std::hint::black_box(&out);
                },
            )
        })
    };
    run();
    let mut rates: Vec<f64> = (0..passes)
        .map(|_| {
            let t = Instant::now();
            run();
            files.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(|a, b| b.total_cmp(a));
    rates
}

fn summary(rates: &[f64]) -> String {
    format!(
        "best {:.1}, median {:.1}",
        rates.first().copied().unwrap_or(0.0),
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    )
}

/// Per-stage split on one thread (ms per image): decode, then resize, image by image.
fn breakdown(files: &[PathBuf]) -> (f64, f64) {
    let (mut dec, mut res) = (0.0, 0.0);
    for p in files {
        let t = Instant::now();
        let img = decode(p).unwrap_or_else(|e| panic!("{e}"));
        dec += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(resize_rgb(&img, SIZE, SIZE).unwrap_or_else(|e| panic!("{e}")));
        res += t.elapsed().as_secs_f64();
    }
    let n = files.len() as f64;
    (dec / n * 1e3, res / n * 1e3)
}

/// Pixel agreement of our crops with Pillow's on the first 10 files (JPEG decoder and
/// resampler differences together).
fn compare_with_pillow(dir: &Path, dump: &Path) {
    let Ok(theirs) = std::fs::read(dump) else {
        println!("pillow: no crops dumped; skipping the pixel comparison");
        return;
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "jpg"));
    names.sort();
    let crop = (CROP * CROP * 3) as usize;
    let mut resized = vec![0u8; (SIZE * SIZE * 3) as usize];
    let mut ours = vec![0u8; crop];
    let (mut sum, mut max, mut n) = (0u64, 0u8, 0usize);
    for (p, want) in names.iter().zip(theirs.chunks_exact(crop)) {
        decode_resize_crop(p, &mut resized, &mut ours);
        for (a, b) in ours.iter().zip(want) {
            let d = a.abs_diff(*b);
            sum += u64::from(d);
            max = max.max(d);
        }
        n += crop;
    }
    if n > 0 {
        println!(
            "pixels vs pillow ({} images): mean |diff| {:.3}, max {max} (0-255)",
            n / crop,
            sum as f64 / n as f64
        );
    }
}

/// Pillow's (best, median) images/s from scripts/bench_pillow.py.
fn pillow(dir: &Path, passes: usize) -> Option<(f64, f64)> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import PIL, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!(
            "pillow: `{python} -c 'import PIL, numpy'` failed; skipping the Pillow comparison"
        );
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_pillow.py");
    let dump = dir.join("pillow_crops.u8");
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .arg(passes.to_string())
        .arg(&dump)
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "pillow: {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    compare_with_pillow(dir, &dump);
    let field = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        field("pillow_images_per_s_best ")?,
        field("pillow_images_per_s_median ")?,
    ))
}

fn main() {
    let n = env_usize("DML_BENCH_IMAGES", 300);
    let passes = env_usize("DML_BENCH_PASSES", 5);
    let noise: f32 = std::env::var("DML_BENCH_NOISE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.5);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let t = Instant::now();
    let files: Vec<PathBuf> = (0..n)
        .into_par_iter()
        .map(|i| {
            // photo-like: gradient, clutter, a textured object, mild sensor noise
            let img = render_scene(W, H, i as u64, noise);
            let bytes = encode_jpeg(&img, 90).unwrap_or_else(|e| panic!("{e}"));
            let p = dir.path().join(format!("img_{i:04}.jpg"));
            std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
            p
        })
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "generated {n} JPEGs {W}x{H} q90, noise {noise} (mean {:.1} KB) in {:.2} s",
        bytes as f64 / n as f64 / 1024.0,
        t.elapsed().as_secs_f64()
    );

    let one = measure(&files, 1, passes);
    let (dec_ms, res_ms) = breakdown(&files);
    println!("rust per image, one thread: decode {dec_ms:.3} ms + resize {res_ms:.3} ms");
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let all = measure(&files, threads, passes);
    println!(
        "rust images/s, 1 thread ({passes} passes): {}",
        summary(&one)
    );
    println!(
        "rust images/s, {threads} threads ({passes} passes): {}",
        summary(&all)
    );
    if let Some((best, median)) = pillow(dir.path(), passes) {
        println!(
            "ratio rust/pillow per core: best {:.2}x, median {:.2}x",
            one[0] / best,
            one[one.len() / 2] / median
        );
    }
}
