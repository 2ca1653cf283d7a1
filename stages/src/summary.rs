//! What a run will do, said before it does it: the images, the decode cache's size, the
//! training (steps × batch, network, loss, device) and, where this store has measured a
//! comparable run, how long the training will take; and the warnings a new user needs
//! before hours go by (upscaled images, a random-init backbone whose published numbers
//! assume ImageNet weights, a 224-px network trained on the CPU, classes smaller than K).
//!
//! Everything here only reads: the cached index when there is one, else the dataset's
//! own listing (and a few image headers), and the manifests of earlier train artifacts.
use crate::config::{DatasetKindName, ResolvedConfig};
use crate::dag::Experiment;
use crate::device::{self, DeviceKind};
use dml_artifacts::{tables, ArtifactStore, Manifest};
use dml_datasets as ds;
use dml_jobspec::train_config::{Backbone, Precision};
use dml_pipeline::{Plan, PlannedNode, Status};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// A crop at or above which a network other than the small CNN is slow on a CPU.
const LARGE_CROP: u32 = 160;
/// How many times the images' own size `image.resize` may be before it is called out.
const UPSCALE_WARNING: f64 = 2.0;
/// Image headers read to learn a dataset's image size before it is indexed.
const SAMPLED_HEADERS: usize = 16;

/// The images of an experiment's dataset, as far as can be told without indexing it.
#[derive(Debug, Clone, Default)]
struct Images {
    total: usize,
    train: usize,
    /// Images evaluated on (test, or query + gallery).
    eval: usize,
    train_classes: usize,
    /// Median of max(width, height) over the images (or a sample of them).
    median_side: Option<u32>,
    /// Training classes with fewer than K images, and with a single one.
    classes_below_k: usize,
    single_image_classes: usize,
    /// Where the figures come from: `the index`, `the dataset's lists`, ….
    source: &'static str,
    /// Image files of formats dml does not read, as a warning (from a listing).
    unread: Option<String>,
}

/// What one experiment (a sweep point) will do.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The experiment's name (with its sweep point).
    pub name: String,
    /// The lines to show.
    pub lines: Vec<String>,
    /// Warnings to show once per run.
    pub warnings: Vec<String>,
}

impl RunSummary {
    /// The summary as text, for `dml run --dry-run`.
    pub fn text(&self) -> String {
        let mut s = format!("\n{} will:", self.name);
        for l in &self.lines {
            let _ = write!(s, "\n  {l}");
        }
        s
    }
}

/// Summarises every experiment of a plan. `users` maps node ids to the experiments that
/// use them (what [`crate::dag::build_dag`] returns).
pub fn summarise(
    store: &ArtifactStore,
    experiments: &[Experiment],
    users: &HashMap<String, Vec<usize>>,
    plan: &Plan,
) -> Vec<RunSummary> {
    let history = TrainHistory::read(store);
    experiments
        .iter()
        .enumerate()
        .map(|(e, exp)| {
            let node = |stage: &str| {
                plan.nodes.iter().find(|n| {
                    n.stage == stage
                        && !n.id.contains(":untrained")
                        && users.get(&n.id).is_some_and(|u| u.contains(&e))
                })
            };
            summarise_one(
                store,
                exp,
                &history,
                node("index"),
                node("decode"),
                node("train"),
            )
        })
        .collect()
}

fn summarise_one(
    store: &ArtifactStore,
    exp: &Experiment,
    history: &TrainHistory,
    index: Option<&PlannedNode>,
    decode: Option<&PlannedNode>,
    train: Option<&PlannedNode>,
) -> RunSummary {
    let c = &exp.config;
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    if c.dataset.kind == DatasetKindName::Synthetic && !c.dataset.root.is_empty() {
        warnings.push(format!(
            "dataset.root = \"{}\" is not read: dataset.kind = \"synthetic\" generates its images (set dataset.kind = \"folder\", \"cub\", \"sop\" … to read it)",
            c.dataset.root
        ));
    }
    let images = images_of(store, c, index);
    if let Some(im) = &images {
        let side = im
            .median_side
            .map(|s| format!(", median side {s} px"))
            .unwrap_or_default();
        lines.push(format!(
            "read {} images ({} to train on in {} classes, {} to evaluate{side}; from {})",
            thousands(im.total as u64),
            thousands(im.train as u64),
            thousands(im.train_classes as u64),
            thousands(im.eval as u64),
            im.source
        ));
    }
    let resize = u64::from(c.image.resize);
    match (&images, decode) {
        (Some(im), Some(d)) => {
            let bytes = im.total as u64 * resize * resize * 3;
            lines.push(format!(
                "decode every image once to {r}×{r} px: a decode cache of {}{}",
                human_bytes(bytes),
                cached(d),
                r = c.image.resize
            ));
        }
        (None, Some(d)) => lines.push(format!(
            "decode every image once to {r}×{r} px (3 bytes a pixel){}",
            cached(d),
            r = c.image.resize
        )),
        _ => {}
    }
    if let (Some(im), Some(side)) = (&images, images.as_ref().and_then(|i| i.median_side)) {
        let ratio = f64::from(c.image.resize) / f64::from(side.max(1));
        if ratio > UPSCALE_WARNING {
            let new_resize = side + side / 8;
            warnings.push(format!(
                "image.resize = {} is {ratio:.1}× the images' own size (median side {side} px): every image is upscaled into the decode cache ({} for {} images); for images this small use e.g. --set image.resize={new_resize} --set image.crop={side}",
                c.image.resize,
                human_bytes(im.total as u64 * resize * resize * 3),
                thousands(im.total as u64)
            ));
        }
    }
    let kind = device::resolve_kind(&c.train.device).unwrap_or(DeviceKind::Cpu);
    let batch = u64::from(c.plan.p) * u64::from(c.plan.k);
    let steps = u64::from(c.plan.steps);
    let model = &c.train.model;
    let init = match &model.pretrained {
        Some(p) => format!("from {}", p.display()),
        None if model.backbone == Backbone::SmallCnn => "random init".into(),
        None => "random init (no train.model.pretrained)".into(),
    };
    let precision = match c.train.precision {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
    };
    if train.is_some() {
        lines.push(format!(
            "train {} steps × {batch} images (P {} × K {}) = {} images at {crop}×{crop} px: {} ({init}) + {} head → {}-d, {} loss, on the {} in {precision}",
            thousands(steps),
            c.plan.p,
            c.plan.k,
            thousands(steps * batch),
            model.backbone.name(),
            model.head.name(),
            model.embedding_dim,
            c.train.loss.name(),
            kind.name(),
            crop = c.image.crop
        ));
    }
    let rate = history.images_per_second(model.backbone, c.image.crop, kind, c.train.precision);
    match train {
        Some(t) if t.status == Status::Cached => lines.push("training: cached".into()),
        Some(t) => {
            let done = resumed_step(store, &t.key);
            let remaining = steps.saturating_sub(done) * batch;
            match &rate {
                Some((r, how)) => lines.push(format!(
                    "training time: about {} at {r:.0} images/s{} ({how})",
                    duration(remaining as f64 / r),
                    if done > 0 {
                        format!(", resuming at step {done}")
                    } else {
                        String::new()
                    }
                )),
                None => lines.push(format!(
                    "training time: no estimate yet (no train artifact in this store used {} at {} px on the {} in {precision})",
                    model.backbone.name(),
                    c.image.crop,
                    kind.name()
                )),
            }
        }
        None => {}
    }
    if train.is_some() && model.pretrained.is_none() && model.backbone != Backbone::SmallCnn {
        warnings.push(format!(
            "train.model.backbone = {} starts from random weights: published numbers for it (the presets' included) assume {}; export them with {} and set train.model.pretrained, or expect far lower recall",
            model.backbone.name(),
            if model.backbone.timm_name().is_some() {
                "pretrained weights (DINO, AugReg or CLIP)"
            } else {
                "ImageNet weights"
            },
            model
                .backbone
                .weights_script()
                .unwrap_or("scripts/export_torchvision.py")
        ));
    }
    if train.is_some_and(|t| t.status != Status::Cached)
        && kind == DeviceKind::Cpu
        && model.backbone != Backbone::SmallCnn
        && c.image.crop >= LARGE_CROP
    {
        let eta = rate
            .map(|(r, _)| {
                format!(
                    "about {} for {} steps",
                    duration((steps * batch) as f64 / r),
                    thousands(steps)
                )
            })
            .unwrap_or_else(|| {
                "expect a few images per second on a CPU, i.e. days for a seed preset".into()
            });
        warnings.push(format!(
            "training {} at {} px on the CPU: {eta}; a GPU (train.device = \"cuda\"), a smaller image.crop or plan.steps is faster",
            model.backbone.name(),
            c.image.crop
        ));
    }
    if let Some(w) = images.as_ref().and_then(|im| im.unread.clone()) {
        warnings.push(w);
    }
    if let Some(im) = &images {
        if im.classes_below_k > 0 {
            let mut w = format!(
                "{} of the {} training classes have fewer than plan.k = {} images: their batches repeat images",
                thousands(im.classes_below_k as u64),
                thousands(im.train_classes as u64),
                c.plan.k
            );
            if im.single_image_classes > 0 {
                let _ = write!(
                    w,
                    ", and {} classes have a single image, paired with itself (a positive at distance 0 that teaches nothing)",
                    thousands(im.single_image_classes as u64)
                );
            }
            w.push_str("; a smaller --set plan.k, or leaving those classes out, avoids it");
            warnings.push(w);
        }
    }
    RunSummary {
        name: exp.name.clone(),
        lines,
        warnings,
    }
}

fn cached(node: &PlannedNode) -> &'static str {
    if node.status == Status::Cached {
        " (cached)"
    } else {
        ""
    }
}

/// The step an interrupted build of `key` resumes at (0 if none).
fn resumed_step(store: &ArtifactStore, key: &str) -> u64 {
    let dir = store.layout().checkpoint(key);
    if !dir.is_dir() {
        return 0;
    }
    dml_jobspec::resume::Checkpoints::new(dir)
        .latest()
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// The images of a dataset: from the cached index, else from the synthetic spec or the
/// dataset's own listing (with a few image headers for the size).
fn images_of(
    store: &ArtifactStore,
    c: &ResolvedConfig,
    index: Option<&PlannedNode>,
) -> Option<Images> {
    let k = c.plan.k as usize;
    if let Some(node) = index.filter(|n| n.status == Status::Cached) {
        let path = store
            .object_dir(&node.stage, &node.key)
            .join("index.parquet");
        if let Ok(rows) = tables::read_index(&path) {
            let mut sides: Vec<u32> = rows.iter().map(|r| r.width.max(r.height)).collect();
            let mut per_class: BTreeMap<u32, usize> = BTreeMap::new();
            for r in rows.iter().filter(|r| r.split == ds::Split::Train) {
                *per_class.entry(r.class_id).or_default() += 1;
            }
            let train = per_class.values().sum();
            return Some(Images {
                total: rows.len(),
                train,
                eval: rows.len() - train,
                train_classes: per_class.len(),
                median_side: median(&mut sides),
                classes_below_k: per_class.values().filter(|&&n| n < k).count(),
                single_image_classes: per_class.values().filter(|&&n| n == 1).count(),
                source: "the index",
                unread: None,
            });
        }
    }
    if c.dataset.kind == DatasetKindName::Synthetic {
        let s = &c.synthetic;
        let per = s.images_per_class as usize;
        let classes = s.classes as usize;
        // The folder adapter trains on the first half of the sorted classes.
        let train_classes = classes / 2;
        return Some(Images {
            total: classes * per,
            train: train_classes * per,
            eval: (classes - train_classes) * per,
            train_classes,
            median_side: Some(s.image_size),
            classes_below_k: if per < k { train_classes } else { 0 },
            single_image_classes: if per == 1 { train_classes } else { 0 },
            source: "the synthetic set's settings",
            unread: None,
        });
    }
    let root = Path::new(&c.dataset.root);
    let opts = ds::ListOptions {
        train_classes: (!c.dataset.train_classes.is_empty())
            .then(|| c.dataset.train_classes.clone()),
    };
    let listing = ds::list(crate::index::dataset_kind(c.dataset.kind), root, &opts).ok()?;
    let records = &listing.records;
    let mut per_class: BTreeMap<u32, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| r.split == ds::Split::Train) {
        *per_class.entry(r.class_id).or_default() += 1;
    }
    let step = (records.len() / SAMPLED_HEADERS).max(1);
    let mut sides: Vec<u32> = records
        .iter()
        .step_by(step)
        .take(SAMPLED_HEADERS)
        .filter_map(|r| ds::image_dims(&root.join(&r.path)).ok())
        .map(|(w, h)| w.max(h))
        .collect();
    let train = per_class.values().sum();
    Some(Images {
        total: records.len(),
        train,
        eval: records.len() - train,
        train_classes: per_class.len(),
        median_side: median(&mut sides),
        classes_below_k: per_class.values().filter(|&&n| n < k).count(),
        single_image_classes: per_class.values().filter(|&&n| n == 1).count(),
        source: "the dataset's listing and a sample of image headers",
        unread: listing.unread_summary(),
    })
}

fn median(v: &mut [u32]) -> Option<u32> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// Training speeds measured by this store's earlier train artifacts.
struct TrainHistory {
    /// (backbone, crop, device, precision) → (images per second, finished).
    seen: Vec<(String, u64, String, String, f64, String)>,
}

impl TrainHistory {
    fn read(store: &ArtifactStore) -> TrainHistory {
        let mut seen = Vec::new();
        let dir = store.layout().objects().join("train");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(m) = Manifest::read(&entry.path().join("manifest.json")) else {
                continue;
            };
            let notes = &m.notes;
            let rate = notes
                .get("steady_images_per_second")
                .or_else(|| notes.get("images_per_second"))
                .and_then(Value::as_f64)
                .filter(|r| r.is_finite() && *r > 0.0);
            let Some(rate) = rate else { continue };
            let s = &m.settings;
            let text = |p: &str| {
                s.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let backbone = text("/train/model/backbone");
            let crop = s
                .pointer("/image/crop")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let device = text("/train/device");
            let precision = match text("/train/precision").as_str() {
                "" => "f32".to_string(),
                p => p.to_string(),
            };
            let finished = m
                .provenance
                .get("finished")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            seen.push((backbone, crop, device, precision, rate, finished));
        }
        TrainHistory { seen }
    }

    /// The newest measured speed of a comparable run, and how it was found.
    fn images_per_second(
        &self,
        backbone: Backbone,
        crop: u32,
        device: DeviceKind,
        precision: Precision,
    ) -> Option<(f64, String)> {
        let precision = match precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        };
        self.seen
            .iter()
            .filter(|(b, c, d, p, ..)| {
                b == backbone.name()
                    && *c == u64::from(crop)
                    && d == device.name()
                    && p == precision
            })
            .max_by(|a, b| a.5.cmp(&b.5))
            .map(|(.., rate, finished)| {
                (
                    *rate,
                    format!(
                        "measured by this store's train artifact of {}",
                        finished.get(..10).unwrap_or("an earlier run")
                    ),
                )
            })
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in binary units (`4.2 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds as `45 s`, `12 min`, `3.4 h` or `2.1 days`.
pub fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 90.0 * 60.0 => format!("{:.0} min", s / 60.0),
        s if s < 48.0 * 3600.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86400.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(4_300_000_000), "4,300,000,000");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(duration(40.0), "40 s");
        assert_eq!(duration(600.0), "10 min");
        assert_eq!(duration(3.0 * 3600.0), "3.0 h");
        assert_eq!(duration(6.0 * 86400.0), "6.0 days");
    }

    #[test]
    fn the_median_side_of_odd_and_even_samples() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [64, 500, 32]), Some(64));
        assert_eq!(median(&mut [10, 40, 20, 30]), Some(30));
    }
}
