//! Ingest: takes model lines, audit records and other entries from their channels, bounded in
//! bytes, and appends them to each group's spool (batches the disk refuses wait in memory).

use super::*;

/// Lines taken from a source per ingest round (one spool append per group per round).
pub(super) const INGEST_CHUNK: usize = 8192;

/// Rounds queued between the receiver and the spool writer (≤ 8192 lines each).
pub(super) const RECEIVED_QUEUE: usize = 64;

/// Spool-append retries while the disk refuses (full, I/O error): capped, never giving up.
pub(super) const APPEND_RETRY: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(2),
    attempts: u32::MAX,
};

/// Lines one spool write takes at most (one fsync per group per write).
pub(super) const WRITE_ROUND: usize = 65_536;

/// After cancel, ingest stops once its sources were quiet this long.
pub(super) const QUIET_AT_SHUTDOWN: Duration = Duration::from_millis(300);

pub(super) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The audit record's own time (RFC 3339) so the event is stamped when the request happened.
pub(super) fn audit_event(record: &AuditRecord) -> Option<LogEvent> {
    let ts = humantime::parse_rfc3339_weak(record.time.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(&record.time))
        .map_or_else(|_| unix_ms(SystemTime::now()), unix_ms);
    let mut line = Vec::with_capacity(512);
    record.write_json_line(&mut line);
    line.pop(); // the newline: an event is the record alone
    let json = String::from_utf8(line).ok()?;
    Some(LogEvent::new(ts, json))
}

pub(super) struct Ingest {
    pub(super) shared: Arc<Shared>,
    pub(super) groups: HashMap<String, Arc<GroupSpool>>,
    pub(super) shippers: JoinSet<()>,
    pub(super) ship_cancel: CancellationToken,
    /// Batches the spool refused (disk full, I/O error), oldest first, kept in memory and
    /// appended again before anything newer; their bytes count in `Shared::held`.
    pub(super) backlog: VecDeque<Pending>,
    pub(super) append_failures: u32,
}

/// Valid batches for one group, waiting to be appended.
pub(super) struct Pending {
    pub(super) group: Arc<GroupSpool>,
    pub(super) batches: VecDeque<Vec<LogEvent>>,
    /// Bytes these batches count for in `Shared::held`.
    pub(super) bytes: u64,
}

pub(super) async fn recv_some<T>(
    rx: &mut Option<mpsc::Receiver<T>>,
    buf: &mut Vec<T>,
) -> Option<usize> {
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
pub(super) struct Received {
    pub(super) lines: Vec<LogLine>,
    pub(super) audits: Vec<AuditRecord>,
    pub(super) entries: Vec<LogEntry>,
    /// Estimated bytes held (counted in `Shared::held` until spooled).
    pub(super) bytes: u64,
}

/// What a line costs in memory, roughly: its text plus the fixed parts.
pub(super) fn line_bytes(l: &LogLine) -> u64 {
    (l.line.len() + l.model.len() + 48) as u64
}

pub(super) fn audit_bytes(r: &AuditRecord) -> u64 {
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

pub(super) fn entry_bytes(e: &LogEntry) -> u64 {
    (e.group.len() + e.event.size() + 48) as u64
}

impl Received {
    pub(super) fn len(&self) -> usize {
        self.lines.len() + self.audits.len() + self.entries.len()
    }

    pub(super) fn append(&mut self, mut other: Received) {
        self.lines.append(&mut other.lines);
        self.audits.append(&mut other.audits);
        self.entries.append(&mut other.entries);
        self.bytes += other.bytes;
    }
}

/// Takes from one source and accounts the bytes of what it took.
pub(super) async fn recv_counted<T>(
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
pub(super) async fn receive(
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
    pub(super) fn reopen_previous(&mut self) -> Result<(), LogsError> {
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
    pub(super) fn group(&mut self, target: Target) -> Result<Arc<GroupSpool>, LogsError> {
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

    pub(super) async fn run(mut self, sources: Sources, cancel: CancellationToken) {
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
    pub(super) fn collect(&mut self, round: Received) -> Vec<(Target, Vec<LogEvent>)> {
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
    pub(super) fn queue(&mut self, events: Vec<(Target, Vec<LogEvent>)>) {
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
    pub(super) async fn flush_backlog(&mut self) {
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
pub(super) fn batch_bytes(batch: &[LogEvent]) -> u64 {
    batch.iter().map(|e| e.size() as u64).sum()
}

/// Appends queued batches in order; stops at the first refusal and returns it.
pub(super) fn append_backlog(
    shared: &Shared,
    backlog: &mut VecDeque<Pending>,
) -> Option<SpoolError> {
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
