//! What the reference tests of dml-torch share: the Python that runs the reference
//! libraries, the repository root (for `scripts/`), and reading safetensors files.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The Python with torch and the reference libraries (`DML_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("DML_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every tensor of a safetensors file, by name.
pub fn read(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).expect("read safetensors")
}

/// The tensor `name` of `tensors`.
pub fn get(tensors: &[(String, Tensor)], name: &str) -> Tensor {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.shallow_clone())
        .unwrap_or_else(|| panic!("no tensor `{name}`"))
}
