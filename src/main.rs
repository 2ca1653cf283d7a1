//! `dml`: deep metric learning as a DAG of content-hashed stages.
mod config;
mod diff;
mod eval_cmd;
mod links;
mod outcome;
mod presets;
mod run;
mod runs_cmd;
mod store_cmds;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Train an embedding network with a ranking loss, embed a test set, score it
/// with NMI and Recall@K, as a DAG of content-hashed, cached stages.
#[derive(Debug, Parser)]
#[command(name = "dml", version, about, max_term_width = 100)]
struct Cli {
    /// The artifact store.
    #[arg(long, global = true, env = "DML_STORE", default_value = "dml-store")]
    store: PathBuf,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve the stage DAG of an experiment, reuse cached artifacts, run the rest.
    Run(run::RunArgs),
    /// List the artifacts in the store.
    Ls,
    /// Show an artifact: its manifest's settings, and each table's schema and first rows.
    Show {
        /// A stage name (its newest artifact) or a key (a unique prefix is enough).
        what: String,
        /// Rows to print per table.
        #[arg(long, default_value_t = 5)]
        rows: usize,
    },
    /// Remove artifacts that none of the last N runs reached, and stale temporary files.
    Gc {
        /// How many recent run records to keep alive.
        #[arg(long, default_value_t = 10)]
        keep_runs: usize,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Score an embeddings file (Arrow IPC or Parquet): Recall@K, MAP@R, R-precision, NMI.
    Eval(eval_cmd::EvalArgs),
    /// Print the artifact directory of a stage in the last run (`latest/<run>/<stage>`).
    Path {
        /// A stage (`embed`) or node id (`train[train.loss=npairs]`, `embed:untrained`).
        stage: String,
        /// The run name (default: the most recent run).
        #[arg(long)]
        name: Option<String>,
    },
    /// Compare two run records: the settings that differ, the metric changes, and the stages
    /// each difference invalidated.
    Diff {
        /// A run record: a run name (its newest record), a path, or a file name prefix under runs/.
        a: String,
        /// The other run record.
        b: String,
    },
    /// List the run records, newest first: name, time, sweep point, status, R@1, MAP@R, NMI,
    /// training seconds.
    Runs {
        /// Only the records of this run name.
        #[arg(long)]
        name: Option<String>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// As JSON, with each point's artifact directories.
        #[arg(long)]
        json: bool,
    },
    /// One combined report (table and plots) over several runs, from their existing artifacts
    /// only: nothing is trained or evaluated again.
    Report {
        /// Run names (their newest records), record paths or file name prefixes under runs/.
        #[arg(required = true)]
        runs: Vec<String>,
        /// Where to write it (default: `<store>/reports/<names joined by +>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the built-in presets.
    Presets {
        /// Print one preset's TOML.
        #[arg(long)]
        show: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(&cli.store, args),
        Command::Eval(args) => eval_cmd::eval(args),
        Command::Path { stage, name } => links::path(&cli.store, &stage, name.as_deref()),
        Command::Diff { a, b } => diff::diff(&cli.store, &a, &b),
        Command::Runs { name, limit, json } => {
            runs_cmd::runs(&cli.store, name.as_deref(), limit, json)
        }
        Command::Report { runs, out } => runs_cmd::report(&cli.store, &runs, out),
        Command::Ls => store_cmds::ls(&cli.store),
        Command::Show { what, rows } => store_cmds::show(&cli.store, &what, rows),
        Command::Gc { keep_runs, dry_run } => store_cmds::gc(&cli.store, keep_runs, dry_run),
        Command::Presets { show } => {
            match show {
                Some(name) => match presets::find(&name) {
                    Some(text) => println!("{}", text.trim()),
                    None => anyhow::bail!("unknown preset `{name}`; `dml presets` lists them"),
                },
                None => {
                    for p in presets::all() {
                        println!("{:<28} {}", p.name, p.description);
                    }
                }
            }
            Ok(())
        }
    }
}
