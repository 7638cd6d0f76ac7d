//! The `warden` binary: parses the command line and hands off to the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use warden::config::Config;

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Operations agent for GPU inference hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file: exit 0, or print `file:line:col: message` and exit 2.
    CheckConfig { file: PathBuf },
    /// Benchmarks that print measured numbers (dev tree: needs gcc for the fake NVML).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Sampling cost with fake GPUs: one round, CPU % and RSS of the loop, PutMetricData per hour.
    Telemetry {
        #[arg(long, default_value_t = 8)]
        gpus: usize,
        #[arg(long, default_value_t = 5)]
        models: usize,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Bench(b) => bench(b),
    }
}

fn bench(b: Bench) -> ExitCode {
    let Bench::Telemetry {
        gpus,
        models,
        interval,
        duration,
    } = b;
    let run = async {
        warden::telemetry::bench::TelemetryBench {
            gpus,
            models,
            interval,
            duration,
            flush_interval: std::time::Duration::from_secs(60),
        }
        .run()
        .await
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}
