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

fn train(seed: u64, step: u64, policy: AugmentPolicy) -> Augment {
    Augment::Train { seed, step, policy }
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
            w: 2,
            h: 2,
            flip: false,
        },
        &raw_table(),
        &mut out,
    )
    .expect("crop");
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
            w: 3,
            h: 3,
            flip: true,
        },
        &raw_table(),
        &mut out,
    )
    .expect("crop");
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
            w: 224,
            h: 224,
            flip: false
        }
    );
    assert_eq!(
        Augment::Test.params(5, 2, 0),
        CropParams {
            x: 1,
            y: 1,
            w: 2,
            h: 2,
            flip: false
        }
    );
    assert_eq!(
        Augment::Test.params(4, 4, 0),
        CropParams {
            x: 0,
            y: 0,
            w: 4,
            h: 4,
            flip: false
        }
    );
}

#[test]
fn train_crops_are_deterministic_in_range_and_varied() {
    let a = train(7, 3, AugmentPolicy::default());
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
    let other = train(8, 3, AugmentPolicy::default());
    assert!((0..20).any(|s| a.params(256, 224, s) != other.params(256, 224, s)));
    let next = train(7, 4, AugmentPolicy::default());
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
    // BN-Inception: x − mean in 0..255, RGB means (128, 117, 104) (BGR (104, 117, 128)).
    assert!(close(InputScaling::BnInception.apply(0, 0), -128.0));
    assert!(close(InputScaling::BnInception.apply(200, 1), 83.0));
    assert!(close(InputScaling::BnInception.apply(255, 2), 151.0));
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

#[test]
fn the_default_policy_keeps_the_v1_draws() {
    // Offsets and flips of the seed's augmentation, pinned: the default policy must not move them.
    let a = train(7, 3, AugmentPolicy::default());
    let got: Vec<(u32, u32, bool)> = (0..4)
        .map(|s| {
            let p = a.params(256, 224, s);
            (p.x, p.y, p.flip)
        })
        .collect();
    let mut want = Vec::new();
    for slot in 0..4u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"dml-augment-v1");
        h.update(&7u64.to_le_bytes());
        h.update(&3u64.to_le_bytes());
        h.update(&slot.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(*h.finalize().as_bytes());
        let x = below(&mut rng, 33);
        let y = below(&mut rng, 33);
        want.push((x, y, rng.next_u32() & 1 == 1));
    }
    assert_eq!(got, want);
}

#[test]
fn flip_off_and_center_keep_the_other_draws() {
    let on = AugmentPolicy::default();
    let off = AugmentPolicy { flip: false, ..on };
    let center = AugmentPolicy {
        crop: TrainCrop::Center,
        ..on
    };
    let mut flipped = 0;
    for slot in 0..64 {
        let a = train(1, 2, on).params(256, 224, slot);
        let b = train(1, 2, off).params(256, 224, slot);
        let c = train(1, 2, center).params(256, 224, slot);
        assert_eq!((a.x, a.y), (b.x, b.y));
        assert!(!b.flip);
        assert_eq!((c.x, c.y, c.w, c.h, c.flip), (16, 16, 224, 224, a.flip));
        flipped += usize::from(a.flip);
    }
    assert!(flipped > 10 && flipped < 54, "{flipped}");
}

#[test]
fn random_resized_regions_respect_scale_ratio_and_bounds() {
    let policy = AugmentPolicy {
        crop: TrainCrop::RandomResized,
        ..AugmentPolicy::default()
    };
    let (mut small, mut wide, mut tall, mut flips) = (0, 0, 0, 0);
    let size = 256u32;
    let area = f64::from(size * size);
    for slot in 0..2000 {
        let a = train(5, 9, policy);
        let p = a.params(size, 224, slot);
        assert_eq!(p, a.params(size, 224, slot), "deterministic");
        assert!(
            p.w >= 1 && p.h >= 1 && p.x + p.w <= size && p.y + p.h <= size,
            "{p:?}"
        );
        let frac = f64::from(p.w * p.h) / area;
        let ratio = f64::from(p.w) / f64::from(p.h);
        // rounding w and h to whole pixels moves area and ratio a little past the bounds
        assert!(frac > 0.16 * 0.97 && frac <= 1.0, "area fraction {frac}");
        assert!(
            ratio > 0.75 * 0.98 && ratio < 4.0 / 3.0 * 1.02,
            "ratio {ratio}"
        );
        small += usize::from(frac < 0.3);
        wide += usize::from(ratio > 1.2);
        tall += usize::from(ratio < 0.8);
        flips += usize::from(p.flip);
    }
    assert!(
        small > 100 && wide > 100 && tall > 100,
        "{small} {wide} {tall}"
    );
    assert!((800..1200).contains(&flips), "{flips}");
    // a ratio range the square image cannot meet at full size falls back to the centre
    let narrow = AugmentPolicy {
        crop: TrainCrop::RandomResized,
        scale: [1.0, 1.0],
        ratio: [2.0, 2.0],
        ..AugmentPolicy::default()
    };
    let p = train(0, 0, narrow).params(100, 50, 0);
    assert_eq!((p.x, p.y, p.w, p.h), (0, 25, 100, 50));
}

#[test]
fn random_resized_crop_resizes_the_region() {
    // A 8×8 image whose left half is 0 and right half 200: the region x 2..6 (a 4×4 window
    // across the edge) resized to 2×2 gives dark left and bright right columns.
    let mut img = vec![0u8; 8 * 8 * 3];
    for y in 0..8 {
        for x in 4..8 {
            img[(y * 8 + x) * 3..(y * 8 + x) * 3 + 3].copy_from_slice(&[200, 200, 200]);
        }
    }
    let mut out = vec![0f32; 3 * 2 * 2];
    let p = CropParams {
        x: 2,
        y: 2,
        w: 4,
        h: 4,
        flip: false,
    };
    crop_into(&img, 8, 2, p, &raw_table(), &mut out).expect("crop");
    assert!(out[0] < 40.0 && out[1] > 160.0, "{out:?}");
    assert_eq!(out[0], out[2]);
    let mut mirrored = vec![0f32; 3 * 2 * 2];
    crop_into(
        &img,
        8,
        2,
        CropParams { flip: true, ..p },
        &raw_table(),
        &mut mirrored,
    )
    .expect("crop");
    assert_eq!((mirrored[0], mirrored[1]), (out[1], out[0]));
    let outside = CropParams { x: 6, ..p };
    assert!(crop_into(&img, 8, 2, outside, &raw_table(), &mut out).is_err());
}

#[test]
fn policies_with_bad_ranges_are_refused() {
    let bad = AugmentPolicy {
        scale: [0.5, 0.2],
        ..AugmentPolicy::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("random_resized_scale"), "{err}");
    let bad = AugmentPolicy {
        ratio: [0.0, 1.0],
        ..AugmentPolicy::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("random_resized_ratio"));
    assert!(AugmentPolicy::default().validate().is_ok());
}
