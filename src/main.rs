//! The `warden` binary: parses the command line and hands off to the library.

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use warden::api::auth::{ApiKeyStore, Principal, Role, Tokens};
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
    /// Run the daemon: supervise the models, serve the API and the control socket.
    Run {
        /// Configuration file; without it the embedded default runs.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0, or print `file:line:col: message` and exit 2.
    CheckConfig { file: PathBuf },
    /// Mint access tokens (operators).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Benchmarks that print ratios measured side by side (not tests).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an RS256 access token signed with `auth.jwt_private_key`, nothing else.
    Issue {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        role: Role,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a hashed API key to `auth.api_keys_file` and print the key once.
    Add {
        #[arg(long)]
        config: Option<PathBuf>,
        user: String,
        #[arg(long)]
        role: Role,
    },
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
    /// Sampling cost with fake GPUs (dev tree: needs gcc for the fake NVML).
    Telemetry {
        #[arg(long, default_value_t = 8)]
        gpus: usize,
        #[arg(long, default_value_t = 5)]
        models: usize,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// A child printing lines as fast as it can, shipped to CloudWatch Logs (moto): lines/s, CPU.
    Logs {
        #[arg(long, default_value_t = 300_000)]
        lines: u64,
        #[arg(long, default_value_t = 100)]
        line_bytes: usize,
        /// A running AWS emulator; without it `--moto-server` is started.
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long, default_value = ".deps/venv/bin/moto_server")]
        moto_server: PathBuf,
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => return check_config(&file),
        Command::Run { config } => {
            warden::agent::init_tracing();
            if let Err(e) = warden::agent::run(config) {
                eprintln!("warden run: {e}");
                return ExitCode::from(2);
            }
            Ok(())
        }
        Command::Token(TokenCommand::Issue { config, sub, role }) => issue_token(config, sub, role),
        Command::Keys(KeysCommand::Add { config, user, role }) => add_key(config, user, role),
        Command::Bench(bench) => run_bench(bench),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
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

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(&p).map_err(|e| anyhow!("{e}")),
        None => Ok(Config::embedded()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn issue_token(config: Option<PathBuf>, sub: String, role: Role) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let auth = config
        .auth
        .as_ref()
        .ok_or_else(|| anyhow!("the config has no [auth] section"))?;
    let (Some(public), Some(private)) = (&auth.jwt_public_key, &auth.jwt_private_key) else {
        bail!("auth.jwt_public_key and auth.jwt_private_key are both needed to issue tokens");
    };
    let tokens = Tokens::from_files(
        &config.resolve(public),
        Some(&config.resolve(private)),
        &auth.issuer,
        &auth.audience,
    )?;
    println!(
        "{}",
        tokens.issue_access(&Principal { subject: sub, role })?
    );
    Ok(())
}

fn add_key(config: Option<PathBuf>, user: String, role: Role) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let path = config
        .auth
        .as_ref()
        .and_then(|a| a.api_keys_file.as_ref())
        .ok_or_else(|| anyhow!("the config sets no auth.api_keys_file"))?;
    let key = ApiKeyStore::add(&config.resolve(path), &user, role)?;
    println!("{key}");
    Ok(())
}

fn run_bench(bench: BenchCommand) -> anyhow::Result<()> {
    match bench {
        BenchCommand::Restart {
            model,
            kills,
            models_dir,
            command,
        } => {
            let options = warden::supervisor::bench::RestartBench {
                model,
                kills,
                models_dir,
                command,
            };
            let report =
                warden::supervisor::bench::run_restart(options).map_err(|e| anyhow!("{e}"))?;
            println!("{report}");
        }
        BenchCommand::Telemetry {
            gpus,
            models,
            interval,
            duration,
        } => {
            let bench = warden::telemetry::bench::TelemetryBench {
                gpus,
                models,
                interval,
                duration,
                flush_interval: Duration::from_secs(60),
            };
            let report = runtime()?
                .block_on(bench.run())
                .map_err(|e| anyhow!("{e}"))?;
            print!("{report}");
        }
        BenchCommand::Logs {
            lines,
            line_bytes,
            endpoint,
            moto_server,
            timeout,
        } => {
            let bench = warden::sinks::logs::bench::LogsBench {
                lines,
                line_bytes,
                endpoint,
                moto_server,
                timeout,
            };
            let report = runtime()?
                .block_on(bench.run())
                .map_err(|e| anyhow!("{e}"))?;
            print!("{report}");
        }
    }
    Ok(())
}
