//! The PutLogEvents batching rules as pure functions over plain events (no clock, no SDK).
//!
//! A batch holds ≤ 10,000 events, ≤ 1,048,576 bytes counted as UTF-8 message bytes + 26 per
//! event, spans < 24 h, and is in chronological order. Events larger than one event may be are
//! truncated with a visible marker; events outside the accepted age window (older than 14 days,
//! more than 2 h in the future) are set aside and counted, since CloudWatch would reject them.

use serde::{Deserialize, Serialize};

pub const MAX_BATCH_BYTES: usize = 1_048_576;
pub const EVENT_OVERHEAD: usize = 26;
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// A batch's newest event minus its oldest must stay below this.
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Largest event, overhead included: 256 KiB is the limit every CloudWatch Logs region has
/// enforced (newer regions accept 1 MiB; staying at the lower one is safe everywhere).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
pub const MAX_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
pub const MAX_FUTURE_MS: i64 = 2 * 3600 * 1000;

/// One log event as CloudWatch Logs takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "t")]
    pub timestamp_ms: i64,
    #[serde(rename = "m")]
    pub message: String,
}

impl LogEvent {
    pub fn new(timestamp_ms: i64, message: impl Into<String>) -> Self {
        LogEvent {
            timestamp_ms,
            message: message.into(),
        }
    }

    /// Bytes this event counts for against the batch limit.
    pub fn size(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// Cuts `message` so the event fits [`MAX_EVENT_BYTES`], on a char boundary, ending with a
/// marker saying how much was cut. Returns whether it was truncated.
pub fn truncate(message: &mut String) -> bool {
    let limit = MAX_EVENT_BYTES - EVENT_OVERHEAD;
    if message.len() <= limit {
        return false;
    }
    let original = message.len();
    // The marker's digits depend on the cut; 64 bytes is more than it ever needs.
    let mut keep = limit - 64;
    while !message.is_char_boundary(keep) {
        keep -= 1;
    }
    message.truncate(keep);
    message.push_str(&format!(" …[truncated {} bytes]", original - keep));
    true
}

/// Where an event's timestamp falls against the accepted window at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    Accepted,
    TooOld,
    TooNew,
}

/// The accepted window, configurable so tests can let an out-of-window event through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeWindow {
    pub max_age_ms: i64,
    pub max_future_ms: i64,
}

impl Default for AgeWindow {
    fn default() -> Self {
        AgeWindow {
            max_age_ms: MAX_AGE_MS,
            max_future_ms: MAX_FUTURE_MS,
        }
    }
}

impl AgeWindow {
    pub fn classify(&self, timestamp_ms: i64, now_ms: i64) -> Age {
        if timestamp_ms < now_ms - self.max_age_ms {
            Age::TooOld
        } else if timestamp_ms > now_ms + self.max_future_ms {
            Age::TooNew
        } else {
            Age::Accepted
        }
    }
}

/// Running totals of a batch being built; says whether one more event still fits.
#[derive(Debug, Clone, Copy)]
struct Fill {
    max_bytes: usize,
    events: usize,
    bytes: usize,
    oldest: i64,
    newest: i64,
}

impl Default for Fill {
    fn default() -> Self {
        Fill::within(MAX_BATCH_BYTES)
    }
}

impl Fill {
    fn within(max_bytes: usize) -> Self {
        Fill {
            max_bytes: max_bytes.min(MAX_BATCH_BYTES),
            events: 0,
            bytes: 0,
            oldest: 0,
            newest: 0,
        }
    }

    fn fits(&self, e: &LogEvent) -> bool {
        if self.events == 0 {
            return true;
        }
        self.events < MAX_BATCH_EVENTS
            && self.bytes + e.size() <= self.max_bytes
            && e.timestamp_ms.max(self.newest) - e.timestamp_ms.min(self.oldest) < MAX_SPAN_MS
    }

    fn add(&mut self, e: &LogEvent) {
        if self.events == 0 {
            self.oldest = e.timestamp_ms;
            self.newest = e.timestamp_ms;
        }
        self.events += 1;
        self.bytes += e.size();
        self.oldest = self.oldest.min(e.timestamp_ms);
        self.newest = self.newest.max(e.timestamp_ms);
    }
}

/// Splits events into valid batches: truncates oversize ones, sorts by time (stable, so equal
/// timestamps keep arrival order), and cuts on count, bytes and span. Every batch is non-empty.
pub fn split(events: Vec<LogEvent>) -> Vec<Vec<LogEvent>> {
    split_within(events, MAX_BATCH_BYTES)
}

/// As [`split`], with batches of at most `max_bytes` (≤ 1 MiB) so a small spool's segments can
/// hold them; a single event larger than that still gets a batch of its own.
pub fn split_within(mut events: Vec<LogEvent>, max_bytes: usize) -> Vec<Vec<LogEvent>> {
    for e in &mut events {
        truncate(&mut e.message);
    }
    events.sort_by_key(|e| e.timestamp_ms);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut fill = Fill::within(max_bytes);
    for e in events {
        if !fill.fits(&e) {
            out.push(std::mem::take(&mut current));
            fill = Fill::within(max_bytes);
        }
        fill.add(&e);
        current.push(e);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// One spooled record: a chunk of events that is on its own a valid batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub seq: u64,
    pub events: Vec<LogEvent>,
}

/// A PutLogEvents call planned from whole spooled chunks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogBatch {
    /// Events to send, chronological.
    pub events: Vec<LogEvent>,
    /// Acknowledge the spool up to here once the call succeeds.
    pub last_seq: u64,
    /// Chunks this batch consumes from the front of the input.
    pub chunks: usize,
    pub too_old: usize,
    pub too_new: usize,
}

/// Takes as many whole chunks from the front as fit one call (at least one), drops events
/// outside the age window (counted), and sorts the rest. Whole chunks only, so a spool record
/// is acknowledged exactly when all its events were accepted. `None` when `chunks` is empty.
pub fn next_batch(chunks: &[Chunk], now_ms: i64, window: &AgeWindow) -> Option<LogBatch> {
    let mut batch = LogBatch::default();
    let mut fill = Fill::default();
    for chunk in chunks {
        let mut kept = Vec::with_capacity(chunk.events.len());
        let (mut old, mut new) = (0, 0);
        for e in &chunk.events {
            match window.classify(e.timestamp_ms, now_ms) {
                Age::Accepted => kept.push(e),
                Age::TooOld => old += 1,
                Age::TooNew => new += 1,
            }
        }
        let mut trial = fill;
        let fits = kept.iter().all(|e| {
            let ok = trial.fits(e);
            trial.add(e);
            ok
        });
        if !fits && batch.chunks > 0 {
            break;
        }
        fill = trial;
        batch.events.extend(kept.into_iter().cloned());
        batch.too_old += old;
        batch.too_new += new;
        batch.last_seq = chunk.seq;
        batch.chunks += 1;
    }
    if batch.chunks == 0 {
        return None;
    }
    batch.events.sort_by_key(|e| e.timestamp_ms);
    Some(batch)
}

/// Indexes from PutLogEvents' `rejectedLogEventsInfo`, reduced to counts of rejected events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejected {
    pub too_old: usize,
    pub too_new: usize,
    pub expired: usize,
}

impl Rejected {
    /// As the API documents them: `tooOldLogEventEndIndex` ends the too-old prefix (exclusive),
    /// `expiredLogEventEndIndex` the same for events past the group's retention,
    /// `tooNewLogEventStartIndex` starts the too-new suffix (inclusive); overlaps count once.
    pub fn from_indexes(
        events: usize,
        too_old_end: Option<i32>,
        expired_end: Option<i32>,
        too_new_start: Option<i32>,
    ) -> Rejected {
        let clamp = |i: i32| (i.max(0) as usize).min(events);
        let old = too_old_end.map_or(0, clamp);
        let expired = expired_end.map_or(0, clamp).saturating_sub(old);
        let new = too_new_start.map_or(0, |i| events - clamp(i).max(old + expired));
        Rejected {
            too_old: old,
            too_new: new,
            expired,
        }
    }

    pub fn total(&self) -> usize {
        self.too_old + self.too_new + self.expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: i64, len: usize) -> LogEvent {
        LogEvent::new(t, "x".repeat(len))
    }

    fn check_valid(batch: &[LogEvent]) {
        assert!(!batch.is_empty());
        assert!(batch.len() <= MAX_BATCH_EVENTS);
        assert!(batch.iter().map(LogEvent::size).sum::<usize>() <= MAX_BATCH_BYTES);
        assert!(
            batch
                .windows(2)
                .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
        );
        let span = batch.last().unwrap().timestamp_ms - batch[0].timestamp_ms;
        assert!(span < MAX_SPAN_MS, "span {span}");
        assert!(batch.iter().all(|e| e.size() <= MAX_EVENT_BYTES));
    }

    #[test]
    fn split_table() {
        const H: i64 = 3600 * 1000;
        // (name, events, expected batch sizes)
        let cases: Vec<(&str, Vec<LogEvent>, Vec<usize>)> = vec![
            ("nothing", vec![], vec![]),
            ("one", vec![ev(1, 10)], vec![1]),
            (
                "many small lines cut at 10,000",
                (0..25_000).map(|i| ev(i, 10)).collect(),
                vec![10_000, 10_000, 5_000],
            ),
            (
                "exactly 10,000",
                (0..10_000).map(|i| ev(i, 1)).collect(),
                vec![10_000],
            ),
            (
                // 1000-byte messages count 1026 each: 1,048,576 / 1026 = 1022 per batch.
                "bytes bind before count",
                (0..3000).map(|i| ev(i, 1000)).collect(),
                vec![1022, 1022, 956],
            ),
            (
                "exactly 1 MiB fits (four largest events)",
                (0..4)
                    .map(|i| ev(i, MAX_EVENT_BYTES - EVENT_OVERHEAD))
                    .collect(),
                vec![4],
            ),
            (
                "an empty event more does not (26 bytes over)",
                (0..5)
                    .map(|i| {
                        ev(
                            i,
                            if i < 4 {
                                MAX_EVENT_BYTES - EVENT_OVERHEAD
                            } else {
                                0
                            },
                        )
                    })
                    .collect(),
                vec![4, 1],
            ),
            (
                "span of 24 h is cut",
                vec![ev(0, 1), ev(23 * H, 1), ev(24 * H, 1), ev(30 * H, 1)],
                vec![2, 2],
            ),
            (
                "just under 24 h stays together",
                vec![ev(0, 1), ev(24 * H - 1, 1)],
                vec![2],
            ),
            (
                "out of order input is sorted first",
                vec![ev(30 * H, 1), ev(0, 1), ev(24 * H, 1), ev(23 * H, 1)],
                vec![2, 2],
            ),
        ];
        for (name, events, want) in cases {
            let n = events.len();
            let got = split(events);
            assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), want, "{name}");
            assert_eq!(
                got.iter().map(Vec::len).sum::<usize>(),
                n,
                "{name}: none lost"
            );
            got.iter().for_each(|b| check_valid(b));
        }
    }

    #[test]
    fn smaller_byte_caps_cut_earlier_but_never_lose_an_event() {
        let events: Vec<LogEvent> = (0..100).map(|i| ev(i, 74)).collect(); // 100 bytes each
        let got = split_within(events.clone(), 1000);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![10; 10]);
        assert_eq!(split_within(events, 10 << 20).len(), 1, "never above 1 MiB");
        let got = split_within(vec![ev(0, 5000), ev(1, 1)], 1000);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1]);
    }

    #[test]
    fn sort_is_stable_for_equal_timestamps() {
        let events: Vec<LogEvent> = (0..50)
            .map(|i| LogEvent::new(if i % 2 == 0 { 5 } else { 3 }, i.to_string()))
            .collect();
        let got = split(events);
        let order: Vec<i64> = got[0].iter().map(|e| e.message.parse().unwrap()).collect();
        let odd: Vec<i64> = (0..50).filter(|i| i % 2 == 1).collect();
        let even: Vec<i64> = (0..50).filter(|i| i % 2 == 0).collect();
        assert_eq!(order, [odd, even].concat());
    }

    #[test]
    fn a_huge_line_is_truncated_with_a_marker_not_dropped() {
        let cases = [
            (10usize, false),
            (MAX_EVENT_BYTES - EVENT_OVERHEAD, false),
            (MAX_EVENT_BYTES - EVENT_OVERHEAD + 1, true),
            (5 << 20, true),
        ];
        for (len, cut) in cases {
            let mut m = "y".repeat(len);
            assert_eq!(truncate(&mut m), cut, "{len}");
            assert!(m.len() + EVENT_OVERHEAD <= MAX_EVENT_BYTES, "{len}");
            if cut {
                assert!(m.ends_with(" bytes]"), "{}", &m[m.len() - 40..]);
                assert!(m.contains("…[truncated "));
                let cut_bytes: usize = m
                    .rsplit("truncated ")
                    .next()
                    .unwrap()
                    .trim_end_matches(" bytes]")
                    .parse()
                    .unwrap();
                assert_eq!(
                    m.find(" …").unwrap() + cut_bytes,
                    len,
                    "the marker counts what was cut"
                );
            }
        }
        // Multi-byte characters are never split.
        let mut m = "é".repeat(MAX_EVENT_BYTES);
        assert!(truncate(&mut m));
        assert!(m.starts_with('é'));
        let batches = split(vec![ev(1, 3 << 20), ev(2, 5)]);
        assert_eq!(batches.len(), 1);
        check_valid(&batches[0]);
    }

    #[test]
    fn age_window_table() {
        let now = 100 * 24 * 3600 * 1000;
        let w = AgeWindow::default();
        let table = [
            (now, Age::Accepted),
            (now - MAX_AGE_MS, Age::Accepted),
            (now - MAX_AGE_MS - 1, Age::TooOld),
            (now + MAX_FUTURE_MS, Age::Accepted),
            (now + MAX_FUTURE_MS + 1, Age::TooNew),
            (0, Age::TooOld),
        ];
        for (t, want) in table {
            assert_eq!(w.classify(t, now), want, "{t}");
        }
    }

    fn chunk(seq: u64, events: Vec<LogEvent>) -> Chunk {
        Chunk { seq, events }
    }

    #[test]
    fn next_batch_takes_whole_chunks_and_counts_out_of_window_events() {
        let now: i64 = 30 * 24 * 3600 * 1000;
        let w = AgeWindow::default();
        assert_eq!(next_batch(&[], now, &w), None);
        // Three chunks of 4,000: two fit (8,000), the third would make 12,000.
        let chunks: Vec<Chunk> = (0..3)
            .map(|c| chunk(c + 1, (0..4000).map(|i| ev(now - 10_000 + i, 5)).collect()))
            .collect();
        let b = next_batch(&chunks, now, &w).unwrap();
        assert_eq!((b.chunks, b.last_seq, b.events.len()), (2, 2, 8000));
        check_valid(&b.events);
        let b = next_batch(&chunks[2..], now, &w).unwrap();
        assert_eq!((b.chunks, b.last_seq, b.events.len()), (1, 3, 4000));

        // Interleaved timestamps across chunks come out sorted.
        let chunks = vec![
            chunk(7, vec![ev(now - 5, 1), ev(now - 3, 1)]),
            chunk(8, vec![ev(now - 4, 1), ev(now - 1, 1)]),
        ];
        let b = next_batch(&chunks, now, &w).unwrap();
        let ts: Vec<i64> = b.events.iter().map(|e| now - e.timestamp_ms).collect();
        assert_eq!(ts, vec![5, 4, 3, 1]);

        // Chunks whose union would span > 24 h are not merged.
        let chunks = vec![
            chunk(1, vec![ev(now - 2 * MAX_SPAN_MS, 1)]),
            chunk(2, vec![ev(now, 1)]),
        ];
        assert_eq!(next_batch(&chunks, now, &w).unwrap().chunks, 1);

        // Too old / too new events are counted, not sent; a chunk of only those still acks.
        let chunks = vec![
            chunk(
                4,
                vec![
                    ev(now - MAX_AGE_MS - 1, 1),
                    ev(now, 1),
                    ev(now + MAX_FUTURE_MS + 5, 1),
                ],
            ),
            chunk(5, vec![ev(0, 1)]),
        ];
        let b = next_batch(&chunks, now, &w).unwrap();
        assert_eq!(
            (b.too_old, b.too_new, b.events.len(), b.last_seq),
            (2, 1, 1, 5)
        );
    }

    #[test]
    fn rejected_info_table() {
        let table = [
            ((10, None, None, None), (0, 0, 0)),
            ((10, Some(3), None, None), (3, 0, 0)),
            ((10, None, None, Some(7)), (0, 0, 3)),
            ((10, Some(2), Some(5), Some(9)), (2, 3, 1)),
            ((10, Some(50), None, Some(-1)), (10, 0, 0)),
        ];
        for ((n, old, exp, new), (o, e, w)) in table {
            let r = Rejected::from_indexes(n, old, exp, new);
            assert_eq!(
                (r.too_old, r.expired, r.too_new),
                (o, e, w),
                "{n} {old:?} {exp:?} {new:?}"
            );
        }
    }
}
