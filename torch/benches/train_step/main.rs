//! CPU training-step throughput of dml next to PyTorch-Python on the same libtorch and thread count.
//!
//! `cargo bench -p dml-torch --bench train_step -- [--steps N] [--warmup N] [--threads N] [--batch N] [--precision f32|bf16|both] [--no-pytorch] [--backbone NAME --size PX]`
//! (`--backbone vit_s16 --size 224` times ViT-S/16 next to timm's in PyTorch eager)
//! (bf16 is CPU autocast; `both`, the default where the CPU has AVX512-BF16, prints the speed-up over f32)
//! (registered in `torch/Cargo.toml` with `harness = false`). The comparison, which runs
//! `scripts/bench_train_pytorch.py`, lives beside this file, not in the library.

use anyhow::{bail, Context, Result};
mod compare;

use compare::{compare_with_pytorch, format_table, CompareOptions};
use dml_torch::train::{Backbone, Precision};

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
            "--backbone" => {
                let name = value("--backbone")?;
                let backbone = Backbone::ALL
                    .into_iter()
                    .find(|b| b.name() == name)
                    .with_context(|| format!("--backbone {name}: not a backbone"))?;
                let size = opts.cases.first().map_or(64, |c| c.1);
                opts.cases = vec![(backbone, size)];
            }
            "--size" => {
                let size = value("--size")?.parse()?;
                for case in &mut opts.cases {
                    case.1 = size;
                }
            }
            "--precision" => {
                opts.precisions = match value("--precision")?.as_str() {
                    "f32" => vec![Precision::F32],
                    "bf16" => vec![Precision::Bf16],
                    "both" => vec![Precision::F32, Precision::Bf16],
                    other => bail!("--precision {other}: f32, bf16 or both"),
                }
            }
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
