//! `warden-model`: the subcommands that need libtorch (`serve-model`, `models init`,
//! `bench serving`). A binary of its own so that the agent (`warden`) never loads libtorch;
//! `warden serve-model ...` execs this binary, which sits next to it.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use warden::config::Config;
use warden_model as serving;

mod bench;

/// Each request builds and frees its JSON trees and rows; mimalloc's per-thread free lists make
/// that cheaper than glibc's arenas. libtorch's own tensors still go through its allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "warden", version, about = "warden's libtorch subcommands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one model on 127.0.0.1:PORT (the supervisor spawns one per model).
    ServeModel(ServeModelArgs),
    /// Manage model weight files.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Benchmarks (not tests): print measured ratios.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(clap::Args)]
struct ServeModelArgs {
    /// Model name: a built-in (connection-designer, ...) or any name with `--weights model.pt`.
    name: String,
    #[arg(long)]
    port: u16,
    /// Also serve on this Unix socket (the agent's gateway connects there; created mode 0600).
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// Directory `warden models init` wrote (default: the embedded config's models dir).
    #[arg(long, conflicts_with = "weights")]
    models_dir: Option<PathBuf>,
    /// A weight file: a TorchScript module (.pt) or the built-in model's own weight file.
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// tch intra-op threads (five processes share the host's cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Longest wait to fill a batch, e.g. "2ms".
    #[arg(long, default_value = "2ms", value_parser = warden::config::parse_duration)]
    batch_timeout: std::time::Duration,
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
    /// TorchScript only: row shape for the warm-up pass, e.g. "3" or "2,4".
    #[arg(long, value_delimiter = ',')]
    input_shape: Option<Vec<i64>>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Install the five models' shipped (trained) weight files and model cards.
    Init {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Retrain built-in models from their reference calculations (deterministic), evaluate
    /// them and write weights plus model cards.
    Train {
        /// One model (default: all five).
        #[arg(long)]
        model: Option<String>,
        /// Where to write (default: the embedded config's models dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print each model's held-out agreement with its reference calculation.
    Evaluate {
        /// One model (default: all five).
        #[arg(long)]
        model: Option<String>,
        /// Evaluate the weight files in DIR (default: the shipped weights).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Bare forward loop vs the HTTP server with dynamic batching.
    Serving {
        /// Models to measure (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "risk-analyzer,connection-designer"
        )]
        models: Vec<String>,
        /// Length of each measurement, e.g. "3s".
        #[arg(long, default_value = "3s", value_parser = warden::config::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::ServeModel(args) => serve_model(args),
        Command::Models(ModelsCommand::Init { dir }) => models_init(dir),
        Command::Models(ModelsCommand::Train { model, out }) => models_train(model, out),
        Command::Models(ModelsCommand::Evaluate { model, dir }) => models_evaluate(model, dir),
        Command::Bench(BenchCommand::Serving {
            models,
            duration,
            threads,
            max_batch,
        }) => bench_serving(models, duration, threads, max_batch),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_model(args: ServeModelArgs) -> anyhow::Result<()> {
    use warden::config::Device;
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        _ => Device::Auto,
    };
    let opts = serving::ServeOptions {
        name: args.name,
        port: args.port,
        unix_socket: args.unix_socket,
        models_dir: args.models_dir,
        weights: args.weights,
        device,
        threads: args.threads,
        batch: serving::BatchConfig {
            max_batch: args.max_batch,
            batch_timeout: args.batch_timeout,
            queue_capacity: args.queue_capacity,
        },
        row_shape: args.input_shape,
    };
    serving::run_model_server(opts)?;
    Ok(())
}

fn models_init(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| Config::embedded().agent.models_dir);
    for path in serving::weights::init(&dir)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// The built-in models `--model` names (all five without it).
fn selected(model: Option<String>) -> anyhow::Result<Vec<serving::ModelKind>> {
    match model {
        None => Ok(serving::BUILTIN.to_vec()),
        Some(name) => serving::ModelKind::builtin(&name)
            .map(|k| vec![k])
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--model {name:?}: built-in models are {}",
                    serving::BUILTIN.map(|k| k.name()).join(", ")
                )
            }),
    }
}

fn models_train(model: Option<String>, out: Option<PathBuf>) -> anyhow::Result<()> {
    let kinds = selected(model)?;
    let dir = out.unwrap_or_else(|| Config::embedded().agent.models_dir);
    let started = std::time::Instant::now();
    let mut evaluations = Vec::new();
    for kind in kinds {
        let report = serving::training::train(kind, &dir)?;
        let evaluation = serving::evaluate::evaluate(kind, &report.file)?;
        let card = serving::card::record(&report, &evaluation)?;
        let card_path = serving::card::card_path(kind, &dir);
        std::fs::write(
            &card_path,
            format!("{}\n", serde_json::to_string_pretty(&card)?),
        )?;
        println!(
            "{}: {} samples in {:.1} s -> {}",
            kind.name(),
            report.samples,
            report.seconds,
            report.file.display()
        );
        evaluations.push(evaluation);
    }
    println!(
        "trained in {:.1} s\n\n{}",
        started.elapsed().as_secs_f64(),
        serving::evaluate::table(&evaluations)
    );
    anyhow::ensure!(
        evaluations.iter().all(|e| e.met()),
        "a model misses its agreement goal (rows marked NO)"
    );
    Ok(())
}

fn models_evaluate(model: Option<String>, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let kinds = selected(model)?;
    // Without --dir: the shipped weights, installed into a private temporary directory.
    let scratch;
    let dir = match dir {
        Some(d) => d,
        None => {
            scratch = tempfile::tempdir()?;
            serving::weights::init(scratch.path())?;
            scratch.path().to_path_buf()
        }
    };
    let mut evaluations = Vec::new();
    for kind in kinds {
        evaluations.push(serving::evaluate::evaluate(
            kind,
            &dir.join(kind.weight_file()),
        )?);
    }
    print!("{}", serving::evaluate::table(&evaluations));
    anyhow::ensure!(
        evaluations.iter().all(|e| e.met()),
        "a model misses its agreement goal (rows marked NO)"
    );
    Ok(())
}

fn bench_serving(
    models: Vec<String>,
    duration: std::time::Duration,
    threads: usize,
    max_batch: usize,
) -> anyhow::Result<()> {
    let opts = bench::BenchOptions {
        models,
        duration,
        threads,
        batch: serving::BatchConfig {
            max_batch,
            ..Default::default()
        },
    };
    let report = bench::run(&opts)?;
    println!("{report}");
    Ok(())
}
