//! Generates the synthetic set and a contact sheet to look at it.
//!
//! `cargo run --release -p dml-datasets --example synthetic -- OUT_DIR [CLASSES IMAGES SIZE SEED]`
//! writes the set under `OUT_DIR/data`, prints the time taken, and writes
//! `OUT_DIR/contact_sheet.png` (first 12 classes in rows, first 8 images in columns).

use std::path::PathBuf;
use std::time::Instant;

use dml_datasets::synthetic::{encode_png, generate, SyntheticSpec};
use dml_datasets::{decode, Rgb8Image};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .ok_or("usage: synthetic OUT_DIR [CLASSES IMAGES SIZE SEED]")?,
    );
    let d = SyntheticSpec::default();
    let spec = SyntheticSpec {
        classes: arg(&args, 1, d.classes),
        images_per_class: arg(&args, 2, d.images_per_class),
        image_size: arg(&args, 3, d.image_size),
        seed: arg(&args, 4, d.seed),
        ..d
    };
    let data = out.join("data");
    let t = Instant::now();
    generate(&spec, &data)?;
    println!(
        "generated {} × {} images of {}px in {:.2} s under {}",
        spec.classes,
        spec.images_per_class,
        spec.image_size,
        t.elapsed().as_secs_f64(),
        data.display()
    );

    let (rows, cols) = (spec.classes.min(12), spec.images_per_class.min(8));
    let s = spec.image_size;
    let (w, h) = (cols * (s + 2), rows * (s + 2));
    let mut sheet = Rgb8Image {
        width: w,
        height: h,
        data: vec![255; (w * h * 3) as usize],
    };
    for r in 0..rows {
        for c in 0..cols {
            let img = decode(&data.join(spec.rel_path(r, c)))?;
            for y in 0..s {
                let src = (y * s * 3) as usize;
                let dst = (((r * (s + 2) + y) * w + c * (s + 2)) * 3) as usize;
                sheet.data[dst..dst + (s * 3) as usize]
                    .copy_from_slice(&img.data[src..src + (s * 3) as usize]);
            }
        }
    }
    let sheet_path = out.join("contact_sheet.png");
    std::fs::write(&sheet_path, encode_png(&sheet)?)?;
    println!("contact sheet: {}", sheet_path.display());
    Ok(())
}
