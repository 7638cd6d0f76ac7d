//! CloudWatch Logs sink: model output and the API audit trail reach their log groups through
//! the durable spool, in order, with nothing lost to an AWS outage or an agent restart.
//!
//! Anatomy as in Vector's sinks: `config` (settings), `request` (the pure PutLogEvents batching
//! rules), `service` (the calls), `retry` (what a failure means). The flow:
//!
//! ```text
//! model lines ─┐                      ┌─ spool per group ─▶ shipper task ─▶ PutLogEvents
//! audit records ┼─▶ ingest (batches, ─┤   (fsynced chunks,   (whole chunks per call,
//! other entries ┘   one fsync each)   └─  bounded, acked)      ack after success)
//! ```
//!
//! Every received line is appended to its group's spool before anything is sent; a chunk is
//! acknowledged only after the call that carried it succeeded, so a crash or outage replays it
//! and normal acks never send it twice.

pub mod agent;
pub mod config;
pub mod request;
pub mod retry;
pub mod service;

use crate::api::audit::AuditRecord;
use crate::sinks::spool::{Spool, SpoolError, SpoolRecord};
use crate::supervisor::LogLine;
use crate::telemetry::MetricStore;
use config::LogsSinkConfig;
use request::{Chunk, LogEvent};
use retry::Outcome;
use service::LogsService;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Lines taken from a source per ingest round (one spool append per group per round).
const INGEST_CHUNK: usize = 8192;
/// Rounds queued between the receiver and the spool writer (≤ 8192 lines each).
const RECEIVED_QUEUE: usize = 64;
/// Lines the receiver holds while the spool writer is busy (a burst buffer, ~150 B per line);
/// past it, back-pressure reaches the supervisor's channel, which drops and counts.
const MAX_BUFFERED_LINES: usize = 262_144;
/// Lines one spool write takes at most (one fsync per group per write).
const WRITE_ROUND: usize = 65_536;
/// Spool records read per replay step.
const PEEK_RECORDS: usize = 16;
/// After cancel, ingest stops once its sources were quiet this long.
const QUIET_AT_SHUTDOWN: Duration = Duration::from_millis(300);
const TARGET_FILE: &str = "target.json";

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

/// One group's spool plus the bookkeeping that turns dropped records into dropped events.
struct GroupSpool {
    target: Target,
    spool: Spool,
    /// (seq, events) of every unacknowledged record, oldest first.
    ledger: Mutex<VecDeque<(u64, usize)>>,
    wake: Notify,
    /// Events/bytes spooled since the shipper last started a drain (the size trigger).
    unshipped_events: AtomicU64,
    unshipped_bytes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn decode(rec: &SpoolRecord) -> Option<Vec<LogEvent>> {
    serde_json::from_slice(&rec.payload).ok()
}

impl GroupSpool {
    fn open(dir: &Path, target: Target, max_bytes: u64) -> Result<GroupSpool, LogsError> {
        std::fs::create_dir_all(dir).map_err(|source| LogsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let target_path = dir.join(TARGET_FILE);
        if !target_path.exists() {
            let json = serde_json::to_vec(&target).unwrap_or_default();
            std::fs::write(&target_path, json).map_err(|source| LogsError::Io {
                path: target_path.clone(),
                source,
            })?;
        }
        let spool = Spool::open(dir, max_bytes)?;
        // Learn how many events each waiting record holds, so later drops count events.
        let mut ledger = VecDeque::new();
        let mut waiting = spool.peek(usize::MAX)?;
        for rec in waiting.drain(..) {
            ledger.push_back((rec.seq, decode(&rec).map_or(0, |e| e.len())));
        }
        if !ledger.is_empty() {
            tracing::info!(group = %target.group, records = ledger.len(),
                "log spool has undelivered events from a previous run; replaying");
        }
        Ok(GroupSpool {
            target,
            spool,
            ledger: Mutex::new(ledger),
            wake: Notify::new(),
            unshipped_events: AtomicU64::new(0),
            unshipped_bytes: AtomicU64::new(0),
        })
    }

    /// Appends valid batches (one record each); returns events the byte bound dropped.
    fn append(&self, batches: Vec<Vec<LogEvent>>) -> Result<usize, SpoolError> {
        let mut ledger = lock(&self.ledger);
        for batch in batches {
            let payload = serde_json::to_vec(&batch).unwrap_or_default();
            let seq = self.spool.append(&payload)?;
            ledger.push_back((seq, batch.len()));
            self.unshipped_events
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.unshipped_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        // The spool drops whole records, oldest first, when over its bound.
        let mut dropped = 0;
        while ledger.len() as u64 > self.spool.pending() {
            match ledger.pop_front() {
                Some((_, n)) => dropped += n,
                None => break,
            }
        }
        Ok(dropped)
    }

    fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut ledger = lock(&self.ledger);
        self.spool.ack(seq)?;
        while ledger.front().is_some_and(|(s, _)| *s <= seq) {
            ledger.pop_front();
        }
        Ok(())
    }

    /// True once enough waits for a full PutLogEvents call.
    fn full_batch_waiting(&self) -> bool {
        self.unshipped_events.load(Ordering::Relaxed) >= request::MAX_BATCH_EVENTS as u64
            || self.unshipped_bytes.load(Ordering::Relaxed) >= request::MAX_BATCH_BYTES as u64
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The audit record's own time (RFC 3339) so the event is stamped when the request happened.
fn audit_event(record: &AuditRecord) -> Option<LogEvent> {
    let ts = humantime::parse_rfc3339_weak(record.time.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(&record.time))
        .map_or_else(|_| unix_ms(SystemTime::now()), unix_ms);
    let json = serde_json::to_string(record).ok()?;
    Some(LogEvent::new(ts, json))
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
}

impl LogShipper {
    /// Opens every spool a previous run left (their shippers replay at once) and starts
    /// ingesting `sources`. Stops when `cancel` fires: ingest drains what its sources still
    /// hold, shippers make one last bounded attempt, the rest stays spooled for the next run.
    pub fn start(
        cfg: LogsSinkConfig,
        sdk: &aws_config::SdkConfig,
        sources: Sources,
        store: Option<Arc<MetricStore>>,
        cancel: CancellationToken,
    ) -> Result<LogShipper, LogsError> {
        let stats = Arc::new(LogsStats::default());
        let shared = Arc::new(Shared {
            service: LogsService::new(sdk),
            cfg,
            stats: stats.clone(),
            store,
        });
        let mut ingest = Ingest {
            shared: shared.clone(),
            groups: HashMap::new(),
            shippers: JoinSet::new(),
            ship_cancel: CancellationToken::new(),
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

struct Ingest {
    shared: Arc<Shared>,
    groups: HashMap<String, Arc<GroupSpool>>,
    shippers: JoinSet<()>,
    ship_cancel: CancellationToken,
}

async fn recv_some<T>(rx: &mut Option<mpsc::Receiver<T>>, buf: &mut Vec<T>) -> Option<usize> {
    match rx {
        Some(r) => {
            let n = r.recv_many(buf, INGEST_CHUNK).await;
            if n == 0 {
                *rx = None;
                None
            } else {
                Some(n)
            }
        }
        None => std::future::pending().await,
    }
}

/// What the receiver took from the sources in one go.
#[derive(Default)]
struct Received {
    lines: Vec<LogLine>,
    audits: Vec<AuditRecord>,
    entries: Vec<LogEntry>,
}

impl Received {
    fn len(&self) -> usize {
        self.lines.len() + self.audits.len() + self.entries.len()
    }

    fn append(&mut self, mut other: Received) {
        self.lines.append(&mut other.lines);
        self.audits.append(&mut other.audits);
        self.entries.append(&mut other.entries);
    }
}

/// Empties the sources as fast as they fill and queues what it took for the spool writer, so
/// an fsync never backs up into the supervisor's channel (which drops when full): while the
/// writer is busy it keeps receiving into its own round, up to [`MAX_BUFFERED_LINES`]. After
/// `cancel`, stops once every source is closed or quiet.
async fn receive(mut sources: Sources, cancel: CancellationToken, tx: mpsc::Sender<Received>) {
    let mut round = Received::default();
    let mut stopping = false;
    loop {
        let all_closed =
            sources.model_lines.is_none() && sources.audit.is_none() && sources.entries.is_none();
        if all_closed {
            if round.len() > 0 {
                let _ = tx.send(round).await;
            }
            return;
        }
        let room = round.len() < MAX_BUFFERED_LINES;
        let got = tokio::select! {
            biased;
            _ = cancel.cancelled(), if !stopping => { stopping = true; continue; }
            Ok(permit) = tx.reserve(), if round.len() > 0 => {
                permit.send(std::mem::take(&mut round));
                continue;
            }
            Some(_) = recv_some(&mut sources.model_lines, &mut round.lines), if room => true,
            Some(_) = recv_some(&mut sources.audit, &mut round.audits), if room => true,
            Some(_) = recv_some(&mut sources.entries, &mut round.entries), if room => true,
            _ = tokio::time::sleep(QUIET_AT_SHUTDOWN), if stopping => false,
            else => false,
        };
        if !got && stopping {
            // Hand over what is still held before stopping.
            if round.len() > 0 {
                let _ = tx.send(round).await;
            }
            return;
        }
    }
}

impl Ingest {
    fn reopen_previous(&mut self) -> Result<(), LogsError> {
        let dir = &self.shared.cfg.spool_dir;
        std::fs::create_dir_all(dir).map_err(|source| LogsError::Io {
            path: dir.clone(),
            source,
        })?;
        let entries = std::fs::read_dir(dir).map_err(|source| LogsError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let target: Option<Target> = std::fs::read(entry.path().join(TARGET_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(target) = target {
                self.group(target)?;
            }
        }
        Ok(())
    }

    /// The group's spool, opening it and starting its shipper on first use.
    fn group(&mut self, target: Target) -> Result<Arc<GroupSpool>, LogsError> {
        let key = format!("{}\n{}", target.group, target.stream);
        if let Some(g) = self.groups.get(&key) {
            return Ok(g.clone());
        }
        let dir = self.shared.cfg.spool_dir.join(target.dir_name());
        let g = Arc::new(GroupSpool::open(
            &dir,
            target,
            self.shared.cfg.max_spool_bytes_per_group,
        )?);
        self.groups.insert(key, g.clone());
        let shipper = Shipper {
            shared: self.shared.clone(),
            group: g.clone(),
            ready: false,
        };
        self.shippers.spawn(shipper.run(self.ship_cancel.clone()));
        Ok(g)
    }

    async fn run(mut self, sources: Sources, cancel: CancellationToken) {
        let (tx, mut rx) = mpsc::channel(RECEIVED_QUEUE);
        let receiver = tokio::spawn(receive(sources, cancel, tx));
        while let Some(mut round) = rx.recv().await {
            // Whatever queued up while the last fsync ran goes into this one.
            while round.len() < WRITE_ROUND {
                match rx.try_recv() {
                    Ok(more) => round.append(more),
                    Err(_) => break,
                }
            }
            let events = self.collect(round);
            self.spool(events).await;
        }
        let _ = receiver.await;
        // Everything received is spooled; let the shippers make a last attempt.
        self.ship_cancel.cancel();
        while self.shippers.join_next().await.is_some() {}
    }

    /// Turns what arrived into per-target event lists, in arrival order.
    fn collect(&mut self, round: Received) -> Vec<(Target, Vec<LogEvent>)> {
        let Received {
            lines,
            audits,
            entries,
        } = round;
        let cfg = &self.shared.cfg;
        let mut out: Vec<(Target, Vec<LogEvent>)> = Vec::new();
        let mut push =
            |group: String, event: LogEvent| match out.iter_mut().find(|(t, _)| t.group == group) {
                Some((_, v)) => v.push(event),
                None => out.push((
                    Target {
                        group,
                        stream: cfg.stream.clone(),
                    },
                    vec![event],
                )),
            };
        let n = lines.len() + audits.len() + entries.len();
        for l in lines {
            // A JSON line is shipped as printed, so Logs Insights sees its fields.
            push(
                cfg.model_group(&l.model),
                LogEvent::new(l.timestamp_ms as i64, l.line),
            );
        }
        for r in audits {
            if let Some(e) = audit_event(&r) {
                push(cfg.api_group.clone(), e);
            }
        }
        for e in entries {
            push(e.group, e.event);
        }
        LogsStats::add(&self.shared.stats.events_received, n);
        out
    }

    async fn spool(&mut self, events: Vec<(Target, Vec<LogEvent>)>) {
        let mut work = Vec::with_capacity(events.len());
        for (target, evs) in events {
            let n = evs.len();
            match self.group(target) {
                Ok(g) => work.push((g, evs)),
                Err(e) => {
                    LogsStats::add(&self.shared.stats.spool_errors, n);
                    tracing::error!(error = %e, events = n, "cannot open log spool; events lost");
                }
            }
        }
        let shared = self.shared.clone();
        // A record must fit the spool's segments (an eighth of its bound).
        let record_cap = (shared.cfg.max_spool_bytes_per_group / 8) as usize;
        // fsync is blocking I/O: keep it off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let stats = &shared.stats;
            for (g, evs) in work {
                let n = evs.len();
                let truncated = evs
                    .iter()
                    .filter(|e| e.size() > request::MAX_EVENT_BYTES)
                    .count();
                LogsStats::add(&stats.events_truncated, truncated);
                match g.append(request::split_within(evs, record_cap)) {
                    Ok(dropped) => {
                        LogsStats::add(&stats.events_spooled, n);
                        if dropped > 0 {
                            LogsStats::add(&stats.events_dropped, dropped);
                            tracing::warn!(group = %g.target.group, events = dropped,
                                total = stats.events_dropped.load(Ordering::Relaxed),
                                "log spool full: dropped the oldest events (LogEventsDropped)");
                            if let Some(store) = &shared.store {
                                store.add_counter(
                                    "LogEventsDropped",
                                    &[],
                                    dropped as f64,
                                    SystemTime::now(),
                                );
                            }
                        }
                    }
                    Err(e) => {
                        LogsStats::add(&stats.spool_errors, n);
                        tracing::error!(group = %g.target.group, error = %e, events = n,
                            "cannot spool log events; lost");
                    }
                }
                if g.full_batch_waiting() {
                    g.wake.notify_one();
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "log spool task failed");
        }
    }
}

/// Ships one group's spool, oldest first, one call at a time (per-stream order).
struct Shipper {
    shared: Arc<Shared>,
    group: Arc<GroupSpool>,
    /// Group and stream known to exist.
    ready: bool,
}

impl Shipper {
    async fn run(mut self, cancel: CancellationToken) {
        let interval = self.shared.cfg.flush_interval;
        // Replay what a previous run left straight away.
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.group.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => next = tokio::time::Instant::now() + interval,
            }
            self.drain(Some(&cancel)).await;
        }
        let grace = self.shared.cfg.shutdown_grace;
        if tokio::time::timeout(grace, self.drain(None)).await.is_err() {
            tracing::warn!(group = %self.group.target.group, pending = self.group.spool.pending(),
                "log shipper stopped with events still spooled; the next run delivers them");
        }
    }

    async fn peek(&self) -> Result<Vec<SpoolRecord>, String> {
        let g = self.group.clone();
        tokio::task::spawn_blocking(move || g.spool.peek(PEEK_RECORDS))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn ack(&self, seq: u64) -> bool {
        let g = self.group.clone();
        match tokio::task::spawn_blocking(move || g.ack(seq)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, seq, "cannot record log delivery in the spool");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "log spool task failed");
                false
            }
        }
    }

    /// Waits before retry `n`; false when cancelled (or when there is no cancel: last attempt).
    async fn backoff(&self, n: u32, cancel: Option<&CancellationToken>) -> bool {
        let Some(cancel) = cancel else {
            return false;
        };
        let delay = self
            .shared
            .cfg
            .backoff
            .delay(n.min(16), rand::random::<f64>());
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Ships until the spool is empty; retries failures with backoff until `cancel` (with no
    /// cancel: a single pass that gives up on the first failure).
    async fn drain(&mut self, cancel: Option<&CancellationToken>) {
        let g = self.group.clone();
        let shared = self.shared.clone();
        let (stats, cfg) = (&shared.stats, &shared.cfg);
        let mut failures = 0u32;
        'peek: loop {
            g.unshipped_events.store(0, Ordering::Relaxed);
            g.unshipped_bytes.store(0, Ordering::Relaxed);
            let records = match self.peek().await {
                Ok(r) if r.is_empty() => return,
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the log spool");
                    return;
                }
            };
            let mut chunks = Vec::with_capacity(records.len());
            for rec in &records {
                match decode(rec) {
                    Some(events) => chunks.push(Chunk {
                        seq: rec.seq,
                        events,
                    }),
                    None => {
                        // Only readable chunks before it may be sent first; ack it alone later.
                        if chunks.is_empty() {
                            tracing::error!(seq = rec.seq, "unreadable log spool record; dropped");
                            LogsStats::add(&stats.events_invalid, 1);
                            if !self.ack(rec.seq).await {
                                return;
                            }
                            continue;
                        }
                        break;
                    }
                }
            }
            let mut at = 0;
            while at < chunks.len() {
                let now = unix_ms(SystemTime::now());
                let Some(batch) = request::next_batch(&chunks[at..], now, &cfg.age_window) else {
                    break;
                };
                if batch.too_old + batch.too_new > 0 {
                    LogsStats::add(&stats.events_too_old, batch.too_old);
                    LogsStats::add(&stats.events_too_new, batch.too_new);
                    tracing::warn!(group = %g.target.group, too_old = batch.too_old,
                        too_new = batch.too_new,
                        "log events outside CloudWatch's accepted window (14 days back, 2 h ahead); not sent");
                }
                let result = if batch.events.is_empty() {
                    Ok(request::Rejected::default())
                } else {
                    self.send(&batch.events).await
                };
                match result {
                    Ok(rejected) => {
                        failures = 0;
                        let sent = batch.events.len() - rejected.total().min(batch.events.len());
                        LogsStats::add(&stats.events_sent, sent);
                        if rejected.total() > 0 {
                            LogsStats::add(&stats.events_rejected, rejected.total());
                            tracing::warn!(group = %g.target.group, too_old = rejected.too_old,
                                too_new = rejected.too_new, expired = rejected.expired,
                                "CloudWatch Logs rejected events (rejectedLogEventsInfo)");
                        }
                    }
                    Err(e) if e.outcome == Outcome::Drop => {
                        LogsStats::add(&stats.events_invalid, batch.events.len());
                        tracing::error!(group = %g.target.group, error = %e,
                            events = batch.events.len(), "log batch refused as invalid; dropped");
                    }
                    Err(e) => {
                        if e.outcome == Outcome::Recreate {
                            self.ready = false;
                        }
                        if failures == 0 {
                            tracing::warn!(group = %g.target.group, error = %e,
                                "CloudWatch Logs unavailable; events stay spooled and are retried");
                        }
                        failures += 1;
                        if !self.backoff(failures - 1, cancel).await {
                            return;
                        }
                        // Read the spool again: while we waited, a full spool may have dropped
                        // these very records (already counted as lost).
                        continue 'peek;
                    }
                }
                if !self.ack(batch.last_seq).await {
                    return;
                }
                at += batch.chunks;
            }
        }
    }

    /// Creates the group/stream when needed, then puts the batch.
    async fn send(&mut self, events: &[LogEvent]) -> Result<request::Rejected, service::CallError> {
        let cfg = &self.shared.cfg;
        let target = &self.group.target;
        if !self.ready {
            self.shared
                .service
                .ensure(&target.group, &target.stream, cfg.retention_days)
                .await?;
            self.ready = true;
        }
        LogsStats::add(&self.shared.stats.put_calls, 1);
        let result = self
            .shared
            .service
            .put(&target.group, &target.stream, events)
            .await;
        if result.is_err() {
            LogsStats::add(&self.shared.stats.put_failures, 1);
        }
        result
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
        };
        let e = audit_event(&r).unwrap();
        assert_eq!(e.timestamp_ms, 1_795_255_200_250);
        let v: serde_json::Value = serde_json::from_str(&e.message).unwrap();
        assert_eq!(v["request_id"], "r1");
    }
}
