//! Tells systemd how the daemon is doing over sd_notify: readiness, a status line, watchdog
//! pings from a healthy main loop, reloads and stops. A no-op when `NOTIFY_SOCKET` is unset.
//!
//! [`Lifecycle`] is the pure core (what to say, given a snapshot and the time); [`Notifier`]
//! sends it through the `sd-notify` crate.

use crate::config::Config;
use crate::control::{Dispatcher, MethodError, Params};
use crate::supervisor::{ModelState, ModelStatus};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Longest wait for the models before READY=1 is sent anyway (the unit's TimeoutStartSec of
/// 8 min covers this plus `models init` on first boot).
pub const MAX_READY_WAIT: Duration = Duration::from_secs(120);

/// How often the main loop ticks when systemd set no watchdog (readiness and status upkeep).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Env var that enables test-only control methods (`debug.wedge`).
pub const TEST_HOOKS_ENV: &str = "WARDEN_TEST_HOOKS";

/// Longest wedge a test may ask for.
const MAX_WEDGE: Duration = Duration::from_secs(120);

/// What the main loop knows about the host at one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSnapshot {
    pub models_total: usize,
    /// Names of models that are not ready, in name order.
    pub not_ready: Vec<String>,
    /// GPUs NVML reports (None before the first sample).
    pub gpus: Option<u64>,
    /// Alerts currently firing (None while no alert engine runs).
    pub alerts_firing: Option<usize>,
    /// Err(reason) when a part of the agent has stopped working.
    pub health: Result<(), String>,
}

impl HostSnapshot {
    /// A snapshot from the supervisor's status rows and the other parts' readings.
    pub fn from_status(
        status: &[ModelStatus],
        gpus: Option<u64>,
        alerts_firing: Option<usize>,
        health: Result<(), String>,
    ) -> Self {
        HostSnapshot {
            models_total: status.len(),
            not_ready: status
                .iter()
                .filter(|s| s.state != ModelState::Ready)
                .map(|s| s.name.clone())
                .collect(),
            gpus,
            alerts_firing,
            health,
        }
    }

    pub fn models_ready(&self) -> usize {
        self.models_total - self.not_ready.len()
    }

    pub fn all_ready(&self) -> bool {
        self.not_ready.is_empty()
    }

    /// The one-line summary, e.g. "5/5 models ready, 2 GPUs, 0 alerts".
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "{}/{} models ready",
            self.models_ready(),
            self.models_total
        )];
        if let Some(g) = self.gpus {
            parts.push(format!("{g} GPU{}", if g == 1 { "" } else { "s" }));
        }
        if let Some(a) = self.alerts_firing {
            parts.push(format!("{a} alert{}", if a == 1 { "" } else { "s" }));
        }
        let mut line = parts.join(", ");
        if !self.not_ready.is_empty() {
            line.push_str(&format!(" (not ready: {})", self.not_ready.join(", ")));
        }
        if let Err(reason) = &self.health {
            line = format!("unhealthy: {reason}; {line}");
        }
        line
    }
}

/// One thing to tell systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Ready,
    Status(String),
    Watchdog,
    Reloading,
    /// CLOCK_MONOTONIC in µs: systemd ≥ 253 wants it with RELOADING=1.
    MonotonicUsec(i128),
    Stopping,
}

/// The pure core: decides what to send from snapshots and the time it is given.
#[derive(Debug)]
pub struct Lifecycle {
    started: Instant,
    ready_wait: Duration,
    watchdog: Option<Duration>,
    ready_sent: bool,
    last_status: Option<String>,
    last_ping: Option<Instant>,
}

impl Lifecycle {
    /// `watchdog` is systemd's WATCHDOG_USEC (pings go out at half of it).
    pub fn new(started: Instant, ready_wait: Duration, watchdog: Option<Duration>) -> Self {
        Lifecycle {
            started,
            ready_wait,
            watchdog,
            ready_sent: false,
            last_status: None,
            last_ping: None,
        }
    }

    /// How often the main loop should call [`Lifecycle::on_tick`].
    pub fn tick_interval(&self) -> Duration {
        match self.watchdog {
            Some(w) => (w / 2).clamp(Duration::from_millis(10), IDLE_TICK),
            None => IDLE_TICK,
        }
    }

    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// A status line before anything else is known (e.g. while the agent starts).
    pub fn status(&mut self, line: impl Into<String>) -> Vec<Notice> {
        let line = line.into();
        self.last_status = Some(line.clone());
        vec![Notice::Status(line)]
    }

    /// Called by the main loop each tick; the loop calling it at all is what proves it alive.
    pub fn on_tick(&mut self, snap: &HostSnapshot, now: Instant) -> Vec<Notice> {
        let mut out = Vec::new();
        if !self.ready_sent {
            let waited = now.saturating_duration_since(self.started);
            if snap.all_ready() {
                self.ready_sent = true;
                out.push(Notice::Ready);
                self.push_status(&mut out, snap.summary(), true);
            } else if waited >= self.ready_wait {
                // Better a running agent that says what is missing than a unit that times out.
                self.ready_sent = true;
                out.push(Notice::Ready);
                let line = format!(
                    "ready without all models after {}s: {}",
                    waited.as_secs(),
                    snap.summary()
                );
                self.push_status(&mut out, line, true);
            } else {
                self.push_status(&mut out, format!("starting: {}", snap.summary()), false);
            }
        } else {
            self.push_status(&mut out, snap.summary(), false);
        }
        if let (Some(w), Ok(())) = (self.watchdog, &snap.health) {
            let due = self
                .last_ping
                .is_none_or(|last| now.saturating_duration_since(last) >= w / 2);
            if due {
                self.last_ping = Some(now);
                out.push(Notice::Watchdog);
            }
        }
        out
    }

    /// SIGHUP received: systemd ≥ 253 needs MONOTONIC_USEC alongside RELOADING=1.
    pub fn on_reloading(&mut self, monotonic_usec: i128) -> Vec<Notice> {
        let mut out = vec![Notice::Reloading, Notice::MonotonicUsec(monotonic_usec)];
        self.push_status(&mut out, "reloading configuration".into(), true);
        out
    }

    /// The reload finished (applied or rejected): READY=1 again with the current summary.
    pub fn on_reloaded(&mut self, snap: &HostSnapshot, outcome: &str) -> Vec<Notice> {
        let mut out = vec![Notice::Ready];
        self.ready_sent = true;
        self.push_status(&mut out, format!("{outcome}; {}", snap.summary()), true);
        out
    }

    pub fn on_stopping(&mut self) -> Vec<Notice> {
        let mut out = vec![Notice::Stopping];
        self.push_status(&mut out, "stopping models".into(), true);
        out
    }

    fn push_status(&mut self, out: &mut Vec<Notice>, line: String, always: bool) {
        if always || self.last_status.as_deref() != Some(line.as_str()) {
            self.last_status = Some(line.clone());
            out.push(Notice::Status(line));
        }
    }
}

/// The shell around [`Lifecycle`]: reads the environment once and sends datagrams.
pub struct Notifier {
    core: Lifecycle,
    enabled: bool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`; `ready_wait` bounds the wait
    /// for models before READY=1.
    pub fn from_env(ready_wait: Duration) -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = sd_notify::watchdog_enabled().filter(|w| !w.is_zero());
        if enabled {
            tracing::info!(watchdog = ?watchdog, "sd_notify enabled");
        }
        Notifier {
            core: Lifecycle::new(Instant::now(), ready_wait, watchdog),
            enabled,
        }
    }

    pub fn tick_interval(&self) -> Duration {
        self.core.tick_interval()
    }

    pub fn status(&mut self, line: &str) {
        let n = self.core.status(line);
        self.send(&n);
    }

    pub fn tick(&mut self, snap: &HostSnapshot) {
        let was_ready = self.core.ready_sent();
        let n = self.core.on_tick(snap, Instant::now());
        if !was_ready && self.core.ready_sent() {
            tracing::info!(status = %snap.summary(), "ready");
        }
        self.send(&n);
    }

    pub fn reloading(&mut self) {
        let now = match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(sd_notify::NotifyState::MonotonicUsec(us)) => us,
            _ => 0,
        };
        let n = self.core.on_reloading(now);
        self.send(&n);
    }

    pub fn reloaded(&mut self, snap: &HostSnapshot, outcome: &str) {
        let n = self.core.on_reloaded(snap, outcome);
        self.send(&n);
    }

    pub fn stopping(&mut self) {
        let n = self.core.on_stopping();
        self.send(&n);
    }

    fn send(&self, notices: &[Notice]) {
        if !self.enabled || notices.is_empty() {
            return;
        }
        let states: Vec<sd_notify::NotifyState<'_>> = notices
            .iter()
            .map(|n| match n {
                Notice::Ready => sd_notify::NotifyState::Ready,
                // One line per field: a newline in a status would start a bogus field.
                Notice::Status(s) => sd_notify::NotifyState::Status(s.lines().next().unwrap_or("")),
                Notice::Watchdog => sd_notify::NotifyState::Watchdog,
                Notice::Reloading => sd_notify::NotifyState::Reloading,
                Notice::MonotonicUsec(us) => sd_notify::NotifyState::MonotonicUsec(*us),
                Notice::Stopping => sd_notify::NotifyState::Stopping,
            })
            .collect();
        if let Err(e) = sd_notify::notify(&states) {
            // systemd going away is not a reason to stop serving.
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// The bounded wait before READY=1: the longest model start timeout (after which the
/// supervisor itself gives up on that attempt), capped at [`MAX_READY_WAIT`].
pub fn ready_wait(config: &Config) -> Duration {
    config
        .effective_models()
        .iter()
        .map(|m| m.start_timeout)
        .max()
        .unwrap_or(Duration::ZERO)
        .min(MAX_READY_WAIT)
}

/// A request to stall the main loop (test hook).
#[derive(Debug)]
pub struct Wedge {
    pub duration: Duration,
    started: oneshot::Sender<()>,
}

impl Wedge {
    /// Tells the caller the loop is now stalled; returns how long to stall.
    pub fn begin(self) -> Duration {
        let _ = self.started.send(());
        self.duration
    }
}

/// Registers `debug.wedge {"seconds": N}` when `WARDEN_TEST_HOOKS=1`: the main loop then
/// stalls for N seconds, so a test can watch the watchdog pings stop. The reply comes once
/// the loop is stalled. Returns the requests' receiver for the main loop, or None when hooks
/// are off.
pub fn register_test_hooks(dispatcher: &mut Dispatcher) -> Option<mpsc::Receiver<Wedge>> {
    if std::env::var(TEST_HOOKS_ENV).as_deref() != Ok("1") {
        return None;
    }
    tracing::warn!("{TEST_HOOKS_ENV}=1: test-only control methods are enabled");
    let (tx, rx) = mpsc::channel(4);
    dispatcher.register("debug.wedge", move |p: Params| {
        let tx = tx.clone();
        async move {
            let seconds = p.u64_or("seconds", 5)?;
            let duration = Duration::from_secs(seconds).min(MAX_WEDGE);
            let gone = || MethodError::new("unavailable", "the main loop is gone");
            let (started, wait) = oneshot::channel();
            tx.send(Wedge { duration, started })
                .await
                .map_err(|_| gone())?;
            wait.await.map_err(|_| gone())?;
            Ok(json!({ "wedged_for_secs": duration.as_secs() }))
        }
    });
    Some(rx)
}

/// The next wedge request, or never when hooks are off (for the main loop's `select!`).
pub async fn next_wedge(hooks: &mut Option<mpsc::Receiver<Wedge>>) -> Wedge {
    match hooks {
        Some(rx) => match rx.recv().await {
            Some(d) => d,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(total: usize, not_ready: &[&str]) -> HostSnapshot {
        HostSnapshot {
            models_total: total,
            not_ready: not_ready.iter().map(|s| s.to_string()).collect(),
            gpus: Some(2),
            alerts_firing: Some(0),
            health: Ok(()),
        }
    }

    fn has_ready(n: &[Notice]) -> bool {
        n.contains(&Notice::Ready)
    }

    fn status_of(n: &[Notice]) -> Option<&str> {
        n.iter().find_map(|x| match x {
            Notice::Status(s) => Some(s.as_str()),
            _ => None,
        })
    }

    #[test]
    fn summary_reads_like_the_unit_status() {
        assert_eq!(snap(5, &[]).summary(), "5/5 models ready, 2 GPUs, 0 alerts");
        let mut s = snap(5, &["clash-detector"]);
        s.gpus = Some(1);
        s.alerts_firing = None;
        s.health = Err("control socket task ended".into());
        assert_eq!(
            s.summary(),
            "unhealthy: control socket task ended; 4/5 models ready, 1 GPU (not ready: clash-detector)"
        );
    }

    #[test]
    fn ready_waits_for_models_then_is_sent_once() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0, Duration::from_secs(60), None);
        let n = l.on_tick(&snap(2, &["a"]), t0 + Duration::from_secs(1));
        assert!(!has_ready(&n));
        assert_eq!(
            status_of(&n),
            Some("starting: 1/2 models ready, 2 GPUs, 0 alerts (not ready: a)")
        );
        // Unchanged status is not repeated.
        assert!(
            l.on_tick(&snap(2, &["a"]), t0 + Duration::from_secs(2))
                .is_empty()
        );
        let n = l.on_tick(&snap(2, &[]), t0 + Duration::from_secs(3));
        assert!(has_ready(&n));
        assert_eq!(status_of(&n), Some("2/2 models ready, 2 GPUs, 0 alerts"));
        // Later a model drops: status changes, no second READY.
        let n = l.on_tick(&snap(2, &["b"]), t0 + Duration::from_secs(4));
        assert!(!has_ready(&n));
        assert!(status_of(&n).unwrap().starts_with("1/2 models ready"));
    }

    #[test]
    fn ready_is_sent_after_the_bounded_wait_with_an_explanation() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0, Duration::from_secs(10), None);
        assert!(!has_ready(
            &l.on_tick(&snap(1, &["a"]), t0 + Duration::from_secs(9))
        ));
        let n = l.on_tick(&snap(1, &["a"]), t0 + Duration::from_secs(10));
        assert!(has_ready(&n));
        assert_eq!(
            status_of(&n),
            Some(
                "ready without all models after 10s: 0/1 models ready, 2 GPUs, 0 alerts (not ready: a)"
            )
        );
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_only_while_healthy() {
        let t0 = Instant::now();
        let w = Duration::from_secs(30);
        let mut l = Lifecycle::new(t0, Duration::from_secs(60), Some(w));
        assert_eq!(l.tick_interval(), Duration::from_secs(1));
        let pings = |n: &[Notice]| n.iter().filter(|x| **x == Notice::Watchdog).count();
        // Pings start before READY: the loop is alive while models load.
        assert_eq!(pings(&l.on_tick(&snap(1, &["a"]), t0)), 1);
        assert_eq!(
            pings(&l.on_tick(&snap(1, &[]), t0 + Duration::from_secs(14))),
            0
        );
        assert_eq!(
            pings(&l.on_tick(&snap(1, &[]), t0 + Duration::from_secs(15))),
            1
        );
        let mut sick = snap(1, &[]);
        sick.health = Err("API task ended".into());
        let n = l.on_tick(&sick, t0 + Duration::from_secs(40));
        assert_eq!(pings(&n), 0);
        assert!(
            status_of(&n)
                .unwrap()
                .starts_with("unhealthy: API task ended")
        );
        assert_eq!(
            pings(&l.on_tick(&snap(1, &[]), t0 + Duration::from_secs(41))),
            1
        );
        let fast = Lifecycle::new(t0, Duration::ZERO, Some(Duration::from_millis(400)));
        assert_eq!(fast.tick_interval(), Duration::from_millis(200));
    }

    #[test]
    fn reload_brackets_with_reloading_and_ready() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0, Duration::ZERO, None);
        l.on_tick(&snap(1, &[]), t0);
        let n = l.on_reloading(123);
        assert_eq!(&n[..2], &[Notice::Reloading, Notice::MonotonicUsec(123)]);
        let n = l.on_reloaded(&snap(1, &[]), "configuration reloaded");
        assert!(has_ready(&n));
        assert_eq!(
            status_of(&n),
            Some("configuration reloaded; 1/1 models ready, 2 GPUs, 0 alerts")
        );
        assert_eq!(l.on_stopping()[0], Notice::Stopping);
    }
}
