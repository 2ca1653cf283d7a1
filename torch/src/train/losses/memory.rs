//! Cross-batch memory (Wang et al. 2020, "Cross-Batch Memory for Embedding Learning"), as pytorch-metric-learning 2.9.0's `CrossBatchMemory` keeps it.
//!
//! A ring buffer of the last `size` embeddings (detached) and their labels. Each step that
//! uses it first writes the batch at the write position (wrapping around), then the loss
//! compares the batch with everything written so far (the whole buffer once it has wrapped),
//! the batch's own slots included; the pair losses drop each row's comparison with its own
//! slot. Before `start_step` the memory is neither written nor read (XBM's warm-up).

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::train::error::{Result, TrainError};

/// The memory and its write position.
#[derive(Debug)]
pub struct Memory {
    size: i64,
    start_step: u64,
    embeddings: Option<Tensor>,
    labels: Tensor,
    /// Next slot to write (PML's `queue_idx`).
    next: i64,
    /// Whether every slot has been written (PML's `has_been_filled`).
    filled: bool,
}

const EMBEDDINGS: &str = "loss_state.memory.embeddings";
const LABELS: &str = "loss_state.memory.labels";
const POSITION: &str = "loss_state.memory.position";

impl Memory {
    /// An empty memory of `size` slots, used from `start_step` on.
    pub fn new(size: i64, start_step: u64, device: Device) -> Memory {
        Memory {
            size,
            start_step,
            embeddings: None,
            labels: Tensor::zeros([size], (Kind::Int64, device)),
            next: 0,
            filled: false,
        }
    }

    /// The first step that uses the memory.
    pub fn start_step(&self) -> u64 {
        self.start_step
    }

    /// Writes a batch; returns the slot of each of its rows.
    pub fn enqueue(&mut self, embeddings: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let b = embeddings.size()[0];
        if b > self.size {
            return Err(TrainError::Config(format!(
                "train.loss.memory = {} is smaller than a batch ({b} rows); make it at least the batch size",
                self.size
            )));
        }
        let device = embeddings.device();
        let dim = embeddings.size()[1];
        let memory = self
            .embeddings
            .get_or_insert_with(|| Tensor::zeros([self.size, dim], (embeddings.kind(), device)));
        let slots = (Tensor::arange_start(self.next, self.next + b, (Kind::Int64, device)))
            .remainder(self.size);
        tch::no_grad(|| {
            let _ = memory.index_copy_(0, &slots, &embeddings.detach().to_kind(memory.kind()));
            let _ = self.labels.index_copy_(0, &slots, labels);
        });
        let previous = self.next;
        self.next = (self.next + b) % self.size;
        if !self.filled && self.next <= previous {
            self.filled = true;
        }
        Ok(slots)
    }

    /// The embeddings and labels written so far (all slots once full).
    pub fn contents(&self) -> (Tensor, Tensor) {
        let n = if self.filled { self.size } else { self.next };
        match &self.embeddings {
            Some(e) => (e.narrow(0, 0, n), self.labels.narrow(0, 0, n)),
            None => (
                Tensor::zeros([0, 0], (Kind::Float, self.labels.device())),
                self.labels.narrow(0, 0, 0),
            ),
        }
    }

    /// The state as named tensors, for checkpoints (nothing before the first write).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let Some(e) = &self.embeddings else {
            return Vec::new();
        };
        vec![
            (EMBEDDINGS.to_string(), e.shallow_clone()),
            (LABELS.to_string(), self.labels.shallow_clone()),
            (
                POSITION.to_string(),
                Tensor::from_slice(&[self.next, i64::from(self.filled)]),
            ),
        ]
    }

    /// Restores [`Memory::state_tensors`] (an empty memory when they are absent).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let device = self.labels.device();
        let Some(e) = tensors.get(EMBEDDINGS) else {
            *self = Memory::new(self.size, self.start_step, device);
            return Ok(());
        };
        let bad = |what: &str| TrainError::Config(format!("cross-batch memory state: {what}"));
        let labels = tensors.get(LABELS).ok_or_else(|| bad("labels missing"))?;
        let position = tensors
            .get(POSITION)
            .ok_or_else(|| bad("position missing"))?;
        if e.size()[0] != self.size || labels.size() != [self.size] || position.size() != [2] {
            return Err(bad("its size differs from train.loss.memory"));
        }
        self.embeddings = Some(e.to_device(device).copy());
        self.labels = labels.to_device(device).to_kind(Kind::Int64).copy();
        self.next = position.int64_value(&[0]);
        self.filled = position.int64_value(&[1]) != 0;
        Ok(())
    }
}
