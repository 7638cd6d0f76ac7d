//! Alerts: rules evaluated on the host every `alerts.evaluation_interval` against the metric
//! store and the supervisor/GPU events, notifying SNS and Slack at least once.
//!
//! `rules` (files) → `evaluator` (pure state machine) → `state` (persisted) → `notify`
//! (durable spool per channel). [`AlertsHandle`] is the running engine: the agent starts it,
//! registers its control methods (`alerts`, `silence`, `unsilence`, `ack`, `slos`) and renders
//! its `warden_alerts` gauge on `/metrics`. SLO burn-rate tiers (`slo`) are two more rules
//! whose observations come from the SLO engine, evaluated in the same loop and state machine.

pub mod alarms;
mod durable;
pub mod evaluator;
pub mod notify;
pub mod rules;
pub mod slo;
pub mod state;

use crate::config::{Config, ConfigErrors};
use crate::control::{Dispatcher, MethodError, Params};
use crate::supervisor::{EventKind, SupervisorEvent};
use crate::telemetry::{Dim, MetricStore, SeriesKey, TelemetryEvent, drops};
use evaluator::{AlertState, Labels, Notification, Observation, Settings, Signal};
use rules::{Condition, EventSource, MetricCondition, Rule};
use serde_json::{Value, json};
use state::{EventCondition, PersistedState, StateFile};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("{0}")]
    Rules(#[from] ConfigErrors),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("alert spool: {0}")]
    Spool(#[from] crate::sinks::spool::SpoolError),
    #[error("Slack client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("CloudWatch alarms: {0}")]
    Alarms(String),
}

/// Resolved alerts stay listed this long after resolving.
const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);

/// Where the engine reads the time (ms since the epoch); tests drive a manual clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}

async fn next_event<T: Clone>(rx: &mut Option<broadcast::Receiver<T>>, what: &str) -> Option<T> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Ok(e) => Some(e),
        Err(broadcast::error::RecvError::Lagged(n)) => {
            tracing::warn!(missed = n, "alerts lagged behind {what} events");
            None
        }
        Err(broadcast::error::RecvError::Closed) => {
            *rx = None;
            None
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Labels of a series: its dimensions except Host (one agent, one host).
fn series_labels(key: &SeriesKey) -> Labels {
    key.dims
        .iter()
        .filter(|(d, _)| *d != Dim::Host)
        .map(|(d, v)| (d.cloudwatch().to_string(), v.clone()))
        .collect()
}

/// `where` matches on any of the series' dimensions, Host included.
fn filter_matches(m: &MetricCondition, key: &SeriesKey) -> bool {
    m.filter.iter().all(|(k, v)| {
        key.dims
            .iter()
            .any(|(d, value)| d.cloudwatch() == k && value == v)
    })
}

/// Reads the store for one metric rule: one observation per matching series.
pub fn observe_metric(store: &MetricStore, m: &MetricCondition, now_ms: u64) -> Vec<Observation> {
    // Histories are one point per one-second bucket, so a window spans the same time at any
    // request rate (store.rs); rule validation keeps windows within what the store retains.
    let history = |key: &SeriesKey| -> Vec<evaluator::Sample> {
        store
            .history(key)
            .into_iter()
            .map(|p| (ms(p.at), p.value))
            .collect()
    };
    let mut out = Vec::new();
    if m.metric == rules::ERROR_RATE_METRIC {
        for s in store.series_of("ModelRequests") {
            let labels = series_labels(&s.key);
            if !filter_matches(m, &s.key) {
                continue;
            }
            let errors = SeriesKey::new("ModelErrors", s.key.dims.clone());
            if let Some(v) =
                evaluator::error_rate(&history(&errors), &history(&s.key), now_ms, m.window)
            {
                out.push(Observation {
                    labels,
                    signal: Signal::Value(v),
                });
            }
        }
        return out;
    }
    if m.metric == "ModelLatency" {
        for h in store.histograms(&[]) {
            let labels = series_labels(&h.key);
            if !filter_matches(m, &h.key) {
                continue;
            }
            let now = UNIX_EPOCH + Duration::from_millis(now_ms);
            let v = store
                .latency_window(&h.key, now, m.window)
                .and_then(|w| evaluator::reduce_latency(m.reducer, &w));
            if let Some(v) = v {
                out.push(Observation {
                    labels,
                    signal: Signal::Value(v),
                });
            }
        }
        return out;
    }
    for s in store.series_of(&m.metric) {
        let labels = series_labels(&s.key);
        if !filter_matches(m, &s.key) {
            continue;
        }
        if let Some(v) = evaluator::reduce(m.reducer, &history(&s.key), now_ms, m.window) {
            out.push(Observation {
                labels,
                signal: Signal::Value(v),
            });
        }
    }
    out
}

/// The engine's runtime settings, from the config.
#[derive(Debug, Clone)]
pub struct AlertsSettings {
    pub rules: Vec<Rule>,
    pub evaluation_interval: Duration,
    pub evaluator: Settings,
    pub context: notify::MessageContext,
}

impl AlertsSettings {
    pub fn from_config(config: &Config) -> Result<Self, ConfigErrors> {
        if !config.alerts.group_wait.is_zero() {
            // Each alert is its own message; say so rather than silently ignore the key.
            tracing::warn!(
                "alerts.group_wait is not implemented yet: notifications are not grouped"
            );
        }
        Ok(AlertsSettings {
            rules: rules::load_for(config)?,
            evaluation_interval: config.alerts.evaluation_interval,
            evaluator: Settings {
                repeat_interval: config.alerts.repeat_interval,
                resolved_retention: RESOLVED_RETENTION,
            },
            context: notify::MessageContext {
                host: config.agent.host_id(),
                runbook_url: config.alerts.runbook_url.clone(),
            },
        })
    }
}

/// The SLO engine and the tier rules it feeds (absent until [`AlertsHandle::set_slos`]).
struct SloParts {
    engine: slo::SloEngine,
    rules: Vec<Rule>,
    counters: Arc<slo::RequestCounters>,
}

struct Core {
    settings: AlertsSettings,
    slo: Option<SloParts>,
    state: PersistedState,
    /// What was last handed to the writer, to write only on real changes.
    saved_signature: Vec<(String, AlertState, Option<u64>, Option<String>)>,
    saved_extra: (usize, usize, usize),
    /// Each snapshot's number: the writer never replaces a newer file with an older one.
    generation: u64,
    outboxes: Vec<(&'static str, Arc<notify::Outbox>)>,
}

/// An unsent notification the outboxes give up on after this long (a day of pages that could
/// not even be written to disk): counted in `RecordsDropped{Sink=notify}` instead.
const UNSENT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// At most this many unsent notifications are kept (the oldest go first, counted).
const UNSENT_MAX: usize = 1000;

/// The state to write, taken under the lock and written after it is released.
struct Snapshot {
    generation: u64,
    state: PersistedState,
}

/// One notification for one outbox.
struct EnqueueJob {
    channel: &'static str,
    outbox: Arc<notify::Outbox>,
    unsent: state::Unsent,
}

impl Core {
    fn signature(&self) -> Vec<(String, AlertState, Option<u64>, Option<String>)> {
        self.state
            .evaluator
            .instances
            .values()
            .map(|i| {
                (
                    i.id.clone(),
                    i.state,
                    i.last_notified_ms,
                    i.acked_by.clone(),
                )
            })
            .collect()
    }

    fn extra(&self) -> (usize, usize, usize) {
        (
            self.state.silences.len(),
            self.state.events.len(),
            self.state.unsent.len(),
        )
    }

    /// A copy of the state to write, when it changed since the last one (or `force`).
    fn snapshot(&mut self, force: bool) -> Option<Snapshot> {
        let sig = self.signature();
        let extra = self.extra();
        if !force && sig == self.saved_signature && extra == self.saved_extra {
            return None;
        }
        self.saved_signature = sig;
        self.saved_extra = extra;
        self.generation += 1;
        Some(Snapshot {
            generation: self.generation,
            state: self.state.clone(),
        })
    }

    /// The last write failed: the next evaluation tries again.
    fn save_failed(&mut self) {
        self.saved_extra = (usize::MAX, 0, 0);
    }

    /// One evaluation of every rule at `now`.
    fn evaluate(&mut self, store: &MetricStore, now: u64) -> Vec<Notification> {
        let mut sent = Vec::new();
        self.state.silences.retain(|s| s.active(now));
        if let Some(slo) = &mut self.slo {
            slo.engine.consume(store, now);
            slo.engine.export(store, now);
        }
        let slo_rules = self.slo.as_ref().map_or(&[][..], |s| &s.rules[..]);
        for rule in self.settings.rules.iter().chain(slo_rules) {
            let observations = match &rule.condition {
                Condition::Metric(m) => observe_metric(store, m, now),
                Condition::Slo(tier) => self
                    .slo
                    .as_ref()
                    .map(|s| s.engine.observations(*tier, now))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| Observation {
                        labels: o.labels,
                        signal: Signal::Burn {
                            breach: o.verdict.breach,
                            rate: o.verdict.rate,
                            summary: o.summary,
                        },
                    })
                    .collect(),
                Condition::Event {
                    source,
                    resolve_after,
                } => self
                    .state
                    .events
                    .iter()
                    .filter(|c| c.source == *source)
                    .map(|c| {
                        let point = *source == EventSource::GpuXid;
                        let active = c.active
                            && (!point
                                || now.saturating_sub(c.last_ms)
                                    < resolve_after.as_millis() as u64);
                        Observation {
                            labels: c.labels.clone(),
                            signal: Signal::Active(active),
                        }
                    })
                    .collect(),
            };
            sent.extend(self.state.evaluator.evaluate(
                rule,
                &observations,
                now,
                &self.state.silences,
                &self.settings.evaluator,
            ));
        }
        let all_rules: Vec<Rule> = self
            .settings
            .rules
            .iter()
            .chain(slo_rules)
            .cloned()
            .collect();
        self.state
            .evaluator
            .housekeeping(&all_rules, now, &self.settings.evaluator);
        // Forget conditions that are over and whose alerts are gone.
        let ev = &self.state.evaluator;
        self.state.events.retain(|c| {
            c.active
                || ev
                    .instances
                    .values()
                    .any(|i| i.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
        });
        for n in &sent {
            match n.kind {
                evaluator::NotificationKind::Resolved => {
                    tracing::info!(rule = %n.rule, labels = ?n.labels, dedupe_key = %n.dedupe_key, "alert resolved: {}", n.summary)
                }
                _ => {
                    tracing::warn!(rule = %n.rule, severity = n.severity.as_str(), labels = ?n.labels,
                    dedupe_key = %n.dedupe_key, kind = n.kind.as_str(), "alert {}: {}", n.kind.as_str(), n.summary)
                }
            }
        }
        sent
    }

    /// What to hand to the outboxes now: every notification still unsent (oldest first), then
    /// `sent` for each channel. Unsent ones past their age are given up and counted.
    fn enqueue_jobs(
        &mut self,
        sent: &[Notification],
        now: u64,
        store: &MetricStore,
    ) -> Vec<EnqueueJob> {
        let max_age = UNSENT_MAX_AGE.as_millis() as u64;
        let before = self.state.unsent.len();
        let unsent = std::mem::take(&mut self.state.unsent);
        let mut jobs = Vec::new();
        for u in unsent {
            if now.saturating_sub(u.first_failed_ms) > max_age {
                continue;
            }
            // A channel that is gone (config changed) cannot take it either.
            if let Some((channel, outbox)) = self.outboxes.iter().find(|(c, _)| *c == u.channel) {
                jobs.push(EnqueueJob {
                    channel,
                    outbox: outbox.clone(),
                    unsent: u,
                });
            }
        }
        let given_up = before - jobs.len();
        if given_up > 0 {
            tracing::error!(
                notifications = given_up,
                "alert notifications never reached their outbox; given up"
            );
            drops::record(
                Some(store),
                drops::sink::NOTIFY,
                drops::reason::SPOOL_WRITE,
                given_up as u64,
            );
        }
        for n in sent {
            for (channel, outbox) in &self.outboxes {
                jobs.push(EnqueueJob {
                    channel,
                    outbox: outbox.clone(),
                    unsent: state::Unsent {
                        channel: channel.to_string(),
                        notification: n.clone(),
                        attempts: 0,
                        first_failed_ms: now,
                    },
                });
            }
        }
        jobs
    }

    /// An automatic action (a self-healing restart) goes out as an info notification on every
    /// channel: queued like a notification an outbox refused, so the next evaluation spools it.
    fn announce_action(&mut self, model: &str, reason: &str, at_ms: u64) {
        let notification = Notification {
            kind: evaluator::NotificationKind::Firing,
            dedupe_key: format!("self-healing/{model}/{at_ms}"),
            alert_id: format!("self-healing/{model}/{at_ms}"),
            rule: "self-healing".into(),
            severity: rules::Severity::Info,
            labels: model_labels(model),
            // One action, shown like an event rule's value.
            value: 1.0,
            op: String::new(),
            threshold: 0.0,
            since_ms: at_ms,
            at_ms,
            summary: format!("warden restarted {model} automatically: {reason}"),
            description: format!(
                "Self-healing rolling restart of {model} ({reason}). The other models kept \
                 serving; no action needed unless it repeats after the cool-down."
            ),
        };
        for (channel, _) in &self.outboxes {
            self.state.unsent.push(state::Unsent {
                channel: channel.to_string(),
                notification: notification.clone(),
                attempts: 0,
                first_failed_ms: at_ms,
            });
        }
    }

    /// Keeps what the outboxes could not take, for the next evaluation.
    fn requeue(&mut self, failed: Vec<state::Unsent>, store: &MetricStore) {
        // Anything queued meanwhile (none: evaluations are serialised) would be newer.
        let mut unsent = failed;
        unsent.append(&mut self.state.unsent);
        if unsent.len() > UNSENT_MAX {
            let over = unsent.len() - UNSENT_MAX;
            unsent.drain(..over);
            drops::record(
                Some(store),
                drops::sink::NOTIFY,
                drops::reason::QUEUE_FULL,
                over as u64,
            );
        }
        self.state.unsent = unsent;
    }

    fn on_event(&mut self, source: EventSource, labels: Labels, active: bool, at: u64) {
        let found = self
            .state
            .events
            .iter_mut()
            .find(|c| c.source == source && c.labels == labels);
        match found {
            Some(c) => {
                c.active = active;
                if active {
                    c.last_ms = at;
                }
            }
            None if active => self.state.events.push(EventCondition {
                source,
                labels,
                active,
                last_ms: at,
            }),
            None => {}
        }
    }

    /// Every condition of `source` whose labels include `matching` is over.
    fn clear_matching(&mut self, source: EventSource, matching: &Labels) {
        for c in self.state.events.iter_mut().filter(|c| {
            c.source == source && matching.iter().all(|(k, v)| c.labels.get(k) == Some(v))
        }) {
            c.active = false;
        }
    }

    /// Model back up: it is neither down nor crash-looping any more.
    fn model_up(&mut self, model: &str, at: u64) {
        for source in [EventSource::ModelDown, EventSource::ModelCrashLoop] {
            self.on_event(source, model_labels(model), false, at);
        }
    }
}

/// Hands each job to its outbox in order; a channel that failed takes nothing more this round
/// (its later notifications would overtake the failed one). Returns what was not taken.
fn enqueue_all(jobs: Vec<EnqueueJob>) -> Vec<state::Unsent> {
    let mut failed_channels: Vec<&'static str> = Vec::new();
    let mut failed = Vec::new();
    for mut job in jobs {
        if failed_channels.contains(&job.channel) {
            failed.push(job.unsent);
            continue;
        }
        match job.outbox.enqueue(&job.unsent.notification) {
            Ok(()) => {
                if job.unsent.attempts > 0 {
                    tracing::info!(channel = job.channel, rule = %job.unsent.notification.rule,
                        attempts = job.unsent.attempts + 1, "alert notification spooled after retrying");
                }
            }
            Err(e) => {
                job.unsent.attempts = job.unsent.attempts.saturating_add(1);
                if job.unsent.attempts == 1 {
                    tracing::error!(error = %e, channel = job.channel, rule = %job.unsent.notification.rule,
                        "cannot spool alert notification; kept and retried at the next evaluation");
                }
                failed_channels.push(job.channel);
                failed.push(job.unsent);
            }
        }
    }
    failed
}

fn model_labels(model: &str) -> Labels {
    [("Model".to_string(), model.to_string())].into()
}

fn gpu_labels(gpu: u32) -> Labels {
    [("GPU".to_string(), gpu.to_string())].into()
}

/// The id an `ack`/`unsilence` targets. The wire's `id` is the request id (stripped from the
/// params), so the target travels as `alert_id`/`silence_id`.
fn id_param(p: &Params, key: &str) -> Result<String, MethodError> {
    p.str(key).map(str::to_string)
}

/// Writes state snapshots in order of their generation, off the async workers.
struct StateWriter {
    file: StateFile,
    /// The generation on disk.
    written: Mutex<u64>,
}

impl StateWriter {
    /// Blocking: temp file, fsync, rename. An older snapshot than the file's is skipped.
    fn write(&self, snap: &Snapshot) -> Result<(), AlertsError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if snap.generation <= *written {
            return Ok(());
        }
        self.file.save(&snap.state)?;
        *written = snap.generation;
        Ok(())
    }
}

/// The running alert engine; cheap to clone.
#[derive(Clone)]
pub struct AlertsHandle {
    core: Arc<Mutex<Core>>,
    writer: Arc<StateWriter>,
    /// One evaluation at a time, so outboxes receive notifications in evaluation order.
    evaluating: Arc<tokio::sync::Mutex<()>>,
    store: Arc<MetricStore>,
    wake: Arc<tokio::sync::Notify>,
    clock: Clock,
}

impl AlertsHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds the engine from the config: loads rules and persisted state, opens the outboxes
    /// and starts their delivery workers and the evaluation loop (all stop on `cancel`).
    pub async fn start(
        config: &Config,
        store: Arc<MetricStore>,
        supervisor_events: broadcast::Receiver<SupervisorEvent>,
        telemetry_events: broadcast::Receiver<TelemetryEvent>,
        cancel: CancellationToken,
    ) -> Result<(AlertsHandle, Vec<tokio::task::JoinHandle<()>>), AlertsError> {
        let settings = AlertsSettings::from_config(config)?;
        let state_dir = config.state_dir().join("alerts");
        let mut channels = Vec::new();
        if let Some(sns) = &config.notify.sns
            && (sns.info_topic_arn.is_some()
                || sns.warning_topic_arn.is_some()
                || sns.critical_topic_arn.is_some())
        {
            let sdk = crate::sinks::aws::sdk_config(&config.aws).await;
            channels.push(notify::Channel::Sns(notify::sns::SnsChannel::new(
                &sdk,
                sns.clone(),
                settings.context.clone(),
            )));
        }
        if let Some(slack) = &config.notify.slack
            && let Some(url) = &slack.webhook_url
        {
            channels.push(notify::Channel::Slack(notify::slack::SlackChannel::new(
                url.clone(),
                slack.channel.clone(),
                settings.context.clone(),
            )?));
        }
        if channels.is_empty() {
            tracing::info!(
                "no [notify.sns] topics or Slack webhook: alerts go to the log and the console only"
            );
        }
        let objectives = slo::load_for(config)?;
        let (handle, tasks) = Self::start_with(
            settings,
            &state_dir,
            channels,
            store,
            supervisor_events,
            telemetry_events,
            system_clock(),
            cancel,
        )?;
        let slos = objectives.len();
        let dir = config.state_dir();
        let (file, state) = tokio::task::spawn_blocking(move || {
            let file = slo::persist::SloFile::new(&dir);
            let state = file.load();
            (file, state)
        })
        .await
        .map_err(|e| AlertsError::Io {
            what: "reading the SLO budgets".into(),
            source: std::io::Error::other(e),
        })?;
        handle.set_slos_with(objectives, file, state, slo::engine::process_id());
        tracing::info!(slos, "SLO error budgets and burn-rate alerts on");
        Ok((handle, tasks))
    }

    /// [`start`](Self::start) with explicit parts (tests and the benchmark); `state_dir` is
    /// the alerts' own directory (`<agent.state_dir>/alerts`).
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        settings: AlertsSettings,
        state_dir: &std::path::Path,
        channels: Vec<notify::Channel>,
        store: Arc<MetricStore>,
        supervisor_events: broadcast::Receiver<SupervisorEvent>,
        telemetry_events: broadcast::Receiver<TelemetryEvent>,
        clock: Clock,
        cancel: CancellationToken,
    ) -> Result<(AlertsHandle, Vec<tokio::task::JoinHandle<()>>), AlertsError> {
        let mut supervisor_events = Some(supervisor_events);
        let mut telemetry_events = Some(telemetry_events);
        let file = StateFile::new(state_dir.parent().unwrap_or(state_dir));
        let state = file.load();
        let backoff = crate::sinks::cloudwatch::retry::Backoff {
            base: Duration::from_millis(250),
            max: Duration::from_secs(10),
            attempts: u32::MAX,
        };
        let mut tasks = Vec::new();
        let mut outboxes = Vec::new();
        for channel in channels {
            let outbox = notify::Outbox::open(
                &state_dir.join(format!("spool-{}", channel.name())),
                Some(store.clone()),
            )?;
            if outbox.pending() > 0 {
                tracing::info!(
                    channel = channel.name(),
                    waiting = outbox.pending(),
                    "replaying spooled alert notifications"
                );
            }
            outboxes.push((channel.name(), outbox.clone()));
            tasks.push(tokio::spawn(notify::run_worker(
                outbox,
                channel,
                backoff,
                cancel.child_token(),
            )));
        }
        let core = Core {
            settings,
            slo: None,
            state,
            saved_signature: Vec::new(),
            saved_extra: (usize::MAX, 0, 0),
            generation: 0,
            outboxes,
        };
        let handle = AlertsHandle {
            core: Arc::new(Mutex::new(core)),
            writer: Arc::new(StateWriter {
                file,
                written: Mutex::new(0),
            }),
            evaluating: Arc::new(tokio::sync::Mutex::new(())),
            store,
            wake: Arc::new(tokio::sync::Notify::new()),
            clock,
        };
        {
            let mut core = handle.lock();
            let sig = core.signature();
            core.saved_signature = sig;
            core.saved_extra = core.extra();
            let firing = core
                .state
                .evaluator
                .instances
                .values()
                .filter(|i| i.state == AlertState::Firing)
                .count();
            if firing > 0 {
                tracing::info!(firing, "alert state restored");
            }
        }
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            let every = |interval: Duration| {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            };
            let mut interval = h.lock().settings.evaluation_interval;
            // The first evaluation waits a full interval: at start the store is empty, and an
            // immediate tick would race callers of `evaluate_now`.
            let mut tick = every(interval);
            loop {
                // A reload may have changed the interval.
                let now_interval = h.lock().settings.evaluation_interval;
                if now_interval != interval {
                    interval = now_interval;
                    tick = every(interval);
                }
                tokio::select! {
                    _ = cancel.cancelled() => {
                        let snap = h.lock().snapshot(true);
                        h.save(snap).await;
                        h.save_slo(true).await;
                        return;
                    }
                    _ = tick.tick() => {}
                    _ = h.wake.notified() => {}
                    e = next_event(&mut supervisor_events, "supervisor") => match e {
                        Some(e) => h.supervisor_event(&e),
                        None => continue,
                    },
                    e = next_event(&mut telemetry_events, "telemetry") => match e {
                        Some(e) => h.telemetry_event(&e),
                        None => continue,
                    },
                }
                h.evaluate_now().await;
            }
        }));
        Ok((handle, tasks))
    }

    /// One evaluation of every rule at the clock's now (the loop calls it each interval and
    /// on events); returns the notifications it raised. Each goes to every outbox; one an
    /// outbox cannot take (disk full) stays due and is retried at the next evaluation.
    /// Spool appends and the state write run on a blocking thread, outside the engine's lock.
    pub async fn evaluate_now(&self) -> Vec<Notification> {
        let _one_at_a_time = self.evaluating.lock().await;
        let now = (self.clock)();
        let (sent, jobs) = {
            let mut core = self.lock();
            let sent = core.evaluate(&self.store, now);
            let jobs = core.enqueue_jobs(&sent, now, &self.store);
            (sent, jobs)
        };
        let failed = if jobs.is_empty() {
            Vec::new()
        } else {
            match tokio::task::spawn_blocking(move || enqueue_all(jobs)).await {
                Ok(f) => f,
                Err(e) => {
                    // Not expected (enqueue does not panic); the notifications are lost: count.
                    tracing::error!(error = %e, "alert spooling task failed");
                    drops::record(
                        Some(&self.store),
                        drops::sink::NOTIFY,
                        drops::reason::SPOOL_WRITE,
                        sent.len() as u64,
                    );
                    Vec::new()
                }
            }
        };
        // Spooled first, then state: a crash in between repeats a message, never loses one.
        let snap = {
            let mut core = self.lock();
            core.requeue(failed, &self.store);
            core.snapshot(false)
        };
        self.save(snap).await;
        self.save_slo(false).await;
        sent
    }

    /// Turns on SLO budgets and burn-rate alerts for `objectives`, with budgets kept under
    /// `state_dir` (the agent's); `process` names the counters' owner (see
    /// [`slo::engine::process_id`]). Blocking: reads the budgets file.
    pub fn set_slos(
        &self,
        objectives: Vec<slo::Objective>,
        state_dir: &std::path::Path,
        process: String,
    ) -> Arc<slo::RequestCounters> {
        let file = slo::persist::SloFile::new(state_dir);
        let state = file.load();
        self.set_slos_with(objectives, file, state, process)
    }

    fn set_slos_with(
        &self,
        objectives: Vec<slo::Objective>,
        file: slo::persist::SloFile,
        state: slo::persist::SloState,
        process: String,
    ) -> Arc<slo::RequestCounters> {
        let counters = slo::RequestCounters::new();
        let engine = slo::SloEngine::with_state(objectives, counters.clone(), file, state, process);
        self.lock().slo = Some(SloParts {
            engine,
            rules: slo::alert_rules(),
            counters: counters.clone(),
        });
        counters
    }

    /// What the gateway counts successful-call latency into (when SLOs are on).
    pub fn request_counters(&self) -> Option<Arc<slo::RequestCounters>> {
        self.lock().slo.as_ref().map(|s| s.counters.clone())
    }

    /// Every objective's budget, burn rates and time to exhaustion at the clock's now.
    pub fn slo_statuses(&self) -> Vec<slo::SloStatus> {
        let now = (self.clock)();
        self.lock()
            .slo
            .as_ref()
            .map(|s| s.engine.statuses(now))
            .unwrap_or_default()
    }

    /// Writes the SLO budgets when due (or, with `force`, whenever calls were counted), on a
    /// blocking thread; a failure is logged and retried at the next evaluation.
    async fn save_slo(&self, force: bool) {
        let now = (self.clock)();
        let job = {
            let mut core = self.lock();
            core.slo.as_mut().and_then(|s| {
                s.engine
                    .due_for_save(now, force)
                    .map(|state| (s.engine.file(), state))
            })
        };
        let Some((file, state)) = job else { return };
        let result = tokio::task::spawn_blocking(move || file.save(&state))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot persist the SLO budgets; retrying");
            if let Some(s) = self.lock().slo.as_mut() {
                s.engine.save_failed();
            }
        }
    }

    /// Writes a snapshot on a blocking thread; a failure is logged and retried next time.
    async fn save(&self, snap: Option<Snapshot>) {
        let Some(snap) = snap else { return };
        let writer = self.writer.clone();
        let result = tokio::task::spawn_blocking(move || writer.write(&snap))
            .await
            .unwrap_or_else(|e| {
                Err(AlertsError::Io {
                    what: "saving alert state".into(),
                    source: std::io::Error::other(e),
                })
            });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot persist alert state");
            self.lock().save_failed();
        }
    }

    /// Notifications raised but not yet in every outbox (retried at each evaluation).
    pub fn unsent(&self) -> usize {
        self.lock().state.unsent.len()
    }

    /// Feeds a supervisor event into the event rules.
    pub fn supervisor_event(&self, e: &SupervisorEvent) {
        let mut core = self.lock();
        match &e.kind {
            EventKind::CrashLoop { .. } => core.on_event(
                EventSource::ModelCrashLoop,
                model_labels(&e.model),
                true,
                e.at_ms,
            ),
            EventKind::ModelDown { .. } => core.on_event(
                EventSource::ModelDown,
                model_labels(&e.model),
                true,
                e.at_ms,
            ),
            EventKind::ModelUp { .. } | EventKind::Removed => core.model_up(&e.model, e.at_ms),
            EventKind::AutoRestart { reason } => core.announce_action(&e.model, reason, e.at_ms),
            _ => {}
        }
    }

    /// Feeds a GPU/NVML event into the event rules.
    pub fn telemetry_event(&self, e: &TelemetryEvent) {
        let at = (self.clock)();
        let mut core = self.lock();
        match e {
            TelemetryEvent::GpuLost { gpu } => {
                core.on_event(EventSource::GpuLost, gpu_labels(*gpu), true, at)
            }
            TelemetryEvent::GpuRecovered { gpu } => {
                core.on_event(EventSource::GpuLost, gpu_labels(*gpu), false, at)
            }
            TelemetryEvent::Xid { gpu, code } => {
                let mut labels = gpu_labels(*gpu);
                labels.insert("Code".into(), code.to_string());
                core.on_event(EventSource::GpuXid, labels, true, at)
            }
            TelemetryEvent::NvmlUnavailable { .. } => {
                core.on_event(EventSource::NvmlUnavailable, Labels::new(), true, at)
            }
            TelemetryEvent::NvmlAvailable { .. } => {
                core.on_event(EventSource::NvmlUnavailable, Labels::new(), false, at)
            }
            TelemetryEvent::AwsAccessDenied {
                sink,
                operation,
                permission,
                error: _,
            } => {
                let labels: Labels = [
                    ("Sink".to_string(), sink.clone()),
                    ("Operation".to_string(), operation.clone()),
                    ("Permission".to_string(), permission.clone()),
                ]
                .into();
                core.on_event(EventSource::AwsAccessDenied, labels, true, at)
            }
            // Any successful call means the sink's credentials and permissions work again.
            TelemetryEvent::AwsAccessRestored { sink } => core.clear_matching(
                EventSource::AwsAccessDenied,
                &[("Sink".to_string(), sink.clone())].into(),
            ),
        }
    }

    /// Notifications spooled and not yet delivered, over every channel.
    pub fn undelivered(&self) -> u64 {
        self.lock().outboxes.iter().map(|(_, o)| o.pending()).sum()
    }

    /// Swaps in new rules and settings (SIGHUP); alert state of surviving rules is kept.
    pub fn reload(&self, config: &Config) -> Result<usize, ConfigErrors> {
        let settings = AlertsSettings::from_config(config)?;
        let objectives = slo::load_for(config)?;
        let n = settings.rules.len();
        let mut core = self.lock();
        core.settings = settings;
        if let Some(s) = core.slo.as_mut() {
            s.engine.set_objectives(objectives);
        }
        drop(core);
        self.wake.notify_one();
        Ok(n)
    }

    /// The control API's `alerts` result.
    pub fn snapshot(&self) -> Value {
        let now = (self.clock)();
        let core = self.lock();
        let alerts: Vec<Value> = core
            .state
            .evaluator
            .instances
            .values()
            .map(|i| {
                json!({
                    "id": i.id,
                    "rule": i.rule,
                    "severity": i.severity.as_str(),
                    "state": i.state.as_str(),
                    "labels": i.labels,
                    "value": i.value,
                    "threshold": i.threshold,
                    "since_ms": i.since_ms(),
                    "summary": i.summary,
                    "silenced": evaluator::silenced(i, &core.state.silences, now),
                    "acked_by": i.acked_by,
                    "dedupe_key": i.dedupe_key(),
                })
            })
            .collect();
        let silences: Vec<Value> = core
            .state
            .silences
            .iter()
            .filter(|s| s.active(now))
            .map(|s| {
                json!({"id": s.id, "matchers": s.matchers, "expires_ms": s.expires_ms,
                    "creator": s.creator, "comment": s.comment})
            })
            .collect();
        json!({ "alerts": alerts, "silences": silences })
    }

    pub async fn silence(
        &self,
        matchers: Labels,
        duration: Duration,
        creator: &str,
        comment: &str,
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let now = (self.clock)();
        let snap = {
            let mut core = self.lock();
            core.state.silences.push(evaluator::Silence {
                id: id.clone(),
                matchers,
                expires_ms: now.saturating_add(duration.as_millis() as u64),
                creator: creator.to_string(),
                comment: comment.to_string(),
            });
            core.snapshot(true)
        };
        self.save(snap).await;
        id
    }

    pub async fn unsilence(&self, id: &str) -> bool {
        let (removed, snap) = {
            let mut core = self.lock();
            let before = core.state.silences.len();
            core.state.silences.retain(|s| s.id != id);
            let removed = core.state.silences.len() < before;
            (removed, core.snapshot(true))
        };
        self.save(snap).await;
        removed
    }

    pub async fn ack(&self, id: &str, by: &str) -> bool {
        let (found, snap) = {
            let mut core = self.lock();
            let found = core.state.evaluator.ack(id, by);
            (found, core.snapshot(true))
        };
        self.save(snap).await;
        found
    }

    /// `warden_alerts{alertname,severity,alertstate,host,<dims>} 1` per pending/firing alert.
    pub fn render_prometheus(&self) -> String {
        let core = self.lock();
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let mut out = String::from(
            "# HELP warden_alerts Pending and firing alerts (1 per alert), like Prometheus ALERTS.\n# TYPE warden_alerts gauge\n",
        );
        for i in core.state.evaluator.instances.values() {
            if i.state == AlertState::Resolved {
                continue;
            }
            let mut labels = format!(
                "alertname=\"{}\",severity=\"{}\",alertstate=\"{}\",host=\"{}\"",
                esc(&i.rule),
                i.severity.as_str(),
                i.state.as_str(),
                esc(&core.settings.context.host)
            );
            for (k, v) in &i.labels {
                let name: String = k
                    .to_lowercase()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                if ["alertname", "severity", "alertstate", "host"].contains(&name.as_str()) {
                    continue;
                }
                labels.push_str(&format!(",{name}=\"{}\"", esc(v)));
            }
            out.push_str(&format!("warden_alerts{{{labels}}} 1\n"));
        }
        out
    }

    /// Registers `alerts`, `silence` {matchers, duration_secs, creator, comment} → {id},
    /// `unsilence` {silence_id} and `ack` {alert_id, by} on the control socket.
    pub fn register(&self, dispatcher: &mut Dispatcher) {
        let h = self.clone();
        dispatcher.register("alerts", move |_p: Params| {
            let h = h.clone();
            async move { Ok(h.snapshot()) }
        });
        let h = self.clone();
        dispatcher.register("silence", move |p: Params| {
            let h = h.clone();
            async move {
                let matchers: Labels = match p.0.get("matchers") {
                    Some(Value::Object(m)) => m
                        .iter()
                        .map(|(k, v)| {
                            v.as_str()
                                .map(|s| (k.clone(), s.to_string()))
                                .ok_or_else(|| {
                                    MethodError::bad_params(format!(
                                        "matcher {k:?} must be a string"
                                    ))
                                })
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(MethodError::bad_params(
                            "missing object parameter \"matchers\"",
                        ));
                    }
                };
                if matchers.is_empty() {
                    return Err(MethodError::bad_params(
                        "a silence needs at least one matcher",
                    ));
                }
                let secs = p.u64_or("duration_secs", 3600)?;
                if secs == 0 {
                    return Err(MethodError::bad_params("duration_secs must be at least 1"));
                }
                let creator = p.str("creator")?.to_string();
                let comment =
                    p.0.get("comment")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                let id = h
                    .silence(matchers, Duration::from_secs(secs), &creator, &comment)
                    .await;
                h.wake.notify_one();
                Ok(json!({ "id": id }))
            }
        });
        let h = self.clone();
        dispatcher.register("unsilence", move |p: Params| {
            let h = h.clone();
            async move {
                let id = id_param(&p, "silence_id")?;
                if h.unsilence(&id).await {
                    Ok(json!({ "id": id }))
                } else {
                    Err(MethodError::new("not_found", format!("no silence {id:?}")))
                }
            }
        });
        let h = self.clone();
        dispatcher.register("slos", move |_p: Params| {
            let h = h.clone();
            async move { Ok(json!({ "slos": h.slo_statuses() })) }
        });
        let h = self.clone();
        dispatcher.register("ack", move |p: Params| {
            let h = h.clone();
            async move {
                let id = id_param(&p, "alert_id")?;
                let by = p.str("by")?.to_string();
                if h.ack(&id, &by).await {
                    Ok(json!({ "id": id, "acked_by": by }))
                } else {
                    Err(MethodError::new("not_found", format!("no alert {id:?}")))
                }
            }
        });
    }
}

impl crate::api::MetricsText for AlertsHandle {
    fn render(&self) -> String {
        self.render_prometheus()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const AWS_RULE: &str = "[[rule]]\nname = \"aws-access-denied\"\nevent = \"aws-access-denied\"\nfor = \"0s\"\nseverity = \"critical\"\nsummary = \"{{Sink}}: grant {{Permission}} for {{Operation}}\"\n";

    fn engine(rules: &str) -> (AlertsHandle, Arc<AtomicU64>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let settings = AlertsSettings {
            rules: rules::parse(std::path::Path::new("r.toml"), rules).unwrap(),
            evaluation_interval: Duration::from_secs(3600),
            evaluator: Settings {
                repeat_interval: Duration::from_secs(3600),
                resolved_retention: RESOLVED_RETENTION,
            },
            context: notify::MessageContext {
                host: "h".into(),
                runbook_url: "r".into(),
            },
        };
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let c = clock.clone();
        let (_stx, srx) = broadcast::channel(4);
        let (_ttx, trx) = broadcast::channel(4);
        let (handle, _tasks) = AlertsHandle::start_with(
            settings,
            &dir.path().join("alerts"),
            Vec::new(),
            Arc::new(MetricStore::new("h", 60)),
            srx,
            trx,
            Arc::new(move || c.load(Ordering::SeqCst)),
            CancellationToken::new(),
        )
        .unwrap();
        (handle, clock, dir)
    }

    /// An engine with no rules but the default SLOs for model `m`, on a manual clock.
    fn slo_engine(
        dir: &std::path::Path,
        process: &str,
    ) -> (AlertsHandle, Arc<AtomicU64>, Arc<slo::RequestCounters>) {
        let settings = AlertsSettings {
            rules: Vec::new(),
            evaluation_interval: Duration::from_secs(3600),
            evaluator: Settings {
                repeat_interval: Duration::from_secs(7 * 86_400),
                resolved_retention: RESOLVED_RETENTION,
            },
            context: notify::MessageContext {
                host: "h".into(),
                runbook_url: "r".into(),
            },
        };
        let clock = Arc::new(AtomicU64::new(SLO_T0));
        let c = clock.clone();
        let (_stx, srx) = broadcast::channel(4);
        let (_ttx, trx) = broadcast::channel(4);
        let (handle, _tasks) = AlertsHandle::start_with(
            settings,
            &dir.join("alerts"),
            Vec::new(),
            Arc::new(MetricStore::new("h", 600)),
            srx,
            trx,
            Arc::new(move || c.load(Ordering::SeqCst)),
            CancellationToken::new(),
        )
        .unwrap();
        let counters = handle.set_slos(slo::defaults(&["m".to_string()]), dir, process.into());
        (handle, clock, counters)
    }

    const SLO_T0: u64 = 1_800_000_000_000;

    /// Advances the clock by `step`, makes `calls` calls of which `per_mille`‰ fail
    /// (spread evenly), evaluates, and returns the SLO notifications as (rule, kind, SLO).
    async fn slo_step(
        h: &AlertsHandle,
        clock: &AtomicU64,
        counters: &slo::RequestCounters,
        step: Duration,
        calls: u64,
        per_mille: f64,
    ) -> Vec<(String, String, String, String)> {
        let now =
            clock.fetch_add(step.as_millis() as u64, Ordering::SeqCst) + step.as_millis() as u64;
        let at = UNIX_EPOCH + Duration::from_millis(now);
        // Failures at an exact rate, carried across steps, so tests are deterministic.
        let before = h
            .store
            .latest("ModelRequests", &[(Dim::Model, "m")])
            .unwrap_or(0.0);
        for i in 0..calls {
            let n = before + i as f64;
            let ok = ((n + 1.0) * per_mille / 1000.0).floor() == (n * per_mille / 1000.0).floor();
            h.store.record_request("m", 20.0, ok, at);
            counters.record("m", 20.0, ok);
        }
        h.evaluate_now()
            .await
            .into_iter()
            .map(|n| {
                (
                    n.rule.clone(),
                    n.kind.as_str().to_string(),
                    n.labels["SLO"].clone(),
                    n.summary,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_fast_burn_pages_within_minutes_and_recovery_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let (h, clock, counters) = slo_engine(dir.path(), "p1");
        let step = Duration::from_secs(10);
        let mut paged_at = None;
        // 20 % of calls fail (200× a 99.9 % budget), 10 calls a second.
        for i in 1..=60 {
            let sent = slo_step(&h, &clock, &counters, step, 100, 200.0).await;
            if let Some(n) = sent
                .iter()
                .find(|n| n.0 == "slo-burn-rate-page" && n.1 == "firing")
            {
                assert_eq!(n.2, "availability");
                assert!(n.3.contains("SLO availability of m"), "{}", n.3);
                assert!(n.3.contains("200× over 1h"), "{}", n.3);
                assert!(n.3.contains("of the budget left"), "{}", n.3);
                paged_at.get_or_insert(i);
            }
            // The latency SLO is met (20 ms calls): never alerts.
            assert!(sent.iter().all(|n| n.2 == "availability"), "{sent:?}");
        }
        let paged_at = paged_at.expect("the fast burn never paged");
        assert_eq!(
            paged_at, 1,
            "pages on the first evaluation with enough calls"
        );
        let firing = h.snapshot();
        let tiers: Vec<&str> = firing["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"]["tier"].as_str().unwrap())
            .collect();
        assert_eq!(tiers.len(), 2, "page and ticket both fire: {firing}");
        let status = h.slo_statuses();
        let avail = status.iter().find(|s| s.slo == "availability").unwrap();
        assert!(avail.page && avail.budget_remaining < 1.0, "{avail:?}");
        assert!(avail.exhaustion_secs.is_some());
        // Recovery: once the 30 m window (the last short window still burning ≥ 6×) clears,
        // about half an hour later, the page resolves.
        let mut resolved_after = None;
        for i in 1..=240 {
            let sent = slo_step(&h, &clock, &counters, step, 100, 0.0).await;
            if sent
                .iter()
                .any(|n| n.0 == "slo-burn-rate-page" && n.1 == "resolved")
            {
                resolved_after = Some(i * 10);
                break;
            }
        }
        let secs = resolved_after.expect("the page never resolved");
        assert!(
            (29 * 60..=32 * 60).contains(&secs),
            "resolved after {secs}s"
        );
    }

    #[tokio::test]
    async fn a_slow_burn_tickets_and_never_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (h, clock, counters) = slo_engine(dir.path(), "p1");
        let mut kinds = Vec::new();
        // 0.3 % of calls fail: 3× the budget, for three days, 1,000 calls every 10 minutes.
        for _ in 0..(3 * 24 * 6) {
            let sent = slo_step(&h, &clock, &counters, Duration::from_secs(600), 1000, 3.0).await;
            kinds.extend(sent.into_iter().map(|n| (n.0, n.1)));
        }
        assert!(
            kinds.contains(&("slo-burn-rate-ticket".into(), "firing".into())),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().all(|(rule, _)| rule != "slo-burn-rate-page"),
            "{kinds:?}"
        );
        let avail = h
            .slo_statuses()
            .into_iter()
            .find(|s| s.slo == "availability")
            .unwrap();
        // The budget is the allowance of the calls made (1 - ratio/budget, as Sloth and the
        // workbook count it): 3× the allowed ratio is twice the budget overspent.
        assert!((avail.budget_remaining + 2.0).abs() < 0.02, "{avail:?}");
        assert!(avail.ticket && !avail.page, "{avail:?}");
    }

    #[tokio::test]
    async fn an_error_rate_inside_the_budget_never_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let (h, clock, counters) = slo_engine(dir.path(), "p1");
        for _ in 0..(24 * 12) {
            let sent = slo_step(&h, &clock, &counters, Duration::from_secs(300), 2000, 0.5).await;
            assert!(sent.is_empty(), "{sent:?}");
        }
        let avail = h
            .slo_statuses()
            .into_iter()
            .find(|s| s.slo == "availability")
            .unwrap();
        // Half the allowed ratio: half the budget left, lasting the whole window.
        assert!((avail.budget_remaining - 0.5).abs() < 0.01, "{avail:?}");
        assert_eq!(avail.exhaustion_secs.map(|s| s / 86_400), Some(30));
    }

    #[tokio::test]
    async fn a_restart_keeps_the_budget_and_does_not_page_again() {
        let dir = tempfile::tempdir().unwrap();
        let (h, clock, counters) = slo_engine(dir.path(), "p1");
        for _ in 0..30 {
            slo_step(&h, &clock, &counters, Duration::from_secs(10), 100, 50.0).await;
        }
        // Shutdown writes the budgets whatever their age.
        h.save_slo(true).await;
        let before = h.slo_statuses();
        let now = clock.load(Ordering::SeqCst);
        drop(h);
        // A new process: new store and counters at zero, same state dir.
        let (h2, clock2, counters2) = slo_engine(dir.path(), "p2");
        clock2.store(now, Ordering::SeqCst);
        let sent = slo_step(&h2, &clock2, &counters2, Duration::from_secs(1), 0, 0.0).await;
        assert!(
            sent.is_empty(),
            "the page restored as firing sends nothing new: {sent:?}"
        );
        let after = h2.slo_statuses();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((b.good, b.total), (a.good, a.total), "{b:?} vs {a:?}");
            assert!((b.budget_remaining - a.budget_remaining).abs() < 1e-12);
        }
        assert_eq!(after[0].total, 3000);
        // Counting carries on from there, once.
        slo_step(&h2, &clock2, &counters2, Duration::from_secs(10), 100, 0.0).await;
        assert_eq!(h2.slo_statuses()[0].total, 3100);
    }

    fn denied(sink: &str, operation: &str, permission: &str) -> TelemetryEvent {
        TelemetryEvent::AwsAccessDenied {
            sink: sink.into(),
            operation: operation.into(),
            permission: permission.into(),
            error: "AccessDeniedException: not authorized".into(),
        }
    }

    #[tokio::test]
    async fn aws_access_denied_pages_with_the_permission_and_resolves_on_restored() {
        let (h, clock, _dir) = engine(AWS_RULE);
        h.telemetry_event(&denied("logs", "CreateLogGroup", "logs:CreateLogGroup"));
        h.telemetry_event(&denied(
            "cloudwatch",
            "PutMetricData",
            "cloudwatch:PutMetricData",
        ));
        let mut fired = h.evaluate_now().await;
        fired.sort_by(|a, b| a.labels["Sink"].cmp(&b.labels["Sink"]));
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert!(fired.iter().all(|n| n.kind.as_str() == "firing"));
        assert_eq!(fired[0].labels["Sink"], "cloudwatch");
        assert_eq!(fired[1].labels["Operation"], "CreateLogGroup");
        assert_eq!(fired[1].labels["Permission"], "logs:CreateLogGroup");
        assert_eq!(
            fired[1].summary,
            "logs: grant logs:CreateLogGroup for CreateLogGroup"
        );
        assert_eq!(fired[1].severity, rules::Severity::Critical);
        // The same refusal again is the same alert, not a second page.
        h.telemetry_event(&denied("logs", "CreateLogGroup", "logs:CreateLogGroup"));
        clock.fetch_add(1000, Ordering::SeqCst);
        assert!(h.evaluate_now().await.is_empty());
        // Restored on one sink resolves that sink's alerts only.
        h.telemetry_event(&TelemetryEvent::AwsAccessRestored {
            sink: "logs".into(),
        });
        clock.fetch_add(1000, Ordering::SeqCst);
        let resolved = h.evaluate_now().await;
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].kind.as_str(), "resolved");
        assert_eq!(resolved[0].labels["Sink"], "logs");
        let snap = h.snapshot();
        let firing: Vec<&Value> = snap["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .collect();
        assert_eq!(firing.len(), 1, "{snap}");
        assert_eq!(firing[0]["labels"]["Sink"], "cloudwatch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reloaded_evaluation_interval_takes_effect() {
        let rule = "[[rule]]\nname = \"hot\"\nmetric = \"GPUUtilization\"\nop = \">\"\nthreshold = 90\nfor = \"0s\"\nseverity = \"info\"\n";
        let (h, clock, dir) = engine(rule);
        std::fs::write(dir.path().join("rules.toml"), rule).unwrap();
        let config = crate::config::Config::parse(
            &dir.path().join("w.toml"),
            "[alerts]\nrules = [\"rules.toml\"]\nevaluation_interval = \"100ms\"\n",
        )
        .unwrap();
        h.reload(&config).unwrap();
        let firing = |gpu: &'static str| {
            let h = h.clone();
            async move {
                for _ in 0..200 {
                    let snap = h.snapshot();
                    if snap["alerts"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|a| a["labels"]["GPU"] == gpu))
                    {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                false
            }
        };
        let at = UNIX_EPOCH + Duration::from_millis(clock.load(Ordering::SeqCst));
        h.store
            .set_gauge("GPUUtilization", &[(Dim::Gpu, "0")], 95.0, at);
        assert!(firing("0").await, "{}", h.snapshot());
        // No event or reload wakes the loop for this one: only the new 100 ms tick can.
        h.store
            .set_gauge("GPUUtilization", &[(Dim::Gpu, "1")], 95.0, at);
        assert!(firing("1").await, "{}", h.snapshot());
    }
}
