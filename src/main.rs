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
    /// Run the daemon: supervise the models, serve the control socket (and, later, the API).
    Run {
        /// Configuration file; without it the embedded default runs.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
    /// Validate a configuration file: exit 0, or print `file:line:col: message` and exit 2.
    CheckConfig { file: PathBuf },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time from `kill -9 <child>` to the new child answering /ready (median over N kills).
    Restart {
        /// The built-in model to run (ignored with --command).
        #[arg(long, default_value = "connection-designer")]
        model: String,
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Models dir for the built-in model (`warden models init` fills it).
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Spawn this instead (argv; `{port}` is replaced by the port).
        #[arg(long, num_args = 1.., allow_hyphen_values = true)]
        command: Option<Vec<String>>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run { config } => {
            warden::agent::init_tracing();
            match warden::agent::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("warden run: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench {
            bench:
                BenchCommand::Restart {
                    model,
                    kills,
                    models_dir,
                    command,
                },
        } => {
            let options = warden::supervisor::bench::RestartBench {
                model,
                kills,
                models_dir,
                command,
            };
            match warden::supervisor::bench::run_restart(options) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("warden bench restart: {e}");
                    ExitCode::FAILURE
                }
            }
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
