//! Writing and reading named tensors plus string metadata as safetensors files, atomically (temp file in the same directory, fsync, rename).
//! A tensor holding NaN or infinite values is never written, nor accepted when read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Device, Kind, Tensor};

use super::error::{Result, TrainError};

/// Copies the tensor named `name` in `tensors` into `dst`, in place and without
/// recording gradients. The reason it cannot, for the caller to put in context: the
/// tensor is missing, has another shape, or the copy failed.
pub(crate) fn restore_named(
    dst: &mut Tensor,
    tensors: &HashMap<String, Tensor>,
    name: &str,
) -> std::result::Result<(), String> {
    let src = tensors
        .get(name)
        .ok_or_else(|| format!("tensor `{name}` is missing"))?;
    if src.size() != dst.size() {
        return Err(format!(
            "tensor `{name}` has shape {:?}, expected {:?}",
            src.size(),
            dst.size()
        ));
    }
    tch::no_grad(|| dst.f_copy_(src))
        .map(drop)
        .map_err(|e| format!("restoring `{name}`: {e}"))
}

/// A tensor copied to host memory in the layout safetensors wants.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        _ => return None,
    })
}

/// The tch kind of a safetensors dtype, for the dtypes weights come in.
pub(crate) fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        _ => return None,
    })
}

fn to_host(name: &str, t: &Tensor) -> Result<HostTensor> {
    let dtype = dtype_of(t.kind()).ok_or_else(|| {
        TrainError::Config(format!(
            "tensor `{name}` has unsupported kind {:?}",
            t.kind()
        ))
    })?;
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)
        .map_err(TrainError::torch(format!("copying `{name}` to host")))?;
    Ok(HostTensor {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// safetensors writes the `__metadata__` map in `HashMap` order, which differs
/// from process to process; rewrite the header with its keys sorted (same
/// length, padded with spaces as the format allows) so equal weights give
/// byte-identical files.
fn canonical_metadata(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + len) else {
        return bytes;
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    if let Some(meta) = v.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
        let sorted: std::collections::BTreeMap<String, serde_json::Value> =
            std::mem::take(meta).into_iter().collect();
        meta.extend(sorted);
    }
    match serde_json::to_vec(&v) {
        Ok(text) if text.len() <= len => {
            let dst = &mut bytes[8..8 + len];
            dst[..text.len()].copy_from_slice(&text);
            dst[text.len()..].fill(b' ');
            bytes
        }
        _ => bytes,
    }
}

/// True when every element of a floating-point tensor is finite (other kinds: true).
pub fn all_finite(t: &Tensor) -> bool {
    if !t.is_floating_point() || t.numel() == 0 {
        return true;
    }
    tch::no_grad(|| t.isfinite().all().int64_value(&[]) != 0)
}

/// The first tensor (by name) holding NaN or infinite values, if any.
fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> Option<String> {
    let mut bad: Vec<&String> = tensors
        .into_iter()
        .filter(|(_, t)| !all_finite(t))
        .map(|(n, _)| n)
        .collect();
    bad.sort();
    bad.first().map(|n| n.to_string())
}

/// Writes `tensors` and `metadata` to `path` atomically; refuses (writing nothing)
/// if a tensor is not finite.
pub(crate) fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    if let Some(tensor) = first_non_finite(tensors.iter().map(|(n, t)| (n, t))) {
        return Err(TrainError::NonFiniteTensor {
            path: path.to_path_buf(),
            tensor,
        });
    }
    let host = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), to_host(n, t)?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(host.iter().map(|(n, h)| (n.as_str(), h)), &Some(metadata))
        .map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("serialising: {e}"),
        })?;
    let bytes = canonical_metadata(bytes);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(TrainError::io(path))
}

/// Tensors (on the CPU) and metadata read from a safetensors file.
pub(crate) struct Contents {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Reads every tensor and the metadata of `path`.
pub(crate) fn read(path: &Path) -> Result<Contents> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    let bad = |reason: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| bad(format!("tensor `{name}` has dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(TrainError::torch(format!("reading `{name}`")))?;
        tensors.insert(name, t);
    }
    if let Some(tensor) = first_non_finite(tensors.iter()) {
        return Err(TrainError::NonFiniteTensor {
            path: path.to_path_buf(),
            tensor,
        });
    }
    Ok(Contents {
        tensors,
        metadata: meta.metadata().clone().unwrap_or_default(),
    })
}
