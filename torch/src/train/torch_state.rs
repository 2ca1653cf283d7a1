//! Process-wide and thread-local libtorch state in one leaf module: the RNG lock, device resolution, bf16 autocast (CPU and CUDA) and the cuDNN switches.
//!
//! Nothing here imports another module of `train`, so the model, the trainer and the
//! benchmarks can all use it without importing each other. tch 0.24 binds autocast for
//! CUDA only and has no binding for the autocast dtype, CPU autocast or cuDNN's
//! deterministic mode, so the few libtorch functions needed are bound by their (stable,
//! Itanium-mangled) names; every one takes and returns plain integers or booleans.

use std::sync::{Mutex, MutexGuard};

use tch::{nn, Device, Tensor};

use super::error::{Result, TrainError};

/// libtorch's default generator is process-wide, so seeding it and drawing initial weights
/// happen under this lock: concurrent constructions (several trainers, parallel tests) cannot
/// interleave their draws and break same-seed reproducibility.
static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Holds the process-wide libtorch RNG for a seed-and-initialise sequence.
pub(crate) fn lock_torch_rng() -> MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resolves a device setting: `auto` (CUDA when available, else the CPU), `cpu`, `cuda` or
/// `cuda:N`.
pub fn resolve_device(spec: &str) -> Result<Device> {
    resolve_device_in_slot(spec, None)
}

/// As [`resolve_device`], with the device slot the scheduler gave the stage: `auto` and
/// `cuda` then mean CUDA device `slot` (so N sweep points on N GPUs each get their own);
/// an explicit `cuda:N` is kept as written.
pub fn resolve_device_in_slot(spec: &str, slot: Option<usize>) -> Result<Device> {
    let count = if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    let cuda = |i: usize| {
        if i < count {
            Ok(Device::Cuda(i))
        } else {
            Err(TrainError::Config(format!(
                "device `{spec}`: CUDA device {i} is not available ({count} visible)"
            )))
        }
    };
    let slot_device = slot.filter(|&s| s < count).unwrap_or(0);
    match spec {
        "auto" if count > 0 => Ok(Device::Cuda(slot_device)),
        "auto" | "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(slot_device),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(TrainError::Config(format!(
                "unknown device `{spec}` (auto, cpu, cuda, cuda:N)"
            ))),
        },
    }
}

/// Number of CUDA devices libtorch sees (0 without CUDA).
pub fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// `c10::DeviceType` values (int8-backed enum).
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16`.
const BFLOAT16: i8 = 15;

mod ffi {
    extern "C" {
        // at::autocast::{is,set}_autocast_enabled(c10::DeviceType[, bool]) and
        // {get,set}_autocast_dtype(c10::DeviceType[, c10::ScalarType]): thread-local state.
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub(super) fn is_autocast_enabled(device_type: i8) -> bool;
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub(super) fn set_autocast_enabled(device_type: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub(super) fn set_autocast_dtype(device_type: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub(super) fn get_autocast_dtype(device_type: i8) -> i8;
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub(super) fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub(super) fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub(super) fn clear_cache();
        // at::Context& at::globalContext() and its cuDNN switches (member functions: the
        // context is the first argument).
        #[link_name = "_ZN2at13globalContextEv"]
        pub(super) fn global_context() -> *mut std::ffi::c_void;
        #[link_name = "_ZN2at7Context21setDeterministicCuDNNEb"]
        pub(super) fn set_deterministic_cudnn(ctx: *mut std::ffi::c_void, on: bool);
        #[link_name = "_ZN2at7Context17setBenchmarkCuDNNEb"]
        pub(super) fn set_benchmark_cudnn(ctx: *mut std::ffi::c_void, on: bool);
        #[link_name = "_ZN2at7Context26setDeterministicAlgorithmsEbb"]
        pub(super) fn set_deterministic_algorithms(
            ctx: *mut std::ffi::c_void,
            on: bool,
            warn_only: bool,
        );
    }
}

pub use dml_jobspec::device::cpu_has_bf16;

/// Refuses bf16 training on a device that cannot do it fast: on the CPU, one without
/// AVX512-BF16 (`has_bf16` is [`cpu_has_bf16`]); the rule is `dml_jobspec::device`'s.
pub fn check_bf16(device: Device, has_bf16: bool) -> Result<()> {
    let kind = if device.is_cuda() {
        dml_jobspec::device::DeviceKind::Cuda
    } else {
        dml_jobspec::device::DeviceKind::Cpu
    };
    dml_jobspec::device::check_bf16(kind, has_bf16).map_err(|e| TrainError::Config(e.to_string()))
}

/// bf16 autocast for `device` on the current thread while alive: matrix products and
/// convolutions run in bf16 with the f32 weights cast on the fly (cached for the scope),
/// as `torch.autocast(device_type, dtype=torch.bfloat16)` does. Dropping it restores the
/// previous state and, leaving the outermost scope, clears the cast cache so the next
/// step sees the updated weights.
pub struct Autocast {
    /// Thread-local state: the scope must end on the thread that began it.
    _not_send: std::marker::PhantomData<*const ()>,
    device_type: i8,
    was_enabled: bool,
    previous_dtype: i8,
}

impl Autocast {
    /// Enters a bf16 autocast scope for the kind of `device`.
    pub fn bf16(device: Device) -> Autocast {
        let device_type = if device.is_cuda() {
            DEVICE_CUDA
        } else {
            DEVICE_CPU
        };
        // SAFETY: these functions only read and write libtorch's thread-local autocast
        // state for a valid device type; arguments and results are plain integers.
        unsafe {
            let was_enabled = ffi::is_autocast_enabled(device_type);
            let previous_dtype = ffi::get_autocast_dtype(device_type);
            ffi::set_autocast_dtype(device_type, BFLOAT16);
            ffi::set_autocast_enabled(device_type, true);
            ffi::increment_nesting();
            Autocast {
                _not_send: std::marker::PhantomData,
                device_type,
                was_enabled,
                previous_dtype,
            }
        }
    }

    /// True when autocast is on for the CPU on this thread.
    #[cfg(test)]
    pub(crate) fn cpu_enabled() -> bool {
        // SAFETY: see `Autocast::bf16`.
        unsafe { ffi::is_autocast_enabled(DEVICE_CPU) }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: see `Autocast::bf16`; clear_cache drops libtorch's cached casts.
        unsafe {
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_autocast_enabled(self.device_type, self.was_enabled);
            ffi::set_autocast_dtype(self.device_type, self.previous_dtype);
        }
    }
}

/// cuDNN's algorithm choice for a CUDA run. Process-wide in libtorch: a sweep whose points
/// differ in `train.deterministic` should not run them on GPUs at the same time.
///
/// - `deterministic`: cuDNN's deterministic algorithms, libtorch's deterministic mode
///   (warning, not failing, on ops without a deterministic kernel), autotuning off;
/// - otherwise autotuning (benchmark mode) on: batches have one fixed shape, so the
///   fastest algorithm found on the first step is the fastest for every step.
pub fn set_cudnn_mode(deterministic: bool) {
    // SAFETY: globalContext() returns libtorch's process-wide singleton; the setters store
    // booleans (setDeterministicAlgorithms may warn, never throws for these arguments).
    unsafe {
        let ctx = ffi::global_context();
        ffi::set_deterministic_cudnn(ctx, deterministic);
        ffi::set_benchmark_cudnn(ctx, !deterministic);
        ffi::set_deterministic_algorithms(ctx, deterministic, true);
    }
}

/// `t` (NCHW) with channels-last strides (NHWC in memory), the same values; other ranks as
/// they are. (tch 0.24 has no memory-format argument: a permuted contiguous copy viewed
/// back as NCHW is exactly `torch.channels_last`.)
pub fn channels_last(t: &Tensor) -> Tensor {
    if t.dim() != 4 {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Puts every 4-D variable (convolution weights) of `vs` in channels-last order, in place:
/// every module holding the variable sees the new layout.
pub fn to_channels_last(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let nhwc = channels_last(&v);
                v.set_data(&nhwc);
            }
        }
    });
}

/// True when `t` is 4-D with channels-last strides.
#[cfg(test)]
pub(crate) fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    size.len() == 4 && stride[1] == 1 && stride[3] == size[1] && stride[2] == size[1] * size[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn devices_resolve_and_bad_names_are_refused() {
        assert_eq!(resolve_device("cpu").unwrap(), Device::Cpu);
        let auto = resolve_device_in_slot("auto", Some(1)).unwrap();
        if cuda_device_count() == 0 {
            assert_eq!(auto, Device::Cpu);
            assert!(resolve_device("cuda").is_err());
        }
        let err = resolve_device("gpu0").unwrap_err().to_string();
        assert!(err.contains("auto, cpu, cuda, cuda:N"), "{err}");
        assert!(resolve_device("cuda:99").is_err());
    }

    #[test]
    fn channels_last_keeps_values_and_the_forward_pass() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(vs.root(), 3, 8, 3, Default::default());
        let x = Tensor::randn([2, 3, 9, 9], (Kind::Float, Device::Cpu));
        let before = x.apply(&conv);
        to_channels_last(&vs);
        assert!(vs
            .variables()
            .values()
            .filter(|v| v.dim() == 4)
            .all(is_channels_last));
        assert!(is_channels_last(&conv.ws), "the module sees the new layout");
        let xc = channels_last(&x);
        assert!(is_channels_last(&xc) && xc.equal(&x));
        let after = xc.apply(&conv);
        assert!(after.allclose(&before, 1e-5, 1e-5, false));
    }

    #[test]
    fn bf16_is_refused_on_a_cpu_without_it() {
        let err = check_bf16(Device::Cpu, false).unwrap_err().to_string();
        assert!(err.contains("avx512_bf16") && err.contains("f32"), "{err}");
        assert!(check_bf16(Device::Cpu, true).is_ok());
        assert!(check_bf16(Device::Cuda(0), false).is_ok());
    }

    #[test]
    fn cpu_autocast_runs_matmuls_in_bf16_and_restores_the_state() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        assert!(!Autocast::cpu_enabled());
        {
            let _scope = Autocast::bf16(Device::Cpu);
            assert!(Autocast::cpu_enabled());
            assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
            {
                let _inner = Autocast::bf16(Device::Cpu);
                assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
            }
            assert!(
                Autocast::cpu_enabled(),
                "an inner scope keeps the outer one"
            );
        }
        assert!(!Autocast::cpu_enabled());
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }
}
