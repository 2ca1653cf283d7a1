//! report.html (the report stage's self-contained page) and the TensorBoard event files:
//! the page's structure and every embedded image, checked without a browser everywhere
//! and in headless Chromium where it is installed; the event files read back by
//! TensorBoard's own `EventAccumulator`; `dml tensorboard` over a two-loss sweep.
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs a Python snippet with arguments; its stdout, or a panic with its output.
fn py(code: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python()));
    assert!(
        out.status.success(),
        "python failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Every `src="…"` of the page; each must be an embedded image.
fn sources(html: &str) -> Vec<&str> {
    html.match_indices("src=\"")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// The structural checks: nothing to fetch, every image decodes, the run's metrics shown.
/// Returns how many images the page embeds.
fn check_page(html: &str, r1_texts: &[String]) -> usize {
    for bad in [
        "http://", "https://", "<script", "<link", "@import", "<iframe",
    ] {
        assert!(!html.contains(bad), "report.html holds `{bad}`");
    }
    let srcs = sources(html);
    for s in &srcs {
        let data = s
            .strip_prefix("data:image/jpeg;base64,")
            .or_else(|| s.strip_prefix("data:image/png;base64,"))
            .unwrap_or_else(|| panic!("an image that is not embedded: {}", &s[..s.len().min(80)]));
        let img = image::load_from_memory(&base64_decode(data))
            .unwrap_or_else(|e| panic!("an embedded image does not decode: {e}"));
        assert!(img.width() >= 8 && img.height() >= 8);
    }
    for t in r1_texts {
        assert!(html.contains(t.as_str()), "the page lacks R@1 {t}");
    }
    for heading in ["Runs", "Recall@K", "worst", "untrained"] {
        assert!(html.contains(heading), "the page lacks `{heading}`");
    }
    srcs.len()
}

fn r1_text(retrieve: &Path) -> String {
    let m = json_file(&retrieve.join("metrics.json"));
    format!("{:.2}", 100.0 * m["recall@1"].as_f64().unwrap())
}

fn latest(store: &Path, run: &str, node: &str) -> PathBuf {
    store
        .join("latest")
        .join(run)
        .join(node)
        .canonicalize()
        .unwrap()
}

/// The page's worst-classes table against Recall@1 per class computed here, in Python, from
/// the index and the retrieve stages' `neighbors.parquet` (trained and untrained): every
/// row's query count, R@1 and untrained R@1, and that the rows are the lowest R@1 of all
/// classes. Returns the number of rows checked.
fn check_worst_classes(store: &Path, run: &str, html: &Path) -> usize {
    const CODE: &str = r#"
import re, sys, polars as pl
index, trained, untrained, page = sys.argv[1:]
ix = pl.read_parquet(index)
cls = dict(zip(ix["image_id"].to_list(), ix["class_id"].to_list()))
name = dict(zip(ix["class_id"].to_list(), ix["class_name"].to_list()))
def per_class(path):
    first = pl.read_parquet(path).filter(pl.col("rank") == 1)
    acc = {}
    for q, n in zip(first["query_image_id"].to_list(), first["neighbor_image_id"].to_list()):
        a = acc.setdefault(name[cls[q]], [0, 0])
        a[0] += 1
        a[1] += cls[n] == cls[q]
    return {c: (n, h / n) for c, (n, h) in acc.items()}
t, u = per_class(trained), per_class(untrained)
h = open(page).read()
h = h[h.index("classes with the lowest Recall@1"):]
rows = re.findall(r'<tr><td class="l">([^<]*)</td><td>(\d+)</td><td>([^<]*) %</td><td>([^<]*) %</td>', h)
assert rows, "no worst-class rows"
for c, n, r1, r1u in rows:
    assert int(n) == t[c][0], (c, n, t[c])
    assert abs(float(r1) - 100 * t[c][1]) < 0.051, (c, r1, t[c])
    assert abs(float(r1u) - 100 * u[c][1]) < 0.051, (c, r1u, u[c])
shown = {c for c, *_ in rows}
rest = [v[1] for c, v in t.items() if c not in shown]
assert not rest or max(t[c][1] for c in shown) <= min(rest), "not the lowest"
print(len(rows))
"#;
    let node = |n: &str| latest(store, run, n);
    py(
        CODE,
        &[
            &node("index").join("index.parquet"),
            &node("retrieve").join("neighbors.parquet"),
            &node("retrieve@untrained").join("neighbors.parquet"),
            html,
        ],
    )
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn report_html_is_self_contained_and_the_combined_report_covers_both_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    for d in ["a", "b"] {
        std::fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let a = Config::tiny()
        .train()
        .named("a")
        .write(&tmp.path().join("a"));
    let b = Config::tiny()
        .train()
        .named("b")
        .set("train.loss.name", "lifted_structure")
        .write(&tmp.path().join("b"));
    ok(&store, &["run", a.to_str().unwrap()]);
    ok(&store, &["run", b.to_str().unwrap()]);
    let page = latest(&store, "a", "report").join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    let r1_a = r1_text(&latest(&store, "a", "retrieve"));
    let images = check_page(&html, std::slice::from_ref(&r1_a));
    // The two plots, and thumbnails: queries, neighbours, worst classes.
    assert!(images > 20, "{images} images");
    assert!(html.contains("class=\"cell ok\"") || html.contains("class=\"cell bad\""));
    // The per-class figures, trained and untrained, are those of the neighbour tables.
    assert!(check_worst_classes(&store, "a", &page) > 0);
    assert!(
        std::fs::metadata(&page).unwrap().len() < 2 << 20,
        "a tiny run's page stays small"
    );

    // `dml report a b`: one page over both, with the setting that differs as a column.
    ok(&store, &["report", "a", "b"]);
    let combined = std::fs::read_to_string(store.join("reports/a+b/report.html")).unwrap();
    let r1_b = r1_text(&latest(&store, "b", "retrieve"));
    check_page(&combined, &[r1_a, r1_b]);
    assert!(
        combined.contains("train.loss.name"),
        "the differing setting"
    );
    assert!(combined.contains("lifted_structure") && combined.contains("hard_triplet"));
    assert!(combined.contains("id=\"run-0\"") && combined.contains("id=\"run-1\""));

    // Chromium, where it is installed (CI installs it).
    match chromium() {
        Some(bin) => in_chromium(&bin, &page, tmp.path()),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI must install chromium-headless-shell for the report.html browser test")
        }
        None => eprintln!(
            "SKIPPED the browser check of report.html: no chromium-headless-shell or chromium on PATH (apt-get install chromium-headless-shell)"
        ),
    }
}

fn chromium() -> Option<String> {
    ["chromium-headless-shell", "chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(String::from)
}

/// Opens the page in an iframe of a probe page that counts the images that did not decode
/// and the resources fetched, then dumps the DOM: every image decodes, nothing is fetched,
/// and the page's text is there.
fn in_chromium(bin: &str, page: &Path, tmp: &Path) {
    let dir = page.parent().unwrap();
    let probe = tmp.join("probe.html");
    std::fs::write(
        &probe,
        format!(
            r#"<!DOCTYPE html><html><body><iframe id="f" src="{}" width="1200" height="900"></iframe><pre id="out">pending</pre>
<script>
document.getElementById('f').addEventListener('load', () => {{
  const w = document.getElementById('f').contentWindow, d = w.document;
  const imgs = [...d.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const fetched = w.performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'));
  document.getElementById('out').textContent = 'images=' + imgs.length + ' broken=' + broken + ' fetched=' + JSON.stringify(fetched) + ' text=' + d.body.innerText.length;
}});
</script></body></html>"#,
            url(&dir.join("report.html"))
        ),
    )
    .unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(url(&probe))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let line = dom
        .lines()
        .find(|l| l.contains("images="))
        .unwrap_or_else(|| {
            panic!(
                "no probe result:\n{dom}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(line.contains("broken=0 "), "{line}");
    assert!(line.contains("fetched=[]"), "{line}");
    let n: usize = line
        .split("images=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(n > 20, "{line}");
}

fn url(p: &Path) -> String {
    format!("file://{}", p.canonicalize().unwrap().display())
}

/// Checks one event file against the training log with TensorBoard's EventAccumulator.
const CHECK_TRAIN: &str = r#"
import sys, struct, math
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import pyarrow.parquet as pq
ea = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0})
ea.Reload()
log = pq.read_table(sys.argv[2]).to_pylist()
f32 = lambda x: struct.unpack('f', struct.pack('f', x))[0]
tags = set(ea.Tags()['scalars'])
cols = {'train/loss': 'loss', 'train/lr': 'lr', 'train/active_fraction': 'active_fraction',
        'train/mean_pos_dist': 'mean_pos_dist', 'train/mean_neg_dist': 'mean_neg_dist',
        'train/data_wait_s': 'data_wait_s'}
for tag, col in cols.items():
    assert tag in tags, (tag, tags)
    got = [(e.step, e.value) for e in ea.Scalars(tag)]
    want = [(r['step'], f32(r[col])) for r in log]
    assert got == want, (tag, got, want)
ips = ea.Scalars('train/images_per_second')
assert [e.step for e in ips] == [r['step'] for r in log]
assert all(e.value > 0 for e in ips if not math.isnan(e.value)), ips
print(len(log), sorted(tags))
"#;

/// The report stage's test metrics: at the last training step, the untrained at step 0.
const CHECK_TEST: &str = r#"
import sys, json, struct
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0})
ea.Reload()
m = json.load(open(sys.argv[2]))
last = int(sys.argv[3])
f32 = lambda x: struct.unpack('f', struct.pack('f', x))[0]
r1 = ea.Scalars('test/recall@1')
assert r1[-1].step == last and r1[-1].value == f32(m['recall@1']), (r1, m)
assert ea.Scalars('test/map@r')[-1].value == f32(m['map@r'])
assert 'test/nmi' in ea.Tags()['scalars']
assert r1[0].step == 0 and len(r1) == 2, r1
print('ok')
"#;

#[test]
fn tensorboard_reads_the_event_files_and_dml_tensorboard_lays_out_a_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = write_config(
        tmp.path(),
        &format!(
            "{}\n[sweep]\n\"train.loss.name\" = [\"hard_triplet\", \"lifted_structure\"]\n",
            Config::tiny().train()
        ),
    );
    let outcome = run_outcome(&store, &[cfg.to_str().unwrap()]);
    let points = outcome["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{outcome}");
    for (i, p) in points.iter().enumerate() {
        let art = |s: &str| PathBuf::from(p["artifacts"][s].as_str().unwrap());
        let train = art("train");
        let events = train.join("events.out.tfevents.dml-train");
        assert!(events.is_file(), "{}", events.display());
        let log = train.join("train_log.parquet");
        let said = py(CHECK_TRAIN, &[&events, &log]);
        assert!(said.starts_with("8 "), "8 steps (0..=7) logged: {said}");
        let test = art("report")
            .join("tensorboard")
            .join(i.to_string())
            .join("events.out.tfevents.dml-test");
        let metrics = art("retrieve").join("metrics.json");
        assert_eq!(
            py(CHECK_TEST, &[&test, &metrics, Path::new("7")]).trim(),
            "ok"
        );
    }

    // `dml tensorboard DIR`: a folder per sweep point, links to both event files, which
    // TensorBoard's multiplexer reads as two runs.
    let logdir = tmp.path().join("tb");
    let said = ok(&store, &["tensorboard", logdir.to_str().unwrap()]);
    assert!(said.contains("tensorboard --logdir"), "{said}");
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    folders.sort();
    assert_eq!(folders.len(), 2, "{folders:?}");
    for f in &folders {
        for name in [
            "events.out.tfevents.dml-train",
            "events.out.tfevents.dml-test",
        ] {
            let l = f.join(name);
            assert!(
                l.symlink_metadata().unwrap().file_type().is_symlink(),
                "{}",
                l.display()
            );
        }
    }
    let runs = py(
        r#"
import sys
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
m = EventMultiplexer(size_guidance={'scalars': 0}).AddRunsFromDirectory(sys.argv[1])
m.Reload()
for run, tags in sorted(m.Runs().items()):
    s = set(tags['scalars'])
    assert {'train/loss', 'test/recall@1'} <= s, (run, s)
    print(run)
"#,
        &[&logdir],
    );
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().any(|r| r.contains("hard_triplet")), "{runs:?}");
    assert!(
        runs.iter().any(|r| r.contains("lifted_structure")),
        "{runs:?}"
    );
    // A name with no run is an error that says where to look.
    let e = fails(
        &store,
        &["tensorboard", "--name", "nope", logdir.to_str().unwrap()],
    );
    assert!(e.contains("no run named `nope`"), "{e}");
}
