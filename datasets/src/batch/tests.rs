//! Batch tests: hand-checked crops and flips, scaling constants, determinism, errors.

use super::*;

/// A 4×4 image whose pixel (x, y) is `[10y + x, 100 + 10y + x, 200 + x]`.
fn tiny() -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..4u8 {
        for x in 0..4u8 {
            v.extend_from_slice(&[10 * y + x, 100 + 10 * y + x, 200 + x]);
        }
    }
    v
}

fn raw_table() -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for row in t.iter_mut() {
        for (x, v) in row.iter_mut().enumerate() {
            *v = x as f32;
        }
    }
    t
}

#[test]
fn crop_without_flip_by_hand() {
    let img = tiny();
    let mut out = vec![0f32; 3 * 2 * 2];
    crop_into(
        &img,
        4,
        2,
        CropParams {
            x: 1,
            y: 2,
            flip: false,
        },
        &raw_table(),
        &mut out,
    );
    // rows y = 2, 3; columns x = 1, 2
    assert_eq!(
        out,
        vec![
            21.0, 22.0, 31.0, 32.0, // R plane
            121.0, 122.0, 131.0, 132.0, // G plane
            201.0, 202.0, 201.0, 202.0, // B plane
        ]
    );
}

#[test]
fn crop_with_flip_by_hand() {
    let img = tiny();
    let mut out = vec![0f32; 3 * 3 * 3];
    crop_into(
        &img,
        4,
        3,
        CropParams {
            x: 0,
            y: 1,
            flip: true,
        },
        &raw_table(),
        &mut out,
    );
    // rows y = 1..4, columns 0..3 mirrored: x = 2, 1, 0
    let r: Vec<f32> = out[..9].to_vec();
    assert_eq!(
        r,
        vec![12.0, 11.0, 10.0, 22.0, 21.0, 20.0, 32.0, 31.0, 30.0]
    );
    assert_eq!(out[18..21].to_vec(), vec![202.0, 201.0, 200.0]);
}

#[test]
fn test_crop_is_centred_and_never_flipped() {
    assert_eq!(
        Augment::Test.params(256, 224, 5),
        CropParams {
            x: 16,
            y: 16,
            flip: false
        }
    );
    assert_eq!(
        Augment::Test.params(5, 2, 0),
        CropParams {
            x: 1,
            y: 1,
            flip: false
        }
    );
    assert_eq!(
        Augment::Test.params(4, 4, 0),
        CropParams {
            x: 0,
            y: 0,
            flip: false
        }
    );
}

#[test]
fn train_crops_are_deterministic_in_range_and_varied() {
    let a = Augment::Train { seed: 7, step: 3 };
    let mut flips = 0;
    let mut xs = std::collections::BTreeSet::new();
    for slot in 0..400 {
        let p = a.params(256, 224, slot);
        assert_eq!(p, a.params(256, 224, slot));
        assert!(p.x <= 32 && p.y <= 32);
        flips += usize::from(p.flip);
        xs.insert(p.x);
    }
    assert!((120..=280).contains(&flips), "flips {flips}");
    assert!(xs.len() > 25, "only {} distinct x offsets", xs.len());
    assert!(
        xs.contains(&0) && xs.contains(&32),
        "both extremes are reachable"
    );
    let other = Augment::Train { seed: 8, step: 3 };
    assert!((0..20).any(|s| a.params(256, 224, s) != other.params(256, 224, s)));
    let next = Augment::Train { seed: 7, step: 4 };
    assert!((0..20).any(|s| a.params(256, 224, s) != next.params(256, 224, s)));
}

#[test]
fn scaling_values() {
    let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
    assert!(close(InputScaling::Inception.apply(0, 0), -1.0));
    assert!(close(InputScaling::Inception.apply(255, 2), 1.0));
    assert!(close(InputScaling::Inception.apply(51, 1), -0.6));
    assert!(close(InputScaling::Unit.apply(51, 0), 0.2));
    assert!(close(
        InputScaling::ImagenetMeanStd.apply(0, 0),
        -0.485 / 0.229
    ));
    assert!(close(
        InputScaling::ImagenetMeanStd.apply(255, 2),
        (1.0 - 0.406) / 0.225
    ));
    assert!(close(InputScaling::ImagenetMean.apply(0, 0), -123.68));
    assert!(close(
        InputScaling::ImagenetMean.apply(200, 1),
        200.0 - 116.78
    ));
    assert!(close(
        InputScaling::ImagenetMean.apply(255, 2),
        255.0 - 103.94
    ));
    let t = InputScaling::ImagenetMeanStd.table();
    assert!(close(
        t[1][128],
        InputScaling::ImagenetMeanStd.apply(128, 1)
    ));
}

#[test]
fn scaling_names_in_settings() {
    let s: InputScaling = serde_json::from_str("\"imagenet_mean_std\"").expect("parse");
    assert_eq!(s, InputScaling::ImagenetMeanStd);
    assert_eq!(
        serde_json::to_string(&InputScaling::Inception).expect("json"),
        "\"inception\""
    );
}
