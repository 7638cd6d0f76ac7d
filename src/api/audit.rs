//! The audit trail: one JSON record per API request (every status), written as JSON lines to
//! the state dir and handed to the log shipper. Never contains a token or key.
//!
//! "100 % or refused": a request is admitted only when the pipeline has room for its record
//! ([`AuditSink::admit`]); records the file or the shipper cannot take yet wait in memory,
//! bounded in bytes, and are retried until they land. The file rotates by size and is reopened
//! on demand (SIGHUP, for logrotate).

use crate::telemetry::MetricStore;
use crate::telemetry::drops;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339 with milliseconds.
    pub time: String,
    pub request_id: String,
    /// The interaction archive's key (analytics join on it); equals the request id.
    pub interaction_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub subject: Option<String>,
    pub role: Option<String>,
    pub method: String,
    /// The matched route template, never the raw path.
    pub route: String,
    pub model: Option<String>,
    pub status: u16,
    pub outcome: &'static str,
    pub latency_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client: String,
    pub user_agent: Option<String>,
    /// For the agent's own actions (`method` = `AUTO`, e.g. a self-healing restart): what it
    /// did and why. Absent on API requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    /// Appends the record as one JSON line, byte for byte what `serde_json` writes for it.
    ///
    /// Written field by field because serde's generic path (a map entry per field, every key
    /// and string escaped a byte at a time) was a tenth of the gateway's own work per request.
    /// A string that needs escaping still goes through `serde_json`.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":");
        json_str(out, &self.time);
        out.extend_from_slice(b",\"request_id\":");
        json_str(out, &self.request_id);
        out.extend_from_slice(b",\"interaction_id\":");
        json_str(out, &self.interaction_id);
        if let Some(session_id) = &self.session_id {
            out.extend_from_slice(b",\"session_id\":");
            json_str(out, session_id);
        }
        out.extend_from_slice(b",\"subject\":");
        json_opt_str(out, self.subject.as_deref());
        out.extend_from_slice(b",\"role\":");
        json_opt_str(out, self.role.as_deref());
        out.extend_from_slice(b",\"method\":");
        json_str(out, &self.method);
        out.extend_from_slice(b",\"route\":");
        json_str(out, &self.route);
        out.extend_from_slice(b",\"model\":");
        json_opt_str(out, self.model.as_deref());
        out.extend_from_slice(b",\"status\":");
        json_value(out, &self.status);
        out.extend_from_slice(b",\"outcome\":");
        json_str(out, self.outcome);
        out.extend_from_slice(b",\"latency_ms\":");
        json_value(out, &self.latency_ms);
        out.extend_from_slice(b",\"bytes_in\":");
        json_value(out, &self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        json_value(out, &self.bytes_out);
        out.extend_from_slice(b",\"client\":");
        json_str(out, &self.client);
        out.extend_from_slice(b",\"user_agent\":");
        json_opt_str(out, self.user_agent.as_deref());
        if let Some(detail) = &self.detail {
            out.extend_from_slice(b",\"detail\":");
            json_str(out, detail);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The time now as an audit record writes it: RFC 3339, UTC, milliseconds
/// (`2026-12-02T10:37:00.123Z`, what `humantime::format_rfc3339_millis` gives).
///
/// Each thread keeps the text of the current second: formatting a date anew for every
/// request was a tenth of a request's audit work.
pub fn rfc3339_millis_now() -> String {
    rfc3339_millis(std::time::SystemTime::now())
}

fn rfc3339_millis(at: std::time::SystemTime) -> String {
    thread_local! {
        /// The second last formatted, and its text up to the seconds (`2026-12-02T10:37:00`).
        static SECOND: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    SECOND
        .with(|second| {
            let mut second = second.try_borrow_mut().ok()?;
            if second.0 != secs {
                let whole = std::time::UNIX_EPOCH + Duration::from_secs(secs);
                let text = humantime::format_rfc3339_seconds(whole).to_string();
                second.1 = text.trim_end_matches('Z').to_string();
                second.0 = secs;
            }
            let mut out = String::with_capacity(second.1.len() + 5);
            out.push_str(&second.1);
            out.push('.');
            for digit in [millis / 100, millis / 10 % 10, millis % 10] {
                out.push(char::from(b'0' + digit as u8));
            }
            out.push('Z');
            Some(out)
        })
        .unwrap_or_else(|| humantime::format_rfc3339_millis(at).to_string())
}

/// A JSON string: copied as is when nothing in it needs escaping, else escaped by serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        json_value(out, s);
    }
}

/// Whether JSON needs any of these bytes escaped (a control character, `"` or `\\`).
/// Eight bytes at a time: a record's strings are checked on every request.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Non-zero when a byte of `x` is below `n` (exact as a yes/no for n <= 128).
    let any_below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS;
    let any_zero = |x: u64| any_below(x, 1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        // Eight bytes always convert; 0 (which reads as "escape") cannot come.
        let x = word.try_into().map_or(0, u64::from_le_bytes);
        if any_below(x, 0x20) | any_zero(x ^ (ONES * 0x22)) | any_zero(x ^ (ONES * 0x5c)) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A number or string as serde_json writes it (writing to memory cannot fail).
fn json_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

/// Status of a request the client abandoned before it was answered (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

pub fn outcome(status: u16) -> &'static str {
    match status {
        200..=399 => "success",
        401 | 403 => "denied",
        429 => "rate_limited",
        CLIENT_CLOSED => "client_closed",
        400..=499 => "client_error",
        503 => "unavailable",
        _ => "server_error",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bytes reserved per admitted request until its real record is known (records are a few
/// hundred bytes: every free-text field is truncated).
const RESERVE_BYTES: usize = 1024;
/// A record's line is written into this much room first, so it rarely grows while written.
const LINE_CAPACITY: usize = 512;
/// How long the writer lets records gather after the first one before writing them.
const WRITE_COALESCE: Duration = Duration::from_millis(5);
/// Largest write handed to the file at once.
const MAX_WRITE_BYTES: usize = 256 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// After the API stopped, how long the writer keeps retrying a failing file before it gives
/// up on what is left (counted as dropped).
const GIVE_UP_AFTER_CLOSE: Duration = Duration::from_secs(3);

/// Sizes and where drops are counted.
#[derive(Clone)]
pub struct AuditOptions {
    /// The file is rotated (`api.jsonl` → `api.jsonl.1` …) before it would pass this size.
    pub max_file_bytes: u64,
    /// Rotated files kept (`.1` … `.N`); the oldest is overwritten.
    pub keep_files: usize,
    /// Bytes of records held in memory while the file or the shipper cannot take them; when
    /// full, requests are refused with 503 `audit_unavailable`.
    pub buffer_bytes: usize,
    pub store: Option<Arc<MetricStore>>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_file_bytes: 64 << 20,
            keep_files: 5,
            buffer_bytes: 16 << 20,
            store: None,
        }
    }
}

struct Shared {
    /// Bytes held for records not yet durable: each record counts once per pipeline (file,
    /// shipper) still holding it, plus reservations of requests in progress.
    pending: AtomicUsize,
    cap: usize,
    /// Pipelines each record goes through (1 = file, 2 = file and shipper).
    ways: usize,
    reopen: Notify,
    store: Option<Arc<MetricStore>>,
}

impl Shared {
    fn release(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One record as the file takes it: its JSON line.
struct Entry {
    line: Vec<u8>,
}

/// Where the API hands records; cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    shared: Arc<Shared>,
    to_file: mpsc::UnboundedSender<Arc<Entry>>,
    to_shipper: Option<mpsc::UnboundedSender<(AuditRecord, usize)>>,
}

/// The audit pipeline has no room for another record.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit log cannot keep another record right now")]
pub struct AuditFull;

/// Room for one request's record, reserved before the request is served; released if dropped
/// without [`Admission::record`].
pub struct Admission {
    sink: AuditSink,
    reserved: usize,
}

impl Admission {
    /// Hands the request's record to the pipeline (never waits).
    pub fn record(mut self, record: AuditRecord) {
        let reserved = std::mem::take(&mut self.reserved);
        self.sink.enqueue(record, reserved);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.sink.shared.release(self.reserved);
        }
    }
}

impl AuditSink {
    /// Starts the writer task appending to `path`; returns the sink and the writer's handle.
    pub async fn start(
        path: &Path,
    ) -> Result<(AuditSink, tokio::task::JoinHandle<()>), AuditError> {
        Self::start_with(path, None, AuditOptions::default()).await
    }

    /// As [`Self::start`], and every record also goes to `forward` (the log shipper).
    pub async fn start_forwarding(
        path: &Path,
        forward: Option<mpsc::Sender<AuditRecord>>,
    ) -> Result<(AuditSink, tokio::task::JoinHandle<()>), AuditError> {
        Self::start_with(path, forward, AuditOptions::default()).await
    }

    /// The file writer and (with `forward`) the shipper feed run independently, so a full disk
    /// does not stop CloudWatch Logs and a slow shipper does not stop the file. The handle
    /// ends when every clone of the sink is gone and what they held is delivered.
    pub async fn start_with(
        path: &Path,
        forward: Option<mpsc::Sender<AuditRecord>>,
        options: AuditOptions,
    ) -> Result<(AuditSink, tokio::task::JoinHandle<()>), AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(open_err)?;
        }
        let file = {
            let path = path.to_path_buf();
            let (max, keep) = (options.max_file_bytes, options.keep_files.max(1));
            tokio::task::spawn_blocking(move || AuditFile::open(path, max, keep))
                .await
                .map_err(|e| open_err(std::io::Error::other(e)))?
                .map_err(open_err)?
        };
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            cap: options.buffer_bytes.max(RESERVE_BYTES * 4),
            ways: if forward.is_some() { 2 } else { 1 },
            reopen: Notify::new(),
            store: options.store.clone(),
        });
        let (to_file, file_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(file, file_rx, shared.clone()));
        let (to_shipper, shipper_task) = match forward {
            Some(tx) => {
                let (to, rx) = mpsc::unbounded_channel();
                (
                    Some(to),
                    Some(tokio::spawn(forward_loop(rx, tx, shared.clone()))),
                )
            }
            None => (None, None),
        };
        let handle = tokio::spawn(async move {
            let _ = writer.await;
            if let Some(t) = shipper_task {
                let _ = t.await;
            }
        });
        Ok((
            AuditSink {
                shared,
                to_file,
                to_shipper,
            },
            handle,
        ))
    }

    /// Reserves room for one request's record, or refuses: the caller answers 503 before doing
    /// any work. `probe` requests (health, readiness, metrics) get a little headroom beyond the
    /// bound so monitoring still sees an agent whose audit pipeline is full.
    pub fn admit(&self, probe: bool) -> Result<Admission, AuditFull> {
        let limit = if probe {
            self.shared.cap + self.shared.cap / 8
        } else {
            self.shared.cap
        };
        let charge = RESERVE_BYTES * self.shared.ways;
        let before = self.shared.pending.fetch_add(charge, Ordering::AcqRel);
        if before + charge > limit {
            self.shared.release(charge);
            return Err(AuditFull);
        }
        Ok(Admission {
            sink: self.clone(),
            reserved: charge,
        })
    }

    /// Records one request without an admission check (callers that cannot refuse).
    pub async fn record(&self, record: AuditRecord) {
        self.enqueue(record, 0);
    }

    /// Counts one request whose record the pipeline could not take (see [`Self::admit`]).
    pub fn count_dropped(&self, reason: &'static str) {
        drops::record(self.shared.store.as_deref(), drops::sink::AUDIT, reason, 1);
    }

    /// Bytes of records held in memory, not yet in both the file and the shipper's queue.
    pub fn pending_bytes(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Reopens the file at its path (after logrotate moved it away).
    pub fn reopen(&self) {
        self.shared.reopen.notify_one();
    }

    fn enqueue(&self, record: AuditRecord, reserved: usize) {
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        record.write_json_line(&mut line);
        let len = line.len();
        self.shared
            .pending
            .fetch_add(len * self.shared.ways, Ordering::AcqRel);
        self.shared.release(reserved);
        if let Some(to) = &self.to_shipper
            && to.send((record, len)).is_err()
        {
            self.shared.release(len);
            drops::record(
                self.shared.store.as_deref(),
                drops::sink::LOGS,
                drops::reason::SINK_STOPPED,
                1,
            );
        }
        if self.to_file.send(Arc::new(Entry { line })).is_err() {
            self.shared.release(len);
            drops::record(
                self.shared.store.as_deref(),
                drops::sink::AUDIT,
                drops::reason::SINK_STOPPED,
                1,
            );
        }
    }
}

/// The open audit file; used only on blocking threads.
struct AuditFile {
    path: PathBuf,
    file: std::fs::File,
    max_bytes: u64,
    keep: usize,
    last_sync: Instant,
}

/// The audit file is fsynced at most this often (on the blocking thread, never per record).
const SYNC_EVERY: Duration = Duration::from_secs(1);

impl AuditFile {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<AuditFile> {
        let file = Self::open_file(&path)?;
        Ok(AuditFile {
            path,
            file,
            max_bytes,
            keep,
            last_sync: Instant::now(),
        })
    }

    fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Appends whole lines or nothing: a failed write is cut back to the last whole line so
    /// the file never holds a torn record.
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // Asked each time: someone (logrotate copytruncate) may have changed it.
        let len = self.file.metadata()?.len();
        if len > 0
            && len + buf.len() as u64 > self.max_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(error = %e, path = %self.path.display(), "audit log rotation failed");
        }
        let len = self.file.metadata()?.len();
        match self.file.write_all(buf) {
            Ok(()) => {
                if self.last_sync.elapsed() >= SYNC_EVERY {
                    self.last_sync = Instant::now();
                    if let Err(e) = self.file.sync_data() {
                        tracing::warn!(error = %e, "audit log fsync failed");
                    }
                }
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(len) {
                    tracing::warn!(error = %cut, "cannot cut a torn audit write back");
                }
                Err(e)
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.reopen()
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        self.file = Self::open_file(&self.path)?;
        Ok(())
    }
}

/// Runs `f` on the file on a blocking thread (writes and renames never block a worker).
async fn on_file<T: Send + 'static>(
    file: AuditFile,
    f: impl FnOnce(&mut AuditFile) -> T + Send + 'static,
) -> Option<(AuditFile, T)> {
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let out = f(&mut file);
        (file, out)
    })
    .await
    .ok()
}

async fn reopen(file: AuditFile) -> Option<AuditFile> {
    let (file, result) = on_file(file, |f| f.reopen()).await?;
    match result {
        Ok(()) => tracing::info!(path = %file.path.display(), "audit log reopened"),
        Err(e) => {
            tracing::error!(error = %e, "cannot reopen the audit log; writing to the old file")
        }
    }
    Some(file)
}

async fn write_loop(
    file: AuditFile,
    mut rx: mpsc::UnboundedReceiver<Arc<Entry>>,
    shared: Arc<Shared>,
) {
    let mut file = Some(file);
    let mut queue: VecDeque<Arc<Entry>> = VecDeque::new();
    let mut closed = false;
    let mut backoff = MIN_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    while let Some(f) = file.take() {
        if queue.is_empty() {
            if closed {
                break;
            }
            tokio::select! {
                got = rx.recv() => match got {
                    Some(e) => queue.push_back(e),
                    None => closed = true,
                },
                _ = shared.reopen.notified() => {
                    file = reopen(f).await;
                    continue;
                }
            }
            // Let the records of concurrent requests gather: one write (and one wake of this
            // task and of a blocking thread) per few milliseconds instead of per request. The
            // requests themselves never wait for it; their records are already admitted.
            if !closed {
                tokio::time::sleep(WRITE_COALESCE).await;
            }
        }
        loop {
            match rx.try_recv() {
                Ok(e) => queue.push_back(e),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if queue.is_empty() {
            file = Some(f);
            continue;
        }
        let mut buf = Vec::new();
        let mut n = 0;
        for e in &queue {
            if n > 0 && buf.len() + e.line.len() > MAX_WRITE_BYTES {
                break;
            }
            buf.extend_from_slice(&e.line);
            n += 1;
        }
        let Some((f, result)) = on_file(f, move |f| f.append(&buf)).await else {
            tracing::error!("audit writer thread failed");
            break;
        };
        match result {
            Ok(()) => {
                if failing_since.take().is_some() {
                    tracing::info!("audit log writable again; buffered records written");
                }
                backoff = MIN_BACKOFF;
                for e in queue.drain(..n) {
                    shared.release(e.line.len());
                }
                file = Some(f);
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::error!(error = %e, buffered = queue.len(),
                        buffered_bytes = shared.pending.load(Ordering::Acquire),
                        "audit log write failed; records kept in memory and retried");
                    last_warning = Some(Instant::now());
                }
                if closed && since.elapsed() >= GIVE_UP_AFTER_CLOSE {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => file = Some(f),
                    _ = shared.reopen.notified() => file = reopen(f).await,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if !queue.is_empty() {
        let lost: usize = queue.iter().map(|e| e.line.len()).sum();
        shared.release(lost);
        tracing::error!(
            records = queue.len(),
            "audit writer stopping with records the file never took"
        );
        drops::record(
            shared.store.as_deref(),
            drops::sink::AUDIT,
            drops::reason::SPOOL_WRITE,
            queue.len() as u64,
        );
    }
}

/// Feeds the log shipper, waiting while its queue is full: the wait shows up as pending bytes,
/// and so as 503s once the buffer is full, never as a lost record.
async fn forward_loop(
    mut rx: mpsc::UnboundedReceiver<(AuditRecord, usize)>,
    tx: mpsc::Sender<AuditRecord>,
    shared: Arc<Shared>,
) {
    let mut open = true;
    while let Some((record, len)) = rx.recv().await {
        if open && tx.send(record).await.is_err() {
            tracing::error!("log shipper stopped taking audit records");
            open = false;
        }
        shared.release(len);
        if !open {
            drops::record(
                shared.store.as_deref(),
                drops::sink::LOGS,
                drops::reason::SINK_STOPPED,
                1,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            time: "2026-01-01T00:00:00.000Z".into(),
            request_id: format!("r-{i}"),
            interaction_id: format!("r-{i}"),
            session_id: None,
            subject: None,
            role: None,
            method: "POST".into(),
            route: "/api/v1/{model}".into(),
            model: Some("alpha".into()),
            status: 200,
            outcome: "success",
            latency_ms: 1.0,
            bytes_in: 10,
            bytes_out: 10,
            client: "127.0.0.1:1".into(),
            user_agent: None,
            detail: None,
        }
    }

    #[test]
    fn strings_needing_escapes_are_found_wherever_the_byte_is() {
        for special in [b'"', b'\\', b'\n', 0u8, 0x1f] {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "{special:#x} at {at} of {len}");
                }
            }
        }
        for plain in [
            "",
            "2026-12-02T10:37:00.123Z",
            "é ~ ÿ \u{7f} [::1]:80 /api/v1/{model}",
        ] {
            assert!(!needs_escape(plain.as_bytes()), "{plain}");
        }
        // Every byte value once, as the only special byte of a word and of a tail.
        for b in 0..=255u8 {
            let expected = b < 0x20 || b == b'"' || b == b'\\';
            assert_eq!(
                needs_escape(&[b'x', b'x', b'x', b, b'x', b'x', b'x', b'x']),
                expected
            );
            assert_eq!(needs_escape(&[b'x', b]), expected);
        }
    }

    #[test]
    fn record_times_are_what_humantime_writes_to_the_millisecond() {
        let epoch = std::time::UNIX_EPOCH;
        for (secs, nanos) in [
            (1_796_208_420, 123_456_789),
            (1_796_208_420, 999_999_999),
            (1_796_208_421, 0),
            (1_796_208_421, 7_000_000),
            (0, 50_000_000),
            (1_796_208_420, 1_000_000),
        ] {
            let at = epoch + Duration::new(secs, nanos);
            assert_eq!(
                rfc3339_millis(at),
                humantime::format_rfc3339_millis(at).to_string()
            );
        }
    }

    #[test]
    fn a_record_line_is_byte_for_byte_what_serde_json_writes() {
        let awkward = [
            "",
            "plain",
            "quote \" and backslash \\",
            "controls \n\r\t\u{8}\u{c}\u{1}\u{1f} and \u{7f}",
            "ünïcødé ✓ 🚀",
            "</script>",
        ];
        let mut checked = 0;
        for (n, text) in awkward.iter().enumerate() {
            for some in [false, true] {
                let maybe = |s: &str| some.then(|| s.to_string());
                let mut r = record(n);
                r.time = (*text).to_string();
                r.request_id = format!("{text}-id");
                r.session_id = maybe(text);
                r.subject = maybe(text);
                r.role = maybe("user");
                r.method = (*text).to_string();
                r.model = maybe(text);
                r.client = (*text).to_string();
                r.user_agent = maybe(text);
                r.detail = maybe(text);
                r.outcome = if some { "client_closed" } else { "success" };
                r.latency_ms = [0.0, 1.5, 1e-7, 123456789.125, f64::NAN, f64::INFINITY][n];
                r.bytes_in = if some { u64::MAX } else { 0 };
                r.status = if some { CLIENT_CLOSED } else { 200 };
                let mut expected = serde_json::to_vec(&r).unwrap();
                expected.push(b'\n');
                let mut line = Vec::new();
                r.write_json_line(&mut line);
                assert_eq!(
                    String::from_utf8_lossy(&line),
                    String::from_utf8_lossy(&expected)
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * awkward.len());
    }

    fn ids(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    async fn wait_for(mut ok: impl FnMut() -> bool) {
        for _ in 0..500 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not met in 5 s");
    }

    #[tokio::test]
    async fn rotates_by_size_keeping_n_files_of_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.jsonl");
        let options = AuditOptions {
            max_file_bytes: 2000,
            keep_files: 2,
            ..AuditOptions::default()
        };
        let (sink, _w) = AuditSink::start_with(&path, None, options).await.unwrap();
        for i in 0..40 {
            sink.admit(false).unwrap().record(record(i));
            // One write per record, so rotation happens on line boundaries we can predict.
            wait_for(|| sink.pending_bytes() == 0).await;
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (cur, one, two) = (
            read(&path),
            read(&dir.path().join("api.jsonl.1")),
            read(&dir.path().join("api.jsonl.2")),
        );
        assert!(
            !dir.path().join("api.jsonl.3").exists(),
            "keeps 2 rotated files"
        );
        for text in [&cur, &one, &two] {
            assert!(!text.is_empty() && text.len() <= 2000, "{}", text.len());
        }
        // Oldest first across .2, .1, current: a contiguous run ending at the last record.
        let all: Vec<String> = [two, one, cur].iter().flat_map(|t| ids(t)).collect();
        let first: usize = all[0].trim_start_matches("r-").parse().unwrap();
        let expected: Vec<String> = (first..40).map(|i| format!("r-{i}")).collect();
        assert_eq!(all, expected);
        assert!(first > 0, "older files were rotated away");
    }

    #[tokio::test]
    async fn reopen_follows_logrotate_moving_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.jsonl");
        let (sink, _w) = AuditSink::start(&path).await.unwrap();
        sink.admit(false).unwrap().record(record(0));
        wait_for(|| sink.pending_bytes() == 0).await;
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        sink.reopen();
        wait_for(|| path.exists()).await;
        sink.admit(false).unwrap().record(record(1));
        wait_for(|| sink.pending_bytes() == 0).await;
        assert_eq!(ids(&std::fs::read_to_string(&path).unwrap()), ["r-1"]);
        let moved = std::fs::read_to_string(dir.path().join("moved")).unwrap();
        assert_eq!(ids(&moved), ["r-0"]);
    }

    #[tokio::test]
    async fn failed_writes_are_kept_and_land_once_the_file_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.jsonl");
        // Every write to /dev/full fails with ENOSPC, like a full state dir.
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let (sink, _w) = AuditSink::start(&path).await.unwrap();
        for i in 0..5 {
            sink.admit(false).unwrap().record(record(i));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sink.pending_bytes() > 0, "records are still held");
        // Space is back (here: a real file at the path, picked up by the reopen).
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        sink.reopen();
        wait_for(|| sink.pending_bytes() == 0).await;
        let expected: Vec<String> = (0..5).map(|i| format!("r-{i}")).collect();
        assert_eq!(ids(&std::fs::read_to_string(&path).unwrap()), expected);
    }

    #[tokio::test]
    async fn a_stalled_shipper_fills_the_buffer_then_admission_is_refused_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.jsonl");
        let (tx, mut rx) = mpsc::channel(4);
        let options = AuditOptions {
            buffer_bytes: 64 * 1024,
            ..AuditOptions::default()
        };
        let (sink, writer) = AuditSink::start_with(&path, Some(tx), options)
            .await
            .unwrap();
        let mut admitted = 0;
        while let Ok(a) = sink.admit(false) {
            a.record(record(admitted));
            admitted += 1;
            assert!(admitted < 10_000, "admission never refused");
        }
        assert!(admitted > 20, "refused too early: {admitted}");
        // Probes still get the headroom.
        assert!(sink.admit(true).is_ok());
        // A dropped admission gives its room back.
        let before = sink.pending_bytes();
        drop(sink.admit(true).unwrap());
        assert_eq!(sink.pending_bytes(), before);
        drop(sink);
        let mut got = Vec::new();
        while let Some(r) = rx.recv().await {
            got.push(r.request_id);
        }
        writer.await.unwrap();
        let expected: Vec<String> = (0..admitted).map(|i| format!("r-{i}")).collect();
        assert_eq!(got, expected, "shipper got every admitted record, in order");
        assert_eq!(ids(&std::fs::read_to_string(&path).unwrap()), expected);
    }
}
