//! `dml diff RUN_A RUN_B`: which settings differ between two run records, how
//! their metrics changed (like `dvc metrics diff`), and which stages each
//! difference invalidated.
use crate::outcome::{self, Point};
use anyhow::{bail, Result};
use dml_artifacts::ArtifactStore;
use dml_pipeline::{settings_diff, show, Change, RunRecord};
use std::path::Path;

pub fn diff(store_dir: &Path, a: &str, b: &str) -> Result<()> {
    let store = ArtifactStore::open_existing(store_dir)?;
    let (pa, ra) = crate::records::load_record(&store, a, None)?;
    let (pb, rb) = crate::records::load_record(&store, b, None)?;
    if pa == pb {
        bail!(
            "`{a}` and `{b}` are the same run record ({}); name an earlier run of a name with NAME~N, e.g. `dml diff {}~1 {}`",
            pa.display(),
            ra.name,
            ra.name
        );
    }
    println!(
        "settings that differ ({} → {}):",
        pa.display(),
        pb.display()
    );
    let differ = settings_diff(
        &resolved_settings(&ra.config),
        &resolved_settings(&rb.config),
    );
    for change in &differ {
        if let Change::Setting { path, old, new } = change {
            println!("  {path}: {} → {}", show(old), show(new));
        }
    }
    if differ.is_empty() {
        println!("  none");
    }
    print_metrics(&store, &ra, &rb);
    println!("stages:");
    for nb in &rb.nodes {
        match ra.nodes.iter().find(|n| n.id == nb.id) {
            None => println!("  {:<28} only in B", nb.id),
            Some(na) if na.key == nb.key => {
                println!("  {:<28} same artifact {}", nb.id, &nb.key[..12])
            }
            Some(na) => {
                // The same causes `dml run --dry-run` names: every one of them.
                let why: Vec<String> = na.changes(nb).iter().map(ToString::to_string).collect();
                println!("  {:<28} invalidated: {}", nb.id, why.join("; "));
            }
        }
    }
    for na in &ra.nodes {
        if !rb.nodes.iter().any(|n| n.id == na.id) {
            println!("  {:<28} only in A", na.id);
        }
    }
    Ok(())
}

/// A record's settings with the defaults filled in, as `dml run --show-config` shows them
/// (its `[sweep]` table as written), so that a setting one run left at its default and the
/// other set reads `plan.seed: 0 → 1`, as the stages section says, not `(unset) → 1`. A
/// record whose settings no longer resolve (an older dml's) is compared as written.
fn resolved_settings(config: &serde_json::Value) -> serde_json::Value {
    let resolve = || -> Result<serde_json::Value> {
        let mut base = config.clone();
        let sweep = base.as_object_mut().and_then(|o| o.remove("sweep"));
        let loaded = crate::config::resolve(toml::Value::try_from(&base)?)?;
        let [one] = &loaded.experiments[..] else {
            bail!("not one experiment");
        };
        let mut v = serde_json::to_value(&one.config)?;
        if let (Some(o), Some(sweep)) = (v.as_object_mut(), sweep) {
            o.insert("sweep".into(), sweep);
        }
        Ok(v)
    };
    resolve().unwrap_or_else(|_| config.clone())
}

/// The points of A and B side by side: matched by sweep values, or the one point of each.
fn pair_points(a: Vec<Point>, b: Vec<Point>) -> Vec<(String, Option<Point>, Option<Point>)> {
    if a.len() == 1 && b.len() == 1 {
        let (pa, pb) = (a.into_iter().next(), b.into_iter().next());
        let label = match (&pa, &pb) {
            (Some(x), Some(y)) if x.name == y.name => x.name.clone(),
            (Some(x), Some(y)) => format!("{} → {}", x.name, y.name),
            _ => String::new(),
        };
        return vec![(label, pa, pb)];
    }
    let mut out: Vec<(String, Option<Point>, Option<Point>)> = Vec::new();
    let mut rest_b = b;
    for pa in a {
        let found = rest_b.iter().position(|pb| pb.point == pa.point);
        let pb = found.map(|i| rest_b.remove(i));
        out.push((pa.name.clone(), Some(pa), pb));
    }
    for pb in rest_b {
        out.push((pb.name.clone(), None, Some(pb)));
    }
    out
}

/// `metrics (A → B)`: each headline metric of each point, with the change.
fn print_metrics(store: &ArtifactStore, ra: &RunRecord, rb: &RunRecord) {
    let pairs = pair_points(outcome::points(store, ra), outcome::points(store, rb));
    println!("metrics (A → B):");
    if pairs.is_empty() {
        println!("  none (neither run reached its metrics)");
        return;
    }
    println!(
        "  {:<36} {:<10} {:>10} {:>10} {:>10}",
        "point", "metric", "A", "B", "change"
    );
    for (label, pa, pb) in pairs {
        let ma = pa.map(|p| p.metrics).unwrap_or_default();
        let mb = pb.map(|p| p.metrics).unwrap_or_default();
        let (rows_a, rows_b) = (ma.rows(), mb.rows());
        let names: Vec<&str> =
            rows_a
                .iter()
                .chain(&rows_b)
                .map(|r| r.0)
                .fold(Vec::new(), |mut v, n| {
                    if !v.contains(&n) {
                        v.push(n);
                    }
                    v
                });
        for name in names {
            let get =
                |rows: &[(&str, Option<f64>)]| rows.iter().find(|r| r.0 == name).and_then(|r| r.1);
            let (x, y) = (get(&rows_a[..]), get(&rows_b[..]));
            let show = |v: Option<f64>| match v {
                Some(v) if name == "train s" => format!("{v:.1}"),
                Some(v) => format!("{v:.4}"),
                None => "—".into(),
            };
            let change = match (x, y) {
                (Some(x), Some(y)) if name == "train s" => format!("{:+.1}", y - x),
                (Some(x), Some(y)) => format!("{:+.4}", y - x),
                _ => "—".into(),
            };
            println!(
                "  {label:<36} {name:<10} {:>10} {:>10} {change:>10}",
                show(x),
                show(y)
            );
        }
    }
}
