//! The `warden run` daemon: loads the config, supervises the models, serves the control
//! socket, and turns SIGTERM/SIGINT into a clean stop and SIGHUP into a reload.

use crate::api::audit as api_audit;
use crate::config::{Config, ConfigErrors};
use crate::control::snapshot::{SinkStatsSource, SnapshotSource};
use crate::control::{ControlError, ControlServer, Dispatcher};
use crate::ops::notify::{HostSnapshot, Notifier};
use crate::sinks::cloudwatch::{CloudWatchSink, config::CloudWatchSinkConfig};
use crate::supervisor::{SupervisorError, SupervisorHandle, SupervisorOptions};
use crate::telemetry::{self, MetricStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Points of history kept per series (10 min at the default 1 s sampling) for alerts and
/// the console's sparklines.
const HISTORY_POINTS: usize = 600;

/// How long `warden models init` may take on first run.
const MODELS_INIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Audit records waiting for the log shipper before the API feels back-pressure.
const AUDIT_TO_LOGS_CAPACITY: usize = 8192;

/// The agent's own log events waiting for the shipper (skipped, not blocked on, when full).
const AGENT_LOG_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("API: {0}")]
    Api(#[from] crate::api::ApiStartError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::api::audit::AuditError),
    #[error("CloudWatch: {0}")]
    CloudWatch(#[from] crate::sinks::cloudwatch::CloudWatchError),
    #[error("alerts: {0}")]
    Alerts(#[from] crate::alerts::AlertsError),
    #[error("CloudWatch Logs: {0}")]
    Logs(#[from] crate::sinks::logs::LogsError),
}

/// `/metrics` extras: the store's series, then the alert gauge.
struct MetricsChain(Vec<Arc<dyn crate::api::MetricsText>>);

impl crate::api::MetricsText for MetricsChain {
    fn render(&self) -> String {
        self.0.iter().map(|m| m.render()).collect()
    }
}

/// The gateway and the samplers see models through the supervisor's status.
struct SupervisedModels(SupervisorHandle);

impl telemetry::ModelSource for SupervisedModels {
    fn models(&self) -> Vec<telemetry::ModelSample> {
        self.0
            .status()
            .into_iter()
            .map(|s| telemetry::ModelSample {
                up: s.state == crate::supervisor::ModelState::Ready,
                name: s.name,
                port: s.port,
                pid: s.pid,
                restarts: s.restarts,
            })
            .collect()
    }

    /// The supervisor already reads each child's /proc every second for its status.
    fn process_stats(&self) -> Option<std::collections::HashMap<u32, telemetry::ProcessStat>> {
        Some(
            self.0
                .status()
                .into_iter()
                .filter_map(|s| {
                    Some((
                        s.pid?,
                        telemetry::ProcessStat {
                            cpu_percent: s.cpu_percent?,
                            rss_bytes: s.rss_bytes?,
                        },
                    ))
                })
                .collect(),
        )
    }
}

/// Gateway outcomes feed the store's latency histograms and request/error counters, and the
/// SLO engine's successful-call latency counters.
struct StoreObserver {
    store: Arc<MetricStore>,
    slo: Option<Arc<crate::alerts::slo::RequestCounters>>,
    /// Each model's series, keyed once: the gateway records an outcome per request.
    series: std::sync::RwLock<std::collections::HashMap<String, Arc<telemetry::RequestSeries>>>,
}

impl StoreObserver {
    fn new(store: Arc<MetricStore>, slo: Option<Arc<crate::alerts::slo::RequestCounters>>) -> Self {
        StoreObserver {
            store,
            slo,
            series: Default::default(),
        }
    }

    fn series_of(&self, model: &str) -> Arc<telemetry::RequestSeries> {
        if let Ok(known) = self.series.read()
            && let Some(s) = known.get(model)
        {
            return s.clone();
        }
        let fresh = Arc::new(self.store.request_series(model));
        if let Ok(mut known) = self.series.write() {
            known.insert(model.to_string(), fresh.clone());
        }
        fresh
    }
}

impl crate::api::RequestObserver for StoreObserver {
    fn observe(&self, model: &str, status: u16, latency: Duration) {
        // Client mistakes (4xx) are not the model's errors; 5xx and timeouts are.
        let ok = status < 500;
        let ms = latency.as_secs_f64() * 1000.0;
        let client_error = (400..500).contains(&status);
        let now = std::time::SystemTime::now();
        self.store
            .record_outcome(&self.series_of(model), ms, ok, Some(client_error), now);
        if let Some(slo) = &self.slo {
            slo.record(model, ms, ok);
        }
    }
}

impl crate::api::MetricsText for StoreObserver {
    fn render(&self) -> String {
        self.store.render()
    }
}

impl crate::api::ModelDirectory for SupervisedModels {
    fn models(&self) -> Vec<crate::api::ModelEndpoint> {
        self.0
            .status()
            .into_iter()
            .map(|s| crate::api::ModelEndpoint {
                ready: s.state == crate::supervisor::ModelState::Ready,
                state: s.state.to_string(),
                socket: self.0.route(&s.name).and_then(|(_, socket, _)| socket),
                name: s.name,
                port: s.port,
            })
            .collect()
    }

    fn get(&self, name: &str) -> Option<crate::api::ModelEndpoint> {
        let (port, socket, state) = self.0.route(name)?;
        Some(crate::api::ModelEndpoint {
            name: name.to_string(),
            port,
            socket,
            state: state.to_string(),
            ready: state == crate::supervisor::ModelState::Ready,
        })
    }
}

/// The running gateway: its server task and the audit trail it writes.
struct ApiParts {
    serve: tokio::task::JoinHandle<()>,
    audit: api_audit::AuditSink,
    /// Ends once every record the API handed over is in the file and the shipper's queue.
    audit_writer: tokio::task::JoinHandle<()>,
}

/// How long shutdown waits for the audit trail to take the last records.
const AUDIT_FLUSH_BOUND: Duration = Duration::from_secs(5);

/// Binds `agent.listen` and serves the inference API until `cancel`.
#[allow(clippy::too_many_arguments)]
async fn start_api(
    config: &Config,
    supervisor: &SupervisorHandle,
    store: &Arc<MetricStore>,
    alerts: &crate::alerts::AlertsHandle,
    state_dir: &Path,
    audit_forward: Option<tokio::sync::mpsc::Sender<api_audit::AuditRecord>>,
    readiness: Arc<dyn crate::api::HostReadiness>,
    cancel: CancellationToken,
) -> Result<ApiParts, AgentError> {
    use crate::api;
    let options = api_audit::AuditOptions {
        max_file_bytes: config.api.audit_max_file_bytes,
        keep_files: config.api.audit_keep_files,
        buffer_bytes: config.api.audit_buffer_bytes,
        store: Some(store.clone()),
    };
    let (audit, audit_writer) = api::audit::AuditSink::start_with(
        &state_dir.join("audit/api.jsonl"),
        audit_forward,
        options,
    )
    .await?;
    let peers = api::Peers {
        directory: std::sync::Arc::new(SupervisedModels(supervisor.clone())),
        audit: audit.clone(),
        observer: Some(Arc::new(StoreObserver::new(
            store.clone(),
            alerts.request_counters(),
        ))),
        extra_metrics: Some(Arc::new(MetricsChain(vec![
            Arc::new(StoreObserver::new(store.clone(), None)),
            Arc::new(alerts.clone()),
        ]))),
    };
    let mut state = api::AppState::new(config, peers)?;
    state.readiness = Some(readiness);
    let state = std::sync::Arc::new(state);
    let listener = api::bind(config.agent.listen).await?;
    match config.auth_enabled() {
        Some(_) => {
            tracing::info!(listen = %config.agent.listen, "inference API listening (auth on)")
        }
        None => tracing::warn!(listen = %config.agent.listen,
            "inference API listening WITHOUT authentication (no [auth] section); keep it on 127.0.0.1"),
    }
    let origins = config.api.cors_origins.clone();
    let serve = tokio::spawn(async move {
        if let Err(e) = api::serve(listener, state, &origins, cancel).await {
            tracing::error!(error = %e, "inference API stopped");
        }
    });
    Ok(ApiParts {
        serve,
        audit,
        audit_writer,
    })
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Logs to stderr (journald picks it up); `RUST_LOG` overrides the `info` default. No colour
/// codes unless stderr is a terminal, so journald and log files get plain text.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // The agent-log layer forwards nothing until `logs.agent_group` turns it on.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(crate::sinks::logs::agent::AgentLogLayer)
        .try_init();
}

/// The config `warden run` uses: the file, else the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, AgentError> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::embedded()),
    }
}

/// Runs the daemon until SIGTERM/SIGINT. Builds its own multi-thread runtime: the children's
/// parent-death signal is tied to the spawning thread, and runtime workers live as long as
/// the agent.
pub fn run(config_path: Option<PathBuf>) -> Result<(), AgentError> {
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warden")
        .worker_threads(agent_workers())
        // Blocking work is file and spool I/O: a few threads suffice, each one costs RSS.
        .max_blocking_threads(16)
        .build()
        .map_err(io_err("starting the async runtime"))?;
    runtime.block_on(run_until_signalled(config_path))
}

/// Async workers: the agent's work is small and mostly I/O, and a GPU host has many cores the
/// models need; each worker adds its stack and (with glibc) its own heap arena.
fn agent_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// glibc gives each thread that allocates its own 64 MiB heap arena; for a daemon whose
/// allocations are small and short-lived, two arenas keep the RSS down at no measurable cost.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tunables; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

pub async fn run_until_signalled(config_path: Option<PathBuf>) -> Result<(), AgentError> {
    // Handlers first: from here on SIGTERM means a graceful stop, not instant death.
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("SIGTERM handler"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("SIGINT handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err("SIGHUP handler"))?;

    let config = load_config(config_path.as_deref())?;
    match &config.source {
        Some(p) => tracing::info!(config = %p.display(), "starting warden"),
        None => tracing::info!("starting warden on the embedded default configuration"),
    }
    let mut notifier = Notifier::from_env(crate::ops::notify::ready_wait(&config));
    notifier.status("starting: launching models");
    let mut agent = Agent::start(config).await?;
    let mut test_hooks = agent.test_hooks.take();
    // The watchdog pings come from this loop's ticks: if the loop stalls, they stop.
    let mut ticker = tokio::time::interval(notifier.tick_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = ticker.tick() => notifier.tick(&agent.snapshot()),
            wedge = crate::ops::notify::next_wedge(&mut test_hooks) => {
                let stall = wedge.begin();
                tracing::warn!(?stall, "debug.wedge: stalling the main loop");
                tokio::time::sleep(stall).await;
            }
            _ = sighup.recv() => {
                notifier.reloading();
                // logrotate's postrotate: write to a fresh api.jsonl whatever the config says.
                agent.reopen_audit();
                let outcome = match load_config(config_path.as_deref()) {
                    Ok(new) => {
                        let (summary, plan) = agent.reload(new).await;
                        tracing::info!(added = ?summary.added, removed = ?summary.removed,
                            changed = ?summary.changed, unchanged = summary.unchanged.len(),
                            applied = ?plan.applied, "SIGHUP: configuration reloaded");
                        if !plan.restart.is_empty() {
                            tracing::warn!(sections = ?plan.restart,
                                "SIGHUP: these changes are NOT applied until `systemctl restart warden`: {}",
                                plan.restart.join(", "));
                        }
                        plan.outcome()
                    }
                    // A bad edit must not take the host down: keep running the old config.
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: new configuration rejected; keeping the old one");
                        "new configuration rejected, old one kept".to_string()
                    }
                };
                notifier.reloaded(&agent.snapshot(), &outcome);
            }
        }
    }
    notifier.stopping();
    agent.shutdown().await;
    tracing::info!("warden stopped");
    Ok(())
}

/// The running daemon's parts. Other long-lived tasks (API server, telemetry, alerts, log
/// shipper) take a clone of `supervisor` and a child of `cancel`.
pub struct Agent {
    pub supervisor: SupervisorHandle,
    pub alerts: crate::alerts::AlertsHandle,
    pub cancel: CancellationToken,
    pub store: Arc<MetricStore>,
    /// `debug.wedge` requests (only with WARDEN_TEST_HOOKS=1), for the main loop.
    pub test_hooks: Option<tokio::sync::mpsc::Receiver<crate::ops::notify::Wedge>>,
    api_cancel: CancellationToken,
    api: ApiParts,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The configuration running now (SIGHUP compares the new file against it).
    config: Config,
}

impl Agent {
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        let exe = std::env::current_exe().map_err(io_err("locating the warden binary"))?;
        let state_dir = config.state_dir();
        std::fs::create_dir_all(&state_dir).map_err(io_err(format!(
            "creating state dir {}",
            state_dir.display()
        )))?;
        // Bind first: a second agent on the same socket must fail before touching anything.
        let control = ControlServer::bind(&config.resolve(&config.agent.control_socket))?;
        ensure_models(&config, &exe).await;

        let cancel = CancellationToken::new();
        let (supervisor, log_rx) = SupervisorHandle::start(&config, SupervisorOptions::new(exe))?;
        tracing::info!(socket = %control.path().display(), "control socket listening");

        let mut tasks = Vec::new();
        let mut dispatcher = Dispatcher::with_supervisor(&supervisor);
        let test_hooks = crate::ops::notify::register_test_hooks(&mut dispatcher);
        // Modules add their control methods with dispatcher.register(...) before `control.run`
        // below. Subscribed before anything runs, so no early event escapes the alert rules.
        let alert_supervisor_events = supervisor.subscribe();

        let store = Arc::new(MetricStore::new(config.agent.host_id(), HISTORY_POINTS));
        supervisor.count_dropped_log_lines_in(store.clone());
        // Sinks announce AWS authorization failures here; the alert rules subscribe below.
        let (telemetry_events, _) = tokio::sync::broadcast::channel(256);
        // Model lines and audit records go to CloudWatch Logs through the spool; without it
        // lines stay in the per-model rings only.
        let mut logs_stats = None;
        let audit_forward = if config.logs.enabled {
            let (audit_tx, audit_rx) = tokio::sync::mpsc::channel(AUDIT_TO_LOGS_CAPACITY);
            let sdk = crate::sinks::aws::sdk_config(&config.aws).await;
            let agent_rx = config.logs.agent_group.clone().and_then(|group| {
                let (tx, rx) = tokio::sync::mpsc::channel(AGENT_LOG_CAPACITY);
                crate::sinks::logs::agent::forward_to(group, tx).then_some(rx)
            });
            let sources = crate::sinks::logs::Sources {
                model_lines: Some(log_rx),
                audit: Some(audit_rx),
                entries: agent_rx,
            };
            let shipper = crate::sinks::logs::LogShipper::start_with_events(
                crate::sinks::logs::config::LogsSinkConfig::from_config(&config),
                &sdk,
                sources,
                Some(store.clone()),
                Some(telemetry_events.clone()),
                cancel.child_token(),
            )?;
            logs_stats = Some(shipper.stats());
            tasks.push(tokio::spawn(shipper.join()));
            Some(audit_tx)
        } else {
            tracing::info!("CloudWatch Logs disabled (logs.enabled = false)");
            drop(log_rx);
            None
        };

        let running_config = config.clone();
        let (alerts, alert_tasks) = crate::alerts::AlertsHandle::start(
            &config,
            store.clone(),
            alert_supervisor_events,
            telemetry_events.subscribe(),
            cancel.child_token(),
        )
        .await?;
        tasks.extend(alert_tasks);
        alerts.register(&mut dispatcher);
        // Subscribed before the samplers start, so the first NVML event reaches `/ready`.
        let (readiness, readiness_task) = crate::ops::readiness::ReadinessTracker::spawn(
            config.gpu.expected_count,
            telemetry_events.subscribe(),
            cancel.child_token(),
        );
        tasks.push(readiness_task);
        tasks.push(telemetry::spawn_samplers(
            telemetry::SamplerConfig::from_config(&config),
            store.clone(),
            Arc::new(SupervisedModels(supervisor.clone())),
            telemetry_events.clone(),
            cancel.child_token(),
        ));
        let mut sink_stats = SinkStatsSource::Disabled;
        if config.cloudwatch.enabled {
            let sdk = crate::sinks::aws::sdk_config(&config.aws).await;
            let mut sink_config = CloudWatchSinkConfig::from_config(&config);
            // Resolved here, not into `config`: a SIGHUP must not see the agent section change.
            sink_config.autoscaling_group = autoscaling_group(&config).await;
            let sink = CloudWatchSink::new(sink_config, &sdk, store.clone())?
                .with_events(telemetry_events.clone());
            sink_stats = SinkStatsSource::CloudWatch(sink.stats());
            tasks.push(tokio::spawn(sink.run(cancel.child_token())));
        } else {
            tracing::info!("CloudWatch metrics disabled (cloudwatch.enabled = false)");
        }

        // Served once the store and sinks exist; clients connecting earlier wait in the backlog.
        let mut snapshot =
            SnapshotSource::new(supervisor.clone(), store.clone(), sink_stats.clone());
        if let SinkStatsSource::CloudWatch(stats) = &sink_stats {
            let stats = stats.clone();
            snapshot = snapshot.with_backlog("cloudwatch", "batches", move || {
                let spooled = stats
                    .batches_spooled
                    .load(std::sync::atomic::Ordering::Relaxed);
                let replayed = stats
                    .batches_replayed
                    .load(std::sync::atomic::Ordering::Relaxed);
                spooled.saturating_sub(replayed)
            });
        }
        if let Some(stats) = logs_stats {
            snapshot = snapshot.with_backlog("logs", "events", move || logs_backlog(&stats));
        }
        let notify = alerts.clone();
        snapshot = snapshot.with_backlog("notify", "notifications", move || {
            notify.undelivered() + notify.unsent() as u64
        });
        let slos = alerts.clone();
        snapshot = snapshot.with_slos(move || slos.slo_statuses());
        snapshot.register(&mut dispatcher);
        tasks.push(tokio::spawn(control.run(dispatcher, cancel.child_token())));

        let api_cancel = cancel.child_token();
        let api = start_api(
            &config,
            &supervisor,
            &store,
            &alerts,
            &state_dir,
            audit_forward,
            Arc::new(readiness),
            api_cancel.clone(),
        )
        .await?;
        if config.healing.enabled() {
            tracing::info!(healing = ?config.healing, "self-healing on");
            tasks.push(tokio::spawn(crate::supervisor::healing::run(
                config.healing.clone(),
                config.agent.sample_interval,
                supervisor.clone(),
                store.clone(),
                api.audit.clone(),
                cancel.child_token(),
            )));
        }

        Ok(Agent {
            supervisor,
            alerts,
            cancel,
            store,
            test_hooks,
            api_cancel,
            api,
            tasks,
            config: running_config,
        })
    }

    /// Every long-lived task runs until shutdown: one that ended means a part stopped working.
    pub fn health(&self) -> Result<(), String> {
        let api = [&self.api.serve, &self.api.audit_writer];
        match self
            .tasks
            .iter()
            .chain(api)
            .filter(|t| t.is_finished())
            .count()
        {
            0 => Ok(()),
            n => Err(format!("{n} agent task(s) ended unexpectedly")),
        }
    }

    /// What the sd_notify status line and watchdog need to know.
    pub fn snapshot(&self) -> HostSnapshot {
        let gpus = self.store.latest("GPUCount", &[]).map(|g| g as u64);
        HostSnapshot::from_status(&self.supervisor.status(), gpus, None, self.health())
    }

    /// Applies what can change live (the model set, alert rules and timings) and says which
    /// changed sections only take effect after a restart.
    pub async fn reload(
        &mut self,
        config: Config,
    ) -> (crate::supervisor::ReloadSummary, ReloadPlan) {
        let mut plan = ReloadPlan::between(&self.config, &config);
        if let Ok(exe) = std::env::current_exe() {
            ensure_models(&config, &exe).await;
        }
        // Rules reload in place: alert state (firing, silences, acks) carries over.
        match self.alerts.reload(&config) {
            Ok(n) => tracing::info!(rules = n, "alert rules reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "alert rules rejected; keeping the old ones");
                plan.applied.retain(|s| *s != "alerts");
            }
        }
        let summary = self.supervisor.apply(&config).await;
        // Keep the running values of what was not applied, so the next SIGHUP still reports
        // them as pending a restart.
        self.config = plan.merge_applied(&self.config, config);
        (summary, plan)
    }

    /// Writes the audit trail to a fresh file at its path (SIGHUP, after logrotate moved it).
    pub fn reopen_audit(&self) {
        self.api.audit.reopen();
    }

    /// Stops taking API requests and drains the ones in flight while the models still answer
    /// them (stopping the models first is what answered 5xx during shutdown), then waits for
    /// their audit records, stops every model (concurrently), then the other tasks.
    pub async fn shutdown(self) {
        self.api_cancel.cancel();
        // `serve` bounds its own drain (request timeout + 1 s, at most 10 s).
        if let Err(e) = self.api.serve.await {
            tracing::error!(error = %e, "API task failed while draining");
        }
        // Records go to the shipper before it is cancelled below, so they reach the spool.
        drop(self.api.audit);
        if tokio::time::timeout(AUDIT_FLUSH_BOUND, self.api.audit_writer)
            .await
            .is_err()
        {
            tracing::error!(
                bound = ?AUDIT_FLUSH_BOUND,
                "audit trail still holding records at shutdown (file or log shipper not taking them)"
            );
        }
        self.supervisor.shutdown().await;
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// `agent.autoscaling_group`, else (with `agent.autoscaling_group_from_imds`) the instance's
/// group tag from IMDS; a failed look-up is a warning, not a failed start.
async fn autoscaling_group(config: &Config) -> Option<String> {
    if let Some(g) = &config.agent.autoscaling_group {
        tracing::info!(group = %g, "publishing the scaling metrics under AutoScalingGroupName");
        return Some(g.clone());
    }
    if !config.agent.autoscaling_group_from_imds {
        return None;
    }
    match crate::sinks::aws::autoscaling_group_from_imds(config.agent.imds_timeout).await {
        Ok(g) => {
            tracing::info!(group = %g, "Auto Scaling group from the instance tag (IMDS)");
            Some(g)
        }
        Err(e) => {
            tracing::warn!(error = %e,
                "no Auto Scaling group from IMDS: fleet metrics not published");
            None
        }
    }
}

/// Log events spooled this run and not yet delivered or given up (approximate: a previous
/// run's spool replays without having been counted as spooled here).
fn logs_backlog(stats: &crate::sinks::logs::LogsStats) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let done = [
        &stats.events_sent,
        &stats.events_dropped,
        &stats.events_too_old,
        &stats.events_too_new,
        &stats.events_rejected,
        &stats.events_invalid,
    ]
    .iter()
    .map(|c| c.load(Relaxed))
    .sum::<u64>();
    stats.events_spooled.load(Relaxed).saturating_sub(done)
}

/// First run: fill an empty models dir with `warden models init` when a model needs it.
pub async fn ensure_models(config: &Config, exe: &Path) {
    let needs_dir = config
        .effective_models()
        .iter()
        .any(|m| m.command.is_none() && m.weights.is_none());
    let dir = config.resolve(&config.agent.models_dir);
    let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    if !needs_dir || !empty {
        return;
    }
    tracing::info!(dir = %dir.display(), "models dir is empty: running `warden models init`");
    // A child process keeps the agent independent of the serving code's internals; the
    // subcommand writes the same files either way.
    let init = tokio::process::Command::new(exe)
        .args(["models", "init", "--dir"])
        .arg(&dir)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(MODELS_INIT_TIMEOUT, init).await {
        Ok(Ok(status)) if status.success() => {
            tracing::info!(dir = %dir.display(), "model weights written")
        }
        Ok(Ok(status)) => {
            tracing::error!(%status, "`warden models init` failed; models will back off")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot run `warden models init`"),
        Err(_) => tracing::error!("`warden models init` timed out"),
    }
}

/// What a SIGHUP did with a new configuration, per section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed sections applied live: `models`, `alerts`.
    pub applied: Vec<&'static str>,
    /// Changed sections (or keys) that keep their old value until a restart.
    pub restart: Vec<String>,
}

impl ReloadPlan {
    /// Compares the running configuration with the new one, section by section.
    pub fn between(old: &Config, new: &Config) -> ReloadPlan {
        // Config sections have no PartialEq; their Debug output covers every field (the
        // secrets' Debug is redacted, so those are compared by value below).
        fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
            format!("{a:?}") != format!("{b:?}")
        }
        let mut plan = ReloadPlan::default();
        if differs(&old.effective_models(), &new.effective_models()) {
            plan.applied.push("models");
        }
        let (a, b) = (&old.alerts, &new.alerts);
        // Rule files are re-read on every SIGHUP, so an edited rule file counts as applied.
        if a.rules != b.rules
            || a.evaluation_interval != b.evaluation_interval
            || a.repeat_interval != b.repeat_interval
            || a.group_wait != b.group_wait
        {
            plan.applied.push("alerts");
        }
        if a.runbook_url != b.runbook_url {
            // Baked into the notification channels at start.
            plan.restart.push("alerts.runbook_url".into());
        }
        let webhook = |c: &Config| {
            c.notify
                .slack
                .as_ref()
                .and_then(|s| s.webhook_url.as_ref().map(|u| u.expose().to_string()))
        };
        for (name, changed) in [
            ("agent", differs(&old.agent, &new.agent)),
            ("gpu", differs(&old.gpu, &new.gpu)),
            ("aws", differs(&old.aws, &new.aws)),
            ("cloudwatch", differs(&old.cloudwatch, &new.cloudwatch)),
            ("logs", differs(&old.logs, &new.logs)),
            (
                "notify",
                differs(&old.notify, &new.notify) || webhook(old) != webhook(new),
            ),
            ("auth", differs(&old.auth, &new.auth)),
            ("api", differs(&old.api, &new.api)),
            ("healing", differs(&old.healing, &new.healing)),
        ] {
            if changed {
                plan.restart.push(name.into());
            }
        }
        plan
    }

    /// The running configuration after the reload: the new applied sections, the old rest.
    fn merge_applied(&self, old: &Config, new: Config) -> Config {
        let mut running = old.clone();
        running.models = new.models;
        if self.applied.contains(&"alerts") {
            let runbook_url = running.alerts.runbook_url.clone();
            running.alerts = new.alerts;
            running.alerts.runbook_url = runbook_url;
        }
        running
    }

    /// The reload outcome for the status line: says when a restart is still needed.
    pub fn outcome(&self) -> String {
        if self.restart.is_empty() {
            "configuration reloaded".to_string()
        } else {
            format!(
                "configuration reloaded, restart needed for: {}",
                self.restart.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("w.toml"), text).unwrap()
    }

    #[test]
    fn reload_plan_names_each_changed_section() {
        let old = parse(
            "[gpu]\ncall_timeout = \"500ms\"\n[[models]]\nname = \"clash-detector\"\nport = 9001\n",
        );
        assert_eq!(
            ReloadPlan::between(&old, &old.clone()),
            ReloadPlan::default()
        );
        assert_eq!(
            ReloadPlan::between(&old, &old.clone()).outcome(),
            "configuration reloaded"
        );
        let new = parse(
            "[gpu]\ncall_timeout = \"1s\"\n[api]\nmax_concurrency = 7\n[alerts]\nrepeat_interval = \"1h\"\nrunbook_url = \"https://x/r.md\"\n[[models]]\nname = \"clash-detector\"\nport = 9002\n",
        );
        let plan = ReloadPlan::between(&old, &new);
        assert_eq!(plan.applied, vec!["models", "alerts"]);
        assert_eq!(plan.restart, vec!["alerts.runbook_url", "gpu", "api"]);
        assert_eq!(
            plan.outcome(),
            "configuration reloaded, restart needed for: alerts.runbook_url, gpu, api"
        );
        // What was not applied stays pending: the next SIGHUP with the same file says so again.
        let running = plan.merge_applied(&old, new.clone());
        let again = ReloadPlan::between(&running, &new);
        assert!(again.applied.is_empty(), "{again:?}");
        assert_eq!(again.restart, vec!["alerts.runbook_url", "gpu", "api"]);
    }

    #[test]
    fn a_changed_webhook_secret_is_seen() {
        let old = parse("[notify.slack]\nwebhook_url = \"https://hooks.example/a\"\n");
        let new = parse("[notify.slack]\nwebhook_url = \"https://hooks.example/b\"\n");
        assert_eq!(ReloadPlan::between(&old, &new).restart, vec!["notify"]);
    }
}
