//! CloudWatch metrics sink: every flush interval (jittered) the store's window becomes
//! PutMetricData calls; failures are retried with backoff, then spooled durably and replayed
//! oldest-first once CloudWatch answers again.
//!
//! Anatomy as in Vector's sinks: `config` (settings), `request` (pure batching), `service` (the
//! call), `retry` (backoff and error classes).

pub mod config;
pub mod request;
pub mod retry;
pub mod service;

use crate::sinks::aws_error::{AUTH_BACKOFF, AccessWatch, ErrorClass};
use crate::sinks::spool::{Spool, SpoolError};
use crate::telemetry::drops::{self, reason, sink};
use crate::telemetry::{MetricStore, TelemetryEvent};
use config::CloudWatchSinkConfig;
use request::{Batch, Datum, batches, datums_from_window, unix_ms};
use service::PutService;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Replay reads the spool in chunks of this many batches.
const REPLAY_CHUNK: usize = 16;
/// Encoded batches kept in memory while the disk refuses spool appends (each ≤ ~1 MiB).
const MAX_UNSPOOLED_BYTES: u64 = 16 << 20;
/// CloudWatch list prices (us-east-1): custom metric per month, PutMetricData per 1000 calls.
const PRICE_PER_METRIC_MONTH: f64 = 0.30;
const PRICE_PER_1000_CALLS: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
pub enum CloudWatchError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Counters describing the sink's work since start (tests, benchmark, console).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub put_calls: AtomicU64,
    pub put_failures: AtomicU64,
    pub datums_sent: AtomicU64,
    pub batches_spooled: AtomicU64,
    pub batches_replayed: AtomicU64,
    pub dropped_too_old: AtomicU64,
    pub dropped_invalid: AtomicU64,
    pub flushes: AtomicU64,
}

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub datums: usize,
    pub sent_batches: usize,
    pub replayed_batches: usize,
    pub spooled_batches: usize,
    pub dropped_batches: usize,
}

/// Monthly cost estimate for `series` metrics at this flush interval.
pub fn estimate_monthly_cost(series: usize, flush_interval: Duration) -> (f64, f64) {
    let flushes = 30.0 * 24.0 * 3600.0 / flush_interval.as_secs_f64().max(1.0);
    let calls = flushes * (series.div_ceil(request::MAX_DATUMS_PER_CALL).max(1) as f64);
    (
        calls,
        series as f64 * PRICE_PER_METRIC_MONTH + calls / 1000.0 * PRICE_PER_1000_CALLS,
    )
}

pub struct CloudWatchSink {
    cfg: CloudWatchSinkConfig,
    store: Arc<MetricStore>,
    service: PutService,
    spool: Arc<Spool>,
    stats: Arc<SinkStats>,
    /// Batches the spool refused (disk full), oldest first, waiting for the next try.
    unspooled: Mutex<Unspooled>,
    access: AccessWatch,
    /// The spool's drop count already reported to `drops::record`.
    spool_dropped_seen: AtomicU64,
    /// While an authorization episode lasts: the next time a replay may be tried (retried on
    /// the capped auth schedule rather than at every flush), and the retry number.
    auth_retry: Mutex<Option<(tokio::time::Instant, u32)>>,
}

#[derive(Default)]
struct Unspooled {
    /// (encoded batch, datums), oldest first.
    batches: std::collections::VecDeque<(Vec<u8>, usize)>,
    bytes: u64,
    /// The last append failed (log once per episode).
    refused: bool,
}

/// Why a send did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendError {
    Class(ErrorClass),
    /// The agent is stopping: the batch goes to the spool.
    Cancelled,
}

impl CloudWatchSink {
    /// Opens the spool (replaying what a previous run left) and the client.
    pub fn new(
        cfg: CloudWatchSinkConfig,
        sdk: &aws_config::SdkConfig,
        store: Arc<MetricStore>,
    ) -> Result<Self, CloudWatchError> {
        let spool = Spool::open(&cfg.spool_dir, cfg.max_spool_bytes)?;
        let pending = spool.pending();
        if pending > 0 {
            tracing::info!(
                batches = pending,
                "CloudWatch spool has undelivered batches; replaying after the next flush"
            );
        }
        Ok(CloudWatchSink {
            service: PutService::new(sdk, cfg.namespace.clone()),
            cfg,
            store,
            spool: Arc::new(spool),
            stats: Arc::new(SinkStats::default()),
            unspooled: Mutex::new(Unspooled::default()),
            access: AccessWatch::new(sink::CLOUDWATCH, None),
            spool_dropped_seen: AtomicU64::new(0),
            auth_retry: Mutex::new(None),
        })
    }

    /// Announces authorization failures (and their end) on `events`.
    pub fn with_events(mut self, events: broadcast::Sender<TelemetryEvent>) -> Self {
        self.access = AccessWatch::new(sink::CLOUDWATCH, Some(events));
        self
    }

    fn store(&self) -> Option<&MetricStore> {
        Some(&self.store)
    }

    /// Reports what the spool dropped (byte bound) or found damaged since the last call.
    fn count_spool_losses(&self) {
        let dropped = self.spool.dropped();
        let seen = self.spool_dropped_seen.swap(dropped, Ordering::Relaxed);
        // Batches, not datums: the spool drops whole records unread.
        drops::record(
            self.store(),
            sink::CLOUDWATCH,
            reason::SPOOL_FULL,
            dropped.saturating_sub(seen),
        );
        drops::record(
            self.store(),
            sink::CLOUDWATCH,
            reason::CORRUPT,
            self.spool.take_corrupt(),
        );
    }

    fn drop_batch(&self, batch: &Batch, why: &'static str, report: &mut FlushReport) {
        report.dropped_batches += 1;
        drops::record(
            self.store(),
            sink::CLOUDWATCH,
            why,
            batch.datums.len() as u64,
        );
    }

    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Undelivered batches waiting in the spool.
    pub fn spooled(&self) -> u64 {
        self.spool.pending()
    }

    /// Batches dropped by the spool's byte bound since start.
    pub fn spool_dropped(&self) -> u64 {
        self.spool.dropped()
    }

    /// One try plus retries with jittered exponential backoff (none after an authorization
    /// failure: that batch waits in the spool on the auth schedule). Gives up on cancel.
    async fn send(
        &self,
        batch: &Batch,
        attempts: u32,
        cancel: Option<&CancellationToken>,
    ) -> Result<(), SendError> {
        let mut retry = 0;
        loop {
            self.stats.put_calls.fetch_add(1, Ordering::Relaxed);
            let result = match cancel {
                Some(c) => tokio::select! {
                    _ = c.cancelled() => return Err(SendError::Cancelled),
                    r = self.service.put(&batch.datums) => r,
                },
                None => self.service.put(&batch.datums).await,
            };
            match result {
                Ok(()) => {
                    self.stats
                        .datums_sent
                        .fetch_add(batch.datums.len() as u64, Ordering::Relaxed);
                    self.access.ok();
                    *self.auth_retry.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return Ok(());
                }
                Err(e) => {
                    self.stats.put_failures.fetch_add(1, Ordering::Relaxed);
                    retry += 1;
                    if e.class == ErrorClass::Auth {
                        self.access
                            .denied("PutMetricData", "cloudwatch:PutMetricData", &e.message);
                        let mut next = self.auth_retry.lock().unwrap_or_else(|e| e.into_inner());
                        let n = next.map_or(0, |(_, n)| n + 1);
                        *next = Some((
                            tokio::time::Instant::now()
                                + AUTH_BACKOFF.delay(n, rand::random::<f64>()),
                            n,
                        ));
                    }
                    if matches!(e.class, ErrorClass::Invalid | ErrorClass::Auth)
                        || retry >= attempts
                    {
                        tracing::warn!(error = %e, datums = batch.datums.len(), "CloudWatch PutMetricData failed");
                        return Err(SendError::Class(e.class));
                    }
                    let delay = self.cfg.backoff.delay(retry - 1, rand::random::<f64>());
                    match cancel {
                        Some(c) => tokio::select! {
                            _ = c.cancelled() => return Err(SendError::Cancelled),
                            _ = tokio::time::sleep(delay) => {}
                        },
                        None => tokio::time::sleep(delay).await,
                    }
                }
            }
        }
    }

    /// False while an authorization episode's backoff says not to call yet.
    fn auth_allows_call(&self) -> bool {
        self.auth_retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|(at, _)| tokio::time::Instant::now() >= at)
    }

    /// Runs blocking spool I/O (fsync) off the async workers.
    async fn on_spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> T + Send + 'static,
    ) -> Option<T> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || f(&spool)).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "CloudWatch spool task failed");
                None
            }
        }
    }

    /// Puts a batch in the spool behind any the disk refused earlier; when the disk refuses
    /// (full, I/O error) it waits in memory (bounded in bytes) for the next flush.
    async fn spool_batch(&self, batch: &Batch, report: &mut FlushReport) {
        match serde_json::to_vec(batch) {
            Ok(bytes) => {
                let mut q = self.unspooled.lock().unwrap_or_else(|e| e.into_inner());
                if q.bytes + bytes.len() as u64 > MAX_UNSPOOLED_BYTES {
                    drop(q);
                    tracing::error!(
                        datums = batch.datums.len(),
                        "cannot spool CloudWatch batch and the memory buffer is full; dropped"
                    );
                    self.drop_batch(batch, reason::SPOOL_WRITE, report);
                    return;
                }
                q.bytes += bytes.len() as u64;
                q.batches.push_back((bytes, batch.datums.len()));
            }
            Err(e) => {
                tracing::error!(error = %e, datums = batch.datums.len(), "cannot encode CloudWatch batch; dropped");
                self.drop_batch(batch, reason::SPOOL_WRITE, report);
                return;
            }
        }
        self.write_unspooled(report).await;
    }

    /// Appends the batches waiting in memory, oldest first, until done or the disk refuses.
    async fn write_unspooled(&self, report: &mut FlushReport) {
        let waiting = {
            let mut q = self.unspooled.lock().unwrap_or_else(|e| e.into_inner());
            if q.batches.is_empty() {
                return;
            }
            std::mem::take(&mut q.batches)
        };
        let Some((mut rest, written, failure)) = self
            .on_spool(move |spool| {
                let mut rest = waiting;
                let mut written = 0usize;
                while let Some((bytes, _)) = rest.front() {
                    if let Err(e) = spool.append(bytes) {
                        return (rest, written, Some(e.to_string()));
                    }
                    rest.pop_front();
                    written += 1;
                }
                (rest, written, None)
            })
            .await
        else {
            return;
        };
        report.spooled_batches += written;
        self.stats
            .batches_spooled
            .fetch_add(written as u64, Ordering::Relaxed);
        let mut q = self.unspooled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = failure
            && !q.refused
        {
            tracing::error!(error = %e, waiting = rest.len(),
                "cannot spool CloudWatch batches (disk full?); kept in memory and retried");
        }
        q.refused = !rest.is_empty();
        // Anything queued meanwhile is newer: it goes behind.
        rest.append(&mut q.batches);
        q.bytes = rest.iter().map(|(b, _)| b.len() as u64).sum();
        q.batches = rest;
    }

    /// Replays the spool oldest-first; false when CloudWatch is still failing.
    async fn replay(
        &self,
        now: SystemTime,
        report: &mut FlushReport,
        cancel: Option<&CancellationToken>,
    ) -> bool {
        let oldest_ok = unix_ms(now) - self.cfg.max_age.as_millis() as i64;
        loop {
            let records = self
                .on_spool(|spool| spool.peek(REPLAY_CHUNK).map_err(|e| e.to_string()))
                .await;
            self.count_spool_losses();
            let records = match records {
                Some(Ok(r)) => r,
                None => return false,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the CloudWatch spool");
                    return false;
                }
            };
            if records.is_empty() {
                return true;
            }
            for rec in records {
                let outcome = match serde_json::from_slice::<Batch>(&rec.payload) {
                    Err(e) => {
                        tracing::error!(error = %e, seq = rec.seq, "unreadable spooled batch; dropped");
                        self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                        report.dropped_batches += 1;
                        drops::record(self.store(), sink::CLOUDWATCH, reason::CORRUPT, 1);
                        Ok(())
                    }
                    Ok(batch) if batch.created_ms < oldest_ok => {
                        // CloudWatch rejects datums older than two weeks: sending would only fail.
                        tracing::warn!(
                            seq = rec.seq,
                            datums = batch.datums.len(),
                            "spooled batch too old for CloudWatch; dropped"
                        );
                        self.stats.dropped_too_old.fetch_add(1, Ordering::Relaxed);
                        self.drop_batch(&batch, reason::TOO_OLD, report);
                        Ok(())
                    }
                    Ok(batch) => match self.send(&batch, 1, cancel).await {
                        Ok(()) => {
                            report.replayed_batches += 1;
                            self.stats.batches_replayed.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(SendError::Class(ErrorClass::Invalid)) => {
                            self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                            self.drop_batch(&batch, reason::REJECTED, report);
                            Ok(())
                        }
                        Err(_) => Err(()),
                    },
                };
                if outcome.is_err() {
                    return false;
                }
                let seq = rec.seq;
                let acked = self
                    .on_spool(move |spool| spool.ack(seq).map_err(|e| e.to_string()))
                    .await;
                if let Some(Err(e)) = acked {
                    // Not acked means it may be sent again after a restart; say so.
                    tracing::error!(error = %e, seq = rec.seq, "cannot record CloudWatch delivery in the spool");
                    return false;
                }
            }
        }
    }

    /// Ships everything recorded since the last flush; replays the spool first so CloudWatch
    /// sees batches oldest-first, and spools new batches behind any that are still waiting.
    /// The window's datums, plus the fleet copies of the scaling metrics when in a group.
    fn datums(&self, window: &crate::telemetry::store::FlushWindow, now: SystemTime) -> Vec<Datum> {
        let mut datums = datums_from_window(window, now, self.cfg.high_resolution);
        if let Some(group) = &self.cfg.autoscaling_group {
            let fleet =
                request::aggregate_by_group(&datums, group, &crate::ops::scaling::SCALING_METRICS);
            datums.extend(fleet);
        }
        datums
    }

    pub async fn flush_once(&self) -> FlushReport {
        self.flush(None).await
    }

    /// As [`CloudWatchSink::flush_once`]; when `cancel` fires mid-way, stops calling AWS and
    /// spools every batch not yet delivered (nothing drained from the window is lost).
    async fn flush(&self, cancel: Option<&CancellationToken>) -> FlushReport {
        let now = SystemTime::now();
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let window = self.store.drain_window();
        let datums = self.datums(&window, now);
        let mut report = FlushReport {
            datums: datums.len(),
            ..FlushReport::default()
        };
        let new = batches(datums, now);
        self.write_unspooled(&mut report).await;
        let mut healthy = self.auth_allows_call()
            && (self.spool.pending() == 0 || self.replay(now, &mut report, cancel).await);
        for batch in &new {
            if !healthy {
                self.spool_batch(batch, &mut report).await;
                continue;
            }
            match self
                .send(batch, self.cfg.backoff.attempts.max(1), cancel)
                .await
            {
                Ok(()) => report.sent_batches += 1,
                Err(SendError::Class(ErrorClass::Invalid)) => {
                    self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                    self.drop_batch(batch, reason::REJECTED, &mut report);
                }
                Err(_) => {
                    healthy = false;
                    self.spool_batch(batch, &mut report).await;
                }
            }
        }
        self.count_spool_losses();
        report
    }

    /// At shutdown: the store's current window goes into the spool first (durable before any
    /// network call), then one delivery attempt bounded by `shutdown_grace`; what is left
    /// stays spooled and the next run replays it.
    async fn final_flush(&self) {
        let now = SystemTime::now();
        let window = self.store.drain_window();
        let datums = self.datums(&window, now);
        let mut report = FlushReport::default();
        for batch in &batches(datums, now) {
            self.spool_batch(batch, &mut report).await;
        }
        let lost: usize = {
            let mut q = self.unspooled.lock().unwrap_or_else(|e| e.into_inner());
            q.bytes = 0;
            q.batches.drain(..).map(|(_, datums)| datums).sum()
        };
        if lost > 0 {
            tracing::error!(
                datums = lost,
                "stopping with CloudWatch batches the disk refused; counted as dropped"
            );
            drops::record(
                self.store(),
                sink::CLOUDWATCH,
                reason::SPOOL_WRITE,
                lost as u64,
            );
        }
        let grace = self.cfg.shutdown_grace;
        let delivered = tokio::time::timeout(grace, self.replay(now, &mut report, None)).await;
        let pending = self.spool.pending();
        if delivered.is_err() || pending > 0 {
            tracing::warn!(
                batches = pending,
                "CloudWatch sink stopped with batches spooled; the next run delivers them"
            );
        }
        self.count_spool_losses();
    }

    fn jittered_interval(&self) -> Duration {
        let j = self.cfg.jitter.clamp(0.0, 0.5);
        self.cfg
            .flush_interval
            .mul_f64(1.0 - j + 2.0 * j * rand::random::<f64>())
    }

    /// Flushes every (jittered) interval until cancelled, then spools the last window and
    /// makes one bounded attempt ([`CloudWatchSink::final_flush`]).
    pub async fn run(self, cancel: CancellationToken) {
        // Before the first samples the store is empty: fall back to the catalogue's count.
        let gpus = self.store.latest("GPUCount", &[]).unwrap_or(0.0) as usize;
        let models = self
            .store
            .series()
            .iter()
            .filter(|s| s.key.metric == "ModelUp")
            .count();
        let series = self
            .store
            .series_count()
            .max(crate::telemetry::catalog::expected_series(gpus, models));
        let (calls, cost) = estimate_monthly_cost(series, self.cfg.flush_interval);
        tracing::info!(
            namespace = %self.cfg.namespace,
            metrics = series,
            put_calls_per_month = calls as u64,
            estimated_usd_per_month = format!("{cost:.2}"),
            "CloudWatch metrics sink started"
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.jittered_interval()) => {
                    self.flush(Some(&cancel)).await;
                }
            }
        }
        self.final_flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_estimate_counts_metrics_and_calls() {
        let (calls, cost) = estimate_monthly_cost(100, Duration::from_secs(60));
        assert_eq!(calls, 43_200.0);
        assert!((cost - (30.0 + 0.432)).abs() < 1e-9, "{cost}");
        let (calls, _) = estimate_monthly_cost(1500, Duration::from_secs(60));
        assert_eq!(calls, 86_400.0, "two calls per flush above 1000 metrics");
    }
}
