//! Data-path benchmark: P×K training batches of 224×224 crops (scaled to f32, NCHW) assembled from a memory-mapped decode cache of 256² images, crops/s with 1 and 2 threads.
//!
//! `cargo bench -p dml-datasets --bench crops` (`-- --threads 1,2,4 --batches N`).
//! For each train crop (`random`, the default, with flips; `random_resized`), batches of
//! 120 (P20×K6) are filled on a rayon pool of T threads, as the train stage's loader
//! does; prints crops/s and crops/s per thread (best of 3 passes, the machine being shared).

use std::time::Instant;

use dml_datasets::synthetic::{encode_jpeg, render_scene};
use dml_datasets::{
    assemble_batch_into, Augment, AugmentPolicy, DecodeCache, InputScaling, TrainCrop,
};
use rayon::prelude::*;

const SIZE: u32 = 256;
const CROP: u32 = 224;
const BATCH: usize = 120;
const IMAGES: usize = 240;

fn main() {
    let mut threads: Vec<usize> = vec![1, 2];
    let mut batches = 40usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|t| t.parse().ok())
                    .collect()
            }
            "--batches" => batches = args.next().and_then(|v| v.parse().ok()).unwrap_or(40),
            _ => {} // cargo passes --bench
        }
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<String> = (0..IMAGES)
        .into_par_iter()
        .map(|i| {
            let img = render_scene(320, 240, i as u64, 2.5);
            let bytes = encode_jpeg(&img, 90).unwrap_or_else(|e| panic!("{e}"));
            let name = format!("img_{i:04}.jpg");
            std::fs::write(images.join(&name), bytes).unwrap_or_else(|e| panic!("{e}"));
            name
        })
        .collect();
    let cache_dir = dir.path().join("cache");
    DecodeCache::build(&images, &paths, SIZE, &cache_dir, false).unwrap_or_else(|e| panic!("{e}"));
    let cache = DecodeCache::open(&cache_dir).unwrap_or_else(|e| panic!("{e}"));
    let per = 3 * (CROP * CROP) as usize;
    println!(
        "decode cache: {IMAGES} images at {SIZE}²; batches of {BATCH} crops of {CROP}² (f32 NCHW), {batches} batches per pass"
    );
    for crop in [TrainCrop::Random, TrainCrop::RandomResized] {
        let policy = AugmentPolicy {
            crop,
            ..AugmentPolicy::default()
        };
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap_or_else(|e| panic!("pool: {e}"));
            let mut out = vec![0f32; BATCH * per];
            let mut pass = || {
                let started = Instant::now();
                for step in 0..batches as u64 {
                    let ids: Vec<usize> = (0..BATCH)
                        .map(|s| (s * 7 + step as usize * 13) % IMAGES)
                        .collect();
                    let aug = Augment::Train {
                        seed: 0,
                        step,
                        policy,
                    };
                    pool.install(|| {
                        assemble_batch_into(
                            &cache,
                            &ids,
                            CROP,
                            aug,
                            InputScaling::ImagenetMeanStd,
                            &mut out,
                            true,
                        )
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
                    std::hint::black_box(&out);
                }
                (batches * BATCH) as f64 / started.elapsed().as_secs_f64()
            };
            pass();
            let best = (0..3).map(|_| pass()).fold(0.0, f64::max);
            println!(
                "{:<15} {t} thread(s): {best:>8.0} crops/s, {:>6.0} per thread",
                format!("{crop:?}"),
                best / t as f64
            );
        }
    }
}
