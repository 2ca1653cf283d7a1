//! `dml`: deep metric learning as a DAG of content-hashed stages.
mod config;
mod defaults;
mod diff;
mod eval_cmd;
mod exec_stage;
mod interrupt;
mod links;
mod out;
mod outcome;
mod presets;
mod records;
mod remote_cmds;
mod run;
mod run_shared;
mod runs_cmd;
mod slurm;
mod store_cmds;
mod suggest;
mod tensorboard_cmd;
mod use_cmds;

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
    #[command(flatten)]
    remote: remote_cmds::RemoteArgs,
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
        /// A stage or node id (`train`, `embed:untrained`): the artifact the newest run that
        /// reached it used, as `dml path` prints it; or a key (a unique prefix is enough).
        what: String,
        /// The run name (`NAME~N` for an earlier run of it; default: any run).
        #[arg(long)]
        name: Option<String>,
        /// Rows to print per table.
        #[arg(long, default_value_t = 5)]
        rows: usize,
    },
    /// Remove artifacts that no recent run, `latest/` link or running `dml run` reaches,
    /// and what interrupted runs left (temporary dirs, old checkpoints, quarantined artifacts).
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
    /// Embed image files with a run's trained network (the embed stage's preprocessing) into
    /// a Parquet or Arrow table: path, class folder, embedding.
    Embed(use_cmds::EmbedArgs),
    /// Rank a gallery (the run's embedded test split, or an embeddings file) for query images:
    /// rank, path, class and distance of each neighbour; `--html` draws them.
    Search(use_cmds::SearchArgs),
    /// Export a run's trained network: TorchScript `model.pt`, `model.safetensors` with
    /// `model.json` and `load_model.py`, or ONNX.
    Export(use_cmds::ExportArgs),
    /// Print the artifact directory of a stage in the last run (`latest/<run>/<stage>`).
    Path {
        /// A stage (`embed`), or a node id as `dml run` prints it (`embed:untrained`,
        /// `train[train.loss.name=npairs]`; a unique prefix is enough).
        stage: String,
        /// The run name, `NAME~N` for an earlier run of it, or a record file prefix
        /// (default: the newest run that reached the stage).
        #[arg(long)]
        name: Option<String>,
    },
    /// Compare two run records: the settings that differ, the metric changes, and the stages
    /// each difference invalidated.
    Diff {
        /// A run record: a run name (its newest record), NAME~N (the N-th run of the name
        /// before its newest), a path, or a file name prefix under runs/.
        a: String,
        /// The other run record.
        b: String,
    },
    /// Where each stage of a run stands: cached, queued, running, failed (with its job's log), done.
    Status {
        /// The run name (default: the most recent run).
        #[arg(long)]
        name: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel the queued and running Slurm jobs of a run (`dml run --executor slurm`).
    Cancel {
        /// The run name (default: the most recent run).
        #[arg(long)]
        name: Option<String>,
    },
    /// Build one stage of a submitted run in this process (what each Slurm job runs).
    #[command(hide = true)]
    ExecStage(exec_stage::ExecStageArgs),
    /// Upload a run's artifacts and its record to the remote cache.
    Push {
        /// The run name (default: the most recent run).
        #[arg(long)]
        run: Option<String>,
    },
    /// Download a run's artifacts from the remote cache (its record too, if not here).
    Pull {
        /// The run name (default: the most recent run here, else on the remote).
        #[arg(long)]
        run: Option<String>,
    },
    /// Look into the remote cache.
    Remote {
        #[command(subcommand)]
        command: remote_cmds::RemoteCommand,
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
    /// Print a configuration resolved (every setting, defaults filled in), or with
    /// `--defaults` the table of every setting, its default and the stage keys it enters.
    Config {
        /// The table of every setting's default (Markdown, as in the README).
        #[arg(long, conflicts_with_all = ["config", "preset", "sets"])]
        defaults: bool,
        /// A TOML config, as for `dml run`.
        config: Option<PathBuf>,
        /// Start from a built-in preset.
        #[arg(long)]
        preset: Option<String>,
        /// Override a setting, as for `dml run`.
        #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
        sets: Vec<String>,
    },
    /// A TensorBoard log directory over the runs: one folder per run and sweep point, with
    /// links to its training curves and final test metrics (`tensorboard --logdir DIR`).
    Tensorboard {
        /// Only these run names (their newest records); default: every run's newest record.
        #[arg(long = "name")]
        names: Vec<String>,
        /// The log directory to lay out (folders already there are kept).
        dir: PathBuf,
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
    // A run that builds must finish and record itself whoever reads its output; one that
    // only looks can stop when its reader does.
    let builds = matches!(&cli.command, Command::Run(a) if !a.dry_run && !a.show_config);
    if !builds {
        // `dml show … | head`: a closed pipe ends a browsing command quietly, as
        // for any Unix tool, instead of a panic in println!.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_tracing(cli.verbose);
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing(verbose: u8) {
    use std::io::IsTerminal;
    // Without a terminal (nohup, Slurm, CI) there are no progress bars, so dml's
    // own progress lines are logged instead.
    let default = match verbose {
        0 if !std::io::stderr().is_terminal() => {
            "warn,dml=info,dml_pipeline=info,dml_stages=info,dml_datasets=info"
        }
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // The training worker logs to the same stderr under the same rules.
    let worker = match default {
        "warn" => "warn".to_string(),
        d => format!(
            "{d},dml_torch={}",
            if verbose > 1 { "debug" } else { "info" }
        ),
    };
    std::env::set_var(dml_jobspec::protocol::LOG_VAR, worker);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or CI keeps plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(&cli.store, &cli.remote, args),
        Command::Push { run } => remote_cmds::push(&cli.store, &cli.remote, run.as_deref()),
        Command::Pull { run } => remote_cmds::pull(&cli.store, &cli.remote, run.as_deref()),
        Command::Remote { command } => match command {
            remote_cmds::RemoteCommand::Ls => remote_cmds::ls(&cli.remote),
        },
        Command::Eval(args) => eval_cmd::eval(args),
        Command::Embed(args) => use_cmds::embed(&cli.store, args),
        Command::Search(args) => use_cmds::search(&cli.store, args),
        Command::Export(args) => use_cmds::export(&cli.store, args),
        Command::Path { stage, name } => links::path(&cli.store, &stage, name.as_deref()),
        Command::Diff { a, b } => diff::diff(&cli.store, &a, &b),
        Command::Status { name, json } => slurm::status(&cli.store, name.as_deref(), json),
        Command::Cancel { name } => slurm::cancel(&cli.store, name.as_deref()),
        Command::ExecStage(args) => exec_stage::exec_stage(&cli.store, args),
        Command::Runs { name, limit, json } => {
            runs_cmd::runs(&cli.store, name.as_deref(), limit, json)
        }
        Command::Report { runs, out } => runs_cmd::report(&cli.store, &runs, out),
        Command::Tensorboard { names, dir } => {
            tensorboard_cmd::tensorboard(&cli.store, &names, &dir)
        }
        Command::Ls => store_cmds::ls(&cli.store),
        Command::Show { what, name, rows } => {
            store_cmds::show(&cli.store, &what, name.as_deref(), rows)
        }
        Command::Gc { keep_runs, dry_run } => store_cmds::gc(&cli.store, keep_runs, dry_run),
        Command::Config {
            defaults,
            config,
            preset,
            sets,
        } => {
            let text = if defaults {
                defaults::table()?
            } else {
                config::show_config(&config::load(config.as_deref(), preset.as_deref(), &sets)?)?
            };
            out::println(&text);
            Ok(())
        }
        Command::Presets { show } => {
            match show {
                Some(name) => match presets::find(&name) {
                    Some(text) => println!("{}", text.trim()),
                    None => return Err(presets::unknown(&name)),
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
