//! Snapshots of the text users read: `run --dry-run`, `--help`, and a report.md.
//! A change to any of them shows up as a diff to review (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test` and read `git diff tests/cli/snapshots/`).
use crate::common::*;

/// Replaces every decimal number (`0.953`, `96.17`, `12`) with `#`: the values a run
/// measures differ from machine to machine; the layout must not.
fn numbers_masked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut prev_alnum = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() && !prev_alnum {
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_digit() || *d == '.')
            {
                chars.next();
            }
            out.push('#');
            prev_alnum = false;
        } else {
            out.push(c);
            prev_alnum = c.is_alphanumeric() || c == '_' || c == '@';
        }
    }
    out
}

#[test]
fn the_default_dry_run_reads_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&tmp.path().join("store"), &["run", "--dry-run"]);
    insta::assert_snapshot!("dry_run_default", out);
}

#[test]
fn the_help_texts_read_the_same() {
    for (name, args) in [
        ("help_dml", vec!["--help"]),
        ("help_run", vec!["run", "--help"]),
        ("help_eval", vec!["eval", "--help"]),
    ] {
        let out = dml().env("COLUMNS", "100").args(&args).output().unwrap();
        assert!(out.status.success(), "dml {args:?}");
        insta::assert_snapshot!(name, String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn a_report_reads_the_same_up_to_its_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().train().write(tmp.path());
    ok(&store, &["run", cfg.to_str().unwrap()]);
    let md = std::fs::read_to_string(store.join("latest/tiny/report/report.md")).unwrap();
    insta::assert_snapshot!("report_tiny", numbers_masked(&md));
}

#[test]
fn masking_keeps_names_with_digits() {
    assert_eq!(
        numbers_masked("R@1 96.17 resnet18 | 0.953 | loss_0.png"),
        "R@1 # resnet18 | # | loss_0.png"
    );
}

/// The store path, record file names and 12-digit keys of `text` replaced by names: what
/// stays is what a user reads after changing a setting.
fn run_text_masked(text: &str, store: &std::path::Path) -> String {
    let text = text.replace(&store.display().to_string(), "<store>");
    text.lines()
        .map(|line| {
            line.split(' ')
                .map(|word| {
                    let hex = word.len() == 12 && word.bytes().all(|b| b.is_ascii_hexdigit());
                    if hex {
                        "<key>".to_string()
                    } else if let Some(i) = word.find("<store>/runs/") {
                        let end = word[i..].find(".json").map_or(word.len(), |e| i + e + 5);
                        format!("{}<store>/runs/<record>{}", &word[..i], &word[end..])
                    } else {
                        word.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_text_after_a_change_reads_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = Config::tiny().write(tmp.path());
    let cfg = cfg.to_str().unwrap();
    ok(&store, &["run", cfg, "--until", "plan"]);
    let change = [
        "--set",
        "plan.seed=1",
        "--set",
        "synthetic.images_per_class=5",
    ];
    let explained = ok(
        &store,
        &[
            &["run", cfg, "--until", "plan", "--dry-run"][..],
            &change[..],
        ]
        .concat(),
    );
    insta::assert_snapshot!("rerun_explained", run_text_masked(&explained, &store));
    ok(
        &store,
        &[&["run", cfg, "--until", "plan"][..], &change[..]].concat(),
    );
    let diff = ok(&store, &["diff", "tiny~1", "tiny"]);
    insta::assert_snapshot!("diff_after_a_change", run_text_masked(&diff, &store));
    // Where each stage of the rerun stands, its start time masked.
    let status = ok(&store, &["status", "--name", "tiny"]);
    let status: Vec<String> = status
        .lines()
        .map(|l| match l.find("(started ") {
            Some(i) => format!("{}(started <time>)", &l[..i]),
            None => l.to_string(),
        })
        .collect();
    insta::assert_snapshot!(
        "status_after_a_change",
        run_text_masked(&status.join("\n"), &store)
    );
}

#[test]
fn masking_run_text_keeps_the_words() {
    let store = std::path::Path::new("/tmp/x/store");
    assert_eq!(
        run_text_masked(
            "run plan 0123456789ab  plan.seed changed 0 → 1 (/tmp/x/store/runs/20261206T010203.004Z-tiny.json →",
            store
        ),
        "run plan <key>  plan.seed changed 0 → 1 (<store>/runs/<record> →"
    );
}

/// The README's table of every setting is `dml config --defaults`, word for word: it is
/// generated from the code, and this keeps the copy from drifting.
#[test]
fn the_readme_defaults_table_is_the_code_s() {
    let tmp = tempfile::tempdir().unwrap();
    let table = ok(&tmp.path().join("store"), &["config", "--defaults"]);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (begin, end) = (
        "<!-- dml config --defaults -->",
        "<!-- end of dml config --defaults -->",
    );
    let start = readme.find(begin).expect("README has the defaults table") + begin.len();
    let stop = readme[start..].find(end).expect("the table's end marker") + start;
    assert_eq!(
        readme[start..stop].trim(),
        table.trim(),
        "regenerate the README's defaults table with `dml config --defaults`"
    );
}
