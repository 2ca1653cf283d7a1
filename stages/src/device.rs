//! Which devices this host offers, answered without loading libtorch.
//!
//! The device kind (`cpu` or `cuda`) is part of the train and embed keys, so planning must
//! know whether `train.device = "auto"` finds CUDA. Asking libtorch costs ~0.4 s and
//! ~470 MiB, which `dml` itself never pays: a host without the NVIDIA driver's device files
//! has no CUDA device, full stop; on a host with them, the training worker (`dml-torch
//! probe`) is asked once and its answer is cached under `~/.cache/dml/`, keyed by the
//! worker binary, the boot and the variables that hide GPUs — as cargo caches `rustc -vV`
//! keyed by the compiler's mtime.
use crate::error::{Result, StageError};
pub use dml_jobspec::device::{check_bf16, cpu_has_bf16, DeviceKind, Probe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variables that change which GPUs a process sees (part of the cache key).
const VISIBILITY_VARS: [&str; 4] = [
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
];

/// The training worker's executable: `DML_TORCH` if set, else `dml-torch` beside the
/// running `dml`.
pub fn worker_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DML_TORCH") {
        return Ok(PathBuf::from(p));
    }
    let exe =
        std::env::current_exe().map_err(StageError::io("finding the running dml executable"))?;
    let worker = exe.with_file_name("dml-torch");
    if !worker.is_file() {
        return Err(StageError::WorkerMissing { path: worker });
    }
    Ok(worker)
}

/// True when this host has the NVIDIA driver's device files (without them no process can
/// use CUDA, whatever libtorch it loads).
pub fn nvidia_driver_present() -> bool {
    Path::new("/dev/nvidiactl").exists() || Path::new("/proc/driver/nvidia/gpus").is_dir()
}

/// CUDA devices this host offers to the training worker (0 without CUDA). Asked once per
/// process; see the module documentation for how it avoids loading libtorch.
pub fn cuda_device_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        if !nvidia_driver_present() {
            return 0;
        }
        match cached_probe() {
            Ok(p) => p.cuda_devices,
            Err(e) => {
                tracing::warn!("could not ask the training worker for CUDA devices ({e:#}); planning for the CPU");
                0
            }
        }
    })
}

fn cache_file(worker: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(worker).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(worker.as_os_str().as_encoded_bytes());
    h.update(&mtime.to_le_bytes());
    h.update(&meta.len().to_le_bytes());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    h.update(boot.as_bytes());
    for v in VISIBILITY_VARS {
        h.update(v.as_bytes());
        h.update(std::env::var(v).unwrap_or_default().as_bytes());
        h.update(&[0]);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(
        base.join("dml")
            .join(format!("cuda-probe-{}.json", &h.finalize().to_hex()[..16])),
    )
}

/// The worker's answer, from the cache when this boot already asked it.
fn cached_probe() -> Result<Probe> {
    let worker = worker_path()?;
    let file = cache_file(&worker);
    if let Some(p) = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str::<Probe>(&t).ok())
    {
        return Ok(p);
    }
    let out = std::process::Command::new(&worker)
        .arg("probe")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(StageError::io(format!(
            "running `{} probe`",
            worker.display()
        )))?;
    if !out.status.success() {
        return Err(StageError::Worker(format!(
            "`{} probe` failed ({})",
            worker.display(),
            out.status
        )));
    }
    let probe: Probe = serde_json::from_slice(&out.stdout).map_err(StageError::json(format!(
        "reading what `{} probe` printed",
        worker.display()
    )))?;
    if let Some(f) = file {
        // Best effort: an unwritable cache only means asking again next time.
        let tmp = f.with_extension(format!("{}.tmp", std::process::id()));
        if f.parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && serde_json::to_vec(&probe).is_ok_and(|json| std::fs::write(&tmp, json).is_ok())
        {
            let _ = std::fs::rename(&tmp, &f);
        }
    }
    Ok(probe)
}

/// Resolves a device setting to its kind: `auto` (CUDA when the host has it, else the
/// CPU), `cpu`, `cuda` or `cuda:N` (N must be visible).
pub fn resolve_kind(spec: &str) -> Result<DeviceKind> {
    resolve_kind_with(spec, cuda_device_count)
}

fn resolve_kind_with(spec: &str, count: impl Fn() -> usize) -> Result<DeviceKind> {
    let cuda = |i: usize| {
        let n = count();
        if i < n {
            Ok(DeviceKind::Cuda)
        } else {
            Err(StageError::setting(
                "train.device",
                format!("device `{spec}`: CUDA device {i} is not available ({n} visible)"),
            ))
        }
    };
    match spec {
        "cpu" => Ok(DeviceKind::Cpu),
        "auto" if count() > 0 => Ok(DeviceKind::Cuda),
        "auto" => Ok(DeviceKind::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(StageError::setting(
                "train.device",
                format!("unknown device `{spec}` (auto, cpu, cuda, cuda:N)"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_settings_resolve_to_kinds() {
        let none = || 0;
        let two = || 2;
        assert_eq!(resolve_kind_with("auto", none).unwrap(), DeviceKind::Cpu);
        assert_eq!(resolve_kind_with("auto", two).unwrap(), DeviceKind::Cuda);
        assert_eq!(resolve_kind_with("cpu", two).unwrap(), DeviceKind::Cpu);
        assert_eq!(resolve_kind_with("cuda:1", two).unwrap(), DeviceKind::Cuda);
        let e = resolve_kind_with("cuda:2", two).unwrap_err().to_string();
        assert!(
            e.contains("CUDA device 2 is not available (2 visible)"),
            "{e}"
        );
        let e = resolve_kind_with("cuda", none).unwrap_err().to_string();
        assert!(e.contains("not available (0 visible)"), "{e}");
        let e = resolve_kind_with("gpu", two).unwrap_err().to_string();
        assert!(e.contains("auto, cpu, cuda, cuda:N"), "{e}");
    }
}
