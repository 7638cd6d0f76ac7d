//! Accounting for every record the agent gives up on: counted by sink and reason in the store
//! (`RecordsDropped` → `/metrics`, CloudWatch, the console) and logged, rate-limited.
//!
//! Nothing in warden discards data without calling [`record`]. Sinks and reasons are fixed
//! names (constants below), so the series stay few and dashboards can rely on them.

use super::catalog::Dim;
use super::store::MetricStore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Where the record was headed.
pub mod sink {
    pub const CLOUDWATCH: &str = "cloudwatch";
    pub const LOGS: &str = "logs";
    pub const AUDIT: &str = "audit";
    pub const NOTIFY: &str = "notify";
    /// The metric store itself (values it refused).
    pub const STORE: &str = "store";
    /// Model output lines between the child's pipe and the log shipper.
    pub const CAPTURE: &str = "capture";
}

/// Why it was dropped.
pub mod reason {
    /// The durable spool was over its byte bound: the oldest records went.
    pub const SPOOL_FULL: &str = "spool_full";
    /// The spool could not be written (disk full, I/O error) and the memory buffer was full.
    pub const SPOOL_WRITE: &str = "spool_write";
    /// A bounded in-memory queue was full.
    pub const QUEUE_FULL: &str = "queue_full";
    /// The service refused the records as invalid (no retry can succeed).
    pub const REJECTED: &str = "rejected";
    /// Outside the service's accepted time window.
    pub const TOO_OLD: &str = "too_old";
    pub const TOO_NEW: &str = "too_new";
    /// A spool record that no longer decodes.
    pub const CORRUPT: &str = "corrupt";
    /// NaN or infinite metric values.
    pub const NON_FINITE: &str = "non_finite";
    /// The API refused a request because its audit record could not be kept.
    pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";
    /// The task that should take the record had already stopped (shutdown).
    pub const SINK_STOPPED: &str = "sink_stopped";
}

/// At most one warning per (sink, reason) this often; the next one carries the count between.
const LOG_EVERY: Duration = Duration::from_secs(10);

struct LogGate {
    last: Instant,
    since_last: u64,
}

static GATES: Mutex<Option<HashMap<(&'static str, &'static str), LogGate>>> = Mutex::new(None);

/// Counts `n` records dropped on their way to `sink` for `reason`, in the store when there is
/// one, and logs a rate-limited warning.
pub fn record(store: Option<&MetricStore>, sink: &'static str, reason: &'static str, n: u64) {
    if n == 0 {
        return;
    }
    if let Some(store) = store {
        store.add_counter(
            "RecordsDropped",
            &[(Dim::Sink, sink), (Dim::Reason, reason)],
            n as f64,
            SystemTime::now(),
        );
    }
    let mut gates = GATES.lock().unwrap_or_else(|e| e.into_inner());
    let gates = gates.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    let gate = gates.entry((sink, reason)).or_insert(LogGate {
        last: now.checked_sub(LOG_EVERY).unwrap_or(now),
        since_last: 0,
    });
    gate.since_last += n;
    if now.duration_since(gate.last) >= LOG_EVERY {
        tracing::warn!(
            sink,
            reason,
            records = gate.since_last,
            "records dropped (counted in warden_records_dropped_total)"
        );
        gate.last = now;
        gate.since_last = 0;
    }
}

/// Total dropped so far for one sink and reason, from the store (tests, console).
pub fn total(store: &MetricStore, sink: &str, reason: &str) -> f64 {
    store
        .latest(
            "RecordsDropped",
            &[(Dim::Sink, sink), (Dim::Reason, reason)],
        )
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_per_sink_and_reason() {
        let store = MetricStore::new("h", 16);
        record(Some(&store), sink::LOGS, reason::SPOOL_FULL, 3);
        record(Some(&store), sink::LOGS, reason::SPOOL_FULL, 2);
        record(Some(&store), sink::AUDIT, reason::AUDIT_UNAVAILABLE, 1);
        record(Some(&store), sink::LOGS, reason::REJECTED, 0);
        assert_eq!(total(&store, sink::LOGS, reason::SPOOL_FULL), 5.0);
        assert_eq!(total(&store, sink::AUDIT, reason::AUDIT_UNAVAILABLE), 1.0);
        assert_eq!(total(&store, sink::LOGS, reason::REJECTED), 0.0);
        let text = store.render();
        assert!(
            text.contains(
                r#"warden_records_dropped_total{host="h",sink="logs",reason="spool_full"} 5"#
            ),
            "{text}"
        );
    }
}
