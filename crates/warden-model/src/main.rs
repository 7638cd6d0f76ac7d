//! `warden-model`: the subcommands that need libtorch (`serve-model`, `models init`,
//! `bench serving`). A binary of its own so that the agent (`warden`) never loads libtorch;
//! `warden serve-model ...` execs this binary, which sits next to it.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use warden::config::Config;
use warden_model as serving;

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
    /// Write the five models' weight files (deterministic seed).
    Init {
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

fn bench_serving(
    models: Vec<String>,
    duration: std::time::Duration,
    threads: usize,
    max_batch: usize,
) -> anyhow::Result<()> {
    let opts = serving::bench::BenchOptions {
        models,
        duration,
        threads,
        batch: serving::BatchConfig {
            max_batch,
            ..Default::default()
        },
    };
    let report = serving::bench::run(&opts)?;
    println!("{report}");
    Ok(())
}
