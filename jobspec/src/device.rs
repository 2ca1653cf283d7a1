//! The device kind a stage runs on, what the worker reports of the host's devices, and
//! the rule for bf16 on a CPU. (Which devices a host offers is asked by `dml_stages::device`.)
use crate::train_config::ConfigError;
use serde::{Deserialize, Serialize};

/// The device kind a stage runs on: part of the train and embed keys (outputs differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU.
    Cpu,
    /// A CUDA GPU (which one is the scheduler's device slot, never part of a key).
    Cuda,
}

impl DeviceKind {
    /// `cpu` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// What the worker reports (`dml-torch probe`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Probe {
    /// CUDA devices libtorch sees (0 without CUDA).
    pub cuda_devices: usize,
}

/// Whether this CPU has native bf16 arithmetic (AVX512-BF16, which every AMX CPU also has):
/// without it libtorch emulates bf16 and a "bf16" run is slower than f32.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Refuses bf16 training on a device that cannot do it fast: on the CPU, one without
/// AVX512-BF16 (`has_bf16` is [`cpu_has_bf16`]).
pub fn check_bf16(kind: DeviceKind, has_bf16: bool) -> Result<(), ConfigError> {
    if kind == DeviceKind::Cuda || has_bf16 {
        return Ok(());
    }
    Err(ConfigError::new(
        "train.precision",
        "train.precision = \"bf16\" on the CPU needs native bf16 instructions (AVX512-BF16 or AMX; \
         /proc/cpuinfo flag `avx512_bf16`), which this CPU lacks; set train.precision = \"f32\"",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_refused_only_on_a_cpu_without_it() {
        assert!(check_bf16(DeviceKind::Cuda, false).is_ok());
        assert!(check_bf16(DeviceKind::Cpu, true).is_ok());
        let e = check_bf16(DeviceKind::Cpu, false).unwrap_err().to_string();
        assert!(e.contains("train.precision = \"f32\""), "{e}");
        let e = check_bf16(DeviceKind::Cpu, false).unwrap_err();
        assert_eq!(e.setting, "train.precision");
    }
}
