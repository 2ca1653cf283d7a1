//! Decoding and resizing tests: formats, broken files, Pillow's bilinear weights, header-only dims.

use super::*;
use crate::synthetic::{encode_jpeg, encode_png, render_scene};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

#[test]
fn png_decodes_exactly_and_jpeg_closely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = render_scene(40, 30, 3, 0.0);
    let png = write(dir.path(), "a.png", &encode_png(&img).expect("png"));
    assert_eq!(decode(&png).expect("decode png"), img);
    let jpg = write(dir.path(), "a.jpg", &encode_jpeg(&img, 95).expect("jpeg"));
    let back = decode(&jpg).expect("decode jpeg");
    assert_eq!((back.width, back.height), (40, 30));
    let mean_err: f64 = back
        .data
        .iter()
        .zip(&img.data)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .sum::<f64>()
        / img.data.len() as f64;
    assert!(mean_err < 6.0, "mean abs error {mean_err}");
    assert_eq!(image_dims(&jpg).expect("dims"), (40, 30));
    assert_eq!(image_dims(&png).expect("dims"), (40, 30));
}

#[test]
fn grey_png_becomes_rgb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grey = image::GrayImage::from_raw(2, 1, vec![10, 200]).expect("buffer");
    let p = dir.path().join("g.png");
    grey.save(&p).expect("save");
    let img = decode(&p).expect("decode");
    assert_eq!(img.data, vec![10, 10, 10, 200, 200, 200]);
}

#[test]
fn truncated_jpeg_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = render_scene(64, 64, 1, 4.0);
    let bytes = encode_jpeg(&img, 90).expect("jpeg");
    assert!(jpeg_is_complete(&bytes));
    let cut = &bytes[..bytes.len() * 2 / 3];
    assert!(!jpeg_is_complete(cut));
    let p = write(dir.path(), "cut.jpg", cut);
    let err = decode(&p).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::Decode { .. }), "{msg}");
    assert!(msg.contains("cut.jpg"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn unreadable_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "text.jpg", b"this is not an image");
    assert!(decode(&p)
        .unwrap_err()
        .to_string()
        .contains("unknown signature"));
    let p = write(dir.path(), "empty.png", b"");
    assert!(decode(&p).unwrap_err().to_string().contains("empty"));
    let p = write(dir.path(), "bad.png", b"\x89PNG\r\n\x1a\nnonsense");
    let err = decode(&p).unwrap_err();
    assert!(err.to_string().contains("bad.png"), "{err}");
    let err = decode(&dir.path().join("absent.jpg")).unwrap_err();
    assert!(matches!(err, DatasetError::Io { .. }), "{err}");
    assert!(image_dims(&dir.path().join("absent.jpg")).is_err());
}

#[test]
fn resize_uses_pillow_bilinear_weights() {
    // 4×1 → 2×1: Pillow's support-scaled triangle filter gives weights
    // (0.75, 0.75, 0.25)/1.75 for output 0 and (0.25, 0.75, 0.75)/1.75 for output 1.
    let row = [0u8, 100, 200, 250];
    let src = Rgb8Image {
        width: 4,
        height: 1,
        data: row.iter().flat_map(|&v| [v, v, v]).collect(),
    };
    let out = resize_rgb(&src, 2, 1).expect("resize");
    let expect = [
        (100.0 * 0.75 + 200.0 * 0.25) / 1.75,
        (100.0 * 0.25 + 200.0 * 0.75 + 250.0 * 0.75) / 1.75,
    ];
    for (i, e) in expect.iter().enumerate() {
        let got = f64::from(out.data[i * 3]);
        assert!((got - e).abs() <= 1.0, "pixel {i}: {got} vs {e}");
    }
}

#[test]
fn resize_keeps_flat_images_flat_and_identity_is_exact() {
    let src = Rgb8Image {
        width: 37,
        height: 23,
        data: [12u8, 130, 250].repeat(37 * 23),
    };
    let out = resize_rgb(&src, 16, 16).expect("resize");
    assert!(out.data.chunks(3).all(|p| p == [12, 130, 250]));
    let up = resize_rgb(&src, 64, 64).expect("resize");
    assert!(up.data.chunks(3).all(|p| p == [12, 130, 250]));
    let scene = render_scene(20, 20, 9, 3.0);
    assert_eq!(resize_rgb(&scene, 20, 20).expect("resize"), scene);
    assert!(resize_rgb(&scene, 0, 20).is_err());
}

#[test]
fn load_resized_gives_square_hwc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "s.png",
        &encode_png(&render_scene(50, 30, 2, 1.0)).expect("png"),
    );
    let px = load_resized(&p, 16).expect("load");
    assert_eq!(px.len(), 16 * 16 * 3);
}

#[test]
fn dims_skip_segments_and_reject_cut_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jpeg = encode_jpeg(&render_scene(33, 17, 4, 1.0), 90).expect("jpeg");
    // insert an APP1 segment whose payload looks like a start-of-frame of another size
    let mut with_app = vec![
        0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x0B, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0x00, 0x02, 0x00,
    ];
    with_app.extend_from_slice(&jpeg[2..]);
    let p = write(dir.path(), "app.jpg", &with_app);
    assert_eq!(image_dims(&p).expect("dims"), (33, 17));
    assert_eq!(decode(&p).expect("decode").width, 33);

    let p = write(dir.path(), "head.jpg", &jpeg[..12]);
    let err = image_dims(&p).unwrap_err();
    assert!(
        err.to_string().contains("truncated") && err.to_string().contains("head.jpg"),
        "{err}"
    );
    let p = write(dir.path(), "junk.png", b"definitely not an image");
    assert!(image_dims(&p)
        .unwrap_err()
        .to_string()
        .contains("unknown signature"));
    let png = encode_png(&render_scene(7, 300, 1, 0.0)).expect("png");
    let p = write(dir.path(), "tall.png", &png);
    assert_eq!(image_dims(&p).expect("dims"), (7, 300));
    // Cut after the header: the dimensions are readable, but the file is truncated.
    let p = write(dir.path(), "cut.png", &png[..24]);
    let err = image_dims(&p).unwrap_err().to_string();
    assert!(err.contains("truncated") && err.contains("IEND"), "{err}");
    let p = write(dir.path(), "cut.jpg", &jpeg[..jpeg.len() * 2 / 3]);
    let err = image_dims(&p).unwrap_err().to_string();
    assert!(
        err.contains("truncated") && err.contains("end-of-image"),
        "{err}"
    );
    // A few bytes a camera appended after the end marker are fine.
    let mut trailer = jpeg.clone();
    trailer.extend_from_slice(&[0u8; 100]);
    let p = write(dir.path(), "trailer.jpg", &trailer);
    assert_eq!(image_dims(&p).expect("dims"), (33, 17));
}
