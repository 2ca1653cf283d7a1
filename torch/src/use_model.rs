//! The worker's side of `dml embed` / `dml search` (embedding image files with a trained
//! network, exactly as the embed stage does) and of `dml export` (TorchScript and
//! safetensors files of the network). The jobs are plain data in `dml_jobspec::use_model`.
use crate::context::WorkerCtx;
use crate::train::{self, Embedder};
use anyhow::{anyhow, Context};
use dml_datasets as ds;
use dml_jobspec::device::DeviceKind;
use dml_jobspec::roles;
use dml_jobspec::train_config::read_model_json;
use dml_jobspec::use_model::{self as shared, EmbedFilesJob, EmbedFilesNotes, ExportJob};
use dml_pipeline::BoxError;
use rayon::prelude::*;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How many batches are decoded ahead at once (in parallel).
const DECODE_AHEAD: usize = 4;

fn load_embedder(ctx: &WorkerCtx, device: Device) -> anyhow::Result<Embedder> {
    let train_dir = ctx.input(roles::TRAIN)?.to_path_buf();
    let cfg = read_model_json(&train_dir.join("model.json"))?;
    Ok(Embedder::load(
        &cfg.model,
        &train_dir.join("model.safetensors"),
        device,
    )?)
}

/// Embeds `job.images` into `job.out`; the images that cannot be read or decoded are left
/// out and named in the notes (`failed`), the others are still embedded.
pub fn embed_files(job: &EmbedFilesJob, ctx: &mut WorkerCtx) -> Result<(), BoxError> {
    let started = Instant::now();
    let device = match job.device {
        DeviceKind::Cuda => train::resolve_device_in_slot(&job.device_spec, ctx.device_index())?,
        DeviceKind::Cpu => Device::Cpu,
    };
    let embedder = load_embedder(ctx, device)?;
    let scaling = embedder.config().input_scaling().for_batches();
    let table = scaling.table();
    let (size, crop) = (job.resize, job.crop);
    if crop == 0 || crop > size {
        return Err(
            anyhow!("image.crop = {crop} must be between 1 and image.resize = {size}").into(),
        );
    }
    let per = 3 * crop as usize * crop as usize;
    let params = ds::Augment::Test.params(size, crop, 0);
    let bs = job.batch_size.max(1) as usize;
    let bar = ctx.progress(
        job.images.len() as u64,
        "{prefix:>10} [{bar:30}] {pos}/{len} images ({eta})",
    );
    // The embed stage's batches: the images that decode, `bs` at a time, in order.
    let mut pending: Vec<f32> = Vec::with_capacity(bs * per);
    let mut pending_n = 0usize;
    let mut kept: Vec<usize> = Vec::with_capacity(job.images.len());
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let run_batch = |data: &[f32], n: usize, values: &mut Vec<f32>| -> anyhow::Result<()> {
        let x = Tensor::from_slice(data).view([n as i64, 3, crop as i64, crop as i64]);
        let e = embedder
            .embed(&x)?
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        values.extend_from_slice(&Vec::<f32>::try_from(e.view([-1]))?);
        Ok(())
    };
    let ids: Vec<usize> = (0..job.images.len()).collect();
    for window in ids.chunks(bs * DECODE_AHEAD) {
        let decoded: Vec<Result<Vec<f32>, String>> = window
            .par_iter()
            .map(|&i| {
                let img = ds::load_resized(&job.images[i], size).map_err(|e| e.to_string())?;
                let mut out = vec![0f32; per];
                ds::crop_into(&img, size, crop, params, &table, &mut out)
                    .map_err(|e| e.to_string())?;
                Ok(out)
            })
            .collect();
        for (&i, d) in window.iter().zip(decoded) {
            match d {
                Ok(x) => {
                    pending.extend_from_slice(&x);
                    pending_n += 1;
                    kept.push(i);
                    if pending_n == bs {
                        run_batch(&pending, pending_n, &mut values)?;
                        pending.clear();
                        pending_n = 0;
                    }
                }
                Err(why) => {
                    tracing::warn!("{}: {why}", job.paths[i]);
                    failed.push((job.paths[i].clone(), why));
                }
            }
            bar.inc(1);
        }
    }
    if pending_n > 0 {
        run_batch(&pending, pending_n, &mut values)?;
    }
    bar.finish_and_clear();
    if kept.is_empty() {
        return Err(anyhow!(
            "none of the {} images could be read or decoded (first: {}: {})",
            job.images.len(),
            failed.first().map_or("?", |f| f.0.as_str()),
            failed.first().map_or("?", |f| f.1.as_str()),
        )
        .into());
    }
    let dim = values.len() / kept.len();
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(anyhow!(
            "the embedding of `{}` is not finite: the trained network overflows on it",
            job.paths[kept[bad / dim.max(1)]]
        )
        .into());
    }
    let paths: Vec<String> = kept.iter().map(|&i| job.paths[i].clone()).collect();
    let classes: Vec<Option<String>> = kept.iter().map(|&i| job.classes[i].clone()).collect();
    let batch = shared::embedded_to_batch(&paths, &classes, dim, values)?;
    shared::write_table(&job.out, &batch)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "embedded {} images in {seconds:.2}s ({:.0} images/s)",
        kept.len(),
        kept.len() as f64 / seconds.max(1e-9)
    );
    let notes = EmbedFilesNotes {
        rows: kept.len(),
        dim,
        failed,
        seconds,
    };
    if let serde_json::Value::Object(m) = serde_json::to_value(notes)? {
        for (k, v) in m {
            ctx.note(&k, v);
        }
    }
    Ok(())
}

/// Writes `model.pt` (TorchScript traced on the CPU in eval mode: scaled NCHW f32 images
/// in, `[N, D]` embeddings out) and `model.safetensors` (the network's tensors under their
/// torchvision names, prefixed `backbone.` and `head.`) into the request's output folder.
pub fn export(job: &ExportJob, ctx: &mut WorkerCtx) -> Result<(), BoxError> {
    let mut embedder = load_embedder(ctx, Device::Cpu)?;
    embedder.freeze();
    let out = ctx.out_dir().to_path_buf();
    if job.torchscript {
        let c = i64::from(job.crop.max(1));
        let example = Tensor::zeros([2, 3, c, c], (Kind::Float, Device::Cpu));
        let mut failure: Option<anyhow::Error> = None;
        let module = tch::no_grad(|| {
            tch::CModule::create_by_tracing("DmlEmbedding", "forward", &[example], &mut |x| {
                match embedder.embed(&x[0]) {
                    Ok(e) => vec![e],
                    Err(e) => {
                        failure = Some(e.into());
                        vec![x[0].shallow_clone()]
                    }
                }
            })
        })
        .context("tracing the network for TorchScript")?;
        if let Some(e) = failure {
            return Err(e.context("tracing the network for TorchScript").into());
        }
        let path = out.join("model.pt");
        module
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        ctx.note("torchscript", serde_json::json!(path));
    }
    if job.safetensors {
        let mut vars: Vec<(String, Tensor)> = embedder.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let vars: Vec<(String, Tensor)> = vars
            .into_iter()
            .map(|(n, t)| (n, t.to_kind(Kind::Float).contiguous()))
            .collect();
        let path = out.join("model.safetensors");
        Tensor::write_safetensors(&vars, &path)
            .with_context(|| format!("writing {}", path.display()))?;
        ctx.note("tensors", serde_json::json!(vars.len()));
    }
    Ok(())
}
