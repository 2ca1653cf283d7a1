//! Decode-cache tests: build/open round trip, batches from it, determinism across thread counts, bad files.

use super::*;
use crate::batch::{assemble_batch, Augment, AugmentPolicy, InputScaling};
use crate::imaging::{load_resized, Rgb8Image};
use crate::synthetic::{encode_jpeg, encode_png, render_scene};

/// An 8×8 PNG whose pixel (x, y) is `[x + 10·id, y, 255 − x]`: resizing to 8 is the identity.
fn ramp(id: u8) -> Rgb8Image {
    let mut data = Vec::new();
    for y in 0..8u8 {
        for x in 0..8u8 {
            data.extend_from_slice(&[x + 10 * id, y, 255 - x]);
        }
    }
    Rgb8Image {
        width: 8,
        height: 8,
        data,
    }
}

fn dataset() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for id in 0..3u8 {
        let rel = format!("c{id}/r.png");
        std::fs::create_dir_all(dir.path().join(format!("c{id}"))).expect("mkdir");
        std::fs::write(dir.path().join(&rel), encode_png(&ramp(id)).expect("png")).expect("write");
        paths.push(rel);
    }
    let rel = "c3/scene.jpg".to_string();
    std::fs::create_dir_all(dir.path().join("c3")).expect("mkdir");
    std::fs::write(
        dir.path().join(&rel),
        encode_jpeg(&render_scene(30, 20, 5, 2.0), 90).expect("jpeg"),
    )
    .expect("write");
    paths.push(rel);
    (dir, paths)
}

#[test]
fn build_open_and_get() {
    let (data, paths) = dataset();
    let out = tempfile::tempdir().expect("tempdir");
    let report = DecodeCache::build(data.path(), &paths, 8, out.path(), false).expect("build");
    assert_eq!(report.images, 4);
    assert!(report.skipped.is_empty());
    let cache = DecodeCache::open(out.path()).expect("open");
    assert_eq!(cache.len(), 4);
    assert_eq!(cache.size(), 8);
    assert_eq!(cache.paths(), &paths[..]);
    for (i, rel) in paths.iter().enumerate() {
        assert_eq!(
            cache.get(i),
            &load_resized(&data.path().join(rel), 8).expect("load")[..]
        );
        assert!(!cache.is_missing(i));
    }
    assert_eq!(cache.get(1), &ramp(1).data[..]);
    assert_eq!(
        std::fs::metadata(out.path().join(IMAGES_FILE))
            .expect("stat")
            .len(),
        4 * 8 * 8 * 3
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join(INDEX_FILE)).expect("read"))
            .expect("json");
    assert_eq!(index["count"], 4);
    assert_eq!(index["size"], 8);
    assert!(!out.path().join(format!("{IMAGES_FILE}.partial")).exists());
}

#[test]
fn test_batch_is_centre_crop_in_nchw() {
    let (data, paths) = dataset();
    let out = tempfile::tempdir().expect("tempdir");
    DecodeCache::build(data.path(), &paths, 8, out.path(), false).expect("build");
    let cache = DecodeCache::open(out.path()).expect("open");
    let batch =
        assemble_batch(&cache, &[2, 0], 4, Augment::Test, InputScaling::Unit).expect("batch");
    assert_eq!(batch.len(), 2 * 3 * 4 * 4);
    // slot 0 = image 2, crop at (2, 2): R(x, y) = x + 20, G = y, B = 255 − x
    let plane = 16;
    for y in 0..4 {
        for x in 0..4 {
            let (sx, sy) = (x + 2, y + 2);
            assert_eq!(batch[y * 4 + x], (sx + 20) as f32 / 255.0);
            assert_eq!(batch[plane + y * 4 + x], sy as f32 / 255.0);
            assert_eq!(batch[2 * plane + y * 4 + x], (255 - sx) as f32 / 255.0);
        }
    }
    // slot 1 = image 0
    assert_eq!(batch[3 * plane], 2.0 / 255.0);
}

#[test]
fn train_batches_do_not_depend_on_thread_count() {
    let (data, paths) = dataset();
    let out = tempfile::tempdir().expect("tempdir");
    DecodeCache::build(data.path(), &paths, 8, out.path(), false).expect("build");
    let cache = DecodeCache::open(out.path()).expect("open");
    let idx: Vec<usize> = (0..64).map(|i| i % 4).collect();
    let aug = Augment::Train {
        seed: 11,
        step: 2,
        policy: AugmentPolicy::default(),
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(|| {
                assemble_batch(&cache, &idx, 5, aug, InputScaling::Inception).expect("batch")
            })
    };
    let one = run(1);
    assert_eq!(one, run(3));
    assert_eq!(one, run(1));
    let other_step = assemble_batch(
        &cache,
        &idx,
        5,
        Augment::Train {
            seed: 11,
            step: 3,
            policy: AugmentPolicy::default(),
        },
        InputScaling::Inception,
    )
    .expect("batch");
    assert_ne!(one, other_step);
    // every slot's crop is one of the 16 offsets × 2 flips of its image
    let per = 3 * 25;
    let table = InputScaling::Inception.table();
    for (slot, &i) in idx.iter().enumerate() {
        let got = &one[slot * per..(slot + 1) * per];
        let p = aug.params(8, 5, slot as u64);
        let mut want = vec![0f32; per];
        crate::batch::crop_into(cache.get(i), 8, 5, p, &table, &mut want).expect("crop");
        assert_eq!(got, &want[..]);
    }
}

#[test]
fn bad_image_fails_the_build_or_is_skipped() {
    let (data, mut paths) = dataset();
    let good = std::fs::read(data.path().join("c3/scene.jpg")).expect("read");
    std::fs::write(data.path().join("c3/cut.jpg"), &good[..good.len() / 2]).expect("write");
    paths.insert(1, "c3/cut.jpg".into());

    let out = tempfile::tempdir().expect("tempdir");
    let err = DecodeCache::build(data.path(), &paths, 8, out.path(), false).unwrap_err();
    assert!(err.to_string().contains("cut.jpg"), "{err}");
    assert!(!out.path().join(INDEX_FILE).exists());
    assert!(!out.path().join(IMAGES_FILE).exists());
    assert!(!out.path().join(format!("{IMAGES_FILE}.partial")).exists());

    let report = DecodeCache::build(data.path(), &paths, 8, out.path(), true).expect("build");
    assert_eq!(report.images, 4);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, "c3/cut.jpg");
    assert!(
        report.skipped[0].1.contains("truncated"),
        "{}",
        report.skipped[0].1
    );
    let cache = DecodeCache::open(out.path()).expect("open");
    assert!(cache.is_missing(1));
    assert!(cache.try_get(1).is_none());
    assert!(cache.get(1).iter().all(|&b| b == 0));
    assert_eq!(cache.get(2), &ramp(1).data[..]);
    let err = assemble_batch(&cache, &[0, 1], 4, Augment::Test, InputScaling::Unit).unwrap_err();
    assert!(err.to_string().contains("skipped"), "{err}");
    assert!(err.to_string().contains("cut.jpg"), "{err}");
}

#[test]
fn batch_argument_errors() {
    let (data, paths) = dataset();
    let out = tempfile::tempdir().expect("tempdir");
    DecodeCache::build(data.path(), &paths, 8, out.path(), false).expect("build");
    let cache = DecodeCache::open(out.path()).expect("open");
    let err = assemble_batch(&cache, &[0, 9], 4, Augment::Test, InputScaling::Unit).unwrap_err();
    assert!(
        matches!(err, DatasetError::BatchImage { slot: 1, .. }),
        "{err}"
    );
    let err = assemble_batch(&cache, &[0], 9, Augment::Test, InputScaling::Unit).unwrap_err();
    assert!(err.to_string().contains("image.crop"), "{err}");
    assert!(
        assemble_batch(&cache, &[], 4, Augment::Test, InputScaling::Unit)
            .expect("empty")
            .is_empty()
    );
}

#[test]
fn open_rejects_inconsistent_files() {
    let (data, paths) = dataset();
    let out = tempfile::tempdir().expect("tempdir");
    DecodeCache::build(data.path(), &paths, 8, out.path(), false).expect("build");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(out.path().join(IMAGES_FILE))
        .expect("open");
    f.set_len(100).expect("truncate");
    let err = DecodeCache::open(out.path()).unwrap_err();
    assert!(matches!(err, DatasetError::CacheCorrupt { .. }), "{err}");
    std::fs::write(out.path().join(INDEX_FILE), b"{}").expect("write");
    assert!(matches!(
        DecodeCache::open(out.path()).unwrap_err(),
        DatasetError::CacheCorrupt { .. }
    ));
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        DecodeCache::open(empty.path()).unwrap_err(),
        DatasetError::Io { .. }
    ));
}

#[test]
fn empty_cache_builds_and_opens() {
    let out = tempfile::tempdir().expect("tempdir");
    let report = DecodeCache::build(out.path(), &[], 16, out.path(), false).expect("build");
    assert_eq!(report.images, 0);
    let cache = DecodeCache::open(out.path()).expect("open");
    assert!(cache.is_empty());
    assert!(DecodeCache::build(out.path(), &[], 0, out.path(), false).is_err());
}
