//! One log group's durable spool: checksummed batches on disk plus the ledger that turns
//! dropped records into dropped events.

use super::*;

pub(super) const TARGET_FILE: &str = "target.json";

/// One group's spool plus the bookkeeping that turns dropped records into dropped events.
pub(super) struct GroupSpool {
    pub(super) target: Target,
    pub(super) spool: Spool,
    /// (seq, events) of every unacknowledged record, oldest first.
    pub(super) ledger: Mutex<VecDeque<(u64, usize)>>,
    pub(super) wake: Notify,
    /// Events/bytes spooled since the shipper last started a drain (the size trigger).
    pub(super) unshipped_events: AtomicU64,
    pub(super) unshipped_bytes: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn decode(rec: &SpoolRecord) -> Option<Vec<LogEvent>> {
    serde_json::from_slice(&rec.payload).ok()
}

impl GroupSpool {
    pub(super) fn open(
        dir: &Path,
        target: Target,
        max_bytes: u64,
    ) -> Result<GroupSpool, LogsError> {
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
    pub(super) fn append_one(&self, batch: &[LogEvent]) -> Result<usize, SpoolError> {
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
    pub(super) fn append(&self, batches: Vec<Vec<LogEvent>>) -> Result<usize, SpoolError> {
        let mut dropped = 0;
        for b in batches {
            dropped += self.append_one(&b)?;
        }
        Ok(dropped)
    }

    pub(super) fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut ledger = lock(&self.ledger);
        self.spool.ack(seq)?;
        while ledger.front().is_some_and(|(s, _)| *s <= seq) {
            ledger.pop_front();
        }
        Ok(())
    }

    /// True once enough waits for a full PutLogEvents call.
    pub(super) fn full_batch_waiting(&self) -> bool {
        self.unshipped_events.load(Ordering::Relaxed) >= request::MAX_BATCH_EVENTS as u64
            || self.unshipped_bytes.load(Ordering::Relaxed) >= request::MAX_BATCH_BYTES as u64
    }
}
