//! The report stage at Stanford Online Products' scale: 60,502 test images in 11,316
//! classes, leave-one-out retrieval, the trained and the untrained network's neighbours.
//! Prints the time `write_report` takes (run table, plots, `report.html` with its
//! thumbnails) and the size of `report.html`.
//!
//!     cargo bench -p dml-stages --bench report_sop [-- --images N --classes C --rounds R]
//!
//! The inputs are made here, once, before anything is timed: the index (SOP's test split
//! shape), embeddings drawn around class centres (tight for the "trained" network, loose
//! for the "untrained" one), their neighbours and metrics from dml's own exact search, and
//! NMI from dml's k-means, and the images: `--sources` distinct JPEGs of SOP's typical size (about 400 × 300),
//! hard-linked under 60,502 names, so that the report decodes real files of that size.
use dml_artifacts::tables::{self, IndexRow};
use dml_datasets::Split;
use dml_jobspec::evaluate::{self, NoPositives, Selection};
use dml_jobspec::roles::ReportRole;
use dml_metrics::{Distance, Exclude};
use dml_pipeline::BoxError;
use dml_stages::config::ReportSettings;
use dml_stages::report::{write_report, ReportInputs, RunLabel};
use dml_stages::StageError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Artifact directories under one root, named by role (`retrieve/0` → `root/retrieve/0`).
struct Dirs {
    root: PathBuf,
    images: PathBuf,
}

impl ReportInputs for Dirs {
    fn dir(&self, role: ReportRole, run: usize) -> dml_stages::Result<PathBuf> {
        let d = self.root.join(role.of(run));
        if d.is_dir() {
            Ok(d)
        } else {
            Err(StageError::Input(format!(
                "no artifact for `{}`",
                role.of(run)
            )))
        }
    }
    fn notes(&self, _role: ReportRole, _run: usize) -> Value {
        json!({})
    }
    fn image_root(&self, _run: usize) -> Option<PathBuf> {
        Some(self.images.clone())
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} wants a number"))
        })
        .unwrap_or(default)
}

/// `n` rows of `dim` around their class centres, with noise of standard deviation `noise`.
fn embeddings(labels: &[u32], centres: &[f32], dim: usize, noise: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(labels.len() * dim);
    for &c in labels {
        let centre = &centres[c as usize * dim..][..dim];
        let row: Vec<f32> = centre
            .iter()
            .map(|m| m + noise * gaussian(&mut rng))
            .collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        out.extend(row.iter().map(|v| v / norm));
    }
    out
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller.
    let (u, v): (f32, f32) = (rng.gen::<f32>().max(1e-12), rng.gen());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// Writes the `retrieve` and `cluster` artifacts of one network's embeddings, as those
/// stages do (neighbours, Recall@K, MAP@R, NMI).
fn evaluate_into(
    retrieve: &Path,
    cluster: &Path,
    values: &[f32],
    labels: &[u32],
    dim: usize,
    depth: usize,
) -> Result<(), BoxError> {
    let ids: Vec<u32> = (0..labels.len() as u32).collect();
    let sel = Selection {
        queries: Cow::Borrowed(values),
        q_labels: labels.to_vec(),
        q_ids: ids.clone(),
        gallery: Cow::Borrowed(values),
        g_labels: labels.to_vec(),
        g_ids: ids.clone(),
        exclude: Exclude::SameIndex,
    };
    let m = evaluate::retrieval(&sel, dim, &[1, 10, 100, 1000], Distance::Euclidean)?;
    std::fs::create_dir_all(retrieve)?;
    std::fs::create_dir_all(cluster)?;
    let batch = dml_stages::retrieve::neighbours_table(&sel, dim, depth, Distance::Euclidean)?;
    tables::write_parquet(&retrieve.join("neighbors.parquet"), &batch)?;
    let mut metrics = evaluate::metrics_json(Some(&m), None, NoPositives::Exclude);
    metrics["protocol"] = json!("leave_one_out");
    std::fs::write(retrieve.join("metrics.json"), metrics.to_string())?;
    let (c, _, _) = evaluate::clustering(&sel, dim, 0, Distance::Euclidean)?;
    let cm = evaluate::metrics_json(None, Some(&c), NoPositives::Exclude);
    std::fs::write(cluster.join("metrics.json"), cm.to_string())?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let n = arg("--images", 60_502);
    let classes = arg("--classes", 11_316);
    let sources = arg("--sources", 64);
    let rounds = arg("--rounds", 3);
    let dim = 128;
    let depth = ReportSettings::default().k.max(10);
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_path_buf();
    let images = root.join("images");
    std::fs::create_dir_all(&images)?;

    let t = Instant::now();
    // Source images: SOP's photos are about 400 × 300 JPEGs.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut source_files = Vec::new();
    for s in 0..sources {
        let (a, b, c) = (rng.gen::<u8>(), rng.gen::<u8>(), rng.gen::<u8>());
        let img = image::RgbImage::from_fn(400, 300, |x, y| {
            image::Rgb([
                a.wrapping_add((x / 3) as u8),
                b.wrapping_add((y / 2) as u8),
                c.wrapping_add(((x + y) / 5) as u8),
            ])
        });
        let p = root.join(format!("source-{s}.jpg"));
        img.save(&p)?;
        let bytes = std::fs::metadata(&p)?.len();
        source_files.push((p, bytes));
    }
    // SOP's test split: classes of 2–12 images, 5.35 on average; here n spread evenly.
    let mut rows = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i * classes / n) as u32;
        let path = format!("class_{class:05}/{i:06}.JPG");
        let dir = images.join(format!("class_{class:05}"));
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
        }
        let (src, bytes) = &source_files[i % sources];
        std::fs::hard_link(src, images.join(&path))?;
        rows.push(IndexRow {
            image_id: i as u32,
            path,
            class_id: class,
            class_name: format!("product {class}"),
            split: Split::Test,
            width: 400,
            height: 300,
            bytes: *bytes,
            blake3: String::new(),
            dataset_image_id: Some(i as u32 + 1),
        });
        labels.push(class);
    }
    std::fs::create_dir_all(root.join("index/0"))?;
    tables::write_parquet(
        &root.join("index/0/index.parquet"),
        &tables::index_to_batch(&rows),
    )?;
    let mut crng = ChaCha8Rng::seed_from_u64(11);
    let centres: Vec<f32> = (0..classes * dim).map(|_| gaussian(&mut crng)).collect();
    let trained = embeddings(&labels, &centres, dim, 0.9, 1);
    let untrained = embeddings(&labels, &centres, dim, 3.0, 2);
    evaluate_into(
        &root.join("retrieve/0"),
        &root.join("cluster/0"),
        &trained,
        &labels,
        dim,
        depth,
    )?;
    evaluate_into(
        &root.join("baseline_retrieve/0"),
        &root.join("baseline_cluster/0"),
        &untrained,
        &labels,
        dim,
        depth,
    )?;
    std::fs::create_dir_all(root.join("train/0"))?;
    eprintln!(
        "inputs: {n} images in {classes} classes ({sources} distinct 400×300 JPEGs), 2 × {depth} neighbours each, made in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let run = RunLabel {
        name: "sop".into(),
        point: vec![],
        dataset: "sop".into(),
        backbone: "resnet50".into(),
        method: "multi_similarity".into(),
        normalized: true,
        margin: "N/A".into(),
        p: 20,
        k: 6,
        baseline: true,
        settings: Default::default(),
    };
    let inputs = Dirs {
        root: root.clone(),
        images,
    };
    let view = ReportSettings::default();
    let mut times = Vec::new();
    for round in 0..rounds {
        let out = root.join(format!("report-{round}"));
        std::fs::create_dir_all(&out)?;
        let t = Instant::now();
        write_report(&out, std::slice::from_ref(&run), &view, &inputs)?;
        times.push(t.elapsed().as_secs_f64());
        let html = out.join("report.html");
        let size = std::fs::metadata(&html)?.len();
        let text = std::fs::read_to_string(&html)?;
        let thumbs = text.matches("data:image/jpeg;base64,").count();
        println!(
            "round {round}: write_report {:.2} s; report.html {:.2} MB ({size} bytes), {thumbs} JPEG thumbnails",
            times[round],
            size as f64 / 1e6
        );
    }
    times.sort_by(f64::total_cmp);
    println!(
        "SOP scale ({n} images, {classes} classes, default [report] settings): median {:.2} s over {rounds} rounds",
        times[times.len() / 2]
    );
    Ok(())
}
