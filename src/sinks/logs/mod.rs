//! CloudWatch Logs sink: model output and the API audit trail reach their log groups through
//! the durable spool, in order, with nothing lost to an AWS outage or an agent restart.
//!
//! Anatomy as in Vector's sinks: `config` (settings), `request` (the pure PutLogEvents batching
//! rules), `service` (the calls), `retry` (what a failure means), `group_spool` (a group's spool),
//! `ingest` (channels → spools), `shipper` (spool → PutLogEvents). The flow:
//!
//! ```text
//! model lines ─┐                      ┌─ spool per group ─▶ shipper task ─▶ PutLogEvents
//! audit records ┼─▶ ingest (batches, ─┤   (fsynced chunks,   (whole chunks per call,
//! other entries ┘   one fsync each)   └─  bounded, acked)      ack after success)
//! ```
//!
//! Every received line is appended to its group's spool before anything is sent; a chunk is
//! acknowledged only after the call that carried it succeeded, so a crash or outage replays it
//! and normal acks never send it twice. When the disk refuses an append the batches wait in
//! memory and are appended again, in order; past [`MAX_HELD_BYTES`] the receiver stops taking
//! from its sources (back-pressure) instead of dropping. Shipping is least-privilege:
//! PutLogEvents first, CreateLogStream/CreateLogGroup only on ResourceNotFoundException, and
//! authorization failures keep the data and retry on the auth schedule (see `sinks::aws_error`).

pub mod agent;
pub mod config;
mod group_spool;
mod ingest;
pub mod request;
pub mod retry;
pub mod service;
mod shipper;

use crate::api::audit::AuditRecord;
use crate::sinks::aws_error::AccessWatch;
use crate::sinks::spool::{Spool, SpoolError, SpoolRecord};
use crate::supervisor::LogLine;
use crate::telemetry::drops::{self, reason, sink};
use crate::telemetry::{MetricStore, TelemetryEvent};
use config::LogsSinkConfig;
use group_spool::*;
use ingest::*;
use request::{Chunk, LogEvent};
use retry::{AUTH_BACKOFF, Backoff, ErrorClass};
use service::LogsService;
use shipper::*;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Bytes received but not yet in a spool (the receiver's round, the queue to the writer, and
/// batches kept in memory while the disk refuses appends). Past it the receiver stops taking
/// from its sources: back-pressure, never a drop here — the audit channel fills and the API
/// refuses (503), and the supervisor's capture drops model lines, counted.
pub const MAX_HELD_BYTES: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("log spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One event for an arbitrary group (the agent's own logs, tools, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub group: String,
    pub event: LogEvent,
}

/// Where events come from; any may be absent.
#[derive(Default)]
pub struct Sources {
    /// The supervisor's captured lines (`SupervisorHandle::start`'s receiver).
    pub model_lines: Option<mpsc::Receiver<LogLine>>,
    /// Every audit record (`AuditSink::start_forwarding`'s receiver).
    pub audit: Option<mpsc::Receiver<AuditRecord>>,
    pub entries: Option<mpsc::Receiver<LogEntry>>,
}

/// Counters of the sink's work since start (tests, benchmark, console).
#[derive(Debug, Default)]
pub struct LogsStats {
    pub events_received: AtomicU64,
    pub events_spooled: AtomicU64,
    pub events_sent: AtomicU64,
    pub events_truncated: AtomicU64,
    /// LogEventsDropped: lost to the spool's byte bound, oldest first.
    pub events_dropped: AtomicU64,
    /// Set aside before sending: outside the accepted age window.
    pub events_too_old: AtomicU64,
    pub events_too_new: AtomicU64,
    /// Refused by CloudWatch in `rejectedLogEventsInfo`.
    pub events_rejected: AtomicU64,
    /// In calls CloudWatch called invalid (dropped after logging), or unreadable spool records.
    pub events_invalid: AtomicU64,
    pub put_calls: AtomicU64,
    pub put_failures: AtomicU64,
    pub spool_errors: AtomicU64,
}

impl LogsStats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A group/stream pair: where a spool's events go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub group: String,
    pub stream: String,
}

impl Target {
    /// A directory name that is readable and cannot collide (FNV-1a of the exact names).
    fn dir_name(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.group.bytes().chain([0]).chain(self.stream.bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let readable: String = self
            .group
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        format!("{readable}-{h:016x}")
    }
}

/// The running sink.
pub struct LogShipper {
    task: tokio::task::JoinHandle<()>,
    stats: Arc<LogsStats>,
}

struct Shared {
    cfg: LogsSinkConfig,
    service: LogsService,
    stats: Arc<LogsStats>,
    store: Option<Arc<MetricStore>>,
    /// Authorization episodes, announced to the alerts.
    access: AccessWatch,
    /// Bytes received and not yet spooled (see [`MAX_HELD_BYTES`]).
    held: AtomicU64,
}

impl Shared {
    /// Counts a drop in the stats counter, the store (`RecordsDropped`) and the log.
    fn dropped(&self, counter: &AtomicU64, why: &'static str, n: usize) {
        LogsStats::add(counter, n);
        drops::record(self.store.as_deref(), sink::LOGS, why, n as u64);
    }
}

impl LogShipper {
    /// Opens every spool a previous run left (their shippers replay at once) and starts
    /// ingesting `sources`. Stops when `cancel` fires: ingest spools what its sources still
    /// hold, shippers make one last bounded attempt, the rest stays spooled for the next run.
    pub fn start(
        cfg: LogsSinkConfig,
        sdk: &aws_config::SdkConfig,
        sources: Sources,
        store: Option<Arc<MetricStore>>,
        cancel: CancellationToken,
    ) -> Result<LogShipper, LogsError> {
        Self::start_with_events(cfg, sdk, sources, store, None, cancel)
    }

    /// As [`LogShipper::start`], announcing authorization failures on `events`.
    pub fn start_with_events(
        cfg: LogsSinkConfig,
        sdk: &aws_config::SdkConfig,
        sources: Sources,
        store: Option<Arc<MetricStore>>,
        events: Option<broadcast::Sender<TelemetryEvent>>,
        cancel: CancellationToken,
    ) -> Result<LogShipper, LogsError> {
        let stats = Arc::new(LogsStats::default());
        let shared = Arc::new(Shared {
            service: LogsService::new(sdk),
            cfg,
            stats: stats.clone(),
            store,
            access: AccessWatch::new(sink::LOGS, events),
            held: AtomicU64::new(0),
        });
        let mut ingest = Ingest {
            shared: shared.clone(),
            groups: HashMap::new(),
            shippers: JoinSet::new(),
            ship_cancel: CancellationToken::new(),
            backlog: VecDeque::new(),
            append_failures: 0,
        };
        ingest.reopen_previous()?;
        tracing::info!(spool = %shared.cfg.spool_dir.display(), stream = %shared.cfg.stream,
            "CloudWatch Logs shipper started");
        let task = tokio::spawn(ingest.run(sources, cancel));
        Ok(LogShipper { task, stats })
    }

    pub fn stats(&self) -> Arc<LogsStats> {
        self.stats.clone()
    }

    /// Waits until the shipper stopped (after its cancel).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(group: &str) -> Target {
        Target {
            group: group.into(),
            stream: "h".into(),
        }
    }

    #[test]
    fn spool_dirs_are_readable_and_distinct() {
        let a = target("/aws/ec2/models/clash-detector").dir_name();
        let b = target("/aws/ec2/models/clash_detector").dir_name();
        assert!(a.starts_with("aws_ec2_models_clash-detector-"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn dropped_records_are_counted_as_events() {
        let dir = tempfile::tempdir().unwrap();
        let g = GroupSpool::open(dir.path(), target("/g"), 8192).unwrap();
        let mut dropped = 0;
        for i in 0..60 {
            let batch = vec![
                (0..4)
                    .map(|j| LogEvent::new(i, format!("{i}-{j}-{}", "z".repeat(40))))
                    .collect(),
            ];
            dropped += g.append(batch).unwrap();
        }
        assert!(dropped > 0);
        assert_eq!(dropped % 4, 0, "whole records of four events");
        let left: usize = g
            .spool
            .peek(usize::MAX)
            .unwrap()
            .iter()
            .map(|r| decode(r).unwrap().len())
            .sum();
        assert_eq!(
            left + dropped,
            240,
            "every event is spooled or counted as dropped"
        );
        // Reopening learns the waiting records' event counts.
        let last = g.spool.peek(usize::MAX).unwrap().last().unwrap().seq;
        drop(g);
        let g = GroupSpool::open(dir.path(), target("/g"), 8192).unwrap();
        assert_eq!(lock(&g.ledger).len() * 4, left);
        g.ack(last).unwrap();
        assert!(lock(&g.ledger).is_empty());
        assert_eq!(g.spool.pending(), 0);
    }

    #[test]
    fn audit_records_keep_their_time_and_stay_json() {
        let r = AuditRecord {
            time: "2026-11-21T10:00:00.250Z".into(),
            request_id: "r1".into(),
            interaction_id: "r1".into(),
            session_id: None,
            subject: Some("alice".into()),
            role: None,
            method: "POST".into(),
            route: "/api/v1/{model}".into(),
            model: Some("clash-detector".into()),
            status: 200,
            outcome: "success",
            latency_ms: 1.5,
            bytes_in: 1,
            bytes_out: 2,
            client: "127.0.0.1".into(),
            user_agent: None,
            detail: None,
        };
        let e = audit_event(&r).unwrap();
        assert_eq!(e.timestamp_ms, 1_795_255_200_250);
        let v: serde_json::Value = serde_json::from_str(&e.message).unwrap();
        assert_eq!(v["request_id"], "r1");
    }
}
