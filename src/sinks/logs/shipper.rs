//! The shipper: one task per group sending its spool oldest first, one PutLogEvents at a time,
//! least-privilege (create only on ResourceNotFound) and acknowledging only after success.

use super::*;

/// Spool records read per replay step.
pub(super) const PEEK_RECORDS: usize = 16;

/// Ships one group's spool, oldest first, one call at a time (per-stream order).
pub(super) struct Shipper {
    pub(super) shared: Arc<Shared>,
    pub(super) group: Arc<GroupSpool>,
}

impl Shipper {
    pub(super) async fn run(mut self, first: tokio::time::Instant, cancel: CancellationToken) {
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

    pub(super) async fn peek(&self) -> Result<Vec<SpoolRecord>, String> {
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

    pub(super) async fn ack(&self, seq: u64) -> bool {
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
    pub(super) async fn backoff(
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
    pub(super) async fn drain(&mut self, cancel: Option<&CancellationToken>) {
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
    pub(super) async fn send(
        &mut self,
        events: &[LogEvent],
    ) -> Result<request::Rejected, service::CallError> {
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

    pub(super) async fn put(
        &self,
        events: &[LogEvent],
    ) -> Result<request::Rejected, service::CallError> {
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
