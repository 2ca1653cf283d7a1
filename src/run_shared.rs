//! What `dml run` and the Slurm executor share: the provenance recorded in manifests and
//! run records, and printing a finished run's reports.
use dml_artifacts::ArtifactStore;
use dml_pipeline::Plan;
use std::collections::BTreeMap;

/// Prints the report of every report node of the plan that exists.
pub fn print_reports(store: &ArtifactStore, plan: &Plan) {
    for node in plan.nodes.iter().filter(|n| n.stage == "report") {
        let md = store.object_dir(&node.stage, &node.key).join("report.md");
        if let Ok(text) = std::fs::read_to_string(&md) {
            println!("{text}");
            println!(
                "(report, plots and loss curves: {})",
                md.parent().unwrap_or(&md).display()
            );
        }
    }
}

/// Versions and host, recorded in manifests and run records (never in keys).
pub fn provenance() -> BTreeMap<String, serde_json::Value> {
    let mut p = BTreeMap::new();
    p.insert("dml".into(), env!("CARGO_PKG_VERSION").into());
    p.insert("libtorch".into(), dml_stages::LIBTORCH_VERSION.into());
    p.insert(
        "host".into(),
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
            .into(),
    );
    p.insert(
        "cuda_available".into(),
        (dml_stages::device::cuda_device_count() > 0).into(),
    );
    p.insert("threads".into(), rayon::current_num_threads().into());
    p
}
