//! The training batch loader: each step's P×K crops assembled ahead of the step by a pool of threads, straight into host tensors (pinned on CUDA), delivered in step order.
//!
//! One producer thread walks the steps in order and fills each batch on its own rayon pool
//! of `threads` threads (slots in parallel), keeping [`PREFETCH`] batches ready. Crops are
//! drawn from `(seed, step, slot)` ([`dml_datasets::Augment`]), so a batch does not depend
//! on the thread count. On CUDA the host tensor is page-locked so the copy to the GPU can
//! be asynchronous ([`Loaded::to_device`]).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};
use dml_datasets as ds;
use tch::{Device, Kind, Tensor};

/// Batches assembled but not yet taken by the training loop.
pub const PREFETCH: usize = 2;

/// One step's decode-cache indices and labels.
pub type Batch = (Vec<usize>, Vec<i64>);

/// What the loader needs to assemble batches.
pub struct LoaderSpec {
    /// The memory-mapped decode cache.
    pub cache: Arc<ds::DecodeCache>,
    /// Per step: cache indices and labels.
    pub batches: Arc<Vec<Batch>>,
    /// Crop side.
    pub crop: u32,
    /// Augmentation seed (`train.seed`).
    pub seed: u64,
    /// Crop kind, flips, ranges.
    pub policy: ds::AugmentPolicy,
    /// Pixel scaling of the backbone.
    pub scaling: ds::InputScaling,
    /// The training device: batches are pinned for an asynchronous copy when it is CUDA.
    pub device: Device,
}

/// A batch ready for the step, on the host.
pub struct Loaded {
    /// Its step.
    pub step: u64,
    /// `[B, 3, C, C]` f32 (pinned when training on CUDA).
    pub images: Tensor,
    /// `[B]` int64.
    pub labels: Tensor,
}

impl Loaded {
    /// Both tensors on `device`, copied without blocking the host (from pinned memory).
    pub fn to_device(&self, device: Device) -> (Tensor, Tensor) {
        if device == Device::Cpu {
            return (self.images.shallow_clone(), self.labels.shallow_clone());
        }
        (
            self.images.to_device_(device, Kind::Float, true, false),
            self.labels.to_device_(device, Kind::Int64, true, false),
        )
    }
}

/// Threads filling batches: `DML_LOADER_THREADS` if set, else on CUDA every core but one
/// shared among the visible GPUs (each may be training a sweep point), on the CPU one
/// (libtorch's threads do the step there).
pub fn default_threads(device: Device) -> usize {
    if let Some(n) = std::env::var("DML_LOADER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.max(1);
    }
    if !device.is_cuda() {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gpus = crate::train::torch_state::cuda_device_count().max(1);
    (cores.saturating_sub(1) / gpus).max(1)
}

/// Hands out the batches of steps `start..total` in order.
pub struct BatchLoader {
    rx: Option<Receiver<anyhow::Result<Loaded>>>,
    producer: Option<JoinHandle<()>>,
}

impl BatchLoader {
    /// Starts assembling steps `start..total` on `threads` threads.
    pub fn start(spec: LoaderSpec, start: u64, total: u64, threads: usize) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("dml-loader-{i}"))
            .build()
            .context("starting the batch loader's threads")?;
        let (tx, rx) = sync_channel(PREFETCH);
        let producer = std::thread::Builder::new()
            .name("dml-loader".into())
            .spawn(move || {
                for step in start..total {
                    let r = pool.install(|| assemble(&spec, step));
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .context("starting the batch loader")?;
        Ok(BatchLoader {
            rx: Some(rx),
            producer: Some(producer),
        })
    }

    /// The next step's batch, waiting for it if needed; `None` after the last step.
    pub fn next_batch(&mut self) -> Option<anyhow::Result<Loaded>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel stops the producer at its next send.
        self.rx.take();
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

/// One step's batch in a fresh (pinned on CUDA) host tensor.
fn assemble(spec: &LoaderSpec, step: u64) -> anyhow::Result<Loaded> {
    let (ids, labels) = spec
        .batches
        .get(step as usize)
        .ok_or_else(|| anyhow!("the plan has no step {step}"))?;
    let c = i64::from(spec.crop);
    let b = ids.len() as i64;
    let mut images =
        Tensor::f_empty([b, 3, c, c], (Kind::Float, Device::Cpu)).context("allocating a batch")?;
    if spec.device.is_cuda() {
        images = images
            .f_pin_memory(spec.device)
            .context("pinning a batch in host memory")?;
    }
    let n = ids.len() * 3 * spec.crop as usize * spec.crop as usize;
    if images.numel() != n || !images.is_contiguous() {
        return Err(anyhow!(
            "batch tensor of {} values, expected {n}",
            images.numel()
        ));
    }
    // SAFETY: `images` is a fresh, contiguous f32 CPU tensor of exactly `n` elements that
    // nothing else references until this function returns it.
    let out = unsafe { std::slice::from_raw_parts_mut(images.data_ptr() as *mut f32, n) };
    ds::assemble_batch_into(
        &spec.cache,
        ids,
        spec.crop,
        ds::Augment::Train {
            seed: spec.seed,
            step,
            policy: spec.policy,
        },
        spec.scaling,
        out,
        true,
    )?;
    let mut labels = Tensor::from_slice(labels);
    if spec.device.is_cuda() {
        labels = labels
            .f_pin_memory(spec.device)
            .context("pinning labels in host memory")?;
    }
    Ok(Loaded {
        step,
        images,
        labels,
    })
}
