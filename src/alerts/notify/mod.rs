//! Notification delivery, at least once: each notification is appended to a durable spool per
//! channel (SNS, Slack), and one worker per channel delivers the spool in order, retrying with
//! backoff until the peer takes it. An outage delays alerts; it never drops them.

pub mod slack;
pub mod sns;

use super::evaluator::Notification;
use crate::sinks::cloudwatch::retry::Backoff;
use crate::sinks::spool::{Spool, SpoolError};
use crate::telemetry::{MetricStore, drops};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Spooled notifications kept at most (they are small; this is years of alerts).
const SPOOL_BYTES: u64 = 16 << 20;

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// The request itself is bad (e.g. a rejected payload): retrying cannot help.
    pub permanent: bool,
    pub message: String,
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        DeliveryError {
            permanent: false,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError {
            permanent: true,
            message: message.into(),
        }
    }
}

/// Where notifications go.
pub enum Channel {
    Sns(sns::SnsChannel),
    Slack(slack::SlackChannel),
}

impl Channel {
    pub fn name(&self) -> &'static str {
        match self {
            Channel::Sns(_) => "sns",
            Channel::Slack(_) => "slack",
        }
    }

    pub async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        match self {
            Channel::Sns(c) => c.deliver(n).await,
            Channel::Slack(c) => c.deliver(n).await,
        }
    }

    /// Slack asks for at most about one message per second per webhook.
    fn min_interval(&self) -> Duration {
        match self {
            Channel::Sns(_) => Duration::ZERO,
            Channel::Slack(_) => Duration::from_secs(1),
        }
    }
}

/// What every message carries besides the notification itself.
#[derive(Debug, Clone)]
pub struct MessageContext {
    pub host: String,
    /// `alerts.runbook_url`; each message links `<runbook_url>#<rule>`.
    pub runbook_url: String,
}

impl MessageContext {
    pub fn runbook(&self, rule: &str) -> String {
        format!("{}#{rule}", self.runbook_url)
    }
}

/// One channel's durable queue.
pub struct Outbox {
    spool: Spool,
    wake: Notify,
    /// Spool drops (over its byte bound) already counted in `RecordsDropped`.
    reported_drops: AtomicU64,
    /// Where dropped notifications are counted.
    store: Option<Arc<MetricStore>>,
}

impl Outbox {
    pub fn open(dir: &Path, store: Option<Arc<MetricStore>>) -> Result<Arc<Outbox>, SpoolError> {
        Ok(Arc::new(Outbox {
            spool: Spool::open(dir, SPOOL_BYTES)?,
            wake: Notify::new(),
            reported_drops: AtomicU64::new(0),
            store,
        }))
    }

    fn count_dropped(&self, reason: &'static str, n: u64) {
        drops::record(self.store.as_deref(), drops::sink::NOTIFY, reason, n);
    }

    /// Appends durably (fsync: call it from a blocking thread) and wakes the worker.
    pub fn enqueue(&self, n: &Notification) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(n).map_err(|e| SpoolError::Io {
            path: Default::default(),
            source: std::io::Error::other(e),
        })?;
        self.spool.append(&bytes)?;
        self.wake.notify_one();
        let evicted = self.take_new_drops();
        self.count_dropped(drops::reason::SPOOL_FULL, evicted);
        Ok(())
    }

    /// Notifications waiting for delivery.
    pub fn pending(&self) -> u64 {
        self.spool.pending()
    }

    /// Notifications the spool dropped (oldest first, over its bound) since the last call.
    pub fn take_new_drops(&self) -> u64 {
        let total = self.spool.dropped();
        let before = self.reported_drops.swap(total, Ordering::Relaxed);
        total.saturating_sub(before)
    }
}

/// Runs spool I/O (file reads, fsyncs) on a blocking thread, never on an async worker.
async fn blocking<T: Send + 'static>(
    outbox: &Arc<Outbox>,
    f: impl FnOnce(&Outbox) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    let o = outbox.clone();
    tokio::task::spawn_blocking(move || f(&o))
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                path: Default::default(),
                source: std::io::Error::other(e),
            })
        })
}

/// Delivers `outbox` to `channel` in order until cancelled.
pub async fn run_worker(
    outbox: Arc<Outbox>,
    channel: Channel,
    backoff: Backoff,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        let next = match blocking(&outbox, |o| o.spool.peek(1)).await {
            Ok(mut v) => v.pop(),
            Err(e) => {
                tracing::error!(channel = channel.name(), error = %e, "alert spool unreadable");
                None
            }
        };
        let Some(record) = next else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = outbox.wake.notified() => continue,
                // A spool error above is retried on a timer rather than waiting forever.
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
            }
        };
        let Ok(n) = serde_json::from_slice::<Notification>(&record.payload) else {
            tracing::error!(
                channel = channel.name(),
                seq = record.seq,
                "undecodable spooled notification dropped"
            );
            outbox.count_dropped(drops::reason::CORRUPT, 1);
            let seq = record.seq;
            let _ = blocking(&outbox, move |o| o.spool.ack(seq)).await;
            continue;
        };
        if let Some(at) = last_sent {
            let due = at + channel.min_interval();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = channel.deliver(&n) => r,
        };
        last_sent = Some(tokio::time::Instant::now());
        match result {
            Ok(()) => {
                failures = 0;
                tracing::info!(channel = channel.name(), kind = n.kind.as_str(), rule = %n.rule,
                    dedupe_key = %n.dedupe_key, "alert notification delivered");
                let seq = record.seq;
                if let Err(e) = blocking(&outbox, move |o| o.spool.ack(seq)).await {
                    // Not acked means sent again later: a duplicate with the same dedupe key.
                    tracing::error!(channel = channel.name(), error = %e, "cannot ack alert spool");
                }
            }
            Err(e) if e.permanent => {
                failures = 0;
                tracing::error!(channel = channel.name(), rule = %n.rule, dedupe_key = %n.dedupe_key,
                    error = %e, "alert notification rejected; dropped");
                outbox.count_dropped(drops::reason::REJECTED, 1);
                let seq = record.seq;
                let _ = blocking(&outbox, move |o| o.spool.ack(seq)).await;
            }
            Err(e) => {
                let delay = backoff.delay(failures, rand::random::<f64>());
                failures = failures.saturating_add(1);
                tracing::warn!(channel = channel.name(), rule = %n.rule, error = %e,
                    retry_in = ?delay, waiting = outbox.pending(), "alert notification failed; will retry");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for an epoch-ms time.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
