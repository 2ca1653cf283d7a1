//! The model stages: `decode` (every image resized once into a memory-mapped
//! cache), `train` (P×K batches → `model.safetensors`, `train_log.parquet`,
//! `loss.png`) and `embed` (the evaluation split → `embeddings.arrow`).
use crate::config::{DatasetKindName, EmbedSettings, ImageSettings, TrainSettings};
use crate::loader::Batch;
use crate::plots;
use crate::resume::{self, Checkpoints};
use crate::train::{self, InputScaling, TrainConfig, Trainer};
use crate::validation::{ValidationPlan, Validator};
use anyhow::{anyhow, bail, Context};
use dml_artifacts::tables::{self, Embeddings, TrainLogRow};
use dml_datasets as ds;
use dml_pipeline::{BoxError, RunContext, Stage};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The dataset root a stage reads images from: the synth artifact, or `dataset.root`.
#[derive(Debug, Clone)]
pub enum ImageRoot {
    /// `images/` of the synth input.
    Synth,
    /// An external directory (not part of the key: the index's fingerprint is).
    Dir(PathBuf),
}

impl ImageRoot {
    fn resolve(&self, ctx: &RunContext<'_>) -> Result<PathBuf, BoxError> {
        Ok(match self {
            ImageRoot::Synth => ctx.input("synth")?.join("images"),
            ImageRoot::Dir(p) => p.clone(),
        })
    }
}

fn to_ds_scaling(s: InputScaling) -> ds::InputScaling {
    match s {
        InputScaling::SignedUnit => ds::InputScaling::Inception,
        InputScaling::UnitRange => ds::InputScaling::Unit,
        InputScaling::ImagenetMeanStd => ds::InputScaling::ImagenetMeanStd,
    }
}

/// Resizes every indexed image once into `images.u8` (+ its header).
pub struct DecodeStage {
    resize: u32,
    skip_bad: bool,
    root: ImageRoot,
}

impl DecodeStage {
    /// A decode stage.
    pub fn new(image: &ImageSettings, skip_bad: bool, root: ImageRoot) -> Arc<Self> {
        Arc::new(DecodeStage {
            resize: image.resize,
            skip_bad,
            root,
        })
    }
}

impl Stage for DecodeStage {
    fn name(&self) -> &'static str {
        "decode"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        json!({ "image": { "resize": self.resize }, "index": { "skip_bad_images": self.skip_bad } })
    }
    fn identity(&self) -> String {
        format!("{:?}", self.root)
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let root = self.root.resolve(ctx)?;
        let index = tables::read_index(&ctx.input("index")?.join("index.parquet"))?;
        let paths: Vec<String> = index.iter().map(|r| r.path.clone()).collect();
        let bar = ctx.progress(1, "{prefix:>10} decoding {msg}");
        bar.set_message(format!("{} images at {}²", paths.len(), self.resize));
        let started = Instant::now();
        let report =
            ds::DecodeCache::build(&root, &paths, self.resize, ctx.out_dir(), self.skip_bad)
                .map_err(|e| {
                    if self.skip_bad {
                        anyhow!(e)
                    } else {
                        anyhow!(
                    "{e}; fix or remove the image, or pass --skip-bad-images to go on without it"
                )
                    }
                })?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            "decoded {} images in {secs:.1}s ({:.0} img/s)",
            paths.len(),
            paths.len() as f64 / secs
        );
        ctx.note("images", json!(paths.len()));
        ctx.note(
            "images_per_second",
            json!(paths.len() as f64 / secs.max(1e-9)),
        );
        ctx.note("skipped_images", json!(report.skipped));
        Ok(())
    }
}

/// Trains the embedding network on the planned batches.
pub struct TrainStage {
    settings: TrainSettings,
    crop: u32,
    /// Crop kind, flips and ranges (`[image]`; train key only).
    augment: ds::AugmentPolicy,
    device: Device,
    /// Build the initialised network only (the untrained baseline).
    untrained: bool,
    /// `[train.validation]`, resolved (`None` when off).
    validation: Option<ValidationPlan>,
}

/// `cpu` or `cuda`: the device kind is part of the train key (outputs differ).
fn device_kind(d: Device) -> &'static str {
    if d.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

impl TrainStage {
    /// Validates the settings against the plan's layout and resolves the device;
    /// `validation` is [`ValidationPlan::resolve`]'s (never for the untrained baseline).
    pub fn new(
        settings: &TrainSettings,
        image: &ImageSettings,
        plan_k: u32,
        untrained: bool,
        validation: Option<ValidationPlan>,
    ) -> anyhow::Result<Arc<Self>> {
        let cfg = train_config(settings);
        cfg.validate().context("invalid [train] settings")?;
        if let Some(k) = settings.loss.required_samples_per_class() {
            if plan_k as usize != k && !untrained {
                bail!(
                    "train.loss `{}` needs batches of K = {k} images per class, but plan.k = {plan_k}; set --set plan.k={k} (the seed uses P = {} there)",
                    settings.loss.name(),
                    if k == 2 { 60 } else { 30 }
                );
            }
        }
        if image.crop > image.resize {
            bail!(
                "image.crop = {} is larger than image.resize = {}",
                image.crop,
                image.resize
            );
        }
        let augment = image.augment_policy();
        augment.validate().context("invalid [image] augmentation")?;
        let device = train::resolve_device(&settings.device)?;
        if settings.precision == train::Precision::Bf16 && !untrained {
            train::torch_state::check_bf16(device, train::torch_state::cpu_has_bf16())?;
        }
        Ok(Arc::new(TrainStage {
            settings: settings.clone(),
            crop: image.crop,
            augment,
            device,
            untrained,
            validation: validation.filter(|_| !untrained),
        }))
    }
}

fn train_config(s: &TrainSettings) -> TrainConfig {
    TrainConfig {
        model: s.model.clone(),
        loss: s.loss.clone(),
        optimizer: s.optimizer.clone(),
        precision: s.precision,
        deterministic: s.deterministic,
    }
}

/// The augmentation's part of the train key: only what differs from the default (so the
/// keys of runs made before these settings existed stay valid), and the random-resized
/// ranges only when that crop is used.
fn augment_key(a: &ds::AugmentPolicy) -> serde_json::Map<String, serde_json::Value> {
    let d = ds::AugmentPolicy::default();
    let mut m = serde_json::Map::new();
    if a.flip != d.flip {
        m.insert("flip".into(), json!(a.flip));
    }
    if a.crop != d.crop {
        m.insert("train_crop".into(), json!(a.crop));
    }
    if a.crop == ds::TrainCrop::RandomResized {
        m.insert("random_resized_scale".into(), json!(a.scale));
        m.insert("random_resized_ratio".into(), json!(a.ratio));
    }
    m
}

impl Stage for TrainStage {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        let mut t = serde_json::to_value(&self.settings).unwrap_or_default();
        if let Some(o) = t.as_object_mut() {
            // Not part of the output: where checkpoints go, and the device spelling
            // (only the resolved kind is).
            o.remove("checkpoint_every");
            o.insert("device".into(), json!(device_kind(self.device)));
            if !self.settings.deterministic {
                o.remove("deterministic");
            }
            // Off (the default) leaves the key as it was before validation existed.
            o.remove("validation");
            if let Some(v) = &self.validation {
                o.insert("validation".into(), json!(v));
            }
            if self.untrained {
                for k in ["loss", "optimizer", "precision", "deterministic"] {
                    o.remove(k);
                }
                o.insert("untrained".into(), json!(true));
            }
        }
        let mut image = serde_json::Map::new();
        image.insert("crop".into(), json!(self.crop));
        if !self.untrained {
            image.extend(augment_key(&self.augment));
        }
        json!({ "train": t, "image": image })
    }
    fn uses_device(&self) -> bool {
        self.device.is_cuda()
    }
    fn resume_note(&self, env: &dml_pipeline::PlanEnv<'_>, key: &str) -> Option<String> {
        // Read only: planning never creates the checkpoint directory.
        let dir = env.store.root().join("cache").join("checkpoints").join(key);
        if !dir.is_dir() {
            return None;
        }
        Checkpoints::new(dir)
            .latest()
            .map(|(step, _)| format!("resumes from the checkpoint at step {step}"))
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let cfg = train_config(&self.settings);
        let seed = self.settings.seed;
        // The kind was fixed when the key was computed; the scheduler's device slot says
        // which GPU of that kind (N sweep points on N GPUs).
        let device = if self.device.is_cuda() {
            train::resolve_device_in_slot(&self.settings.device, ctx.device_index())?
        } else {
            self.device
        };
        let mut trainer = Trainer::new(&cfg, device, seed)?;
        let out = ctx.out_dir().to_path_buf();
        std::fs::write(out.join("model.json"), serde_json::to_string_pretty(&cfg)?)?;
        if self.untrained {
            trainer.save_weights(&out.join("model.safetensors"))?;
            return Ok(());
        }
        let cache = Arc::new(ds::DecodeCache::open(ctx.input("decode")?)?);
        let index = tables::read_index(&ctx.input("index")?.join("index.parquet"))?;
        let plan = tables::read_plan(&ctx.input("plan")?.join("plan.parquet"))?;
        let steps: BTreeMap<u32, Vec<tables::PlanRow>> =
            plan.iter().fold(BTreeMap::new(), |mut m, r| {
                m.entry(r.step).or_insert_with(Vec::new).push(*r);
                m
            });
        let total = steps.len() as u64;
        let batches = substitute_skipped(&steps, &index, &cache, ctx)?;
        let crop = self.crop;
        let scaling = to_ds_scaling(cfg.model.input_scaling());
        let mut validator = match &self.validation {
            Some(v) => {
                let planned: BTreeSet<u32> = plan.iter().map(|r| r.class_id).collect();
                let validator = Validator::new(v, &index, &planned, cache.clone(), crop, scaling)?;
                ctx.note("validation_images", json!(validator.images()));
                ctx.note("validation_classes", json!(validator.classes()));
                Some(validator)
            }
            None => None,
        };

        // Resumable checkpoints live outside the store, per key; the engine
        // removes them once this artifact is committed.
        let checkpoints = Checkpoints::new(ctx.key_cache_dir("checkpoints")?);
        let mut log: Vec<TrainLogRow> = Vec::new();
        let mut start = 0u64;
        if let Some((step, dir)) = checkpoints.latest() {
            let start_over =
                || format!("resuming from {} (delete it to start over)", dir.display());
            trainer
                .load(&dir.join(resume::STATE_FILE))
                .with_context(start_over)?;
            log = serde_json::from_str(&std::fs::read_to_string(dir.join(resume::LOG_FILE))?)
                .with_context(start_over)?;
            start = trainer.updates();
            if start != step || log.len() as u64 != start {
                return Err(anyhow!(
                    "{}: {} log rows and {start} updates in checkpoint step-{step}",
                    start_over(),
                    log.len()
                )
                .into());
            }
            if let Some(v) = validator.as_mut() {
                v.resume(&log, &dir.join(resume::STATE_FILE))
                    .with_context(start_over)?;
            }
            tracing::info!("resuming {} from step {start}", ctx.node());
            ctx.note("resumed_from_step", json!(start));
        }
        let lr = cfg.optimizer.learning_rate;
        let lower_lr = format!("lower train.optimizer.learning_rate (now {lr:e}) and rerun");
        let kept = |checkpoints: &Checkpoints| match checkpoints.latest() {
            Some((step, dir)) => format!(
                "the last good checkpoint (step {step}) is kept in {}",
                dir.display()
            ),
            None => "no checkpoint was kept".to_string(),
        };
        let elapsed_before = log.last().map(|r| r.seconds).unwrap_or(0.0);

        // Batches are assembled ahead of the model by the loader's threads.
        let threads = crate::loader::default_threads(device);
        let mut loader = crate::loader::BatchLoader::start(
            crate::loader::LoaderSpec {
                cache: cache.clone(),
                batches: batches.clone(),
                crop,
                seed,
                policy: self.augment,
                scaling,
                device,
            },
            start,
            total,
            threads,
        )?;
        ctx.note("loader_threads", json!(threads));
        let bar = ctx.progress(
            total,
            "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
        );
        bar.set_position(start);
        let abort_at: Option<u64> = std::env::var("DML_FAULT_ABORT_AFTER_STEP")
            .ok()
            .and_then(|s| s.parse().ok());
        // Test hook: slow every step down, so a test can kill training midway.
        let step_delay = std::env::var("DML_FAULT_STEP_DELAY_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(std::time::Duration::from_millis);
        let every = u64::from(self.settings.checkpoint_every.max(1));
        let started = Instant::now();
        let mut images_done = 0usize;
        let mut last_images: Option<Tensor> = None;
        let mut waited = 0.0f64;
        // Throughput after the first steps (allocator warm-up, cuDNN autotuning).
        let warm_steps = ((total - start) / 5).min(5);
        let mut steady_from: Option<(Instant, usize)> = None;
        loop {
            let wait_started = Instant::now();
            let Some(received) = loader.next_batch() else {
                break;
            };
            let loaded = received?;
            let data_wait_s = wait_started.elapsed().as_secs_f64();
            waited += data_wait_s;
            let step = loaded.step;
            let (images, labels_t) = loaded.to_device(device);
            if let Some(d) = step_delay {
                std::thread::sleep(d);
            }
            let stats = trainer.step(&images, &labels_t, step, total).map_err(|e| {
                let hint = match e {
                    train::TrainError::NonFiniteLoss { .. } => {
                        format!("; training diverged; {lower_lr}")
                    }
                    _ => String::new(),
                };
                anyhow!(
                    "{e}; training stopped at step {step}; {}{hint}",
                    kept(&checkpoints)
                )
            })?;
            if !stats.mean_norm.is_finite() {
                return Err(anyhow!(
                    "the embeddings are no longer finite at step {step} (mean norm {}, loss {}); \
                     training diverged; {}; {lower_lr}",
                    stats.mean_norm,
                    stats.loss,
                    kept(&checkpoints)
                )
                .into());
            }
            images_done += labels_t.size()[0] as usize;
            last_images = Some(images);
            if step + 1 - start == warm_steps {
                steady_from = Some((Instant::now(), images_done));
            }
            let seconds = elapsed_before + started.elapsed().as_secs_f64();
            let mut row = TrainLogRow {
                step: step as u32,
                loss: stats.loss,
                lr: stats.lr,
                seconds,
                active_fraction: stats.active_fraction,
                mean_pos_dist: stats.mean_pos_dist,
                mean_neg_dist: stats.mean_neg_dist,
                mean_norm: stats.mean_norm,
                data_wait_s,
                val_recall_at_1: None,
                val_map_at_r: None,
            };
            let done = step + 1;
            if let Some(v) = validator.as_mut().filter(|v| v.due(done, total)) {
                let score = v.evaluate(&trainer, step as u32)?;
                row.val_recall_at_1 = Some(score.recall_at_1);
                row.val_map_at_r = Some(score.map_at_r);
            }
            log.push(row);
            let ips = images_done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} img/s active {:.0}%{}",
                stats.loss,
                stats.lr,
                ips,
                100.0 * stats.active_fraction,
                validator.as_ref().map(|v| v.progress()).unwrap_or_default()
            ));
            bar.inc(1);
            if done % every == 0 && done < total {
                // Weights, optimiser state, the best validation weights and the log as one
                // unit; never a non-finite one.
                checkpoints
                    .publish(done, |dir| {
                        let state = dir.join(resume::STATE_FILE);
                        let saved = match &validator {
                            Some(v) => {
                                let (tensors, meta) = v.checkpoint_extras();
                                trainer.save_with(&state, tensors, meta)
                            }
                            None => trainer.save(&state),
                        };
                        saved.map_err(|e| {
                            let hint = match e {
                                train::TrainError::NonFiniteTensor { .. } => {
                                    format!("; training diverged; {lower_lr}")
                                }
                                _ => String::new(),
                            };
                            anyhow!("checkpoint after step {done}: {e}{hint}")
                        })?;
                        std::fs::write(dir.join(resume::LOG_FILE), serde_json::to_string(&log)?)?;
                        Ok(())
                    })
                    .map_err(|e| anyhow!("{e}; {}", kept(&checkpoints)))?;
            }
            if abort_at == Some(done) {
                // Test hook: an interruption right after a checkpoint.
                std::process::abort();
            }
        }
        drop(loader);
        bar.finish_and_clear();
        let kept_weights = match validator.as_ref() {
            Some(v) => {
                v.write_embeddings(&out.join("validation.arrow"))?;
                Some(v.finish(&mut trainer)?)
            }
            None => None,
        };
        // A network whose loss stayed finite can still embed to infinity (batch-norm
        // statistics or weights that overflowed): check the weights about to be saved
        // before anything is committed.
        if let Some(images) = &last_images {
            let e = trainer.embed(images)?;
            if !train::all_finite(&e) {
                return Err(anyhow!(
                    "the trained network's embeddings of the last batch are not finite \
                     (evaluation mode); training diverged; {}; {lower_lr}",
                    kept(&checkpoints)
                )
                .into());
            }
        }
        trainer
            .save_weights(&out.join("model.safetensors"))
            .map_err(|e| match e {
                train::TrainError::NonFiniteTensor { .. } => {
                    anyhow!("{e}: training diverged; {}; {lower_lr}", kept(&checkpoints))
                }
                e => anyhow!(e),
            })?;
        if let Some(k) = &kept_weights {
            // model.json: the settings, and which weights these are.
            let mut model = serde_json::to_value(&cfg)?;
            if let Some(o) = model.as_object_mut() {
                o.insert("validation".into(), json!(k));
            }
            let path = out.join("model.json");
            std::fs::write(&path, serde_json::to_string_pretty(&model)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        tables::write_parquet(
            &out.join("train_log.parquet"),
            &tables::train_log_to_batch(&log),
        )?;
        let curve: Vec<(f64, f64)> = log.iter().map(|r| (f64::from(r.step), r.loss)).collect();
        let title = format!("{} — {}", ctx.node(), cfg.loss.name());
        match (&self.validation, &kept_weights) {
            (Some(v), Some(k)) => {
                let val: Vec<(f64, f64, f64)> = log
                    .iter()
                    .filter_map(|r| Some((f64::from(r.step), r.val_recall_at_1?, r.val_map_at_r?)))
                    .collect();
                plots::training_curves(
                    &out.join("loss.png"),
                    &title,
                    &curve,
                    &plots::ValidationCurve {
                        label: v.on.label(),
                        points: &val,
                        kept_step: (v.keep == crate::validation::Keep::Best)
                            .then_some(f64::from(k.score.step)),
                    },
                )?;
            }
            _ => plots::loss_curve(&out.join("loss.png"), &title, &curve)?,
        }
        let secs = started.elapsed().as_secs_f64();
        ctx.note("steps", json!(total));
        ctx.note(
            "images_per_second",
            json!(images_done as f64 / secs.max(1e-9)),
        );
        ctx.note("train_seconds", json!(elapsed_before + secs));
        let steady = match steady_from {
            Some((t, n)) if images_done > n => {
                (images_done - n) as f64 / t.elapsed().as_secs_f64().max(1e-9)
            }
            _ => images_done as f64 / secs.max(1e-9),
        };
        ctx.note("steady_images_per_second", json!(steady));
        let steps_run = total.saturating_sub(start).max(1) as f64;
        ctx.note("mean_data_wait_s", json!(waited / steps_run));
        ctx.note("data_wait_fraction", json!(waited / secs.max(1e-9)));
        if let Some(last) = log.last() {
            ctx.note("final_loss", json!(last.loss));
            ctx.note("final_active_fraction", json!(last.active_fraction));
        }
        if let (Some(v), Some(k)) = (validator.as_ref(), kept_weights) {
            ctx.note("validation_on", json!(k.on));
            ctx.note("validation_keep", json!(k.keep));
            ctx.note("kept_step", json!(k.score.step));
            ctx.note("val_recall_at_1", json!(k.score.recall_at_1));
            ctx.note("val_map_at_r", json!(k.score.map_at_r));
            ctx.note("validation_evaluations", json!(v.evaluations()));
            ctx.note("validation_seconds", json!(v.seconds()));
        }
        Ok(())
    }
}

/// Per step: cache indices and labels. Images skipped by the decode stage are
/// replaced by another decodable image of the same class (and counted).
fn substitute_skipped(
    steps: &BTreeMap<u32, Vec<tables::PlanRow>>,
    index: &[tables::IndexRow],
    cache: &ds::DecodeCache,
    ctx: &mut RunContext<'_>,
) -> Result<Arc<Vec<Batch>>, BoxError> {
    let mut by_class: HashMap<u32, Vec<usize>> = HashMap::new();
    for r in index {
        if !cache.is_missing(r.image_id as usize) && r.split == "train" {
            by_class
                .entry(r.class_id)
                .or_default()
                .push(r.image_id as usize);
        }
    }
    let mut substituted = 0usize;
    let mut out = Vec::with_capacity(steps.len());
    for (i, (step, rows)) in steps.iter().enumerate() {
        if *step as usize != i {
            return Err(anyhow!("plan.parquet skips step {i}").into());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut labels = Vec::with_capacity(rows.len());
        for r in rows {
            let mut id = r.image_id as usize;
            if cache.is_missing(id) {
                let pool = by_class.get(&r.class_id).filter(|p| !p.is_empty()).ok_or_else(|| {
                    anyhow!("every image of class {} was skipped as unreadable; nothing to train on", r.class_id)
                })?;
                id = pool[(r.slot as usize + *step as usize) % pool.len()];
                substituted += 1;
            }
            ids.push(id);
            labels.push(i64::from(r.class_id));
        }
        out.push((ids, labels));
    }
    if substituted > 0 {
        ctx.note("substituted_unreadable_images", json!(substituted));
    }
    Ok(Arc::new(out))
}

/// Embeds the evaluation split(s) with the trained network.
pub struct EmbedStage {
    settings: EmbedSettings,
    crop: u32,
    splits: Vec<&'static str>,
    device: Device,
    /// `train.device` as written (`auto` picks the scheduler's device slot).
    device_spec: String,
}

impl EmbedStage {
    /// Embeds `test` (or `query` + `gallery` for In-shop) on the training device.
    pub fn new(
        settings: &EmbedSettings,
        image: &ImageSettings,
        kind: DatasetKindName,
        device: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let splits = if kind == DatasetKindName::Inshop {
            vec!["query", "gallery"]
        } else {
            vec!["test"]
        };
        Ok(Arc::new(EmbedStage {
            settings: settings.clone(),
            crop: image.crop,
            splits,
            device: train::resolve_device(device)?,
            device_spec: device.to_string(),
        }))
    }
}

impl Stage for EmbedStage {
    fn name(&self) -> &'static str {
        "embed"
    }
    fn version(&self) -> u32 {
        1
    }
    fn settings(&self) -> serde_json::Value {
        json!({
            "embed": { "batch_size": self.settings.batch_size, "splits": self.splits, "device": device_kind(self.device) },
            "image": { "crop": self.crop },
        })
    }
    fn uses_device(&self) -> bool {
        self.device.is_cuda()
    }
    fn run(&self, ctx: &mut RunContext<'_>) -> Result<(), BoxError> {
        let train_dir = ctx.input("train")?.to_path_buf();
        let cfg = read_model_json(&train_dir.join("model.json"))?;
        let device = if self.device.is_cuda() {
            train::resolve_device_in_slot(&self.device_spec, ctx.device_index())?
        } else {
            self.device
        };
        let embedder =
            train::Embedder::load(&cfg.model, &train_dir.join("model.safetensors"), device)?;
        let cache = ds::DecodeCache::open(ctx.input("decode")?)?;
        let index = tables::read_index(&ctx.input("index")?.join("index.parquet"))?;
        let rows: Vec<&tables::IndexRow> = index
            .iter()
            .filter(|r| {
                self.splits.contains(&r.split.as_str()) && !cache.is_missing(r.image_id as usize)
            })
            .collect();
        if rows.is_empty() {
            return Err(
                anyhow!("the index has no {} images to embed", self.splits.join("/")).into(),
            );
        }
        let scaling = to_ds_scaling(cfg.model.input_scaling());
        let bs = self.settings.batch_size.max(1) as usize;
        let bar = ctx.progress(
            rows.len() as u64,
            "{prefix:>10} [{bar:30}] {pos}/{len} images ({eta})",
        );
        let ids: Vec<usize> = rows.iter().map(|r| r.image_id as usize).collect();
        let values = embed_images(
            &cache,
            &ids,
            self.crop,
            scaling,
            bs,
            &|x| Ok(embedder.embed(x)?),
            &|n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
        let dim = values.len() / rows.len();
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            let row = rows[bad / dim.max(1)];
            return Err(anyhow!(
                "the embedding of image {} (`{}`) is not finite: the trained network overflows; \
                 lower train.optimizer.learning_rate (now {:e}) and rerun",
                row.image_id,
                row.path,
                cfg.optimizer.learning_rate
            )
            .into());
        }
        let emb = Embeddings {
            image_id: rows.iter().map(|r| r.image_id).collect(),
            class_id: rows.iter().map(|r| r.class_id).collect(),
            split: rows.iter().map(|r| r.split.clone()).collect(),
            dim,
            values,
        };
        tables::write_ipc(&ctx.out_dir().join("embeddings.arrow"), &emb.to_batch())?;
        ctx.note("rows", json!(emb.len()));
        ctx.note("dim", json!(dim));
        Ok(())
    }
}

/// The settings in a train artifact's `model.json` (which also says, under `validation`,
/// which step's weights it holds when `[train.validation]` was on).
pub fn read_model_json(path: &Path) -> anyhow::Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("validation");
    }
    serde_json::from_value(v).with_context(|| format!("reading the settings in {}", path.display()))
}

/// Embeds decode-cache images (centre crop, eval mode) `batch` at a time with `embed`: the
/// embed stage's path, shared with validation during training. Returns the row-major
/// `[ids.len(), D]` values; `progress` hears each batch's size.
pub(crate) fn embed_images(
    cache: &ds::DecodeCache,
    ids: &[usize],
    crop: u32,
    scaling: ds::InputScaling,
    batch: usize,
    embed: &dyn Fn(&Tensor) -> anyhow::Result<Tensor>,
    progress: &dyn Fn(usize),
) -> anyhow::Result<Vec<f32>> {
    let mut values = Vec::new();
    for chunk in ids.chunks(batch.max(1)) {
        let data = ds::assemble_batch(cache, chunk, crop, ds::Augment::Test, scaling)?;
        let x = Tensor::from_slice(&data).view([chunk.len() as i64, 3, crop as i64, crop as i64]);
        let e = embed(&x)?
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let flat: Vec<f32> = Vec::<f32>::try_from(e.view([-1]))?;
        values.extend_from_slice(&flat);
        progress(chunk.len());
    }
    Ok(values)
}
