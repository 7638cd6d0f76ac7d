//! The `warden` binary: parses the command line and hands off to the library.

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use warden::api::auth::{ApiKeyStore, Principal, Role, Tokens};
use warden::config::Config;

/// The gateway allocates and frees a few buffers per request; mimalloc's per-thread free lists
/// cost about a tenth of its CPU less than glibc's arenas. Built without transparent huge
/// pages, which would inflate the agent's resident memory for no gain at its size.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Serve one model on 127.0.0.1:PORT (the supervisor spawns one per model; runs
    /// `warden-model`, the sibling binary that links libtorch).
    #[command(disable_help_flag = true)]
    ServeModel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Manage model weight files (`models init [--dir DIR]`; runs `warden-model`).
    #[command(disable_help_flag = true)]
    Models {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Mint access tokens (operators).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Benchmarks that print ratios measured side by side (not tests; runs `warden-bench`).
    #[command(disable_help_flag = true)]
    Bench {
        /// `serving`, `restart`, `api`, `telemetry`, `alerts` or `logs`, then its flags
        /// (`warden bench --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// CloudWatch dashboards rendered from the metric catalogue.
    #[command(subcommand)]
    Dashboards(DashboardsCommand),
    /// The on-call TUI, attached to the running daemon's control socket.
    Console {
        /// Control socket; default /run/warden/control.sock if present, else the embedded
        /// default's.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Disable every action (restart, stop, start, ack, silence).
        #[arg(long)]
        read_only: bool,
    },
    /// The alert rules as CloudWatch alarms (PutMetricAlarm definitions); `push` also puts
    /// the audit log group's metric filters.
    #[command(subcommand)]
    Alarms(AlarmsCommand),
    /// The fleet's Auto Scaling policies and the CloudWatch alarms that trigger them.
    #[command(subcommand)]
    Scaling(ScalingCommand),
}

#[derive(Subcommand)]
enum DashboardsCommand {
    /// Print the dashboard body JSON (what `dashboards/warden.json` holds).
    Render(DashboardArgs),
    /// PutDashboard to CloudWatch (`[aws]` of the config: region, endpoint_url).
    Push(DashboardArgs),
}

#[derive(clap::Args)]
struct DashboardArgs {
    /// Configuration file (models, namespace, region, alert rules); else the embedded default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Host dimension value drawn by default (the dashboard's Host variable switches it).
    #[arg(long)]
    host: Option<String>,
    /// CloudWatch namespace (default: `cloudwatch.namespace`).
    #[arg(long)]
    namespace: Option<String>,
    /// GPUs per host to draw.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Dashboard name.
    #[arg(long, default_value = "warden")]
    name: String,
}

#[derive(Subcommand)]
enum AlarmsCommand {
    /// Print the alarm definitions as JSON (deterministic).
    Render(AlarmsArgs),
    /// PutMetricAlarm each definition (uses `[aws]` from the config).
    Push(AlarmsArgs),
}

#[derive(clap::Args)]
struct AlarmsArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Host id the alarms watch (default: the config's `agent.host_id`, else the hostname).
    #[arg(long)]
    host: Option<String>,
    /// GPUs on the host (one alarm per GPU for GPU rules).
    #[arg(long, default_value_t = 1)]
    gpus: u32,
}

#[derive(Subcommand)]
enum ScalingCommand {
    /// Print the policies and alarms as JSON (what `alerts/scaling.json` holds).
    Render(ScalingArgs),
    /// PutScalingPolicy + PutMetricAlarm what differs (uses `[aws]` from the config).
    Push(ScalingArgs),
}

#[derive(clap::Args)]
struct ScalingArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Auto Scaling group name (default: the config's `agent.autoscaling_group`).
    #[arg(long)]
    group: Option<String>,
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
        Command::ServeModel { args } => exec_sibling("warden-model", &["serve-model"], &args),
        Command::Models { args } => exec_sibling("warden-model", &["models"], &args),
        Command::Token(TokenCommand::Issue { config, sub, role }) => issue_token(config, sub, role),
        Command::Keys(KeysCommand::Add { config, user, role }) => add_key(config, user, role),
        Command::Bench { args } => exec_sibling("warden-bench", &[], &args),
        Command::Dashboards(cmd) => dashboards(cmd),
        Command::Console { socket, read_only } => {
            let options = warden::console::ConsoleOptions {
                socket: socket.unwrap_or_else(warden::console::default_socket),
                read_only,
            };
            warden::console::run(options).context("console")
        }
        Command::Alarms(cmd) => alarms(cmd),
        Command::Scaling(cmd) => scaling(cmd),
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
        Some(p) => Config::load(&p).with_context(|| format!("loading {}", p.display())),
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

fn dashboards(cmd: DashboardsCommand) -> anyhow::Result<()> {
    use warden::ops::dashboards;
    let (push, args) = match cmd {
        DashboardsCommand::Render(a) => (false, a),
        DashboardsCommand::Push(a) => (true, a),
    };
    let config = load_config(args.config)?;
    let mut spec = dashboards::DashboardSpec::from_config(&config, args.host, args.gpus)?;
    spec.name = args.name;
    if let Some(ns) = args.namespace {
        spec.namespace = ns;
    }
    if !push {
        print!("{}", dashboards::render_text(&spec)?);
        return Ok(());
    }
    runtime()?.block_on(async {
        let sdk = warden::sinks::aws::sdk_config(&config.aws).await;
        let client = aws_sdk_cloudwatch::Client::new(&sdk);
        dashboards::push(&client, &spec).await
    })?;
    eprintln!("dashboard {} pushed", spec.name);
    Ok(())
}

fn alarms(cmd: AlarmsCommand) -> anyhow::Result<()> {
    use warden::alerts::{alarms, rules};
    let (args, push) = match cmd {
        AlarmsCommand::Render(a) => (a, false),
        AlarmsCommand::Push(a) => (a, true),
    };
    let config = load_config(args.config)?;
    let rules = rules::load_for(&config).context("loading the alert rules")?;
    let target = alarms::AlarmTarget {
        host: args.host.unwrap_or_else(|| config.agent.host_id()),
        gpus: args.gpus,
    };
    let objectives = warden::alerts::slo::load_for(&config).context("loading the SLOs")?;
    let set = alarms::with_slos(
        alarms::render(&rules, &config, &target),
        &objectives,
        &config,
        &target,
    );
    if !push {
        print!("{}", alarms::render_json(&set));
        return Ok(());
    }
    // Without the logs sink nothing reaches the audit group: no filters to keep there.
    let filters = if config.logs.enabled {
        warden::ops::metric_filters::render(&config)
    } else {
        Vec::new()
    };
    let (n, pushed) = runtime()?.block_on(async {
        let sdk = warden::sinks::aws::sdk_config(&config.aws).await;
        let n = alarms::push(&sdk, &set).await?;
        let pushed = warden::ops::metric_filters::push(&sdk, &filters).await?;
        anyhow::Ok((n, pushed))
    })?;
    println!("{n} alarms written");
    if config.logs.enabled {
        println!(
            "{} metric filters written, {} unchanged (log group {})",
            pushed.written, pushed.unchanged, config.logs.api_group
        );
    } else {
        println!("logs.enabled = false: no audit metric filters put");
    }
    for (rule, why) in &set.skipped {
        eprintln!("skipped {rule}: {why}");
    }
    Ok(())
}

fn scaling(cmd: ScalingCommand) -> anyhow::Result<()> {
    use warden::ops::scaling;
    let (args, push) = match cmd {
        ScalingCommand::Render(a) => (a, false),
        ScalingCommand::Push(a) => (a, true),
    };
    let config = load_config(args.config)?;
    let group = scaling::group_of(&config, args.group)?;
    let plan = scaling::render(&config, &group)?;
    if !push {
        print!("{}", scaling::render_json(&plan));
        return Ok(());
    }
    let out = runtime()?.block_on(async {
        let sdk = warden::sinks::aws::sdk_config(&config.aws).await;
        scaling::push(&sdk, &plan).await
    })?;
    println!(
        "group {group}: {} policies and {} alarms written, {} unchanged",
        out.policies_written, out.alarms_written, out.unchanged
    );
    Ok(())
}

/// Runs a subcommand in a sibling binary: `warden-model` (the only one that links libtorch, so
/// the agent process never loads it) or `warden-bench` (the benchmarks, kept out of the
/// daemon). `exec` keeps the pid, process group and parent-death signal the supervisor set up.
fn exec_sibling(binary: &str, subcommand: &[&str], args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locating the warden binary")?;
    let sibling = exe.with_file_name(binary);
    let err = std::process::Command::new(&sibling)
        .args(subcommand)
        .args(args)
        .exec();
    Err(anyhow::Error::new(err).context(format!("cannot run {}", sibling.display())))
}
