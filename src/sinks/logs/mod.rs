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
//! and normal acks never send it twice. When the disk refuses an append the batches wait in
//! memory and are appended again, in order; past [`MAX_HELD_BYTES`] the receiver stops taking
//! from its sources (back-pressure) instead of dropping. Shipping is least-privilege:
//! PutLogEvents first, CreateLogStream/CreateLogGroup only on ResourceNotFoundException, and
//! authorization failures keep the data and retry on the auth schedule (see `sinks::aws_error`).

pub mod agent;
pub mod config;
pub mod request;
pub mod retry;
pub mod service;

use crate::api::audit::AuditRecord;
use crate::sinks::aws_error::AccessWatch;
use crate::sinks::spool::{Spool, SpoolError, SpoolRecord};
use crate::supervisor::LogLine;
use crate::telemetry::drops::{self, reason, sink};
use crate::telemetry::{MetricStore, TelemetryEvent};
use config::LogsSinkConfig;
use request::{Chunk, LogEvent};
use retry::{AUTH_BACKOFF, Backoff, ErrorClass};
use service::LogsService;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Lines taken from a source per ingest round (one spool append per group per round).
const INGEST_CHUNK: usize = 8192;
/// Rounds queued between the receiver and the spool writer (≤ 8192 lines each).
const RECEIVED_QUEUE: usize = 64;
/// Bytes received but not yet in a spool (the receiver's round, the queue to the writer, and
/// batches kept in memory while the disk refuses appends). Past it the receiver stops taking
/// from its sources: back-pressure, never a drop here — the audit channel fills and the API
/// refuses (503), and the supervisor's capture drops model lines, counted.
pub const MAX_HELD_BYTES: u64 = 32 << 20;
/// Spool-append retries while the disk refuses (full, I/O error): capped, never giving up.
const APPEND_RETRY: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(2),
    attempts: u32::MAX,
};
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

    /// Appends one valid batch as one record; returns events the byte bound dropped.
    fn append_one(&self, batch: &[LogEvent]) -> Result<usize, SpoolError> {
        let mut ledger = lock(&self.ledger);
        let payload = serde_json::to_vec(batch).unwrap_or_default();
        let seq = self.spool.append(&payload)?;
        ledger.push_back((seq, batch.len()));
        self.unshipped_events
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.unshipped_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
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

    /// Appends valid batches (one record each); returns events the byte bound dropped.
    #[cfg(test)]
    fn append(&self, batches: Vec<Vec<LogEvent>>) -> Result<usize, SpoolError> {
        let mut dropped = 0;
        for b in batches {
            dropped += self.append_one(&b)?;
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

struct Ingest {
    shared: Arc<Shared>,
    groups: HashMap<String, Arc<GroupSpool>>,
    shippers: JoinSet<()>,
    ship_cancel: CancellationToken,
    /// Batches the spool refused (disk full, I/O error), oldest first, kept in memory and
    /// appended again before anything newer; their bytes count in `Shared::held`.
    backlog: VecDeque<Pending>,
    append_failures: u32,
}

/// Valid batches for one group, waiting to be appended.
struct Pending {
    group: Arc<GroupSpool>,
    batches: VecDeque<Vec<LogEvent>>,
    /// Bytes these batches count for in `Shared::held`.
    bytes: u64,
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
    /// Estimated bytes held (counted in `Shared::held` until spooled).
    bytes: u64,
}

/// What a line costs in memory, roughly: its text plus the fixed parts.
fn line_bytes(l: &LogLine) -> u64 {
    (l.line.len() + l.model.len() + 48) as u64
}

fn audit_bytes(r: &AuditRecord) -> u64 {
    let opt = |o: &Option<String>| o.as_ref().map_or(0, |s| s.len());
    (r.time.len()
        + r.request_id.len()
        + r.interaction_id.len()
        + opt(&r.session_id)
        + opt(&r.subject)
        + opt(&r.role)
        + r.method.len()
        + r.route.len()
        + opt(&r.model)
        + r.client.len()
        + opt(&r.user_agent)
        + 256) as u64
}

fn entry_bytes(e: &LogEntry) -> u64 {
    (e.group.len() + e.event.size() + 48) as u64
}

impl Received {
    fn len(&self) -> usize {
        self.lines.len() + self.audits.len() + self.entries.len()
    }

    fn append(&mut self, mut other: Received) {
        self.lines.append(&mut other.lines);
        self.audits.append(&mut other.audits);
        self.entries.append(&mut other.entries);
        self.bytes += other.bytes;
    }
}

/// Takes from one source and accounts the bytes of what it took.
async fn recv_counted<T>(
    rx: &mut Option<mpsc::Receiver<T>>,
    buf: &mut Vec<T>,
    size: fn(&T) -> u64,
    held: &AtomicU64,
) -> Option<u64> {
    let before = buf.len();
    recv_some(rx, buf).await?;
    let bytes: u64 = buf[before..].iter().map(size).sum();
    held.fetch_add(bytes, Ordering::Relaxed);
    Some(bytes)
}

/// Empties the sources as fast as they fill and queues what it took for the spool writer, so
/// an fsync never backs up into the supervisor's channel (which drops when full): while the
/// writer is busy it keeps receiving into its own round while fewer than [`MAX_HELD_BYTES`]
/// are held unspooled; past that it stops receiving (back-pressure). After `cancel`, stops
/// once every source is closed or quiet.
async fn receive(
    mut sources: Sources,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tx: mpsc::Sender<Received>,
) {
    let mut round = Received::default();
    let mut stopping = false;
    let held = &shared.held;
    loop {
        let all_closed =
            sources.model_lines.is_none() && sources.audit.is_none() && sources.entries.is_none();
        if all_closed {
            if round.len() > 0 {
                let _ = tx.send(round).await;
            }
            return;
        }
        // While stopping, take everything: the sources are finite then, and what cannot be
        // spooled in time is counted rather than left unseen in a channel.
        let room = stopping || held.load(Ordering::Relaxed) < MAX_HELD_BYTES;
        let has = round.len() > 0;
        enum Step {
            Stop,
            Send(mpsc::OwnedPermit<Received>),
            Got(u64),
            Quiet,
        }
        let step = {
            let Received {
                lines,
                audits,
                entries,
                ..
            } = &mut round;
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => Step::Stop,
                Ok(permit) = tx.clone().reserve_owned(), if has => Step::Send(permit),
                Some(b) = recv_counted(&mut sources.model_lines, lines, line_bytes, held), if room => Step::Got(b),
                Some(b) = recv_counted(&mut sources.audit, audits, audit_bytes, held), if room => Step::Got(b),
                Some(b) = recv_counted(&mut sources.entries, entries, entry_bytes, held), if room => Step::Got(b),
                // Full: wait for the writer to free room (it spools, or the disk comes back).
                _ = tokio::time::sleep(Duration::from_millis(20)), if !room => Step::Got(0),
                _ = tokio::time::sleep(QUIET_AT_SHUTDOWN), if stopping => Step::Quiet,
                else => Step::Quiet,
            }
        };
        let got = match step {
            Step::Stop => {
                stopping = true;
                continue;
            }
            Step::Send(permit) => {
                permit.send(std::mem::take(&mut round));
                continue;
            }
            Step::Got(b) => {
                round.bytes += b;
                true
            }
            Step::Quiet => false,
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
        };
        // A spool a previous run left is replayed at once; a new one waits for its first
        // flush interval, so its first call carries a batch rather than the first event.
        let first = if g.spool.pending() > 0 {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + self.shared.cfg.flush_interval
        };
        self.shippers
            .spawn(shipper.run(first, self.ship_cancel.clone()));
        Ok(g)
    }

    async fn run(mut self, sources: Sources, cancel: CancellationToken) {
        let (tx, mut rx) = mpsc::channel(RECEIVED_QUEUE);
        let receiver = tokio::spawn(receive(sources, self.shared.clone(), cancel, tx));
        loop {
            let retry = !self.backlog.is_empty();
            let delay = APPEND_RETRY.delay(self.append_failures.min(16), rand::random::<f64>());
            let round = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => Some(r),
                    None => break,
                },
                _ = tokio::time::sleep(delay), if retry => None,
            };
            if let Some(mut round) = round {
                // Whatever queued up while the last fsync ran goes into this one.
                while round.len() < WRITE_ROUND {
                    match rx.try_recv() {
                        Ok(more) => round.append(more),
                        Err(_) => break,
                    }
                }
                let events = self.collect(round);
                self.queue(events);
            }
            self.flush_backlog().await;
        }
        let _ = receiver.await;
        // Everything received is in the backlog or spooled: a bounded last chance for the
        // disk, then what still cannot be kept is counted, never lost unseen.
        let deadline = tokio::time::Instant::now() + self.shared.cfg.shutdown_grace;
        while !self.backlog.is_empty() && tokio::time::Instant::now() < deadline {
            let delay = APPEND_RETRY.delay(self.append_failures.min(16), rand::random::<f64>());
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay)).await;
            self.flush_backlog().await;
        }
        let lost: usize = self
            .backlog
            .drain(..)
            .flat_map(|p| p.batches.into_iter())
            .map(|b| b.len())
            .sum();
        if lost > 0 {
            tracing::error!(
                events = lost,
                "stopping with log events the spool could not take (disk full); counted as dropped"
            );
            self.shared
                .dropped(&self.shared.stats.spool_errors, reason::SPOOL_WRITE, lost);
        }
        self.shared.held.store(0, Ordering::Relaxed);
        // Let the shippers make a last attempt.
        self.ship_cancel.cancel();
        while self.shippers.join_next().await.is_some() {}
    }

    /// Turns what arrived into per-target event lists, in arrival order.
    fn collect(&mut self, round: Received) -> Vec<(Target, Vec<LogEvent>)> {
        let Received {
            lines,
            audits,
            entries,
            bytes,
        } = round;
        // From here the events' own sizes are what is held (`queue` adds them back).
        let held = &self.shared.held;
        held.fetch_sub(bytes.min(held.load(Ordering::Relaxed)), Ordering::Relaxed);
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
        let mut unencodable = 0;
        for r in audits {
            match audit_event(&r) {
                Some(e) => push(cfg.api_group.clone(), e),
                None => unencodable += 1,
            }
        }
        for e in entries {
            push(e.group, e.event);
        }
        LogsStats::add(&self.shared.stats.events_received, n);
        self.shared.dropped(
            &self.shared.stats.events_invalid,
            reason::CORRUPT,
            unencodable,
        );
        out
    }

    /// Splits each group's events into spool records and queues them behind anything the
    /// spool refused earlier (so per-group order holds).
    fn queue(&mut self, events: Vec<(Target, Vec<LogEvent>)>) {
        // A record must fit the spool's segments (an eighth of its bound).
        let record_cap = (self.shared.cfg.max_spool_bytes_per_group / 8) as usize;
        for (target, evs) in events {
            let n = evs.len();
            let g = match self.group(target) {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, events = n, "cannot open log spool; events lost");
                    self.shared
                        .dropped(&self.shared.stats.spool_errors, reason::SPOOL_WRITE, n);
                    continue;
                }
            };
            let truncated = evs
                .iter()
                .filter(|e| e.size() > request::MAX_EVENT_BYTES)
                .count();
            LogsStats::add(&self.shared.stats.events_truncated, truncated);
            let batches: VecDeque<Vec<LogEvent>> =
                request::split_within(evs, record_cap).into_iter().collect();
            let bytes = batches.iter().map(|b| batch_bytes(b)).sum();
            self.shared.held.fetch_add(bytes, Ordering::Relaxed);
            self.backlog.push_back(Pending {
                group: g,
                batches,
                bytes,
            });
        }
    }

    /// Appends the backlog, oldest first, until done or the spool refuses (then the rest stays
    /// in memory for the next try).
    async fn flush_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let mut backlog = std::mem::take(&mut self.backlog);
        // fsync is blocking I/O: keep it off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let failure = append_backlog(&shared, &mut backlog);
            (backlog, failure)
        })
        .await;
        match done {
            Ok((rest, None)) => {
                self.backlog = rest;
                if self.append_failures > 0 {
                    tracing::info!(
                        "log spool writable again; the events kept in memory are spooled"
                    );
                }
                self.append_failures = 0;
            }
            Ok((rest, Some(e))) => {
                self.backlog = rest;
                if self.append_failures == 0 {
                    tracing::error!(error = %e,
                        held_bytes = self.shared.held.load(Ordering::Relaxed),
                        "cannot spool log events (disk full?); kept in memory and retried");
                }
                self.append_failures += 1;
            }
            Err(e) => tracing::error!(error = %e, "log spool task failed"),
        }
    }
}

/// Bytes a batch counts for in `Shared::held` while waiting for the spool.
fn batch_bytes(batch: &[LogEvent]) -> u64 {
    batch.iter().map(|e| e.size() as u64).sum()
}

/// Appends queued batches in order; stops at the first refusal and returns it.
fn append_backlog(shared: &Shared, backlog: &mut VecDeque<Pending>) -> Option<SpoolError> {
    let stats = &shared.stats;
    while let Some(p) = backlog.front_mut() {
        while let Some(batch) = p.batches.front() {
            match p.group.append_one(batch) {
                Ok(dropped) => {
                    let bytes = batch_bytes(batch);
                    LogsStats::add(&stats.events_spooled, batch.len());
                    p.bytes -= bytes.min(p.bytes);
                    shared.held.fetch_sub(
                        bytes.min(shared.held.load(Ordering::Relaxed)),
                        Ordering::Relaxed,
                    );
                    p.batches.pop_front();
                    if dropped > 0 {
                        shared.dropped(&stats.events_dropped, reason::SPOOL_FULL, dropped);
                        tracing::warn!(group = %p.group.target.group, events = dropped,
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
                Err(e) => return Some(e),
            }
        }
        if p.group.full_batch_waiting() {
            p.group.wake.notify_one();
        }
        backlog.pop_front();
    }
    None
}

/// Ships one group's spool, oldest first, one call at a time (per-stream order).
struct Shipper {
    shared: Arc<Shared>,
    group: Arc<GroupSpool>,
}

impl Shipper {
    async fn run(mut self, first: tokio::time::Instant, cancel: CancellationToken) {
        let interval = self.shared.cfg.flush_interval;
        let mut next = first;
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
        let records = tokio::task::spawn_blocking(move || g.spool.peek(PEEK_RECORDS))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string());
        // Records damaged on disk are skipped by the spool; count them (events unknown).
        let corrupt = self.group.spool.take_corrupt() as usize;
        self.shared
            .dropped(&self.shared.stats.events_invalid, reason::CORRUPT, corrupt);
        records
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
    async fn backoff(
        &self,
        schedule: &Backoff,
        n: u32,
        cancel: Option<&CancellationToken>,
    ) -> bool {
        let Some(cancel) = cancel else {
            return false;
        };
        let delay = schedule.delay(n.min(16), rand::random::<f64>());
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
                            shared.dropped(&stats.events_invalid, reason::CORRUPT, 1);
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
                    shared.dropped(&stats.events_too_old, reason::TOO_OLD, batch.too_old);
                    shared.dropped(&stats.events_too_new, reason::TOO_NEW, batch.too_new);
                    tracing::warn!(group = %g.target.group, too_old = batch.too_old,
                        too_new = batch.too_new,
                        "log events outside CloudWatch's accepted window (14 days back, 2 h ahead); not sent");
                }
                let result = if batch.events.is_empty() {
                    Ok(request::Rejected::default())
                } else if let Some(c) = cancel {
                    // A hanging AWS must not hold the shutdown: stop waiting on cancel (the
                    // batch is not acknowledged, so the last attempt or next run sends it).
                    tokio::select! {
                        _ = c.cancelled() => return,
                        r = self.send(&batch.events) => r,
                    }
                } else {
                    self.send(&batch.events).await
                };
                match result {
                    Ok(rejected) => {
                        failures = 0;
                        shared.access.ok();
                        let sent = batch.events.len() - rejected.total().min(batch.events.len());
                        LogsStats::add(&stats.events_sent, sent);
                        if rejected.total() > 0 {
                            shared.dropped(
                                &stats.events_rejected,
                                reason::REJECTED,
                                rejected.total(),
                            );
                            tracing::warn!(group = %g.target.group, too_old = rejected.too_old,
                                too_new = rejected.too_new, expired = rejected.expired,
                                "CloudWatch Logs rejected events (rejectedLogEventsInfo)");
                        }
                    }
                    Err(e) if e.class == ErrorClass::Invalid => {
                        shared.dropped(&stats.events_invalid, reason::REJECTED, batch.events.len());
                        tracing::error!(group = %g.target.group, error = %e,
                            events = batch.events.len(), "log batch refused as invalid; dropped");
                    }
                    Err(e) => {
                        let schedule = if e.class == ErrorClass::Auth {
                            shared.access.denied(e.call, &e.permission(), &e.message);
                            AUTH_BACKOFF
                        } else {
                            cfg.backoff
                        };
                        if failures == 0 {
                            tracing::warn!(group = %g.target.group, error = %e,
                                "CloudWatch Logs unavailable; events stay spooled and are retried");
                        }
                        failures += 1;
                        if !self.backoff(&schedule, failures - 1, cancel).await {
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

    /// Puts the batch; only when CloudWatch says the stream (or group) is missing, creates it
    /// and puts again. Least privilege: with pre-created groups and streams only
    /// logs:PutLogEvents is ever called.
    async fn send(&mut self, events: &[LogEvent]) -> Result<request::Rejected, service::CallError> {
        let cfg = &self.shared.cfg;
        let target = &self.group.target;
        let service = &self.shared.service;
        let mut result = self.put(events).await;
        if let Err(e) = &result
            && e.class == ErrorClass::NotFound
        {
            tracing::info!(group = %target.group, stream = %target.stream,
                "log stream missing; creating it");
            service
                .ensure(&target.group, &target.stream, cfg.retention_days)
                .await?;
            result = self.put(events).await;
        }
        result
    }

    async fn put(&self, events: &[LogEvent]) -> Result<request::Rejected, service::CallError> {
        let target = &self.group.target;
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
