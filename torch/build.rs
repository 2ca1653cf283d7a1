// The build script of the one crate that links libtorch (its tests, benches and the
// training worker `dml-torch`).
//
// Two things the plain tch build does not do for us:
// 1. an rpath to libtorch's `lib/`, so `dml-torch` and the test binaries run without
//    LD_LIBRARY_PATH (libtorch_cpu.so itself carries an rpath to the nvidia
//    pip packages' libcudart/libcupti, so one entry is enough);
// 2. link `libtorch_cuda.so` for real. The linker's `--as-needed` drops it
//    because no symbol of ours references it, and then CUDA silently reports
//    unavailable on a GPU machine.

fn torch_lib_dir() -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("LIBTORCH_LIB") {
        return Some(lib.into());
    }
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(std::path::Path::new(&root).join("lib"));
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    Some(dir.into())
}

fn main() {
    let arg = |a: String| println!("cargo:rustc-link-arg={a}");
    let Some(lib) = torch_lib_dir() else {
        println!(
            "cargo:warning=libtorch not found: set LIBTORCH or LIBTORCH_USE_PYTORCH=1 (see README)"
        );
        return;
    };
    let lib = lib.display().to_string();
    arg(format!("-Wl,-rpath,{lib}"));
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        arg(format!("-L{lib}"));
        arg("-Wl,--no-as-needed".into());
        arg("-ltorch_cuda".into());
        arg("-Wl,--as-needed".into());
    }
}
