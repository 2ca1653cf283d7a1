//! CPU training-step throughput of dml next to PyTorch-Python on the same libtorch and thread count.
//!
//! `cargo bench -p dml-stages --bench train_step -- [--steps N] [--warmup N] [--threads N] [--batch N] [--no-pytorch]`
//! (needs `[[bench]] name = "train_step"`, `harness = false` in `stages/Cargo.toml`).

use anyhow::{bail, Context, Result};
use dml_stages::train::bench::{compare_with_pytorch, format_table, CompareOptions};

fn parse_args() -> Result<CompareOptions> {
    let mut opts = CompareOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--steps" => opts.steps = value("--steps")?.parse()?,
            "--warmup" => opts.warmup = value("--warmup")?.parse()?,
            "--threads" => opts.threads = value("--threads")?.parse()?,
            "--batch" => opts.batch = value("--batch")?.parse()?,
            "--no-pytorch" => opts.python = None,
            // cargo passes --bench to harness-less bench targets.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(opts)
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    let rows = compare_with_pytorch(&opts)?;
    print!("{}", format_table(&opts, &rows));
    Ok(())
}
