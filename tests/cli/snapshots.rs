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
    let cfg = write_config(tmp.path(), TINY_TRAIN);
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
