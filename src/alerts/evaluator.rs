//! The pure alert state machine: observations in, transitions and notifications out.
//!
//! inactive → pending (condition holds) → firing (held for `for`) → resolved (back below the
//! threshold, or below `clear_threshold` when one is set). One instance per rule and dimension
//! set. Time is passed in (ms since the epoch); nothing here reads a clock or does I/O.

use super::rules::{Condition, Reducer, Rule, Severity};
use crate::telemetry::store::LatencyWindow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Dimension values plus the rule's static labels.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// JSON has no NaN/Inf (serde_json writes `null`, then cannot read it back as f64): such values
/// are written as the strings `"NaN"`, `"inf"`, `"-inf"`, and `null` (older files) reads as NaN.
pub mod float_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(f64::NAN),
            Some(Repr::Number(v)) => Ok(v),
            Some(Repr::Text(t)) => match t.to_ascii_lowercase().as_str() {
                "nan" => Ok(f64::NAN),
                "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
                "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                _ => t.parse().map_err(serde::de::Error::custom),
            },
        }
    }
}

/// One alert: a rule applied to one dimension set. Persisted as-is (state.rs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertInstance {
    pub id: String,
    pub rule: String,
    pub severity: Severity,
    pub labels: Labels,
    pub state: AlertState,
    #[serde(with = "float_text")]
    pub value: f64,
    #[serde(with = "float_text")]
    pub threshold: f64,
    pub pending_since_ms: u64,
    /// Start of the firing episode: part of the dedupe key.
    pub firing_since_ms: Option<u64>,
    pub resolved_at_ms: Option<u64>,
    /// Last firing or repeat notification sent for this episode.
    pub last_notified_ms: Option<u64>,
    pub summary: String,
    pub acked_by: Option<String>,
}

impl AlertInstance {
    /// When the current state began.
    pub fn since_ms(&self) -> u64 {
        match self.state {
            AlertState::Pending => self.pending_since_ms,
            AlertState::Firing => self.firing_since_ms.unwrap_or(self.pending_since_ms),
            AlertState::Resolved => self.resolved_at_ms.unwrap_or(self.pending_since_ms),
        }
    }

    /// Rule + dimensions + episode start: the same for every message about one episode,
    /// retries and restarts included.
    pub fn dedupe_key(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{}/{}/{}",
            self.rule,
            labels.join(","),
            self.firing_since_ms.unwrap_or(self.pending_since_ms)
        )
    }
}

/// A silence: matching alerts send no firing/repeat messages (resolved still goes out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// Exact matches on labels; `alertname` matches the rule, `severity` the severity.
    pub matchers: Labels,
    pub expires_ms: u64,
    pub creator: String,
    pub comment: String,
}

impl Silence {
    pub fn active(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    pub fn matches(&self, alert: &AlertInstance) -> bool {
        self.matchers.iter().all(|(k, v)| match k.as_str() {
            "alertname" | "rule" => alert.rule == *v,
            "severity" => alert.severity.as_str() == v,
            _ => alert.labels.get(k) == Some(v),
        })
    }
}

pub fn silenced(alert: &AlertInstance, silences: &[Silence], now_ms: u64) -> bool {
    silences
        .iter()
        .any(|s| s.active(now_ms) && s.matches(alert))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    Firing,
    Repeat,
    Resolved,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Firing => "firing",
            NotificationKind::Repeat => "repeat",
            NotificationKind::Resolved => "resolved",
        }
    }
}

/// One message to deliver; serialised into the spool, so plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub kind: NotificationKind,
    pub dedupe_key: String,
    pub alert_id: String,
    pub rule: String,
    pub severity: Severity,
    pub labels: Labels,
    #[serde(with = "float_text")]
    pub value: f64,
    /// The rule's comparator (`>`, `<`, ...); empty for event rules.
    pub op: String,
    #[serde(with = "float_text")]
    pub threshold: f64,
    /// When the episode started firing.
    pub since_ms: u64,
    pub at_ms: u64,
    pub summary: String,
    pub description: String,
}

/// What an evaluation sees for one dimension set.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// A metric rule's reduced value.
    Value(f64),
    /// An event rule's condition (e.g. the model is down).
    Active(bool),
    /// An SLO tier's verdict: the burn rate it quotes and the message, rendered by the SLO
    /// engine (it names the SLO, the burn rate and the budget left).
    Burn {
        breach: bool,
        rate: f64,
        summary: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub labels: Labels,
    pub signal: Signal,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub repeat_interval: Duration,
    /// Resolved alerts stay visible (console, control API) this long.
    pub resolved_retention: Duration,
}

/// Every alert instance, keyed by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluator {
    pub instances: BTreeMap<String, AlertInstance>,
}

/// Stable across builds and restarts (unlike `DefaultHasher`): FNV-1a 64.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

pub fn instance_id(rule: &str, labels: &Labels) -> String {
    let mut parts = vec![rule];
    for (k, v) in labels {
        parts.push(k);
        parts.push(v);
    }
    format!("{:016x}", fnv1a(&parts))
}

/// Formats a value for humans: integers bare, else up to two decimals.
pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Fills `{{Label}}`, `{{value}}`, `{{threshold}}`, `{{rule}}`, `{{state}}` in a template.
pub fn render_template(template: &str, alert: &AlertInstance) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end].trim();
        let value = match key {
            "value" => format_value(alert.value),
            "threshold" => format_value(alert.threshold),
            "rule" | "alertname" => alert.rule.clone(),
            "state" => alert.state.as_str().to_string(),
            "severity" => alert.severity.as_str().to_string(),
            k => alert.labels.get(k).cloned().unwrap_or_else(|| "?".into()),
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

impl Evaluator {
    /// Applies one evaluation of `rule` to its observations; returns what to send.
    /// Instances of the rule with no observation keep their state (missing data is not a
    /// recovery: a firing alert whose series vanished stays firing).
    pub fn evaluate(
        &mut self,
        rule: &Rule,
        observations: &[Observation],
        now_ms: u64,
        silences: &[Silence],
        settings: &Settings,
    ) -> Vec<Notification> {
        let mut out = Vec::new();
        for obs in observations {
            let mut labels = obs.labels.clone();
            for (k, v) in &rule.labels {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let id = instance_id(&rule.name, &labels);
            let (breach, hold, value) = match (&obs.signal, &rule.condition) {
                (Signal::Value(v), Condition::Metric(m)) => (
                    m.op.holds(*v, m.threshold),
                    m.op.holds(*v, m.clear_threshold.unwrap_or(m.threshold)),
                    *v,
                ),
                (Signal::Active(a), _) => (*a, *a, if *a { 1.0 } else { 0.0 }),
                (Signal::Burn { breach, rate, .. }, _) => (*breach, *breach, *rate),
                (Signal::Value(v), _) => (*v != 0.0, *v != 0.0, *v),
            };
            let existing = self
                .instances
                .get(&id)
                .filter(|i| i.state != AlertState::Resolved);
            if existing.is_none() {
                if !breach {
                    continue;
                }
                self.instances.insert(
                    id.clone(),
                    AlertInstance {
                        id: id.clone(),
                        rule: rule.name.clone(),
                        severity: rule.severity,
                        labels,
                        state: AlertState::Pending,
                        value,
                        threshold: rule.threshold(),
                        pending_since_ms: now_ms,
                        firing_since_ms: None,
                        resolved_at_ms: None,
                        last_notified_ms: None,
                        summary: String::new(),
                        acked_by: None,
                    },
                );
            }
            let Some(inst) = self.instances.get_mut(&id) else {
                continue;
            };
            inst.value = value;
            inst.severity = rule.severity;
            inst.threshold = rule.threshold();
            let for_ms = rule.for_.as_millis() as u64;
            match inst.state {
                AlertState::Pending if !breach => {
                    self.instances.remove(&id);
                    continue;
                }
                AlertState::Pending if now_ms.saturating_sub(inst.pending_since_ms) >= for_ms => {
                    inst.state = AlertState::Firing;
                    inst.firing_since_ms = Some(now_ms);
                }
                AlertState::Firing if !hold => {
                    inst.state = AlertState::Resolved;
                    inst.resolved_at_ms = Some(now_ms);
                }
                _ => {}
            }
            inst.summary = match &obs.signal {
                Signal::Burn { summary, .. } => summary.clone(),
                _ => render_template(&rule.summary, inst),
            };
            let quiet = silenced(inst, silences, now_ms);
            let kind = match inst.state {
                AlertState::Resolved => Some(NotificationKind::Resolved),
                AlertState::Firing if quiet => None,
                AlertState::Firing => match inst.last_notified_ms {
                    None => Some(NotificationKind::Firing),
                    Some(last)
                        if now_ms.saturating_sub(last)
                            >= settings.repeat_interval.as_millis() as u64 =>
                    {
                        Some(NotificationKind::Repeat)
                    }
                    Some(_) => None,
                },
                AlertState::Pending => None,
            };
            if let Some(kind) = kind {
                if kind != NotificationKind::Resolved {
                    inst.last_notified_ms = Some(now_ms);
                }
                out.push(Notification {
                    kind,
                    dedupe_key: inst.dedupe_key(),
                    alert_id: inst.id.clone(),
                    rule: inst.rule.clone(),
                    severity: inst.severity,
                    labels: inst.labels.clone(),
                    value: inst.value,
                    op: match &rule.condition {
                        Condition::Metric(m) => m.op.as_str().to_string(),
                        Condition::Slo(_) => ">=".to_string(),
                        Condition::Event { .. } => String::new(),
                    },
                    threshold: inst.threshold,
                    since_ms: inst.firing_since_ms.unwrap_or(inst.pending_since_ms),
                    at_ms: now_ms,
                    summary: inst.summary.clone(),
                    description: render_template(&rule.description, inst),
                });
            }
        }
        out
    }

    /// Drops resolved alerts older than the retention and instances of rules that are gone.
    pub fn housekeeping(&mut self, rules: &[Rule], now_ms: u64, settings: &Settings) {
        let keep_ms = settings.resolved_retention.as_millis() as u64;
        self.instances.retain(|_, i| {
            rules.iter().any(|r| r.name == i.rule)
                && !(i.state == AlertState::Resolved
                    && now_ms.saturating_sub(i.resolved_at_ms.unwrap_or(0)) > keep_ms)
        });
    }

    pub fn ack(&mut self, id: &str, by: &str) -> bool {
        match self.instances.get_mut(id) {
            Some(i) => {
                i.acked_by = Some(by.to_string());
                true
            }
            None => false,
        }
    }
}

/// A point in time and a value (metric history, or a latency sample).
pub type Sample = (u64, f64);

fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    // Nearest rank, as CloudWatch and hdrhistogram report percentiles.
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// Reduces the samples inside `[now - window, now]` to one value; `None` without data.
/// Samples are the store's one-per-bucket history, so each reducer weighs time, not requests.
/// `rate` is the per-second increase of a counter (resets count from zero), counted from the
/// last sample at or before the window's start (the baseline), like [`error_rate`].
pub fn reduce(reducer: Reducer, samples: &[Sample], now_ms: u64, window: Duration) -> Option<f64> {
    let from = now_ms.saturating_sub(window.as_millis() as u64);
    let mut inside: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= from && *t <= now_ms)
        .collect();
    inside.sort_by_key(|(t, _)| *t);
    let values = || inside.iter().map(|(_, v)| *v);
    match reducer {
        Reducer::Last => inside.last().map(|(_, v)| *v),
        Reducer::Avg => (!inside.is_empty()).then(|| values().sum::<f64>() / inside.len() as f64),
        Reducer::Max => values().reduce(f64::max),
        Reducer::Min => values().reduce(f64::min),
        Reducer::P95 => quantile(&mut values().collect::<Vec<_>>(), 0.95),
        Reducer::P99 => quantile(&mut values().collect::<Vec<_>>(), 0.99),
        Reducer::Rate => {
            let span = with_baseline(samples, from, now_ms);
            let (first, last) = (span.first()?, span.last()?);
            let secs = (last.0 - first.0) as f64 / 1000.0;
            if secs <= 0.0 {
                return Some(0.0);
            }
            Some(increase(&span) / secs)
        }
    }
}

/// A window's latency reduced to one value: percentiles, mean, min, max and last from the
/// store's merged histogram buckets; `rate` is requests per second.
pub fn reduce_latency(reducer: Reducer, w: &LatencyWindow) -> Option<f64> {
    match reducer {
        Reducer::Last => w.last(),
        Reducer::Avg => w.mean(),
        Reducer::Max => w.max(),
        Reducer::Min => w.min(),
        Reducer::P95 => w.quantile(0.95),
        Reducer::P99 => w.quantile(0.99),
        Reducer::Rate => w.rate(),
    }
}

/// The samples of `(from, now]`, preceded by the last one at or before `from` (the baseline an
/// increase counts from), oldest first.
fn with_baseline(s: &[Sample], from: u64, now_ms: u64) -> Vec<Sample> {
    let before = s.iter().filter(|(t, _)| *t <= from).max_by_key(|(t, _)| *t);
    let mut out: Vec<Sample> = before
        .into_iter()
        .chain(s.iter().filter(|(t, _)| *t > from && *t <= now_ms))
        .copied()
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out
}

/// Sum of a counter's increases (a drop means the source restarted from zero).
fn increase(samples: &[Sample]) -> f64 {
    samples
        .windows(2)
        .map(|w| {
            let d = w[1].1 - w[0].1;
            if d >= 0.0 { d } else { w[1].1 }
        })
        .sum()
}

/// `ModelErrorRate`: 100 × errors / requests over the window (0 without traffic).
pub fn error_rate(
    errors: &[Sample],
    requests: &[Sample],
    now_ms: u64,
    window: Duration,
) -> Option<f64> {
    let from = now_ms.saturating_sub(window.as_millis() as u64);
    // Both series share the store's bucket grid, so the same `from` picks the same baseline
    // bucket for numerator and denominator: one span.
    let span = |s: &[Sample]| with_baseline(s, from, now_ms);
    let (e, r) = (span(errors), span(requests));
    if r.is_empty() {
        return None;
    }
    let requests = increase(&r);
    if requests <= 0.0 {
        return Some(0.0);
    }
    Some(100.0 * increase(&e) / requests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::{MetricCondition, Op};

    fn rule(for_s: u64, clear: Option<f64>) -> Rule {
        Rule {
            name: "gpu-hot".into(),
            condition: Condition::Metric(MetricCondition {
                metric: "GPUUtilization".into(),
                filter: Labels::new(),
                reducer: Reducer::Last,
                window: Duration::from_secs(60),
                op: Op::Gt,
                threshold: 90.0,
                clear_threshold: clear,
            }),
            for_: Duration::from_secs(for_s),
            severity: Severity::Warning,
            labels: Labels::new(),
            summary: "GPU {{GPU}} at {{value}} % > {{threshold}} %".into(),
            description: String::new(),
        }
    }

    fn obs(gpu: &str, v: f64) -> Observation {
        Observation {
            labels: [("GPU".to_string(), gpu.to_string())].into(),
            signal: Signal::Value(v),
        }
    }

    const S: Settings = Settings {
        repeat_interval: Duration::from_secs(3600),
        resolved_retention: Duration::from_secs(600),
    };

    fn kinds(n: &[Notification]) -> Vec<&'static str> {
        n.iter().map(|n| n.kind.as_str()).collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let r = rule(5, None);
        let mut e = Evaluator::default();
        let t = 1_000_000;
        assert!(e.evaluate(&r, &[obs("0", 95.0)], t, &[], &S).is_empty());
        let inst = e.instances.values().next().unwrap();
        assert_eq!(inst.state, AlertState::Pending);
        assert!(
            e.evaluate(&r, &[obs("0", 95.0)], t + 4_000, &[], &S)
                .is_empty()
        );
        let n = e.evaluate(&r, &[obs("0", 96.0)], t + 5_000, &[], &S);
        assert_eq!(kinds(&n), vec!["firing"]);
        assert_eq!(n[0].summary, "GPU 0 at 96 % > 90 %");
        assert_eq!(n[0].dedupe_key, format!("gpu-hot/GPU=0/{}", t + 5_000));
        assert!(
            e.evaluate(&r, &[obs("0", 97.0)], t + 6_000, &[], &S)
                .is_empty()
        );
        let n = e.evaluate(&r, &[obs("0", 50.0)], t + 7_000, &[], &S);
        assert_eq!(kinds(&n), vec!["resolved"]);
        assert_eq!(n[0].dedupe_key, format!("gpu-hot/GPU=0/{}", t + 5_000));
        // A dip during pending resets the clock.
        let mut e = Evaluator::default();
        e.evaluate(&r, &[obs("0", 95.0)], t, &[], &S);
        e.evaluate(&r, &[obs("0", 10.0)], t + 3_000, &[], &S);
        assert!(e.instances.is_empty());
        assert!(
            e.evaluate(&r, &[obs("0", 95.0)], t + 6_000, &[], &S)
                .is_empty()
        );
    }

    #[test]
    fn one_instance_per_dimension_set() {
        let r = rule(0, None);
        let mut e = Evaluator::default();
        let n = e.evaluate(
            &r,
            &[obs("0", 95.0), obs("1", 99.0), obs("2", 10.0)],
            1,
            &[],
            &S,
        );
        assert_eq!(kinds(&n), vec!["firing", "firing"]);
        assert_ne!(n[0].dedupe_key, n[1].dedupe_key);
        assert_eq!(e.instances.len(), 2);
    }

    #[test]
    fn repeat_only_after_the_repeat_interval() {
        let r = rule(0, None);
        let mut e = Evaluator::default();
        let s = Settings {
            repeat_interval: Duration::from_secs(10),
            ..S
        };
        let mut sent = Vec::new();
        for sec in 0..25u64 {
            sent.extend(e.evaluate(&r, &[obs("0", 95.0)], sec * 1000, &[], &s));
        }
        assert_eq!(kinds(&sent), vec!["firing", "repeat", "repeat"]);
        assert_eq!(sent[1].at_ms, 10_000);
        assert!(sent.iter().all(|n| n.dedupe_key == sent[0].dedupe_key));
    }

    #[test]
    fn flapping_without_hysteresis_pages_every_crossing_with_it_once() {
        let values = [95.0, 89.0, 91.0, 88.0, 92.0, 89.5, 93.0, 80.0];
        let run = |clear| {
            let r = rule(0, clear);
            let mut e = Evaluator::default();
            let mut sent = Vec::new();
            for (i, v) in values.iter().enumerate() {
                sent.extend(e.evaluate(&r, &[obs("0", *v)], i as u64 * 1000, &[], &S));
            }
            kinds(&sent)
        };
        assert_eq!(
            run(None),
            vec![
                "firing", "resolved", "firing", "resolved", "firing", "resolved", "firing",
                "resolved"
            ]
        );
        assert_eq!(run(Some(85.0)), vec!["firing", "resolved"]);
    }

    #[test]
    fn silenced_alerts_do_not_fire_but_resolve() {
        let r = rule(0, None);
        let mut e = Evaluator::default();
        let silence = Silence {
            id: "s1".into(),
            matchers: [("alertname".to_string(), "gpu-hot".to_string())].into(),
            expires_ms: 5_000,
            creator: "ops".into(),
            comment: "maintenance".into(),
        };
        let sil = std::slice::from_ref(&silence);
        assert!(e.evaluate(&r, &[obs("0", 95.0)], 1_000, sil, &S).is_empty());
        assert_eq!(
            e.instances.values().next().unwrap().state,
            AlertState::Firing
        );
        let n = e.evaluate(&r, &[obs("0", 50.0)], 2_000, sil, &S);
        assert_eq!(kinds(&n), vec!["resolved"]);
        // A silence that expires while still firing lets the firing message out.
        let mut e = Evaluator::default();
        e.evaluate(&r, &[obs("0", 95.0)], 1_000, sil, &S);
        let n = e.evaluate(&r, &[obs("0", 95.0)], 6_000, sil, &S);
        assert_eq!(kinds(&n), vec!["firing"]);
    }

    #[test]
    fn event_rules_follow_the_condition() {
        let r = Rule {
            name: "model-down".into(),
            condition: Condition::Event {
                source: crate::alerts::rules::EventSource::ModelDown,
                resolve_after: Duration::from_secs(60),
            },
            for_: Duration::from_secs(30),
            severity: Severity::Critical,
            labels: [("team".to_string(), "ml".to_string())].into(),
            summary: "Model {{Model}} is down".into(),
            description: String::new(),
        };
        let o = |a| Observation {
            labels: [("Model".to_string(), "m".to_string())].into(),
            signal: Signal::Active(a),
        };
        let mut e = Evaluator::default();
        assert!(e.evaluate(&r, &[o(true)], 0, &[], &S).is_empty());
        let n = e.evaluate(&r, &[o(true)], 30_000, &[], &S);
        assert_eq!(kinds(&n), vec!["firing"]);
        assert_eq!(n[0].summary, "Model m is down");
        assert_eq!(n[0].labels.get("team").map(String::as_str), Some("ml"));
        assert_eq!(
            kinds(&e.evaluate(&r, &[o(false)], 31_000, &[], &S)),
            vec!["resolved"]
        );
        e.housekeeping(std::slice::from_ref(&r), 31_000 + 601_000, &S);
        assert!(e.instances.is_empty());
    }

    #[test]
    fn reducers_over_a_window() {
        let s: Vec<Sample> = (0..10).map(|i| (i * 1000, i as f64)).collect();
        let w = Duration::from_secs(4);
        assert_eq!(reduce(Reducer::Last, &s, 9000, w), Some(9.0));
        assert_eq!(reduce(Reducer::Avg, &s, 9000, w), Some(7.0));
        assert_eq!(reduce(Reducer::Max, &s, 9000, w), Some(9.0));
        assert_eq!(reduce(Reducer::Min, &s, 9000, w), Some(5.0));
        assert_eq!(reduce(Reducer::Rate, &s, 9000, w), Some(1.0));
        assert_eq!(reduce(Reducer::Avg, &s, 100_000, w), None);
        let lat: Vec<Sample> = (1..=100).map(|i| (1000, i as f64)).collect();
        assert_eq!(reduce(Reducer::P95, &lat, 1000, w), Some(95.0));
        assert_eq!(reduce(Reducer::P99, &lat, 1000, w), Some(99.0));
        let errors = vec![(0, 0.0), (5000, 2.0), (9000, 3.0)];
        let requests = vec![(0, 100.0), (5000, 150.0), (9000, 200.0)];
        assert_eq!(error_rate(&errors, &requests, 9000, w), Some(2.0));
        assert_eq!(
            error_rate(&errors, &requests, 9000, Duration::from_secs(60)),
            Some(3.0)
        );
    }

    #[test]
    fn error_rate_counts_sparse_errors_and_requests_over_one_span() {
        // The store's shape: requests have a point every second (100/s), errors only in the
        // seconds that had one (plus the baseline). A window starting mid-second takes both
        // baselines from the same bucket.
        let requests: Vec<Sample> = (0..=120).map(|s| (s * 1000, s as f64 * 100.0)).collect();
        let errors: Vec<Sample> = vec![(0, 0.0), (10_000, 5.0), (70_000, 6.0), (100_000, 9.0)];
        // Window (59.5 s, 120 s]: requests count from bucket 59 (5,900), errors from their
        // last point before it (5): 6,100 requests, 4 errors.
        let r = error_rate(&errors, &requests, 120_000, Duration::from_millis(60_500)).unwrap();
        assert!((r - 100.0 * 4.0 / 6_100.0).abs() < 1e-9, "{r}");
        // No traffic in the window at all: 0 %, not "no data" and not the old ratio.
        let idle = [(0, 0.0), (1_000, 100.0)];
        let none = [(0, 0.0), (1_000, 50.0)];
        assert_eq!(
            error_rate(&none, &idle, 300_000, Duration::from_secs(60)),
            Some(0.0)
        );
    }
}
