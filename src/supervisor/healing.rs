//! Self-healing: rolling restarts of a model whose GPU memory passed `healing.gpu_memory_max_bytes`
//! or whose latency p95 stayed above `healing.latency_p95_max` for `healing.latency_for`.
//!
//! Invariants: one model at a time (a restart in progress blocks every other); only while every
//! other model is ready (restarting while another is down could leave a route with no server);
//! a cool-down after each action, for every model (the restarted one's fresh readings need time
//! to replace the old ones). [`Healer`] decides, pure and clock-free; [`run`] reads the store and
//! the supervisor each sample interval and acts: restart, an `AUTO` audit record, an
//! `AutoRestart` supervisor event (the console's events and the alerts' info notification).

use super::{EventKind, ModelState, ModelStatus, SupervisorEvent, SupervisorHandle};
use crate::api::audit::{AuditRecord, AuditSink};
use crate::config::HealingConfig;
use crate::telemetry::{Dim, MetricStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// One model as the healer sees it in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReading {
    pub name: String,
    pub ready: bool,
    /// Bytes of GPU memory held by the model's process (NVML per-process accounting).
    pub gpu_memory: Option<f64>,
    /// Latency p95 over `latency_window`, ms.
    pub p95_ms: Option<f64>,
}

/// Which bound a model passed.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    GpuMemory {
        bytes: f64,
        max: u64,
    },
    LatencyP95 {
        ms: f64,
        max_ms: f64,
        for_: Duration,
    },
}

impl Trigger {
    pub fn describe(&self) -> String {
        match self {
            Trigger::GpuMemory { bytes, max } => format!(
                "GPU memory {} MiB > bound {} MiB",
                (*bytes / 1048576.0).round(),
                max / 1048576
            ),
            Trigger::LatencyP95 { ms, max_ms, for_ } => format!(
                "latency p95 {ms:.0} ms > bound {max_ms:.0} ms for {}",
                humantime::format_duration(*for_)
            ),
        }
    }
}

/// A restart the healer wants now.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub model: String,
    pub trigger: Trigger,
}

/// Why a model that passed a bound is not restarted this round (logged once per episode).
#[derive(Debug, Clone, PartialEq)]
pub enum Deferred {
    CoolingDown,
    OthersNotReady(Vec<String>),
}

/// The decision state: when each model first breached the latency bound, when the last
/// action was taken.
#[derive(Debug, Clone)]
pub struct Healer {
    cfg: HealingConfig,
    slow_since: BTreeMap<String, u64>,
    last_action_ms: Option<u64>,
}

impl Healer {
    pub fn new(cfg: HealingConfig) -> Self {
        Healer {
            cfg,
            slow_since: BTreeMap::new(),
            last_action_ms: None,
        }
    }

    /// One round at `now_ms`: at most one action; `Err` names why a due action waits.
    pub fn decide(
        &mut self,
        models: &[ModelReading],
        now_ms: u64,
    ) -> Result<Option<Action>, (String, Deferred)> {
        let mut due: Option<Action> = None;
        for m in models {
            let slow = match (self.cfg.latency_p95_max, m.p95_ms) {
                (Some(max), Some(p95)) if m.ready && p95 > max.as_secs_f64() * 1000.0 => {
                    Some((p95, max))
                }
                _ => None,
            };
            match slow {
                Some(_) => {
                    self.slow_since.entry(m.name.clone()).or_insert(now_ms);
                }
                None => {
                    self.slow_since.remove(&m.name);
                }
            }
            if due.is_some() || !m.ready {
                continue;
            }
            if let (Some(max), Some(bytes)) = (self.cfg.gpu_memory_max_bytes, m.gpu_memory)
                && bytes > max as f64
            {
                due = Some(Action {
                    model: m.name.clone(),
                    trigger: Trigger::GpuMemory { bytes, max },
                });
                continue;
            }
            if let (Some((p95, max)), Some(since)) = (slow, self.slow_since.get(&m.name))
                && now_ms.saturating_sub(*since) >= self.cfg.latency_for.as_millis() as u64
            {
                due = Some(Action {
                    model: m.name.clone(),
                    trigger: Trigger::LatencyP95 {
                        ms: p95,
                        max_ms: max.as_secs_f64() * 1000.0,
                        for_: self.cfg.latency_for,
                    },
                });
            }
        }
        let Some(action) = due else {
            return Ok(None);
        };
        if let Some(last) = self.last_action_ms
            && now_ms.saturating_sub(last) < self.cfg.cooldown.as_millis() as u64
        {
            return Err((action.model, Deferred::CoolingDown));
        }
        let not_ready: Vec<String> = models
            .iter()
            .filter(|m| m.name != action.model && !m.ready)
            .map(|m| m.name.clone())
            .collect();
        if !not_ready.is_empty() {
            return Err((action.model, Deferred::OthersNotReady(not_ready)));
        }
        self.last_action_ms = Some(now_ms);
        self.slow_since.remove(&action.model);
        Ok(Some(action))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This round's readings from the supervisor's status and the store.
fn readings(
    status: &[ModelStatus],
    store: &MetricStore,
    window: Duration,
    interval: Duration,
) -> Vec<ModelReading> {
    use crate::alerts::evaluator::reduce_latency;
    use crate::alerts::rules::Reducer;
    let now = SystemTime::now();
    status
        .iter()
        .map(|s| {
            let dims = [(Dim::Model, s.name.as_str())];
            let key = store.key("ModelLatency", &dims);
            ModelReading {
                name: s.name.clone(),
                ready: s.state == ModelState::Ready,
                // Only a process that has been sampled twice: the store's latest value may
                // still be its predecessor's for a round after a restart.
                gpu_memory: (s.pid.is_some() && s.uptime_secs >= 2.0 * interval.as_secs_f64())
                    .then(|| store.latest("ModelGPUMemoryUsed", &dims))
                    .flatten(),
                p95_ms: store
                    .latency_window(&key, now, window)
                    .and_then(|w| reduce_latency(Reducer::P95, &w)),
            }
        })
        .collect()
}

/// The audit line for an automatic action (`method` `AUTO`, `route` `self-healing/restart`).
fn audit_record(action: &Action, status: u16, detail: String) -> AuditRecord {
    let id = uuid::Uuid::new_v4().to_string();
    AuditRecord {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: id.clone(),
        interaction_id: id,
        session_id: None,
        subject: Some("warden".into()),
        role: Some("system".into()),
        method: "AUTO".into(),
        route: "self-healing/restart".into(),
        model: Some(action.model.clone()),
        status,
        outcome: if status == 200 {
            "auto_restart"
        } else {
            "auto_restart_failed"
        },
        latency_ms: 0.0,
        bytes_in: 0,
        bytes_out: 0,
        client: "agent".into(),
        user_agent: None,
        detail: Some(detail),
    }
}

/// Checks every `interval` until `cancel`, restarting at most one model per cool-down.
pub async fn run(
    cfg: HealingConfig,
    interval: Duration,
    supervisor: SupervisorHandle,
    store: Arc<MetricStore>,
    audit: AuditSink,
    cancel: CancellationToken,
) {
    let window = cfg.latency_window;
    let mut healer = Healer::new(cfg);
    let mut deferred: Option<(String, Deferred)> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = supervisor.status();
        let models = readings(&status, &store, window, interval);
        let action = match healer.decide(&models, now_ms()) {
            Ok(Some(a)) => a,
            Ok(None) => {
                deferred = None;
                continue;
            }
            Err(why) => {
                if deferred.as_ref() != Some(&why) {
                    tracing::warn!(model = %why.0, reason = ?why.1,
                        "self-healing restart due but deferred");
                    deferred = Some(why);
                }
                continue;
            }
        };
        deferred = None;
        let reason = action.trigger.describe();
        tracing::warn!(model = %action.model, %reason, "self-healing: rolling restart");
        let _ = supervisor.event_sender().send(SupervisorEvent {
            at_ms: now_ms(),
            model: action.model.clone(),
            kind: EventKind::AutoRestart {
                reason: reason.clone(),
            },
        });
        let (status, detail) = match supervisor.restart(&action.model).await {
            Ok(()) => (200, format!("restarted: {reason}")),
            Err(e) => {
                tracing::error!(model = %action.model, error = %e, "self-healing restart failed");
                (500, format!("restart failed ({e}): {reason}"))
            }
        };
        audit.record(audit_record(&action, status, detail)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealingConfig {
        HealingConfig {
            gpu_memory_max_bytes: Some(1000),
            latency_p95_max: Some(Duration::from_millis(500)),
            latency_window: Duration::from_secs(60),
            latency_for: Duration::from_secs(10),
            cooldown: Duration::from_secs(60),
        }
    }

    fn m(name: &str, ready: bool, mem: f64, p95: f64) -> ModelReading {
        ModelReading {
            name: name.into(),
            ready,
            gpu_memory: Some(mem),
            p95_ms: Some(p95),
        }
    }

    #[test]
    fn memory_bound_restarts_one_model_then_cools_down() {
        let mut h = Healer::new(cfg());
        let models = [m("a", true, 2000.0, 10.0), m("b", true, 3000.0, 10.0)];
        let first = h.decide(&models, 0).unwrap().unwrap();
        assert_eq!(first.model, "a");
        assert!(matches!(
            first.trigger,
            Trigger::GpuMemory { max: 1000, .. }
        ));
        // One at a time: b waits out the cool-down even though it is over the bound too.
        assert_eq!(
            h.decide(&models, 30_000),
            Err(("a".into(), Deferred::CoolingDown))
        );
        let models = [m("a", true, 10.0, 10.0), m("b", true, 3000.0, 10.0)];
        assert_eq!(h.decide(&models, 60_000).unwrap().unwrap().model, "b");
    }

    #[test]
    fn waits_while_another_model_is_not_ready() {
        let mut h = Healer::new(cfg());
        let models = [m("a", true, 2000.0, 10.0), m("b", false, 0.0, 10.0)];
        assert_eq!(
            h.decide(&models, 0),
            Err(("a".into(), Deferred::OthersNotReady(vec!["b".into()])))
        );
        let models = [m("a", true, 2000.0, 10.0), m("b", true, 0.0, 10.0)];
        assert!(h.decide(&models, 1000).unwrap().is_some());
        // A model that is not ready itself is never the one restarted (the supervisor has it).
        let mut h = Healer::new(cfg());
        assert_eq!(h.decide(&[m("a", false, 5000.0, 10.0)], 0), Ok(None));
    }

    #[test]
    fn latency_must_stay_past_the_bound_for_the_whole_period() {
        let mut h = Healer::new(cfg());
        let slow = [m("a", true, 0.0, 900.0)];
        let fast = [m("a", true, 0.0, 100.0)];
        assert_eq!(h.decide(&slow, 0), Ok(None));
        assert_eq!(h.decide(&slow, 9_000), Ok(None));
        // A fast round resets the clock.
        assert_eq!(h.decide(&fast, 9_500), Ok(None));
        assert_eq!(h.decide(&slow, 10_000), Ok(None));
        assert_eq!(h.decide(&slow, 19_000), Ok(None));
        let a = h.decide(&slow, 20_000).unwrap().unwrap();
        assert!(matches!(a.trigger, Trigger::LatencyP95 { .. }));
        assert!(a.trigger.describe().contains("p95 900 ms > bound 500 ms"));
    }

    #[test]
    fn no_bounds_no_actions() {
        let mut h = Healer::new(HealingConfig::default());
        assert_eq!(h.decide(&[m("a", true, 1e12, 1e6)], 0), Ok(None));
    }
}
