//! Fingerprint benchmark at SOP scale: 120,053 small files, first fingerprint (hash everything) vs. a no-op rerun (stat cache hits).
//!
//! `cargo bench -p dml-datasets --bench fingerprint`. Environment: `DML_BENCH_FILES`
//! (default 120053). The files are written first, so the page cache is warm for every
//! figure (the `cat` baseline too); a cold-disk first run is slower, the no-op is not.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dml_datasets::fingerprint::{fingerprint, StatCache};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `sh -c script` and returns its wall time, or None if it failed.
fn time_shell(script: &str) -> Option<Duration> {
    let t = Instant::now();
    let ok = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| t.elapsed())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Deterministic filler: 200–700 bytes per file, content varying with the index.
fn content(i: usize) -> Vec<u8> {
    let len = 200 + (i * 7919) % 500;
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(root: &Path, paths: &[String], cache_file: &Path, label: &str) {
    let t = Instant::now();
    let mut cache = StatCache::load(cache_file).unwrap_or_else(|e| panic!("{e}"));
    let load = t.elapsed();
    let t = Instant::now();
    let fp = fingerprint(root, paths, &mut cache).unwrap_or_else(|e| panic!("{e}"));
    let work = t.elapsed();
    let was_dirty = cache.is_dirty();
    let t = Instant::now();
    cache.save(cache_file).unwrap_or_else(|e| panic!("{e}"));
    let save = t.elapsed();
    let total = load + work + save;
    let mb = fp.stats.hashed_bytes as f64 / 1e6;
    println!(
        "{label}: total {:.1} ms = load {:.1} + fingerprint {:.1} + save {:.1}{} | hashed {} files, {:.1} MB ({:.1} MB/s, {:.0} files/s), cache hits {}",
        ms(total),
        ms(load),
        ms(work),
        ms(save),
        if was_dirty { "" } else { " (clean: nothing written)" },
        fp.stats.hashed_files,
        mb,
        mb / work.as_secs_f64(),
        paths.len() as f64 / work.as_secs_f64(),
        fp.stats.cache_hits,
    );
    println!("{label}: fingerprint {}", fp.hash);
}

fn main() {
    let n = std::env::var("DML_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120_053usize);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let root = dir.path().join("data");
    let cache_file = dir.path().join("stat.cache");

    // SOP-like layout: 12 super classes, ~1000 files per folder.
    let t = Instant::now();
    let mut paths = Vec::with_capacity(n);
    let mut bytes = 0usize;
    for i in 0..n {
        let rel = format!(
            "super_{:02}_final/{:03}/{:06}_{}.JPG",
            i % 12,
            i / 12 / 1000,
            i,
            i % 4
        );
        let p = root.join(&rel);
        if let Some(parent) = p.parent() {
            if !parent.is_dir() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let c = content(i);
        bytes += c.len();
        std::fs::write(&p, c).unwrap_or_else(|e| panic!("{e}"));
        paths.push(rel);
    }
    println!(
        "wrote {n} files, {:.1} MB, in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    // Entries recorded within 2 s of a file's mtime/ctime are racy and re-hashed on the
    // next run; real datasets are older than that, so let the fresh files age past it.
    std::thread::sleep(Duration::from_millis(2_100));

    let quoted = root.display().to_string().replace('\'', "'\\''");
    if let Some(d) = time_shell(&format!(
        "find '{quoted}' -type f -print0 | xargs -0 cat > /dev/null"
    )) {
        println!(
            "baseline cat (find | xargs cat): {:.1} ms, {:.1} MB/s",
            ms(d),
            bytes as f64 / 1e6 / d.as_secs_f64()
        );
    }
    if have("b3sum") {
        if let Some(d) = time_shell(&format!(
            "find '{quoted}' -type f -print0 | xargs -0 b3sum > /dev/null"
        )) {
            println!(
                "baseline b3sum (find | xargs b3sum): {:.1} ms, {:.1} MB/s",
                ms(d),
                bytes as f64 / 1e6 / d.as_secs_f64()
            );
        }
    } else {
        println!("baseline b3sum: not installed (`cargo install b3sum`), skipped");
    }

    run(&root, &paths, &cache_file, "first run (empty cache)");
    run(&root, &paths, &cache_file, "no-op rerun");
    run(&root, &paths, &cache_file, "no-op rerun again");

    // cost of the cache file itself
    let t = Instant::now();
    let mut cache = StatCache::load(&cache_file).unwrap_or_else(|e| panic!("{e}"));
    let load = t.elapsed();
    let t = Instant::now();
    cache
        .save(&dir.path().join("copy.cache"))
        .unwrap_or_else(|e| panic!("{e}"));
    let save = t.elapsed();
    let size = std::fs::metadata(&cache_file).map(|m| m.len()).unwrap_or(0);
    println!(
        "stat cache: {} entries, {:.1} MB, load {:.1} ms, forced save (write + fsync + rename) {:.1} ms",
        cache.len(),
        size as f64 / 1e6,
        ms(load),
        ms(save)
    );

    // touch 100 files: only they are re-read
    for rel in paths.iter().step_by(n / 100 + 1) {
        let p = root.join(rel);
        let f = std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("{e}"));
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    run(&root, &paths, &cache_file, "after touching ~100 files");
}
