//! The train stage's body, run in the worker: resume from the key's checkpoint, stream the
//! planned P×K batches through the loader, step, validate, checkpoint, check the result is
//! finite, and write `model.safetensors`, `model.json`, `train_log.parquet`, `loss.png` and a
//! TensorBoard event file (written step by step).
use crate::context::{write_file, WorkerCtx};
use crate::loader::{Batch, BatchLoader};
use crate::train::{self, Trainer};
use crate::validator::Validator;
use anyhow::{anyhow, Context};
use dml_artifacts::tables::{self, TrainLogRow};
use dml_artifacts::tensorboard::TrainEvents;
use dml_datasets::{self as ds, Split};
use dml_jobspec::device::DeviceKind;
use dml_jobspec::jobs::TrainJob;
use dml_jobspec::resume::{self, Checkpoints};
use dml_jobspec::roles;
use dml_jobspec::settings::train_config;
use dml_pipeline::BoxError;
use indicatif::ProgressBar;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

/// Trains `job` on the inputs `ctx` names, writing the artifact's files.
pub fn run(job: &TrainJob, ctx: &mut WorkerCtx) -> Result<(), BoxError> {
    let cfg = train_config(&job.settings);
    let seed = job.settings.seed;
    // The kind was fixed when the key was computed; the scheduler's device slot says
    // which GPU of that kind (N sweep points on N GPUs).
    let device = match job.device {
        DeviceKind::Cuda => {
            train::resolve_device_in_slot(&job.settings.device, ctx.device_index())?
        }
        DeviceKind::Cpu => Device::Cpu,
    };
    let out = ctx.out_dir().to_path_buf();
    if job.untrained {
        // The untrained network, recorded with only what its key holds (the network's
        // settings and the seed): configs that differ in the loss or the optimiser share
        // this key, so they must write the same bytes.
        let model_json = train::trainer::untrained_model_json(&cfg.model);
        write_file(
            &out.join("model.json"),
            serde_json::to_string_pretty(&model_json)?,
        )?;
        Trainer::save_initial_weights(&cfg.model, device, seed, &out.join("model.safetensors"))?;
        return Ok(());
    }
    write_file(&out.join("model.json"), serde_json::to_string_pretty(&cfg)?)?;
    let cache = Arc::new(ds::DecodeCache::open(ctx.input(roles::DECODE)?)?);
    let index = tables::read_index(&ctx.input(roles::INDEX)?.join("index.parquet"))?;
    let classes = training_classes(job, &index)?;
    if cfg.loss.has_class_parameters() {
        ctx.note("loss_classes", json!(classes.len()));
    }
    let mut trainer = Trainer::with_classes(&cfg, device, seed, Some(&classes))?;
    let plan = tables::read_plan(&ctx.input(roles::PLAN)?.join("plan.parquet"))?;
    let steps: BTreeMap<u32, Vec<tables::PlanRow>> =
        plan.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry(r.step).or_insert_with(Vec::new).push(*r);
            m
        });
    let total = steps.len() as u64;
    let batches = substitute_skipped(&steps, &index, &cache, ctx)?;
    let scaling = cfg.model.input_scaling().for_batches();
    let mut validator = match &job.validation {
        Some(v) => {
            let planned: BTreeSet<u32> = plan.iter().map(|r| r.class_id).collect();
            let validator = Validator::new(v, &index, &planned, cache.clone(), job.crop, scaling)?;
            ctx.note("validation_images", json!(validator.images()));
            ctx.note("validation_classes", json!(validator.classes()));
            Some(validator)
        }
        None => None,
    };

    // Resumable checkpoints live outside the store, per key; the engine
    // removes them once this artifact is committed.
    let checkpoints = Checkpoints::new(ctx.key_cache_dir("checkpoints")?);
    let (start, log) = resume(&checkpoints, &mut trainer, validator.as_mut(), ctx)?;
    // TensorBoard's event file: the resumed steps first, then each step as it is done.
    let images_per_step = batches.first().map_or(0, |b| b.0.len());
    let events = TrainEvents::create(&out, &log, images_per_step)?;
    let rescue = Rescue {
        checkpoints: &checkpoints,
        lower_lr: format!(
            "lower train.optimizer.learning_rate (now {:e}) and rerun",
            cfg.optimizer.learning_rate
        ),
    };

    // Batches are assembled ahead of the model by the loader's threads.
    let threads = crate::loader::default_threads(device);
    let loader = BatchLoader::start(
        crate::loader::LoaderSpec {
            cache: cache.clone(),
            batches: batches.clone(),
            crop: job.crop,
            seed,
            policy: job.augment,
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
    let mut steps = StepLoop {
        trainer: &mut trainer,
        validator: validator.as_mut(),
        rescue: &rescue,
        meter: Throughput::new(start, total, log.last().map_or(0.0, |r| r.seconds)),
        log,
        total,
        every: u64::from(job.settings.checkpoint_every.max(1)),
        hooks: FaultHooks::from_env(),
        device,
        events,
    };
    let last_images = steps.run(loader, &bar)?;
    let StepLoop {
        log, meter, events, ..
    } = steps;
    events.finish()?;
    bar.finish_and_clear();

    let kept_weights = match validator.as_ref() {
        Some(v) => {
            v.write_embeddings(&out.join("validation.arrow"))?;
            Some(v.finish(&mut trainer)?)
        }
        None => None,
    };
    save_checked(&mut trainer, last_images.as_ref(), &out, &rescue)?;
    if let Some(k) = &kept_weights {
        // model.json: the settings, and which weights these are.
        let mut model = serde_json::to_value(&cfg)?;
        if let Some(o) = model.as_object_mut() {
            o.insert("validation".into(), json!(k));
        }
        write_file(
            &out.join("model.json"),
            serde_json::to_string_pretty(&model)?,
        )?;
    }
    write_log(&out, &log)?;
    meter.note(ctx);
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

/// The training classes, ascending: the train split's, less a validation holdout's (the
/// classes the plan draws from). A proxy loss has one proxy per class.
fn training_classes(job: &TrainJob, index: &[tables::IndexRow]) -> Result<Vec<i64>, BoxError> {
    let held = match job.validation.as_ref().and_then(|v| v.holdout.as_ref()) {
        Some(h) => h.classes(index)?,
        None => Default::default(),
    };
    let classes: BTreeSet<u32> = index
        .iter()
        .filter(|r| r.split == Split::Train && !held.contains(&r.class_id))
        .map(|r| r.class_id)
        .collect();
    Ok(classes.into_iter().map(i64::from).collect())
}

/// What a failed run says about recovering: where the last good checkpoint is,
/// and, when training diverged, the learning rate to lower.
struct Rescue<'a> {
    checkpoints: &'a Checkpoints,
    lower_lr: String,
}

impl Rescue<'_> {
    fn kept(&self) -> String {
        match self.checkpoints.latest() {
            Some((step, dir)) => format!(
                "the last good checkpoint (step {step}) is kept in {}",
                dir.display()
            ),
            None => "no checkpoint was kept".to_string(),
        }
    }

    /// A step that failed: a non-finite loss is divergence.
    fn step_failed(&self, e: train::TrainError, step: u64) -> anyhow::Error {
        let hint = match e {
            train::TrainError::NonFiniteLoss { .. } => {
                format!("; training diverged; {}", self.lower_lr)
            }
            _ => String::new(),
        };
        anyhow!(
            "{e}; training stopped at step {step}; {}{hint}",
            self.kept()
        )
    }

    /// Non-finite embeddings: divergence that the loss did not show.
    fn not_finite(&self, what: String) -> anyhow::Error {
        anyhow!(
            "{what}; training diverged; {}; {}",
            self.kept(),
            self.lower_lr
        )
    }

    /// A checkpoint that could not be written (a non-finite tensor is divergence).
    fn checkpoint_failed(&self, e: train::TrainError, done: u64) -> anyhow::Error {
        let hint = match e {
            train::TrainError::NonFiniteTensor { .. } => {
                format!("; training diverged; {}", self.lower_lr)
            }
            _ => String::new(),
        };
        anyhow!("checkpoint after step {done}: {e}{hint}")
    }
}

/// Test hooks read from the environment: abort right after a checkpoint, or
/// slow every step down so that a test can kill training midway.
struct FaultHooks {
    abort_after_step: Option<u64>,
    step_delay: Option<std::time::Duration>,
}

impl FaultHooks {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
        FaultHooks {
            abort_after_step: var("DML_FAULT_ABORT_AFTER_STEP"),
            step_delay: var("DML_FAULT_STEP_DELAY_MS").map(std::time::Duration::from_millis),
        }
    }
}

/// Images per second and time spent waiting for data, for the manifest.
struct Throughput {
    start: u64,
    total: u64,
    /// Training seconds before this process (a resumed run's).
    before: f64,
    started: Instant,
    images: usize,
    waited: f64,
    /// After the first steps (allocator warm-up, cuDNN autotuning): when, and
    /// how many images had been done.
    warm_steps: u64,
    steady_from: Option<(Instant, usize)>,
}

impl Throughput {
    fn new(start: u64, total: u64, before: f64) -> Self {
        Throughput {
            start,
            total,
            before,
            started: Instant::now(),
            images: 0,
            waited: 0.0,
            warm_steps: ((total - start) / 5).min(5),
            steady_from: None,
        }
    }

    /// Counts step `step`'s images.
    fn step(&mut self, step: u64, images: usize, waited: f64) {
        self.images += images;
        self.waited += waited;
        if step + 1 - self.start == self.warm_steps {
            self.steady_from = Some((Instant::now(), self.images));
        }
    }

    /// Training seconds so far, the resumed run's included.
    fn seconds(&self) -> f64 {
        self.before + self.started.elapsed().as_secs_f64()
    }

    fn images_per_second(&self) -> f64 {
        self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    fn note(&self, ctx: &mut WorkerCtx) {
        let secs = self.started.elapsed().as_secs_f64();
        ctx.note("steps", json!(self.total));
        ctx.note("images_per_second", json!(self.images_per_second()));
        ctx.note("train_seconds", json!(self.before + secs));
        let steady = match self.steady_from {
            Some((t, n)) if self.images > n => {
                (self.images - n) as f64 / t.elapsed().as_secs_f64().max(1e-9)
            }
            _ => self.images_per_second(),
        };
        ctx.note("steady_images_per_second", json!(steady));
        let steps_run = self.total.saturating_sub(self.start).max(1) as f64;
        ctx.note("mean_data_wait_s", json!(self.waited / steps_run));
        ctx.note("data_wait_fraction", json!(self.waited / secs.max(1e-9)));
    }
}

/// The step loop's state: everything a step reads or updates.
struct StepLoop<'a> {
    trainer: &'a mut Trainer,
    validator: Option<&'a mut Validator>,
    rescue: &'a Rescue<'a>,
    meter: Throughput,
    log: Vec<TrainLogRow>,
    total: u64,
    /// Checkpoint every this many steps.
    every: u64,
    hooks: FaultHooks,
    device: Device,
    events: TrainEvents,
}

impl StepLoop<'_> {
    /// Runs every step the loader hands out: update, log, validate when due,
    /// checkpoint. Returns the last batch's images, for the final check.
    fn run(
        &mut self,
        mut loader: BatchLoader,
        bar: &ProgressBar,
    ) -> anyhow::Result<Option<Tensor>> {
        let mut last_images = None;
        loop {
            let wait_started = Instant::now();
            let Some(received) = loader.next_batch() else {
                break;
            };
            let loaded = received?;
            let data_wait_s = wait_started.elapsed().as_secs_f64();
            let step = loaded.step;
            let (images, labels) = loaded.to_device(self.device);
            if let Some(d) = self.hooks.step_delay {
                std::thread::sleep(d);
            }
            let stats = self
                .trainer
                .step(&images, &labels, step, self.total)
                .map_err(|e| self.rescue.step_failed(e, step))?;
            if !stats.mean_norm.is_finite() {
                return Err(self.rescue.not_finite(format!(
                    "the embeddings are no longer finite at step {step} (mean norm {}, loss {})",
                    stats.mean_norm, stats.loss
                )));
            }
            self.meter
                .step(step, labels.size()[0] as usize, data_wait_s);
            last_images = Some(images);
            let mut row = TrainLogRow {
                step: step as u32,
                loss: stats.loss,
                lr: stats.lr,
                seconds: self.meter.seconds(),
                active_fraction: stats.active_fraction,
                mean_pos_dist: stats.mean_pos_dist,
                mean_neg_dist: stats.mean_neg_dist,
                mean_norm: stats.mean_norm,
                data_wait_s,
                val_recall_at_1: None,
                val_map_at_r: None,
            };
            let done = step + 1;
            if let Some(v) = self
                .validator
                .as_deref_mut()
                .filter(|v| v.due(done, self.total))
            {
                let score = v.evaluate(self.trainer, step as u32)?;
                row.val_recall_at_1 = Some(score.recall_at_1);
                row.val_map_at_r = Some(score.map_at_r);
            }
            self.events.row(&row)?;
            self.log.push(row);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} img/s active {:.0}%{}",
                stats.loss,
                stats.lr,
                self.meter.images_per_second(),
                100.0 * stats.active_fraction,
                self.validator
                    .as_deref()
                    .map(|v| v.progress())
                    .unwrap_or_default()
            ));
            bar.inc(1);
            if done % self.every == 0 && done < self.total {
                self.checkpoint(done)?;
            }
            if self.hooks.abort_after_step == Some(done) {
                // Test hook: an interruption right after a checkpoint.
                dml_jobspec::protocol::fault_abort();
            }
        }
        Ok(last_images)
    }

    /// Weights, optimiser state, the best validation weights and the log as
    /// one unit; never a non-finite one.
    fn checkpoint(&self, done: u64) -> anyhow::Result<()> {
        let rescue = self.rescue;
        rescue
            .checkpoints
            .publish(done, |dir| {
                let state = dir.join(resume::STATE_FILE);
                let saved = match self.validator.as_deref() {
                    Some(v) => {
                        let (tensors, meta) = v.checkpoint_extras();
                        self.trainer.save_with(&state, tensors, meta)
                    }
                    None => self.trainer.save(&state),
                };
                saved.map_err(|e| rescue.checkpoint_failed(e, done))?;
                write_file(
                    &dir.join(resume::LOG_FILE),
                    serde_json::to_string(&self.log)?,
                )?;
                Ok(())
            })
            .map(drop)
            .map_err(|e| anyhow!("{e}; {}", rescue.kept()))
    }
}

/// Saves `model.safetensors` after checking that the network about to be
/// saved still embeds the last batch to finite values in evaluation mode: a
/// network whose loss stayed finite can still embed to infinity (batch-norm
/// statistics or weights that overflowed).
fn save_checked(
    trainer: &mut Trainer,
    last_images: Option<&Tensor>,
    out: &std::path::Path,
    rescue: &Rescue<'_>,
) -> anyhow::Result<()> {
    if let Some(images) = last_images {
        let e = trainer.embed(images)?;
        if !train::all_finite(&e) {
            return Err(rescue.not_finite(
                "the trained network's embeddings of the last batch are not finite \
                 (evaluation mode)"
                    .into(),
            ));
        }
    }
    trainer
        .save_weights(&out.join("model.safetensors"))
        .map_err(|e| match e {
            train::TrainError::NonFiniteTensor { .. } => anyhow!(
                "{e}: training diverged; {}; {}",
                rescue.kept(),
                rescue.lower_lr
            ),
            e => anyhow!(e),
        })
}

/// Continues from the key's latest checkpoint, if any: the weights, optimiser state, log
/// and best validation weights as one unit. Returns the step to start from and the log
/// so far.
fn resume(
    checkpoints: &Checkpoints,
    trainer: &mut Trainer,
    validator: Option<&mut Validator>,
    ctx: &mut WorkerCtx,
) -> Result<(u64, Vec<TrainLogRow>), BoxError> {
    let Some((step, dir)) = checkpoints.latest() else {
        return Ok((0, Vec::new()));
    };
    let start_over = || format!("resuming from {} (delete it to start over)", dir.display());
    trainer
        .load(&dir.join(resume::STATE_FILE))
        .with_context(start_over)?;
    let log: Vec<TrainLogRow> = serde_json::from_str(&dml_artifacts::fsx::read_to_string(
        &dir.join(resume::LOG_FILE),
    )?)
    .with_context(start_over)?;
    let start = trainer.updates();
    if start != step || log.len() as u64 != start {
        return Err(anyhow!(
            "{}: {} log rows and {start} updates in checkpoint step-{step}",
            start_over(),
            log.len()
        )
        .into());
    }
    if let Some(v) = validator {
        v.resume(&log, &dir.join(resume::STATE_FILE))
            .with_context(start_over)?;
    }
    tracing::info!("resuming {} from step {start}", ctx.node());
    ctx.note("resumed_from_step", json!(start));
    Ok((start, log))
}

/// `train_log.parquet` (the train stage draws `loss.png` from it once the worker is done).
fn write_log(out: &std::path::Path, log: &[TrainLogRow]) -> Result<(), BoxError> {
    tables::write_parquet(
        &out.join("train_log.parquet"),
        &tables::train_log_to_batch(log),
    )?;
    Ok(())
}

/// Per step: cache indices and labels. Images skipped by the decode stage are
/// replaced by another decodable image of the same class (and counted).
fn substitute_skipped(
    steps: &BTreeMap<u32, Vec<tables::PlanRow>>,
    index: &[tables::IndexRow],
    cache: &ds::DecodeCache,
    ctx: &mut WorkerCtx,
) -> Result<Arc<Vec<Batch>>, BoxError> {
    let mut by_class: HashMap<u32, Vec<usize>> = HashMap::new();
    for r in index {
        if !cache.is_missing(r.image_id as usize) && r.split == Split::Train {
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
