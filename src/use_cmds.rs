//! Using a run's trained network: `dml embed` (embed any images, exactly as the embed stage
//! does), `dml search` (rank a gallery for query images with the exact search of the
//! retrieve stage) and `dml export` (TorchScript, safetensors + `model.json` +
//! `load_model.py`, and ONNX through PyTorch's exporter). The network runs in the training
//! worker (`dml-torch`), so `dml` itself never loads libtorch.
use crate::outcome;
use anyhow::{anyhow, bail, Context, Result};
use dml_artifacts::{tables, ArtifactStore};
use dml_jobspec::device::DeviceKind;
use dml_jobspec::jobs::WorkerJob;
use dml_jobspec::protocol::WorkerRequest;
use dml_jobspec::roles::ReportRole;
use dml_jobspec::use_model::{self as shared, EmbedFilesJob, EmbedFilesNotes, ExportJob, Gallery};
use dml_pipeline::{RecordNode, RunRecord};
use dml_stages::report_html::{esc, STYLE};
use dml_stages::worker::run_request;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which run and point's network to use.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// The run: a run name (its newest record), a record path, or a file name prefix under
    /// runs/ (default: the most recent run).
    #[arg(long)]
    pub run: Option<String>,
    /// For a sweep: the point, as `dml runs` names it (`tiny[train.loss.name=npairs]`) or
    /// by its values (`train.loss.name=npairs`; a trailing part of the setting's name is
    /// enough: `loss.name=npairs`).
    #[arg(long)]
    pub point: Option<String>,
}

/// Arguments of `dml embed`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The table has one row per image: `path` (as given), `class` (for --dir, the class folder \
below DIR the image is in; for images named on the command line, the folder holding it) and \
`embedding` (float32, the run's embedding dimension). It opens in pandas, polars, pyarrow \
and DuckDB, and `dml eval FILE --labels-column class` and `dml search --gallery FILE` read it.

Preprocessing, batches and device are the run's embed stage's: resize to image.resize² \
(bilinear, as Pillow), centre crop to image.crop², the backbone's input scaling, f32, \
embed.batch_size images at a time, on train.device: the test images named in the index's \
order get the embed stage's own values bit for bit on the CPU (other batches may differ in \
the last bits, as libtorch's CPU kernels round by batch). An image that cannot be read or decoded \
is named on stderr and left out; the others are still embedded, and dml exits non-zero.

Example:
  dml embed --run cub --dir photos/ --out photos.parquet")]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files (JPEG or PNG).
    #[arg(required_unless_present = "dir")]
    pub images: Vec<PathBuf>,
    /// Every JPEG and PNG below this folder (a folder per class, or flat), in sorted order.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The table to write: `.parquet` or `.arrow` (Arrow IPC).
    #[arg(long, default_value = "embeddings.parquet")]
    pub out: PathBuf,
}

/// Arguments of `dml search`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The default gallery is the run's embedded test split (the gallery split for In-shop), read \
from its embed artifact and never recomputed. A FILE is any embeddings table `dml eval` \
reads (`dml embed` writes one): its `path` and `class` (or `class_name`, `class_id`) \
columns name the results where it has them.

The search is the retrieve stage's exact k-nearest-neighbour search, with the run's \
retrieve.distance unless --distance says otherwise.

Example:
  dml embed --run sop --dir catalogue/ --out catalogue.parquet
  dml search --run sop --gallery catalogue.parquet photo.jpg -k 5 --html results.html")]
pub struct SearchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Query images (JPEG or PNG).
    #[arg(required = true)]
    pub queries: Vec<PathBuf>,
    /// `test` (the run's embedded test split) or an embeddings file.
    #[arg(long, default_value = "test")]
    pub gallery: String,
    /// The embedding column of a gallery file.
    #[arg(long, default_value = "embedding")]
    pub embedding_column: String,
    /// Neighbours per query.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// euclidean or cosine (default: the run's retrieve.distance).
    #[arg(long)]
    pub distance: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write a page with each query and its neighbours as thumbnails.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
}

/// Arguments of `dml export`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Formats:
  torchscript  model.pt: the network traced through libtorch (scaled NCHW float32 images of \
image.crop² in, [N, D] embeddings out); torch.jit.load in Python and torch::jit::load in C++ \
run it without dml.
  safetensors  model.safetensors (the backbone's tensors under torchvision's names, prefixed \
`backbone.`, and the head's under `head.`) and load_model.py, which rebuilds the network from \
torchvision and these files and preprocesses images as dml does.
  onnx         model.onnx: written by PyTorch's exporter (torch.onnx.export) from model.pt, so \
it needs a python3 with torch and onnx (DML_PYTHON names another interpreter); refused \
otherwise, before anything is written.

model.json always comes along: the backbone, head, embedding dimension, normalisation and \
everything needed to reproduce the preprocessing (resize, crop, scaling, mean and std).

Example:
  dml export --run cub --out cub-model/ --format torchscript,safetensors")]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The folder to write (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// torchscript, safetensors and/or onnx.
    #[arg(long, value_delimiter = ',', default_value = "torchscript,safetensors")]
    pub format: Vec<String>,
}

/// A trained network of a run, and the settings its embed stage used.
#[derive(Debug, Clone)]
struct UseModel {
    /// The point's name (the run name without a sweep).
    name: String,
    /// The run's record file.
    record_path: PathBuf,
    train_key: String,
    train_dir: PathBuf,
    /// `model.json` of the train artifact.
    model_json: Value,
    /// The embed artifact of this network, when it is in the store.
    embed_dir: Option<PathBuf>,
    /// The index the network's test split was embedded from.
    index_dir: Option<PathBuf>,
    /// The root the index's paths are relative to, when known.
    image_root: Option<PathBuf>,
    resize: u32,
    crop: u32,
    batch_size: u32,
    device: DeviceKind,
    device_spec: String,
    distance: dml_metrics::Distance,
}

impl UseModel {
    fn embedding_dim(&self) -> Option<usize> {
        self.model_json
            .pointer("/model/embedding_dim")
            .and_then(Value::as_u64)
            .map(|d| d as usize)
    }
}

fn find<'a>(record: &'a RunRecord, stage: &str, key: &str) -> Option<&'a RecordNode> {
    record
        .nodes
        .iter()
        .find(|n| n.stage == stage && n.key == key)
}

fn setting_u32(v: &Value, pointer: &str) -> Option<u32> {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// Whether `sel` (a point name, or `k=v` pairs) picks `p`.
fn point_matches(sel: &str, p: &outcome::Point) -> bool {
    if sel == p.name {
        return true;
    }
    let pairs: Vec<(&str, &str)> = sel.split(',').filter_map(|kv| kv.split_once('=')).collect();
    !pairs.is_empty()
        && pairs.len() == sel.split(',').count()
        && pairs.iter().all(|(k, v)| {
            p.point.iter().any(|(pk, pv)| {
                pv == v && (pk == k || pk.ends_with(&format!(".{}", k.trim_start_matches('.'))))
            })
        })
}

/// Resolves `--run` / `--point` to a trained network in the store, with the settings its
/// embed stage used; every error says what to do, and nothing expensive has run yet.
fn resolve(store: &ArtifactStore, args: &ModelArgs) -> Result<UseModel> {
    let (record_path, record) = match &args.run {
        Some(run) => crate::records::load_record(store, run, Some("train"))?,
        None => {
            let Some(path) = RunRecord::list(store)?.pop() else {
                bail!(
                    "no run records in {}: train a network with `dml run` first, or give --store",
                    store.runs_dir().display()
                );
            };
            let r =
                RunRecord::load(&path).with_context(|| format!("reading {}", path.display()))?;
            (path, r)
        }
    };
    let points = outcome::points(store, &record);
    let point = match (&args.point, points.len()) {
        (_, 0) => bail!(
            "run `{}` has no trained network ({}): its record has no train stage",
            record.name,
            record_path.display()
        ),
        (None, 1) => points.into_iter().next().expect("one point"),
        (None, _) => bail!(
            "run `{}` is a sweep of {} points: pick one with --point, one of:\n  {}",
            record.name,
            points.len(),
            points
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
        (Some(sel), _) => {
            let names: Vec<String> = points.iter().map(|p| p.name.clone()).collect();
            let mut hits: Vec<outcome::Point> = points
                .into_iter()
                .filter(|p| point_matches(sel, p))
                .collect();
            match hits.len() {
                1 => hits.pop().expect("one point"),
                0 => bail!(
                    "run `{}` has no point `{sel}`; its points are:\n  {}",
                    record.name,
                    names.join("\n  ")
                ),
                n => bail!(
                    "--point `{sel}` matches {n} points of run `{}`; give more of it:\n  {}",
                    record.name,
                    hits.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join("\n  ")
                ),
            }
        }
    };
    let Some(train_key) = point.roles.get(&ReportRole::Train).cloned() else {
        bail!("point `{}` has no train stage in its record", point.name);
    };
    let train_node = find(&record, "train", &train_key);
    let train_dir = match point.artifacts.get("train") {
        Some(d) if d.join("model.safetensors").is_file() => d.clone(),
        _ => {
            let status = train_node.map_or("unknown".to_string(), |n| n.status.to_string());
            bail!(
                "point `{}` has no trained network in {} (its train stage {}: status `{status}`): \
                 finish the run with `dml run` (same config and name), or `dml pull --run {}` \
                 it from the remote cache",
                point.name,
                store.root().display(),
                &train_key[..12.min(train_key.len())],
                record.name
            )
        }
    };
    let model_path = train_dir.join("model.json");
    let model_json: Value = serde_json::from_str(
        &std::fs::read_to_string(&model_path)
            .with_context(|| format!("reading {}", model_path.display()))?,
    )
    .with_context(|| format!("parsing {}", model_path.display()))?;
    let embed_node = record
        .nodes
        .iter()
        .find(|n| n.stage == "embed" && n.inputs.get("train") == Some(&train_key));
    let embed_dir = embed_node
        .map(|n| store.object_dir("embed", &n.key))
        .filter(|d| d.join("embeddings.arrow").is_file() && n_reached(&record, "embed", d));
    let decode_key = embed_node
        .and_then(|n| n.inputs.get("decode"))
        .or_else(|| train_node.and_then(|n| n.inputs.get("decode")));
    let resize = decode_key
        .and_then(|k| find(&record, "decode", k))
        .and_then(|n| setting_u32(&n.settings, "/image/resize"))
        .or_else(|| setting_u32(&record.config, "/image/resize"))
        .ok_or_else(|| {
            anyhow!(
                "the record {} names no image.resize for `{}`",
                record_path.display(),
                point.name
            )
        })?;
    let crop = embed_node
        .and_then(|n| setting_u32(&n.settings, "/image/crop"))
        .or_else(|| train_node.and_then(|n| setting_u32(&n.settings, "/image/crop")))
        .or_else(|| setting_u32(&record.config, "/image/crop"))
        .ok_or_else(|| {
            anyhow!(
                "the record {} names no image.crop for `{}`",
                record_path.display(),
                point.name
            )
        })?;
    let batch_size = embed_node
        .and_then(|n| setting_u32(&n.settings, "/embed/batch_size"))
        .or_else(|| setting_u32(&record.config, "/embed/batch_size"))
        .unwrap_or(dml_stages::config::EmbedSettings::default().batch_size);
    let device_spec = record
        .config
        .pointer("/train/device")
        .and_then(Value::as_str)
        .unwrap_or("auto")
        .to_string();
    let device = match embed_node
        .and_then(|n| n.settings.pointer("/embed/device"))
        .and_then(Value::as_str)
    {
        Some("cuda") => DeviceKind::Cuda,
        Some(_) => DeviceKind::Cpu,
        None => dml_stages::device::resolve_kind(&device_spec)?,
    };
    let index_key = embed_node
        .and_then(|n| n.inputs.get("index"))
        .or_else(|| train_node.and_then(|n| n.inputs.get("index")));
    let index_dir = index_key
        .map(|k| store.object_dir("index", k))
        .filter(|d| d.join("index.parquet").is_file());
    let image_root = index_key
        .and_then(|k| find(&record, "index", k))
        .and_then(|n| n.inputs.get("synth"))
        .map(|k| store.object_dir("synth", k).join("images"))
        .or_else(|| {
            record
                .config
                .pointer("/dataset/root")
                .and_then(Value::as_str)
                .map(PathBuf::from)
        });
    let distance = embed_node
        .and_then(|e| {
            record.nodes.iter().find(|n| {
                n.stage == "retrieve" && n.inputs.get("embed") == Some(&e.key) && !is_baseline(n)
            })
        })
        .and_then(|n| n.settings.pointer("/retrieve/distance").cloned())
        .or_else(|| record.config.pointer("/retrieve/distance").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    Ok(UseModel {
        name: point.name,
        record_path,
        train_key,
        train_dir,
        model_json,
        embed_dir,
        index_dir,
        image_root,
        resize,
        crop,
        batch_size,
        device,
        device_spec,
        distance,
    })
}

fn is_baseline(n: &RecordNode) -> bool {
    n.id.contains(":untrained")
}

/// The embed artifact is this run's (built, fetched or found), not one a later run made.
fn n_reached(record: &RunRecord, stage: &str, dir: &Path) -> bool {
    let key = dir.file_name().and_then(|k| k.to_str()).unwrap_or("");
    find(record, stage, key).is_none_or(|n| n.status.reached())
}

/// An image to embed: the file, its path as shown, its class folder.
struct Image {
    file: PathBuf,
    shown: String,
    class: Option<String>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .is_some_and(|e| matches!(e.as_str(), "jpg" | "jpeg" | "png"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd =
        std::fs::read_dir(dir).with_context(|| format!("reading the folder {}", dir.display()))?;
    for e in rd {
        let e = e.with_context(|| format!("reading the folder {}", dir.display()))?;
        let p = e.path();
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", p.display()))?;
        if ft.is_dir() || (ft.is_symlink() && p.is_dir()) {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The images named on the command line (each must exist) and below `dir`.
fn collect_images(files: &[PathBuf], dir: Option<&Path>) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for f in files {
        if !f.is_file() {
            bail!(
                "the image `{}` does not exist or is not a file (give JPEG or PNG files, or --dir FOLDER)",
                f.display()
            );
        }
        let class = f
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        out.push(Image {
            file: f.clone(),
            shown: f.display().to_string(),
            class,
        });
    }
    if let Some(dir) = dir {
        if !dir.is_dir() {
            bail!("--dir `{}` is not a folder", dir.display());
        }
        let mut found = Vec::new();
        walk(dir, &mut found)?;
        found.sort();
        if found.is_empty() {
            bail!(
                "--dir `{}` holds no .jpg, .jpeg or .png files",
                dir.display()
            );
        }
        for f in found {
            let rel = f.strip_prefix(dir).unwrap_or(&f);
            let mut parts = rel.components();
            let first = parts.next();
            let class = match (first, parts.next()) {
                (Some(c), Some(_)) => Some(c.as_os_str().to_string_lossy().into_owned()),
                _ => None,
            };
            out.push(Image {
                shown: f.display().to_string(),
                file: f,
                class,
            });
        }
    }
    Ok(out)
}

/// A progress bar drawn on a terminal, else logged every `DML_LOG_INTERVAL` seconds.
fn progress_bar(len: u64, template: &str, name: &str) -> ProgressBar {
    let terminal = std::io::stderr().is_terminal();
    let target = if terminal {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_string());
    if !terminal {
        dml_pipeline::log_progress(&bar, name.to_string(), Default::default());
    }
    bar
}

/// Embeds `images` with `model` in the worker, into the table `out`.
fn embed_in_worker(model: &UseModel, images: &[Image], out: &Path) -> Result<EmbedFilesNotes> {
    let job = EmbedFilesJob {
        resize: model.resize,
        crop: model.crop,
        batch_size: model.batch_size,
        device: model.device,
        device_spec: model.device_spec.clone(),
        images: images.iter().map(|i| i.file.clone()).collect(),
        paths: images.iter().map(|i| i.shown.clone()).collect(),
        classes: images.iter().map(|i| i.class.clone()).collect(),
        out: out.to_path_buf(),
    };
    let request = WorkerRequest {
        job: WorkerJob::EmbedFiles(job),
        node: "embed".into(),
        key: model.train_key.clone(),
        out_dir: out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        inputs: BTreeMap::from([("train".to_string(), model.train_dir.clone())]),
        checkpoint_dir: None,
        device_index: None,
    };
    let notes = run_request(&request, &mut |len, template| {
        progress_bar(len, template, "embed")
    })?;
    serde_json::from_value(Value::Object(notes))
        .context("the worker's notes are not valid (is dml-torch from the same build as dml?)")
}

/// The error for images that could not be embedded, after naming each on stderr.
fn report_failed(failed: &[(String, String)], done: &str) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    for (path, why) in failed {
        eprintln!("could not embed {path}: {why}");
    }
    bail!(
        "{} image(s) could not be read or decoded (named above): fix or remove them; {done}",
        failed.len()
    )
}

/// `dml embed`.
pub fn embed(store_dir: &Path, args: EmbedArgs) -> Result<()> {
    shared::TableFormat::of(&args.out)?;
    let store = ArtifactStore::open_read_only(store_dir)?;
    let model = resolve(&store, &args.model)?;
    let images = collect_images(&args.images, args.dir.as_deref())?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder {}", parent.display()))?;
    }
    let started = Instant::now();
    let notes = embed_in_worker(&model, &images, &args.out)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} images with `{}` ({} dims, {:.1}s, {:.0} images/s) → {}",
        notes.rows,
        model.name,
        notes.dim,
        secs,
        notes.rows as f64 / secs.max(1e-9),
        args.out.display()
    );
    report_failed(
        &notes.failed,
        &format!("the other {} are in {}", notes.rows, args.out.display()),
    )
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!(
            "dml-{what}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The run's embedded test split (In-shop: its gallery split), named from the index.
fn test_gallery(model: &UseModel) -> Result<Gallery> {
    let Some(dir) = &model.embed_dir else {
        bail!(
            "point `{}` has no embedded test split in this store (its embed stage did not run; \
             run `dml run` without --until, or give --gallery FILE, e.g. one `dml embed` wrote)",
            model.name
        );
    };
    let path = dir.join("embeddings.arrow");
    let table = dml_jobspec::evaluate::Table::read(&path, "embedding", "class_id", Some("split"))?;
    let gallery = tables::Split::Gallery.as_str();
    let keep: Vec<usize> = match &table.splits {
        Some(s) if s.iter().any(|x| x == gallery) => {
            (0..s.len()).filter(|&i| s[i] == gallery).collect()
        }
        _ => (0..table.labels.len()).collect(),
    };
    let dim = table.dim;
    let mut values = Vec::with_capacity(keep.len() * dim);
    for &i in &keep {
        values.extend_from_slice(&table.values[i * dim..(i + 1) * dim]);
    }
    let image_ids: Vec<u32> = keep.iter().map(|&i| table.image_ids[i]).collect();
    let (paths, classes) = match &model.index_dir {
        Some(d) => {
            let rows = tables::read_index(&d.join("index.parquet"))?;
            let by_id: BTreeMap<u32, &tables::IndexRow> =
                rows.iter().map(|r| (r.image_id, r)).collect();
            let path_of = |id: u32| match (by_id.get(&id), &model.image_root) {
                (Some(r), Some(root)) => root.join(&r.path).display().to_string(),
                (Some(r), None) => r.path.clone(),
                (None, _) => format!("image {id}"),
            };
            (
                Some(image_ids.iter().map(|&id| path_of(id)).collect()),
                Some(
                    image_ids
                        .iter()
                        .map(|id| by_id.get(id).map(|r| r.class_name.clone()))
                        .collect(),
                ),
            )
        }
        None => (
            None,
            Some(
                keep.iter()
                    .map(|&i| Some(table.labels[i].to_string()))
                    .collect(),
            ),
        ),
    };
    Ok(Gallery {
        dim,
        values,
        paths,
        classes,
        image_ids,
    })
}

/// One neighbour of a query.
#[derive(Debug, Clone, serde::Serialize)]
struct Hit {
    rank: usize,
    path: Option<String>,
    class: Option<String>,
    image_id: u32,
    distance: f32,
}

/// A query and its neighbours.
#[derive(Debug, Clone, serde::Serialize)]
struct QueryResult {
    query: String,
    class: Option<String>,
    neighbors: Vec<Hit>,
}

/// `dml search`.
pub fn search(store_dir: &Path, args: SearchArgs) -> Result<()> {
    if args.k == 0 {
        bail!("-k must be at least 1");
    }
    let distance: Option<dml_metrics::Distance> = match &args.distance {
        Some(d) => Some(
            serde_json::from_value(json!(d.to_lowercase()))
                .map_err(|_| anyhow!("--distance `{d}`: use euclidean or cosine"))?,
        ),
        None => None,
    };
    if let Some(h) = &args.html {
        if h.extension().is_none_or(|e| e != "html" && e != "htm") {
            bail!("--html `{}`: name an .html file", h.display());
        }
    }
    let store = ArtifactStore::open_read_only(store_dir)?;
    let model = resolve(&store, &args.model)?;
    let distance = distance.unwrap_or(model.distance);
    let queries = collect_images(&args.queries, None)?;
    let gallery = if args.gallery == "test" {
        test_gallery(&model)?
    } else {
        let path = PathBuf::from(&args.gallery);
        if !path.is_file() {
            bail!(
                "--gallery `{}`: no such file (give `test` for the run's test split, or an embeddings file, e.g. one `dml embed` wrote)",
                path.display()
            );
        }
        Gallery::read(&path, &args.embedding_column)?
    };
    if gallery.is_empty() {
        bail!("the gallery `{}` has no rows", args.gallery);
    }
    if let Some(d) = model.embedding_dim() {
        if d != gallery.dim {
            bail!(
                "the gallery `{}` holds embeddings of dimension {} but `{}` embeds into {d}: \
                 search a gallery embedded by this network (`dml embed --run {} --dir FOLDER --out gallery.parquet`), \
                 or pick the run that embedded it",
                args.gallery,
                gallery.dim,
                model.name,
                model_run_arg(&model)
            );
        }
    }
    let tmp = TempDir::new("search")?;
    let qfile = tmp.0.join("queries.arrow");
    let notes = embed_in_worker(&model, &queries, &qfile)?;
    let q = Gallery::read(&qfile, shared::columns::EMBEDDING)?;
    let k = args.k.min(gallery.len());
    let started = Instant::now();
    let nb = dml_metrics::knn(
        &q.values,
        &gallery.values,
        gallery.dim,
        k,
        distance,
        dml_metrics::Exclude::None,
    )?;
    tracing::info!(
        "searched {} queries over {} gallery items in {:.1} ms",
        q.len(),
        gallery.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let q_paths = q.paths.clone().unwrap_or_default();
    let q_classes = q.classes.clone().unwrap_or_default();
    let results: Vec<QueryResult> = (0..q.len())
        .map(|i| QueryResult {
            query: q_paths.get(i).cloned().unwrap_or_default(),
            class: q_classes.get(i).cloned().flatten(),
            neighbors: (0..k)
                .map(|r| {
                    let g = nb.idx[i * k + r] as usize;
                    Hit {
                        rank: r + 1,
                        path: gallery.paths.as_ref().map(|p| p[g].clone()),
                        class: gallery.classes.as_ref().and_then(|c| c[g].clone()),
                        image_id: gallery.image_ids[g],
                        distance: nb.dist[i * k + r],
                    }
                })
                .collect(),
        })
        .collect();
    if args.json {
        crate::out::println(&serde_json::to_string_pretty(&results)?);
    } else {
        let mut s = String::new();
        for r in &results {
            let _ = writeln!(
                s,
                "query {}{}",
                r.query,
                r.class
                    .as_deref()
                    .map(|c| format!("  (class {c})"))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                s,
                "  {:>4}  {:>10}  {:<20} path",
                "rank", "distance", "class"
            );
            for h in &r.neighbors {
                let _ = writeln!(
                    s,
                    "  {:>4}  {:>10.6}  {:<20} {}",
                    h.rank,
                    h.distance,
                    h.class.as_deref().unwrap_or("-"),
                    h.path
                        .clone()
                        .unwrap_or_else(|| format!("image {}", h.image_id))
                );
            }
        }
        crate::out::println(s.trim_end());
    }
    if let Some(html) = &args.html {
        let page = search_page(&model, &args.gallery, distance, &results);
        if let Some(parent) = html.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the folder {}", parent.display()))?;
        }
        std::fs::write(html, page).with_context(|| format!("writing {}", html.display()))?;
        eprintln!("wrote {}", html.display());
    }
    report_failed(
        &notes.failed,
        &format!("the other {} queries were searched", notes.rows),
    )
}

/// How `--run` names the model's run in a suggested command.
fn model_run_arg(model: &UseModel) -> String {
    model
        .name
        .split_once('[')
        .map_or(model.name.clone(), |(run, _)| run.to_string())
}

/// Thumbnail size on the search page.
const THUMB_PX: u32 = 112;

/// The search page: each query and its neighbours as thumbnails, the HTML report's cells.
fn search_page(
    model: &UseModel,
    gallery: &str,
    distance: dml_metrics::Distance,
    results: &[QueryResult],
) -> String {
    use rayon::prelude::*;
    let mut files: Vec<&str> = Vec::new();
    for r in results {
        files.push(&r.query);
        for h in &r.neighbors {
            if let Some(p) = &h.path {
                files.push(p);
            }
        }
    }
    files.sort_unstable();
    files.dedup();
    let thumbs: BTreeMap<&str, Option<String>> = files
        .par_iter()
        .map(|&f| {
            (
                f,
                dml_stages::thumbs::file_thumbnail(Path::new(f), THUMB_PX),
            )
        })
        .collect();
    let cell = |h: &mut String, file: Option<&str>, class: &str, captions: &[String]| {
        let title = file.unwrap_or("");
        let _ = write!(
            h,
            "<div class=\"cell {class}\" style=\"width:{}px\" title=\"{}\"><div class=\"im\" style=\"width:{px}px;height:{px}px\">",
            THUMB_PX + 6,
            esc(title),
            px = THUMB_PX
        );
        match file.and_then(|f| thumbs.get(f).cloned().flatten()) {
            Some(uri) => {
                let _ = write!(h, "<img alt=\"{}\" src=\"{uri}\">", esc(title));
            }
            None => h.push_str("<span class=\"muted\">no image</span>"),
        }
        h.push_str("</div>");
        for c in captions {
            let _ = write!(h, "<div class=\"c\">{}</div>", esc(c));
        }
        h.push_str("</div>");
    };
    let title = format!("dml search: {}", model.name);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    let _ = write!(
        h,
        "<p class=\"muted\">gallery <b>{}</b>, {} distance, {} queries; network of {} (record {}). \
         A neighbour's frame is green when its class is the query's, red when not.</p>",
        esc(gallery),
        match distance {
            dml_metrics::Distance::Euclidean => "euclidean",
            dml_metrics::Distance::Cosine => "cosine",
        },
        results.len(),
        esc(&model.name),
        esc(&model.record_path.display().to_string())
    );
    for r in results {
        h.push_str("<div class=\"q\"><div class=\"strip\">");
        let qname = Path::new(&r.query)
            .file_name()
            .map_or(r.query.clone(), |n| n.to_string_lossy().into_owned());
        let mut caps = vec![qname];
        if let Some(c) = &r.class {
            caps.push(c.clone());
        }
        cell(&mut h, Some(&r.query), "query", &caps);
        for n in &r.neighbors {
            let class = match (&r.class, &n.class) {
                (Some(a), Some(b)) if a == b => "ok",
                (Some(_), Some(_)) => "bad",
                _ => "",
            };
            let mut caps = vec![format!("#{} d={:.3}", n.rank, n.distance)];
            caps.push(n.class.clone().unwrap_or_else(|| "-".into()));
            cell(&mut h, n.path.as_deref(), class, &caps);
        }
        h.push_str("</div></div>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// Export formats.
#[derive(Debug, Default)]
struct Formats {
    torchscript: bool,
    safetensors: bool,
    onnx: bool,
}

fn parse_formats(list: &[String]) -> Result<Formats> {
    let mut f = Formats::default();
    for s in list {
        match s.trim().to_ascii_lowercase().as_str() {
            "torchscript" | "pt" => f.torchscript = true,
            "safetensors" => f.safetensors = true,
            "onnx" => f.onnx = true,
            other => bail!("--format `{other}`: choose from torchscript, safetensors, onnx"),
        }
    }
    if !(f.torchscript || f.safetensors || f.onnx) {
        bail!("--format: name at least one of torchscript, safetensors, onnx");
    }
    Ok(f)
}

/// The Python that writes ONNX: `DML_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("DML_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The script `dml export --format onnx` runs: PyTorch's exporter on the traced model.
const ONNX_SCRIPT: &str = r#"
import sys, torch
pt, out, crop = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = torch.jit.load(pt, map_location="cpu").eval()
x = torch.zeros(2, 3, crop, crop)
torch.onnx.export(m, (x,), out, dynamo=False, input_names=["images"], output_names=["embeddings"],
                  dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=17)
"#;

/// `dml export`.
pub fn export(store_dir: &Path, args: ExportArgs) -> Result<()> {
    let formats = parse_formats(&args.format)?;
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out `{}` is a file: name a folder", args.out.display());
    }
    if formats.onnx {
        let py = python();
        let ok = std::process::Command::new(&py)
            .args(["-c", "import torch, onnx"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "--format onnx: dml writes ONNX with PyTorch's exporter (torch.onnx.export on the \
                 TorchScript model), and `{py}` cannot import torch and onnx: install them \
                 (`pip install torch onnx`) or point DML_PYTHON at a Python that has them; \
                 nothing was written (model.pt, which `torch.onnx.export` can convert, comes \
                 with --format torchscript)"
            );
        }
    }
    let store = ArtifactStore::open_read_only(store_dir)?;
    let model = resolve(&store, &args.model)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the folder {}", args.out.display()))?;
    let job = ExportJob {
        crop: model.crop,
        torchscript: formats.torchscript || formats.onnx,
        safetensors: formats.safetensors,
    };
    let request = WorkerRequest {
        job: WorkerJob::Export(job),
        node: "export".into(),
        key: model.train_key.clone(),
        out_dir: args.out.clone(),
        inputs: BTreeMap::from([("train".to_string(), model.train_dir.clone())]),
        checkpoint_dir: None,
        device_index: None,
    };
    run_request(&request, &mut |len, template| {
        progress_bar(len, template, "export")
    })?;
    let mut written = Vec::new();
    if formats.torchscript || formats.onnx {
        written.push("model.pt");
    }
    if formats.onnx {
        let pt = args.out.join("model.pt");
        let onnx = args.out.join("model.onnx");
        let out = std::process::Command::new(python())
            .args(["-c", ONNX_SCRIPT])
            .arg(&pt)
            .arg(&onnx)
            .arg(model.crop.to_string())
            .output()
            .with_context(|| format!("running {}", python()))?;
        if !out.status.success() {
            bail!(
                "torch.onnx.export could not convert {}: {}",
                pt.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if !formats.torchscript {
            let _ = std::fs::remove_file(&pt);
            written.pop();
        }
        written.push("model.onnx");
    }
    if formats.safetensors {
        written.push("model.safetensors");
        let script = args.out.join("load_model.py");
        std::fs::write(&script, LOAD_MODEL_PY)
            .with_context(|| format!("writing {}", script.display()))?;
        written.push("load_model.py");
    }
    let meta = export_json(&model, &formats)?;
    let meta_path = args.out.join("model.json");
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)? + "\n")
        .with_context(|| format!("writing {}", meta_path.display()))?;
    written.push("model.json");
    eprintln!(
        "exported `{}` to {}: {}",
        model.name,
        args.out.display(),
        written.join(", ")
    );
    Ok(())
}

/// `load_model.py`, written beside `model.safetensors`.
const LOAD_MODEL_PY: &str = include_str!("../scripts/load_model.py");

/// `model.json` of an export: the network and everything its preprocessing needs.
fn export_json(model: &UseModel, formats: &Formats) -> Result<Value> {
    let m = model
        .model_json
        .get("model")
        .cloned()
        .ok_or_else(|| anyhow!("{}: no `model` settings", model.train_dir.display()))?;
    let cfg: dml_jobspec::train_config::ModelConfig = serde_json::from_value(m.clone())
        .with_context(|| format!("reading {}/model.json", model.train_dir.display()))?;
    let scaling = cfg.input_scaling();
    let (mean, std) = scaling.mean_std();
    let mut files = serde_json::Map::new();
    if formats.torchscript {
        files.insert("torchscript".into(), json!("model.pt"));
    }
    if formats.onnx {
        files.insert("onnx".into(), json!("model.onnx"));
    }
    if formats.safetensors {
        files.insert("safetensors".into(), json!("model.safetensors"));
        files.insert("loader".into(), json!("load_model.py"));
    }
    Ok(json!({
        "format": "dml-export-v1",
        "dml": env!("CARGO_PKG_VERSION"),
        "libtorch": dml_stages::LIBTORCH_VERSION,
        "run": model.name,
        "record": model.record_path.file_name().map(|f| f.to_string_lossy().into_owned()),
        "train_key": model.train_key,
        "files": files,
        "backbone": cfg.backbone.name(),
        "torchvision_model": cfg.backbone.torchvision_name(),
        "timm_model": cfg.backbone.timm_name(),
        "head": cfg.head.name(),
        "embedding_dim": cfg.embedding_dim,
        "normalize": cfg.normalize.unwrap_or(false),
        "model": m,
        "input": {
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": "float32",
            "resize": model.resize,
            "resize_mode": "both sides to resize (aspect ratio not kept), bilinear with antialiasing as Pillow's Image.resize(BILINEAR)",
            "crop": model.crop,
            "crop_mode": "centre: offset ((resize - crop) // 2, (resize - crop) // 2)",
            "scaling": scaling.name(),
            "formula": "(x / 255 - mean[c]) / std[c] in float32, x in 0..255",
            "mean": mean,
            "std": std,
        },
        "output": {
            "embedding_dim": cfg.embedding_dim,
            "l2_normalized": cfg.normalize.unwrap_or(false),
        },
        "embed": {"batch_size": model.batch_size, "device": model.device.name()},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_refuse_unknown_ones() {
        let f = parse_formats(&["torchscript".into(), "safetensors".into()]).unwrap();
        assert!(f.torchscript && f.safetensors && !f.onnx);
        let err = parse_formats(&["tflite".into()]).unwrap_err().to_string();
        assert!(err.contains("tflite") && err.contains("onnx"), "{err}");
    }
}
