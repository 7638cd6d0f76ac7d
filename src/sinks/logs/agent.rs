//! The agent's own tracing events, as JSON lines, for `logs.agent_group` (optional shipping).
//!
//! A tracing layer installed at start-up; it forwards only once the agent has called
//! [`forward_to`], and never blocks or logs itself: when the channel is full, events are
//! skipped (they are still on stderr/journald).

use super::LogEntry;
use super::request::LogEvent;
use std::sync::OnceLock;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

struct Forward {
    group: String,
    tx: mpsc::Sender<LogEntry>,
}

static FORWARD: OnceLock<Forward> = OnceLock::new();

/// Starts forwarding tracing events to `group` through `tx`; false if already forwarding.
pub fn forward_to(group: String, tx: mpsc::Sender<LogEntry>) -> bool {
    FORWARD.set(Forward { group, tx }).is_ok()
}

/// The layer `init_tracing` installs next to the stderr formatter.
pub struct AgentLogLayer;

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S: tracing::Subscriber> Layer<S> for AgentLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let Some(fwd) = FORWARD.get() else {
            return;
        };
        let mut fields = JsonFields(serde_json::Map::new());
        let meta = event.metadata();
        fields
            .0
            .insert("level".into(), meta.level().as_str().into());
        fields.0.insert("target".into(), meta.target().into());
        event.record(&mut fields);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let line = serde_json::Value::Object(fields.0).to_string();
        let _ = fwd.tx.try_send(LogEntry {
            group: fwd.group.clone(),
            event: LogEvent::new(now, line),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_become_json_lines_once_forwarding_is_on() {
        let subscriber = tracing_subscriber::registry().with(AgentLogLayer);
        let (tx, mut rx) = mpsc::channel(4);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before forwarding");
            assert!(forward_to("/aws/ec2/warden".into(), tx));
            tracing::warn!(model = "m", restarts = 3u64, "crash loop");
        });
        let e = rx.try_recv().unwrap();
        assert_eq!(e.group, "/aws/ec2/warden");
        let v: serde_json::Value = serde_json::from_str(&e.event.message).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "crash loop");
        assert_eq!(v["model"], "m");
        assert_eq!(v["restarts"], 3);
        assert!(rx.try_recv().is_err(), "nothing from before forwarding");
    }
}
