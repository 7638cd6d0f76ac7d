//! Alerts: rules evaluated on the host every `alerts.evaluation_interval` against the metric
//! store and the supervisor/GPU events, notifying SNS and Slack at least once.
//!
//! `rules` (files) → `evaluator` (pure state machine) → `state` (persisted) → `notify`
//! (durable spool per channel). [`AlertsHandle`] is the running engine: the agent starts it,
//! registers its control methods (`alerts`, `silence`, `unsilence`, `ack`) and renders its
//! `warden_alerts` gauge on `/metrics`.

pub mod alarms;
pub mod bench;
pub mod evaluator;
pub mod notify;
pub mod rules;
pub mod state;

use crate::config::{Config, ConfigErrors};
use crate::control::{Dispatcher, MethodError, Params};
use crate::supervisor::{EventKind, SupervisorEvent};
use crate::telemetry::{Dim, MetricStore, SeriesKey, TelemetryEvent};
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
        for s in store.series() {
            if s.key.metric != "ModelRequests" {
                continue;
            }
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
    for s in store.series() {
        if s.key.metric != m.metric {
            continue;
        }
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

struct Core {
    settings: AlertsSettings,
    state: PersistedState,
    file: StateFile,
    /// What was last written, to write only on real changes.
    saved_signature: Vec<(String, AlertState, Option<u64>, Option<String>)>,
    saved_extra: (usize, usize),
    outboxes: Vec<Arc<notify::Outbox>>,
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

    fn persist(&mut self, force: bool) {
        let sig = self.signature();
        let extra = (self.state.silences.len(), self.state.events.len());
        if !force && sig == self.saved_signature && extra == self.saved_extra {
            return;
        }
        match self.file.save(&self.state) {
            Ok(()) => {
                self.saved_signature = sig;
                self.saved_extra = extra;
            }
            Err(e) => tracing::error!(error = %e, "cannot persist alert state"),
        }
    }

    /// One evaluation of every rule at `now`; notifications go to every outbox.
    fn tick(&mut self, store: &MetricStore, now: u64) -> Vec<Notification> {
        let mut sent = Vec::new();
        self.state.silences.retain(|s| s.active(now));
        for rule in &self.settings.rules {
            let observations = match &rule.condition {
                Condition::Metric(m) => observe_metric(store, m, now),
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
        self.state
            .evaluator
            .housekeeping(&self.settings.rules, now, &self.settings.evaluator);
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
            for o in &self.outboxes {
                if let Err(e) = o.enqueue(n) {
                    tracing::error!(error = %e, rule = %n.rule, "cannot spool alert notification");
                }
            }
        }
        // Spooled first, then state: a crash in between repeats a message, never loses one.
        self.persist(false);
        sent
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

    /// Model back up: it is neither down nor crash-looping any more.
    fn model_up(&mut self, model: &str, at: u64) {
        for source in [EventSource::ModelDown, EventSource::ModelCrashLoop] {
            self.on_event(source, model_labels(model), false, at);
        }
    }
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

/// The running alert engine; cheap to clone.
#[derive(Clone)]
pub struct AlertsHandle {
    core: Arc<Mutex<Core>>,
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
        let state_dir = config.resolve(&config.agent.state_dir).join("alerts");
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
        Self::start_with(
            settings,
            &state_dir,
            channels,
            store,
            supervisor_events,
            telemetry_events,
            system_clock(),
            cancel,
        )
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
            let outbox =
                notify::Outbox::open(&state_dir.join(format!("spool-{}", channel.name())))?;
            if outbox.pending() > 0 {
                tracing::info!(
                    channel = channel.name(),
                    waiting = outbox.pending(),
                    "replaying spooled alert notifications"
                );
            }
            outboxes.push(outbox.clone());
            tasks.push(tokio::spawn(notify::run_worker(
                outbox,
                channel,
                backoff,
                cancel.child_token(),
            )));
        }
        let core = Core {
            settings,
            state,
            file,
            saved_signature: Vec::new(),
            saved_extra: (usize::MAX, 0),
            outboxes,
        };
        let handle = AlertsHandle {
            core: Arc::new(Mutex::new(core)),
            store,
            wake: Arc::new(tokio::sync::Notify::new()),
            clock,
        };
        {
            let mut core = handle.lock();
            let sig = core.signature();
            core.saved_signature = sig;
            core.saved_extra = (core.state.silences.len(), core.state.events.len());
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
            let interval = h.lock().settings.evaluation_interval;
            // The first evaluation waits a full interval: at start the store is empty, and an
            // immediate tick would race callers of `evaluate_now`.
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        h.lock().persist(true);
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
                h.evaluate_now();
            }
        }));
        Ok((handle, tasks))
    }

    /// One evaluation of every rule at the clock's now (the loop calls it each interval and
    /// on events); returns the notifications it spooled.
    pub fn evaluate_now(&self) -> Vec<Notification> {
        let now = (self.clock)();
        self.lock().tick(&self.store, now)
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
            // Not yet an event rule: the sinks log and count these.
            TelemetryEvent::AwsAccessDenied { .. } | TelemetryEvent::AwsAccessRestored { .. } => {}
        }
    }

    /// Notifications spooled and not yet delivered, over every channel.
    pub fn undelivered(&self) -> u64 {
        self.lock().outboxes.iter().map(|o| o.pending()).sum()
    }

    /// Swaps in new rules and settings (SIGHUP); alert state of surviving rules is kept.
    pub fn reload(&self, config: &Config) -> Result<usize, ConfigErrors> {
        let settings = AlertsSettings::from_config(config)?;
        let n = settings.rules.len();
        self.lock().settings = settings;
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

    pub fn silence(
        &self,
        matchers: Labels,
        duration: Duration,
        creator: &str,
        comment: &str,
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let now = (self.clock)();
        let mut core = self.lock();
        core.state.silences.push(evaluator::Silence {
            id: id.clone(),
            matchers,
            expires_ms: now.saturating_add(duration.as_millis() as u64),
            creator: creator.to_string(),
            comment: comment.to_string(),
        });
        core.persist(true);
        id
    }

    pub fn unsilence(&self, id: &str) -> bool {
        let mut core = self.lock();
        let before = core.state.silences.len();
        core.state.silences.retain(|s| s.id != id);
        let removed = core.state.silences.len() < before;
        core.persist(true);
        removed
    }

    pub fn ack(&self, id: &str, by: &str) -> bool {
        let mut core = self.lock();
        let found = core.state.evaluator.ack(id, by);
        core.persist(true);
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
                let id = h.silence(matchers, Duration::from_secs(secs), &creator, &comment);
                h.wake.notify_one();
                Ok(json!({ "id": id }))
            }
        });
        let h = self.clone();
        dispatcher.register("unsilence", move |p: Params| {
            let h = h.clone();
            async move {
                let id = id_param(&p, "silence_id")?;
                if h.unsilence(&id) {
                    Ok(json!({ "id": id }))
                } else {
                    Err(MethodError::new("not_found", format!("no silence {id:?}")))
                }
            }
        });
        let h = self.clone();
        dispatcher.register("ack", move |p: Params| {
            let h = h.clone();
            async move {
                let id = id_param(&p, "alert_id")?;
                let by = p.str("by")?.to_string();
                if h.ack(&id, &by) {
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
