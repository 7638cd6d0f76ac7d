//! What the console's main loop reacts to, and what it asks the collector to do.

use crate::control::snapshot::Snapshot;
use crate::supervisor::{LogLine, SupervisorEvent};
use ratatui::crossterm::event::KeyEvent;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One input to [`super::app::App::handle`]: keys and resizes from the input thread, data from
/// the collector.
#[derive(Debug, Clone)]
pub enum Event {
    Key(KeyEvent),
    Resize(u16, u16),
    /// The collector (re)connected to the daemon.
    Connected,
    Snapshot(Box<Snapshot>),
    /// A supervisor event streamed by the daemon (applied at once, before the next snapshot).
    Supervisor(SupervisorEvent),
    Alerts(AlertsFeed),
    Logs {
        model: String,
        lines: Vec<LogLine>,
    },
    /// An action the operator asked for finished (`Err` carries the daemon's message).
    ActionDone {
        what: String,
        result: Result<(), String>,
    },
    /// The daemon went away; the collector retries after `retry_in_ms`.
    Disconnected {
        reason: String,
        attempt: u32,
        retry_in_ms: u64,
    },
}

/// The alerts side of the daemon, which may not exist in this build of the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertsFeed {
    Unavailable(String),
    Loaded(AlertsReply),
}

/// A request from the app to the collector (who owns the control connection).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Restart(String),
    Stop(String),
    Start(String),
    Ack {
        /// Sent as `alert_id`.
        id: Value,
        by: String,
    },
    Silence {
        matchers: BTreeMap<String, Value>,
        duration_secs: u64,
        creator: String,
        comment: String,
    },
    Unsilence {
        /// Sent as `silence_id`.
        id: Value,
    },
    /// Tail this model's logs on every refresh (None: stop tailing).
    WatchLogs(Option<String>),
}

/// The `alerts` control method's answer. Lenient: unknown fields are ignored and missing ones
/// default, so a newer or older alerts module still renders.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct AlertsReply {
    pub alerts: Vec<Alert>,
    pub silences: Vec<Silence>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Alert {
    /// Kept as sent (string or number) and echoed back in `ack`.
    pub id: Value,
    pub rule: String,
    pub severity: String,
    pub state: String,
    pub labels: BTreeMap<String, Value>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub since_ms: u64,
    pub summary: String,
    pub silenced: bool,
    pub acked_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Silence {
    pub id: Value,
    pub matchers: BTreeMap<String, Value>,
    pub expires_ms: u64,
    pub creator: String,
    pub comment: String,
}

/// A JSON scalar as plain text (strings without quotes).
pub fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Alert {
    /// The matchers a silence of this alert uses: its labels plus its rule, all strings.
    pub fn matchers(&self) -> BTreeMap<String, Value> {
        let mut m: BTreeMap<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(plain(v))))
            .collect();
        m.insert("rule".into(), Value::String(self.rule.clone()));
        m
    }

    /// True when every matcher of `silence` agrees with this alert (`rule`/`alertname` and
    /// `severity` match those fields, other keys its labels), as the alerts module decides.
    pub fn covered_by(&self, silence: &Silence) -> bool {
        silence.matchers.iter().all(|(k, v)| {
            let want = plain(v);
            match k.as_str() {
                "rule" | "alertname" => self.rule == want,
                "severity" => self.severity == want,
                _ => self.labels.get(k).is_some_and(|l| plain(l) == want),
            }
        })
    }
}
