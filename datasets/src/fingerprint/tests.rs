//! Fingerprint and stat-cache tests: the documented formula, cache hits, the racy rule, in-place edits.

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use super::*;

/// Ten seconds: moves the recording clock past the racy window.
const LATER: i64 = 10_000_000_000;

fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (rel, content) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    dir
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .expect("stat")
        .modified()
        .expect("mtime")
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(t)
        .expect("set mtime");
}

#[test]
fn hash_follows_the_documented_formula() {
    let dir = tree(&[("a.txt", b"hello"), ("sub/b.bin", &[0, 1, 2])]);
    let mut cache = StatCache::new();
    let fp = fingerprint(
        dir.path(),
        &strings(&["sub/b.bin", "a.txt", "a.txt"]),
        &mut cache,
    )
    .expect("fingerprint");

    let mut h = blake3::Hasher::new();
    h.update(b"dml-dataset-fingerprint-v1\0");
    for (path, content) in [("a.txt", &b"hello"[..]), ("sub/b.bin", &[0u8, 1, 2][..])] {
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(&(content.len() as u64).to_le_bytes());
        h.update(blake3::hash(content).as_bytes());
    }
    assert_eq!(fp.hash, h.finalize().to_hex().to_string());
    assert_eq!(
        fp.files,
        vec![
            FileDigest {
                path: "a.txt".into(),
                size: 5,
                blake3: blake3::hash(b"hello").to_hex().to_string()
            },
            FileDigest {
                path: "sub/b.bin".into(),
                size: 3,
                blake3: blake3::hash(&[0, 1, 2]).to_hex().to_string()
            },
        ]
    );
    assert_eq!(fp.stats.hashed_files, 2);
    assert_eq!(fp.stats.hashed_bytes, 8);
    assert_eq!(cache.len(), 2);
}

#[test]
fn content_decides_not_names_order_or_stat() {
    let a = tree(&[("x", b"one"), ("y", b"two")]);
    let b = tree(&[("y", b"two"), ("x", b"one")]);
    let fa = fingerprint(a.path(), &strings(&["x", "y"]), &mut StatCache::new()).expect("fp");
    let fb = fingerprint(b.path(), &strings(&["y", "x"]), &mut StatCache::new()).expect("fp");
    assert_eq!(
        fa.hash, fb.hash,
        "same content in another folder, other order"
    );
    let c = tree(&[("x", b"one"), ("y", b"twO")]);
    let fc = fingerprint(c.path(), &strings(&["x", "y"]), &mut StatCache::new()).expect("fp");
    assert_ne!(fa.hash, fc.hash);
    let d = tree(&[("x", b"one"), ("z", b"two")]);
    let fd = fingerprint(d.path(), &strings(&["x", "z"]), &mut StatCache::new()).expect("fp");
    assert_ne!(fa.hash, fd.hash, "a renamed file changes the fingerprint");
}

#[test]
fn unchanged_files_come_from_the_cache() {
    let dir = tree(&[("a", b"aaaa"), ("b", b"bbbb")]);
    let paths = strings(&["a", "b"]);
    let mut cache = StatCache::new();
    let t = now_ns() + LATER;
    let f1 = fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    assert_eq!(f1.stats.hashed_files, 2);
    let f2 = fingerprint_at(dir.path(), &paths, &mut cache, t + 1).expect("fp");
    assert_eq!(f2.stats.hashed_files, 0);
    assert_eq!(f2.stats.cache_hits, 2);
    assert_eq!(
        f1,
        Fingerprint {
            stats: f1.stats,
            ..f2
        }
    );
}

#[test]
fn a_trusted_entry_is_not_reread_and_a_racy_one_is() {
    let dir = tree(&[("a", b"real content")]);
    let paths = strings(&["a"]);
    let mut cache = StatCache::new();
    let t = now_ns() + LATER;
    let honest = fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    // Poison the cached hash: if the file were read again, the poison would not show.
    let poison = [7u8; 32];
    cache.entries.get_mut("a").expect("entry").hash = poison;
    let trusted = fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    assert_eq!(
        trusted.files[0].blake3,
        blake3::Hash::from_bytes(poison).to_hex().to_string()
    );
    assert_eq!(trusted.stats.hashed_files, 0);
    // The same entry recorded at the file's own mtime is racy: it is re-read.
    let e = cache.entries.get_mut("a").expect("entry");
    e.recorded_ns = e.mtime_ns.max(e.ctime_ns) + RACY_SLACK_NS / 2;
    let racy = fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    assert_eq!(racy.stats.hashed_files, 1);
    assert_eq!(racy.hash, honest.hash);
}

#[test]
fn freshly_written_files_are_rehashed_on_the_next_run() {
    let dir = tree(&[("a", b"x"), ("b", b"y")]);
    let paths = strings(&["a", "b"]);
    let mut cache = StatCache::new();
    let f1 = fingerprint(dir.path(), &paths, &mut cache).expect("fp");
    let f2 = fingerprint(dir.path(), &paths, &mut cache).expect("fp");
    assert_eq!(
        f2.stats.hashed_files, 2,
        "entries recorded within 2 s of the files' mtime are racy"
    );
    assert_eq!(f1.hash, f2.hash);
}

#[test]
fn touched_but_unchanged_gives_the_same_fingerprint() {
    let dir = tree(&[("a", b"content"), ("b", b"other")]);
    let paths = strings(&["a", "b"]);
    let mut cache = StatCache::new();
    let t = now_ns() + LATER;
    let f1 = fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    let p = dir.path().join("a");
    set_mtime(&p, mtime(&p) + Duration::from_secs(3));
    let f2 = fingerprint_at(dir.path(), &paths, &mut cache, t + LATER).expect("fp");
    assert_eq!(f2.stats.hashed_files, 1, "the touched file is re-read");
    assert_eq!(f1.hash, f2.hash);
}

fn overwrite_first_byte(path: &Path, byte: u8) {
    let mut f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.write_all(&[byte]).expect("write");
    f.sync_all().expect("sync");
}

#[test]
fn one_byte_changed_in_place_same_size_restored_mtime_is_seen() {
    let dir = tree(&[("a", b"abcdef"), ("b", b"other")]);
    let paths = strings(&["a", "b"]);
    let p = dir.path().join("a");
    let mut cache = StatCache::new();
    let t = now_ns() + LATER;
    let f1 = fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    let before = std::fs::metadata(&p).expect("stat");
    // let the (coarse) ctime clock move on, as it would between two real runs
    std::thread::sleep(Duration::from_millis(30));
    overwrite_first_byte(&p, b'X');
    set_mtime(&p, before.modified().expect("mtime"));
    let after = std::fs::metadata(&p).expect("stat");
    assert_eq!(after.len(), before.len());
    assert_eq!(
        after.modified().expect("mtime"),
        before.modified().expect("mtime")
    );
    let f2 = fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    assert_eq!(
        f2.stats.hashed_files, 1,
        "ctime differs, so the file is re-read"
    );
    assert_ne!(f1.hash, f2.hash);
    assert_eq!(
        f2.files[0].blake3,
        blake3::hash(b"Xbcdef").to_hex().to_string()
    );
}

#[test]
fn an_edit_right_after_hashing_is_seen_with_the_real_clock() {
    let dir = tree(&[("a", b"abcdef")]);
    let paths = strings(&["a"]);
    let p = dir.path().join("a");
    let mut cache = StatCache::new();
    let f1 = fingerprint(dir.path(), &paths, &mut cache).expect("fp");
    let m = mtime(&p);
    overwrite_first_byte(&p, b'Y');
    set_mtime(&p, m);
    let f2 = fingerprint(dir.path(), &paths, &mut cache).expect("fp");
    assert_ne!(f1.hash, f2.hash);
}

#[test]
fn a_missing_file_is_named() {
    let dir = tree(&[("a", b"x")]);
    let err = fingerprint(
        dir.path(),
        &strings(&["a", "gone.jpg"]),
        &mut StatCache::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("gone.jpg"), "{err}");
}

#[test]
fn a_large_file_is_streamed_to_the_same_hash() {
    let big: Vec<u8> = (0..(SMALL_FILE as usize + 12345))
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let dir = tree(&[("big.bin", &big)]);
    let fp = fingerprint(dir.path(), &strings(&["big.bin"]), &mut StatCache::new()).expect("fp");
    assert_eq!(fp.files[0].blake3, blake3::hash(&big).to_hex().to_string());
    assert_eq!(fp.files[0].size, big.len() as u64);
}

#[test]
fn cache_file_round_trip_and_noop_save() {
    let dir = tree(&[("a", b"1"), ("b/c", b"22")]);
    let paths = strings(&["a", "b/c"]);
    let mut cache = StatCache::new();
    let t = now_ns() + LATER;
    fingerprint_at(dir.path(), &paths, &mut cache, t).expect("fp");
    assert!(cache.is_dirty());
    let store = tempfile::tempdir().expect("tempdir");
    let file = store.path().join("sub/stat.cache");
    cache.save(&file).expect("save");
    assert!(!cache.is_dirty());
    let mut loaded = StatCache::load(&file).expect("load");
    assert_eq!(loaded.entries, cache.entries);
    assert!(!loaded.is_dirty());
    let f = fingerprint_at(dir.path(), &paths, &mut loaded, t).expect("fp");
    assert_eq!(f.stats.cache_hits, 2);
    assert!(!loaded.is_dirty(), "all hits: nothing to save");
    std::fs::remove_file(&file).expect("rm");
    loaded.save(&file).expect("save");
    assert!(
        file.is_file(),
        "a clean cache is still written where no file exists"
    );
    let names: Vec<_> = std::fs::read_dir(file.parent().expect("parent"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temp file left behind: {names:?}");
}

#[test]
fn corrupt_or_missing_cache_files() {
    let store = tempfile::tempdir().expect("tempdir");
    let file = store.path().join("stat.cache");
    assert!(StatCache::load(&file).expect("missing is empty").is_empty());

    let dir = tree(&[("a", b"1"), ("b", b"2")]);
    let mut cache = StatCache::new();
    fingerprint(dir.path(), &strings(&["a", "b"]), &mut cache).expect("fp");
    cache.save(&file).expect("save");
    let good = std::fs::read(&file).expect("read");

    std::fs::write(&file, &good[..good.len() - 5]).expect("truncate");
    let err = StatCache::load(&file).unwrap_err();
    assert!(matches!(err, DatasetError::CacheCorrupt { .. }), "{err}");
    assert!(err.to_string().contains("delete it"), "{err}");
    assert!(StatCache::load_or_empty(&file).is_empty());

    let mut flipped = good.clone();
    flipped[20] ^= 1;
    std::fs::write(&file, &flipped).expect("write");
    assert!(StatCache::load(&file).is_err());

    std::fs::write(&file, b"garbage").expect("write");
    assert!(StatCache::load(&file).is_err());
}

#[test]
fn retain_drops_stale_entries() {
    let dir = tree(&[("a", b"1"), ("b", b"2")]);
    let mut cache = StatCache::new();
    fingerprint(dir.path(), &strings(&["a", "b"]), &mut cache).expect("fp");
    cache.dirty = false;
    cache.retain_paths(&strings(&["b"]));
    assert_eq!(cache.len(), 1);
    assert!(cache.is_dirty());
}
