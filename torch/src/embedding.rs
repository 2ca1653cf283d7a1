//! The embed stage's body, run in the worker: the evaluation split(s) through the trained
//! network in eval mode → `embeddings.arrow`; [`embed_images`] is shared with validation.
use crate::context::WorkerCtx;
use crate::train;
use anyhow::anyhow;
use dml_artifacts::tables::{self, Embeddings};
use dml_datasets as ds;
use dml_jobspec::device::DeviceKind;
use dml_jobspec::jobs::EmbedJob;
use dml_jobspec::roles;
use dml_jobspec::train_config::read_model_json;
use dml_pipeline::BoxError;
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// Embeds `job`'s splits with the trained network `ctx` names, writing `embeddings.arrow`.
pub fn run(job: &EmbedJob, ctx: &mut WorkerCtx) -> Result<(), BoxError> {
    let train_dir = ctx.input(roles::TRAIN)?.to_path_buf();
    let cfg = read_model_json(&train_dir.join("model.json"))?;
    let device = match job.device {
        DeviceKind::Cuda => train::resolve_device_in_slot(&job.device_spec, ctx.device_index())?,
        DeviceKind::Cpu => Device::Cpu,
    };
    let embedder = train::Embedder::load(&cfg.model, &train_dir.join("model.safetensors"), device)?;
    let cache = ds::DecodeCache::open(ctx.input(roles::DECODE)?)?;
    let index = tables::read_index(&ctx.input(roles::INDEX)?.join("index.parquet"))?;
    let rows: Vec<&tables::IndexRow> = index
        .iter()
        .filter(|r| job.splits.contains(&r.split) && !cache.is_missing(r.image_id as usize))
        .collect();
    if rows.is_empty() {
        let names: Vec<&str> = job.splits.iter().map(|s| s.as_str()).collect();
        return Err(anyhow!("the index has no {} images to embed", names.join("/")).into());
    }
    let scaling = cfg.model.input_scaling().for_batches();
    let bs = job.settings.batch_size.max(1) as usize;
    let bar = ctx.progress(
        rows.len() as u64,
        "{prefix:>10} [{bar:30}] {pos}/{len} images ({eta})",
    );
    let ids: Vec<usize> = rows.iter().map(|r| r.image_id as usize).collect();
    let values = embed_images(
        &cache,
        &ids,
        job.crop,
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
        split: rows.iter().map(|r| r.split).collect(),
        dim,
        values,
    };
    tables::write_ipc(&ctx.out_dir().join("embeddings.arrow"), &emb.to_batch())?;
    ctx.note("rows", json!(emb.len()));
    ctx.note("dim", json!(dim));
    Ok(())
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
