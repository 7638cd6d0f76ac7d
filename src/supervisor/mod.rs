//! Keeps the model processes alive: one runner task per model spawns it, probes its health,
//! restarts it with backoff, and publishes its status, events and output.
//!
//! Other modules use [`SupervisorHandle`] and the plain data in [`types`]; nothing outside
//! this folder touches a process.

pub mod child;
pub mod healing;
pub mod health;
pub mod output;
pub mod policy;
pub mod stats;
pub mod types;

pub use output::LogSink;
pub use types::{
    EventKind, ExitInfo, LogLine, LogStream, ModelState, ModelStatus, SupervisorEvent,
};

use crate::config::{Config, ModelConfig};
use health::{ProbeConnection, probe_timeout};
use policy::{RestartPolicy, RestartTracker};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use types::now_ms;

/// How often a starting child's `/ready` is polled: short, so a restart is noticed quickly.
const READY_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no model named {0:?}")]
    UnknownModel(String),
    #[error("the supervisor of {0:?} has stopped")]
    RunnerGone(String),
}

/// How the supervisor finds what to spawn and how much it buffers.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// The binary whose `serve-model` subcommand runs default models.
    pub warden_exe: PathBuf,
    /// Lines of slack in the log shipper's channel before lines are dropped.
    pub log_channel_capacity: usize,
    /// Events a slow subscriber may fall behind by before it sees `Lagged`.
    pub event_capacity: usize,
    pub stats_interval: Duration,
}

impl SupervisorOptions {
    pub fn new(warden_exe: PathBuf) -> Self {
        SupervisorOptions {
            warden_exe,
            log_channel_capacity: 10_000,
            event_capacity: 1024,
            stats_interval: Duration::from_secs(1),
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// The shared, cloneable face of the supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    inner: Arc<Inner>,
}

struct Inner {
    models: Mutex<BTreeMap<String, Slot>>,
    /// Serialises reloads and shutdown (they take slots out and put them back).
    reload: tokio::sync::Mutex<()>,
    events: broadcast::Sender<SupervisorEvent>,
    logs: Arc<LogSink>,
    samples: Mutex<HashMap<u32, stats::ProcessSample>>,
    options: SupervisorOptions,
}

struct Slot {
    config: ModelConfig,
    argv: Vec<String>,
    /// The model's Unix socket for the gateway, when it is given one.
    socket: Option<Arc<Path>>,
    live: Arc<Mutex<Live>>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone)]
struct Live {
    state: ModelState,
    pid: Option<u32>,
    started: Option<Instant>,
    spawns: u64,
    last_exit: Option<ExitInfo>,
}

enum Command {
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still the best we have.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SupervisorHandle {
    /// Starts supervising `config`'s models. Returns the handle and the receiver of every
    /// captured output line (for the log shipper; dropping it is fine).
    ///
    /// Must be called inside a multi-thread tokio runtime (see [`child::spawn`]).
    pub fn start(
        config: &Config,
        options: SupervisorOptions,
    ) -> Result<(SupervisorHandle, mpsc::Receiver<LogLine>), SupervisorError> {
        let (logs, log_rx) = LogSink::new(options.log_channel_capacity);
        let (events, _) = broadcast::channel(options.event_capacity.max(16));
        let inner = Arc::new(Inner {
            models: Mutex::new(BTreeMap::new()),
            reload: tokio::sync::Mutex::new(()),
            events,
            logs,
            samples: Mutex::new(HashMap::new()),
            options,
        });
        let handle = SupervisorHandle { inner };
        {
            let mut models = lock(&handle.inner.models);
            for m in config.effective_models() {
                let slot = handle.launch(config, m.clone());
                models.insert(m.name.clone(), slot);
            }
        }
        tokio::spawn(sample_stats(Arc::downgrade(&handle.inner)));
        Ok((handle, log_rx))
    }

    fn launch(&self, config: &Config, model: ModelConfig) -> Slot {
        let argv = child::model_argv(&model, config, &self.inner.options.warden_exe);
        let socket = child::model_socket(&model, config).map(Arc::from);
        let live = Arc::new(Mutex::new(Live {
            state: ModelState::Stopped,
            pid: None,
            started: None,
            spawns: 0,
            last_exit: None,
        }));
        let (tx, rx) = mpsc::channel(16);
        let runner = Runner {
            tracker: RestartTracker::new(RestartPolicy::from_model(&model)),
            model: model.clone(),
            argv: argv.clone(),
            live: live.clone(),
            events: self.inner.events.clone(),
            logs: self.inner.logs.clone(),
            commands: rx,
            pending: Vec::new(),
            unready_since: Instant::now(),
            down_reported: false,
        };
        let task = tokio::spawn(runner.run());
        Slot {
            config: model,
            argv,
            socket,
            live,
            commands: tx,
            task,
        }
    }

    /// Where to reach one model (its port and Unix socket) and its state, without the rest of
    /// its status (the gateway asks this for every request).
    pub fn route(&self, name: &str) -> Option<(u16, Option<Arc<Path>>, ModelState)> {
        let models = lock(&self.inner.models);
        let slot = models.get(name)?;
        let state = lock(&slot.live).state;
        Some((slot.config.port, slot.socket.clone(), state))
    }

    /// Every model's current status, in name order.
    pub fn status(&self) -> Vec<ModelStatus> {
        let samples = lock(&self.inner.samples).clone();
        let models = lock(&self.inner.models);
        models
            .iter()
            .map(|(name, slot)| {
                let live = lock(&slot.live).clone();
                let sample = live.pid.and_then(|p| samples.get(&p));
                let running = live.pid.is_some();
                ModelStatus {
                    name: name.clone(),
                    port: slot.config.port,
                    pid: live.pid,
                    state: live.state,
                    uptime_secs: live
                        .started
                        .filter(|_| running)
                        .map(|s| s.elapsed().as_secs_f64())
                        .unwrap_or(0.0),
                    restarts: live.spawns.saturating_sub(1),
                    last_exit: live.last_exit.clone(),
                    cpu_percent: sample.map(|s| s.cpu_percent),
                    rss_bytes: sample.map(|s| s.rss_bytes),
                }
            })
            .collect()
    }

    /// State changes, exits, crash loops, model down/up, removals.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.inner.events.subscribe()
    }

    /// The last `n` captured lines of a model, oldest first.
    pub fn log_tail(&self, name: &str, n: usize) -> Result<Vec<LogLine>, SupervisorError> {
        if !lock(&self.inner.models).contains_key(name) {
            return Err(SupervisorError::UnknownModel(name.to_string()));
        }
        Ok(self.inner.logs.tail(name, n))
    }

    /// The sender behind [`Self::subscribe`], for fan-out points such as the control socket.
    pub fn event_sender(&self) -> broadcast::Sender<SupervisorEvent> {
        self.inner.events.clone()
    }

    /// Output lines the log shipper's channel had no room for.
    pub fn dropped_log_lines(&self) -> u64 {
        self.inner.logs.dropped()
    }

    /// Counts dropped output lines in `store` (`RecordsDropped{sink="capture"}`) from now on.
    pub fn count_dropped_log_lines_in(&self, store: Arc<crate::telemetry::MetricStore>) {
        self.inner.logs.count_drops_in(store);
    }

    /// Stops (if running) and respawns a model; forgives its past failures.
    pub async fn restart(&self, name: &str) -> Result<(), SupervisorError> {
        self.command(name, Command::Restart).await
    }

    /// Stops a model gracefully; it stays stopped until `start`.
    pub async fn stop(&self, name: &str) -> Result<(), SupervisorError> {
        self.command(name, Command::Stop).await
    }

    /// Starts a stopped (or backing-off) model now.
    pub async fn start_model(&self, name: &str) -> Result<(), SupervisorError> {
        self.command(name, Command::Start).await
    }

    async fn command(
        &self,
        name: &str,
        make: fn(oneshot::Sender<()>) -> Command,
    ) -> Result<(), SupervisorError> {
        let tx = lock(&self.inner.models)
            .get(name)
            .map(|s| s.commands.clone())
            .ok_or_else(|| SupervisorError::UnknownModel(name.to_string()))?;
        let (done, wait) = oneshot::channel();
        tx.send(make(done))
            .await
            .map_err(|_| SupervisorError::RunnerGone(name.to_string()))?;
        wait.await
            .map_err(|_| SupervisorError::RunnerGone(name.to_string()))
    }

    /// Applies a new configuration: added models start, removed ones stop, changed ones are
    /// stopped and started with the new settings, unchanged ones are left running.
    pub async fn apply(&self, config: &Config) -> ReloadSummary {
        let _serial = self.inner.reload.lock().await;
        let wanted: BTreeMap<String, ModelConfig> = config
            .effective_models()
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect();
        let mut summary = ReloadSummary::default();
        let mut retiring = Vec::new();
        {
            let mut models = lock(&self.inner.models);
            let names: Vec<String> = models.keys().cloned().collect();
            for name in names {
                let keep = wanted.get(&name).is_some_and(|m| {
                    models.get(&name).is_some_and(|slot| {
                        slot.config == *m
                            && slot.argv
                                == child::model_argv(m, config, &self.inner.options.warden_exe)
                    })
                });
                if keep {
                    summary.unchanged.push(name);
                } else if let Some(slot) = models.remove(&name) {
                    if wanted.contains_key(&name) {
                        summary.changed.push(name.clone());
                    } else {
                        summary.removed.push(name.clone());
                    }
                    retiring.push((name, slot));
                }
            }
            for name in wanted.keys() {
                if !models.contains_key(name) && !summary.changed.contains(name) {
                    summary.added.push(name.clone());
                }
            }
        }
        // Stop first: a changed model may keep its port.
        let stops = retiring.into_iter().map(|(name, slot)| {
            let removed = summary.removed.contains(&name);
            let events = self.inner.events.clone();
            let logs = self.inner.logs.clone();
            async move {
                shutdown_slot(slot).await;
                if removed {
                    logs.forget(&name);
                    let _ = events.send(SupervisorEvent {
                        at_ms: now_ms(),
                        model: name,
                        kind: EventKind::Removed,
                    });
                }
            }
        });
        futures_join_all(stops).await;
        let mut models = lock(&self.inner.models);
        for name in summary.added.iter().chain(summary.changed.iter()) {
            if let Some(m) = wanted.get(name) {
                let slot = self.launch(config, m.clone());
                models.insert(name.clone(), slot);
            }
        }
        summary
    }

    /// Stops every model concurrently and waits for all of them to be gone.
    pub async fn shutdown(&self) {
        let _serial = self.inner.reload.lock().await;
        let slots: Vec<Slot> = {
            let mut models = lock(&self.inner.models);
            std::mem::take(&mut *models).into_values().collect()
        };
        futures_join_all(slots.into_iter().map(shutdown_slot)).await;
    }
}

async fn shutdown_slot(slot: Slot) {
    let (done, wait) = oneshot::channel();
    if slot.commands.send(Command::Shutdown(done)).await.is_ok() {
        let _ = wait.await;
    }
    let _ = slot.task.await;
}

/// Runs futures concurrently to completion (tokio has no join_all; a JoinSet needs 'static).
async fn futures_join_all<F: Future<Output = ()>>(futs: impl IntoIterator<Item = F>) {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

async fn sample_stats(inner: Weak<Inner>) {
    let mut sampler = stats::ProcessStats::new();
    loop {
        let interval = {
            let Some(inner) = inner.upgrade() else { return };
            let pids: Vec<u32> = lock(&inner.models)
                .values()
                .filter_map(|s| lock(&s.live).pid)
                .collect();
            let samples = sampler.refresh(&pids);
            *lock(&inner.samples) = samples;
            inner.options.stats_interval
        };
        tokio::time::sleep(interval).await;
    }
}

/// Why one child's life ended.
enum Outcome {
    /// Exited, failed to spawn or was killed for failing health checks.
    Failed {
        uptime: Duration,
    },
    Stopped(oneshot::Sender<()>),
    Restarted(oneshot::Sender<()>),
    Shutdown(Option<oneshot::Sender<()>>),
}

type ProbeFuture =
    Pin<Box<dyn Future<Output = (ProbeConnection, Result<(), health::ProbeError>)> + Send>>;

/// One model's supervisor task.
struct Runner {
    model: ModelConfig,
    argv: Vec<String>,
    live: Arc<Mutex<Live>>,
    events: broadcast::Sender<SupervisorEvent>,
    logs: Arc<LogSink>,
    commands: mpsc::Receiver<Command>,
    tracker: RestartTracker,
    /// Start/restart callers answered once the next child is spawned.
    pending: Vec<oneshot::Sender<()>>,
    /// Since when the model has not been ready (across restarts): a model that never gets
    /// ready is down after `start_timeout`, whether it hangs loading or keeps exiting.
    unready_since: Instant,
    /// A `ModelDown` was emitted for the current not-ready spell.
    down_reported: bool,
}

impl Runner {
    async fn run(mut self) {
        let mut want_running = true;
        loop {
            if !want_running {
                self.set_state(ModelState::Stopped, None, None);
                match self.commands.recv().await {
                    None => return,
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Stop(done)) => {
                        let _ = done.send(());
                    }
                    Some(Command::Start(done) | Command::Restart(done)) => {
                        self.tracker.reset();
                        self.pending.push(done);
                        self.unready_since = Instant::now();
                        want_running = true;
                    }
                }
                continue;
            }
            match self.run_once().await {
                Outcome::Failed { uptime } => {
                    if !self.back_off(uptime).await {
                        return;
                    }
                    want_running = lock(&self.live).state != ModelState::Stopped;
                }
                Outcome::Stopped(done) => {
                    want_running = false;
                    self.set_state(ModelState::Stopped, None, None);
                    let _ = done.send(());
                }
                Outcome::Restarted(done) => {
                    self.tracker.reset();
                    self.pending.push(done);
                    self.unready_since = Instant::now();
                }
                Outcome::Shutdown(done) => {
                    self.set_state(ModelState::Stopped, None, None);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    /// Waits out the restart delay, still obeying commands. False means shut down.
    async fn back_off(&mut self, uptime: Duration) -> bool {
        self.check_start_timeout();
        let decision = self
            .tracker
            .on_exit(Instant::now(), uptime, rand::random::<f64>());
        if decision.entered_crash_loop {
            let policy = self.tracker.policy();
            tracing::error!(model = %self.model.name, exits = policy.crash_loop_exits, "model is crash-looping");
            self.emit(EventKind::CrashLoop {
                exits: policy.crash_loop_exits,
                window_ms: policy.crash_loop_window.as_millis() as u64,
            });
        }
        let state = if decision.crash_loop {
            ModelState::CrashLoop
        } else {
            ModelState::Backoff
        };
        self.set_state(state, None, Some(decision.delay));
        tokio::select! {
            _ = tokio::time::sleep(decision.delay) => true,
            cmd = self.commands.recv() => match cmd {
                None => false,
                Some(Command::Shutdown(done)) => {
                    self.set_state(ModelState::Stopped, None, None);
                    let _ = done.send(());
                    false
                }
                Some(Command::Stop(done)) => {
                    self.set_state(ModelState::Stopped, None, None);
                    let _ = done.send(());
                    true
                }
                Some(Command::Start(done) | Command::Restart(done)) => {
                    self.tracker.reset();
                    self.pending.push(done);
                    self.unready_since = Instant::now();
                    true
                }
            },
        }
    }

    async fn run_once(&mut self) -> Outcome {
        let name = self.model.name.clone();
        let spawned = child::spawn(&self.argv, None);
        {
            let mut live = lock(&self.live);
            live.spawns += 1;
        }
        let mut child: Child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(model = %name, argv = ?self.argv, error = %e, "cannot spawn model");
                lock(&self.live).last_exit = Some(ExitInfo::SpawnFailed(e.to_string()));
                self.answer_pending();
                return Outcome::Failed {
                    uptime: Duration::ZERO,
                };
            }
        };
        let pid = child.id().unwrap_or(0);
        let started = Instant::now();
        {
            let mut live = lock(&self.live);
            live.pid = Some(pid);
            live.started = Some(started);
        }
        tracing::info!(model = %name, pid, "model spawned");
        self.set_state(ModelState::Starting, Some(pid), None);
        self.answer_pending();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(output::capture(
                out,
                name.clone(),
                LogStream::Stdout,
                self.logs.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(output::capture(
                err,
                name.clone(),
                LogStream::Stderr,
                self.logs.clone(),
            ));
        }

        let port = self.model.port;
        let interval = self.model.health_interval;
        let timeout = probe_timeout(interval);
        let mut ready = false;
        let mut failures = 0u32;
        let mut next_probe = tokio::time::Instant::now() + READY_POLL;
        let mut inflight: Option<ProbeFuture> = None;
        // This child's own probe connection (back here whenever no probe is in flight).
        let mut probes = Some(ProbeConnection::new(port));
        loop {
            tokio::select! {
                status = child.wait() => {
                    let exit = match status {
                        Ok(s) => child::exit_info(s),
                        Err(e) => ExitInfo::SpawnFailed(format!("wait failed: {e}")),
                    };
                    child::kill_group(pid);
                    self.exited(pid, exit, false, ready);
                    return Outcome::Failed { uptime: started.elapsed() };
                }
                cmd = self.commands.recv() => {
                    let outcome = match cmd {
                        Some(Command::Start(done)) => {
                            let _ = done.send(());
                            continue;
                        }
                        Some(Command::Stop(done)) => Outcome::Stopped(done),
                        Some(Command::Restart(done)) => Outcome::Restarted(done),
                        Some(Command::Shutdown(done)) => Outcome::Shutdown(Some(done)),
                        None => Outcome::Shutdown(None),
                    };
                    self.set_state(ModelState::Stopping, Some(pid), None);
                    let exit = match child::stop(&mut child, self.model.stop_timeout).await {
                        Ok(s) => child::exit_info(s),
                        Err(e) => ExitInfo::SpawnFailed(format!("wait failed: {e}")),
                    };
                    self.exited(pid, exit, true, false);
                    return outcome;
                }
                _ = tokio::time::sleep_until(next_probe), if inflight.is_none() => {
                    let connection = probes.take().unwrap_or_else(|| ProbeConnection::new(port));
                    let path = if ready { "/health" } else { "/ready" };
                    inflight = Some(Box::pin(connection.probe(path, timeout)));
                }
                (connection, result) = async {
                    match inflight.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                } => {
                    inflight = None;
                    probes = Some(connection);
                    next_probe = tokio::time::Instant::now() + if ready { interval } else { READY_POLL };
                    match (ready, result) {
                        (false, Ok(())) => {
                            ready = true;
                            self.down_reported = false;
                            next_probe = tokio::time::Instant::now() + interval;
                            tracing::info!(model = %name, pid, startup_ms = started.elapsed().as_millis() as u64, "model ready");
                            self.set_state(ModelState::Ready, Some(pid), None);
                            self.emit(EventKind::ModelUp { pid: Some(pid) });
                        }
                        // Still loading: refusals are expected until it listens.
                        (false, Err(e)) => {
                            self.check_start_timeout();
                            if started.elapsed() >= self.model.start_timeout {
                                tracing::error!(model = %name, pid, error = %e, "model not ready within start_timeout; killing it");
                                let exit = match child::kill_now(&mut child).await {
                                    Ok(s) => child::exit_info(s),
                                    Err(e) => ExitInfo::SpawnFailed(format!("wait failed: {e}")),
                                };
                                self.exited(pid, exit, false, false);
                                return Outcome::Failed { uptime: started.elapsed() };
                            }
                        }
                        (true, Ok(())) => {
                            if failures > 0 {
                                failures = 0;
                                self.down_reported = false;
                                self.set_state(ModelState::Ready, Some(pid), None);
                                self.emit(EventKind::ModelUp { pid: Some(pid) });
                            }
                        }
                        (true, Err(e)) => {
                            failures += 1;
                            tracing::warn!(model = %name, pid, failures, error = %e, "health check failed");
                            if failures == 1 {
                                self.set_state(ModelState::Unhealthy, Some(pid), None);
                                self.emit(EventKind::ModelDown { reason: format!("health check failed: {e}") });
                                self.unready_since = Instant::now();
                                self.down_reported = true;
                            }
                            if failures >= self.model.health_failures {
                                tracing::error!(model = %name, pid, failures, "killing unresponsive model");
                                let exit = match child::kill_now(&mut child).await {
                                    Ok(s) => child::exit_info(s),
                                    Err(e) => ExitInfo::SpawnFailed(format!("wait failed: {e}")),
                                };
                                // Already reported down at the first failure.
                                self.exited(pid, exit, false, false);
                                return Outcome::Failed { uptime: started.elapsed() };
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reports the model down once it has not been ready for `start_timeout`.
    fn check_start_timeout(&mut self) {
        let timeout = self.model.start_timeout;
        if self.down_reported || self.unready_since.elapsed() < timeout {
            return;
        }
        self.down_reported = true;
        let reason = format!("not ready after {}", humantime::format_duration(timeout));
        tracing::error!(model = %self.model.name, "model down: {reason}");
        self.emit(EventKind::ModelDown { reason });
    }

    fn answer_pending(&mut self) {
        for done in self.pending.drain(..) {
            let _ = done.send(());
        }
    }

    fn exited(&mut self, pid: u32, exit: ExitInfo, expected: bool, was_ready: bool) {
        if expected {
            tracing::info!(model = %self.model.name, pid, %exit, "model stopped");
        } else {
            tracing::warn!(model = %self.model.name, pid, %exit, "model exited unexpectedly");
        }
        {
            let mut live = lock(&self.live);
            live.pid = None;
            live.started = None;
            live.last_exit = Some(exit.clone());
        }
        self.emit(EventKind::Exited {
            pid,
            exit: exit.clone(),
            expected,
        });
        if was_ready && !expected {
            self.emit(EventKind::ModelDown {
                reason: exit.to_string(),
            });
            // Down from now; already reported.
            self.unready_since = Instant::now();
            self.down_reported = true;
        }
        if !was_ready && !expected {
            self.check_start_timeout();
        }
    }

    fn set_state(&self, to: ModelState, pid: Option<u32>, delay: Option<Duration>) {
        let from = {
            let mut live = lock(&self.live);
            let from = live.state;
            live.state = to;
            from
        };
        if from != to || delay.is_some() || to == ModelState::Starting {
            self.emit(EventKind::StateChanged {
                from,
                to,
                pid,
                delay_ms: delay.map(|d| d.as_millis() as u64),
            });
        }
    }

    fn emit(&self, kind: EventKind) {
        // No subscribers is fine.
        let _ = self.events.send(SupervisorEvent {
            at_ms: now_ms(),
            model: self.model.name.clone(),
            kind,
        });
    }
}
