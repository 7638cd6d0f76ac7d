//! `warden-bench`: the benchmarks (`warden bench ...` execs this binary), each printing figures
//! measured side by side in one run. Kept out of the daemon; shares its harness (ports, rusage,
//! stats, moto, fake NVML, Slack receiver) with the integration tests through `warden-testkit`.
//! One file per area: `restart`, `api`, `fast`, `agent`, `peers`, `all` (the fast-path ones together), `telemetry`, `alerts`, `logs`; `serving` runs in
//! `warden-model`, the binary that links libtorch.

mod agent;
mod alerts;
mod all;
mod api;
mod fast;
mod logs;
mod peers;
mod restart;
mod telemetry;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "warden bench",
    version,
    about = "warden's benchmarks (not tests)"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Bare forward loop vs the HTTP server with dynamic batching (runs `warden-model`).
    #[command(disable_help_flag = true)]
    Serving {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
    /// Load through the gateway (many clients), then direct-vs-gateway overhead, one run.
    Api {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 32)]
        overhead_clients: usize,
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        overhead_duration: Duration,
        /// Reuse weights (`warden models init`) instead of writing them in a temp dir.
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
    /// The fast path side by side: direct vs nginx vs gateway, c=1 /infer vs /health, many
    /// clients' P99, agent vs node_exporter (`--setup` installs node_exporter first).
    Fast {
        #[arg(long, default_value_t = 32)]
        connections: u32,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Rounds of direct / nginx / gateway, each side once per round in a rotating order;
        /// the ratios reported are the medians of the rounds'.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Concurrent clients for the gateway's P99.
        #[arg(long, default_value_t = 1000)]
        many: u32,
        #[arg(long, default_value = "risk-analyzer")]
        model: String,
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Install the comparison's peers (Debian prometheus-node-exporter) and exit.
        #[arg(long)]
        setup: bool,
    },
    /// One TorchScript model served by warden vs TorchServe vs FastAPI (wrk, same run);
    /// `--setup` installs the peers into `~/.cache/warden/bench-venv` first.
    Peers {
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        /// warden-model's tch intra-op threads.
        #[arg(long, default_value_t = 1)]
        warden_threads: usize,
        /// The cache with the venv, wheels and model (default `~/.cache/warden`).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Install the peers (venv, JRE, model) and exit.
        #[arg(long)]
        setup: bool,
    },
    /// The fast-path comparisons in one run (`fast`, `agent`, `peers`), then each figure
    /// against its goal. Peers not set up are reported as skipped.
    All {
        /// Each wrk measurement of the fast part.
        #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// The agent's measured window.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        agent_window: Duration,
        #[arg(long)]
        models_dir: Option<PathBuf>,
        #[arg(long, default_value_os_t = warden_testkit::moto::default_server())]
        moto_server: PathBuf,
        /// The peers' cache (default `~/.cache/warden`).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// The agent's CPU and peak RSS with CloudWatch + Logs on (moto), fake GPUs, the five
    /// models, vs node_exporter scraped every second in the same window (dev tree).
    Agent {
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Waited after every model is ready, before the window opens.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        settle: Duration,
        #[arg(long, default_value_t = 8)]
        gpus: usize,
        #[arg(long)]
        models_dir: Option<PathBuf>,
        #[arg(long, default_value_os_t = warden_testkit::moto::default_server())]
        moto_server: PathBuf,
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
    /// Alert latency: fake NVML GPU util 10 -> 95 until the Slack webhook gets the POST.
    Alerts {
        /// Runs with `for = "0s"`.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Runs with the default `for` (1m each).
        #[arg(long, default_value_t = 3)]
        default_for_runs: usize,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        sample_interval: Duration,
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
    match run_bench(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run_bench(bench: BenchCommand) -> anyhow::Result<()> {
    match bench {
        BenchCommand::Restart {
            model,
            kills,
            models_dir,
            command,
        } => {
            let options = restart::RestartBench {
                model,
                kills,
                models_dir,
                command,
            };
            let report = restart::run_restart(options).context("benchmark failed")?;
            println!("{report}");
        }
        BenchCommand::Serving { args } => exec_model_bench(&args)?,
        BenchCommand::Fast {
            connections,
            duration,
            rounds,
            many,
            model,
            models_dir,
            setup,
        } => {
            if setup {
                fast::setup().context("bench set-up failed")?;
                return Ok(());
            }
            let bench = fast::FastBench {
                connections,
                duration,
                rounds,
                many,
                model,
                models_dir,
            };
            print!("{}", bench.run().context("benchmark failed")?);
        }
        BenchCommand::Peers {
            duration,
            concurrency,
            warden_threads,
            cache,
            setup,
        } => {
            if setup {
                peers::setup(cache.as_deref()).context("bench set-up failed")?;
                return Ok(());
            }
            let bench = peers::PeersBench {
                duration,
                concurrency,
                warden_threads,
                cache,
            };
            print!("{}", bench.run().context("benchmark failed")?);
        }
        BenchCommand::Api {
            clients,
            duration,
            overhead_clients,
            overhead_duration,
            models_dir,
        } => {
            let bench = api::ApiBench {
                clients,
                duration,
                overhead_clients,
                overhead_duration,
                models_dir,
            };
            let report = runtime()?
                .block_on(bench.run())
                .context("benchmark failed")?;
            print!("{report}");
        }
        BenchCommand::All {
            duration,
            agent_window,
            models_dir,
            moto_server,
            cache,
        } => {
            let bench = all::AllBench {
                fast: fast::FastBench {
                    connections: 32,
                    duration,
                    rounds: 3,
                    many: 1000,
                    model: "risk-analyzer".into(),
                    models_dir: models_dir.clone(),
                },
                agent: agent::AgentBench {
                    duration: agent_window,
                    models_dir,
                    moto_server,
                    ..agent::AgentBench::issue_setting()
                },
                peers: peers::PeersBench {
                    duration: duration.max(Duration::from_secs(10)),
                    concurrency: 64,
                    warden_threads: 1,
                    cache,
                },
            };
            print!("{}", bench.run().context("benchmark failed")?);
        }
        BenchCommand::Agent {
            duration,
            settle,
            gpus,
            models_dir,
            moto_server,
        } => {
            let bench = agent::AgentBench {
                duration,
                settle,
                gpus,
                models_dir,
                moto_server,
                ..agent::AgentBench::issue_setting()
            };
            print!("{}", bench.run().context("benchmark failed")?);
        }
        BenchCommand::Telemetry {
            gpus,
            models,
            interval,
            duration,
        } => {
            let bench = telemetry::TelemetryBench {
                gpus,
                models,
                interval,
                duration,
                flush_interval: Duration::from_secs(60),
            };
            let report = runtime()?
                .block_on(bench.run())
                .context("benchmark failed")?;
            print!("{report}");
        }
        BenchCommand::Alerts {
            runs,
            default_for_runs,
            sample_interval,
        } => {
            let bench = alerts::AlertsBench {
                runs,
                default_for_runs,
                sample_interval,
            };
            let report = runtime()?
                .block_on(bench.run())
                .context("benchmark failed")?;
            print!("{report}");
        }
        BenchCommand::Logs {
            lines,
            line_bytes,
            endpoint,
            moto_server,
            timeout,
        } => {
            let bench = logs::LogsBench {
                lines,
                line_bytes,
                endpoint,
                moto_server,
                timeout,
            };
            let report = runtime()?
                .block_on(bench.run())
                .context("benchmark failed")?;
            print!("{report}");
        }
    }
    Ok(())
}

/// `bench serving` runs inside `warden-model` (it needs libtorch), next to this binary.
fn exec_model_bench(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the warden-bench binary")?;
    let model_exe = exe.with_file_name("warden-model");
    let err = std::process::Command::new(&model_exe)
        .args(["bench", "serving"])
        .args(args)
        .exec();
    Err(anyhow::Error::new(err).context(format!("cannot run {}", model_exe.display())))
}
