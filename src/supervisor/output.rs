//! Captures a child's stdout/stderr line by line into a bounded ring per model and a bounded
//! channel for the log shipper, without ever blocking on a slow reader or a noisy child.

use super::types::{LogLine, LogStream, now_ms};
use crate::telemetry::MetricStore;
use crate::telemetry::drops;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// Longest line kept; the rest of a longer line is dropped and the line marked truncated.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines kept per model for `logs` / the console.
pub const RING_LINES: usize = 1000;

/// Splits a byte stream into lines of at most `max` bytes, decoding lossily.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    buf: Vec<u8>,
    dropped: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            max,
            buf: Vec::new(),
            dropped: 0,
        }
    }

    /// Feeds bytes; returns the lines completed by them.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let (chunk, complete) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            self.take(chunk);
            match complete {
                Some(n) => {
                    lines.push(self.finish());
                    bytes = &bytes[n..];
                }
                None => break,
            }
        }
        lines
    }

    /// The last, unterminated line at end of stream, if any.
    pub fn flush(&mut self) -> Option<String> {
        (!self.buf.is_empty() || self.dropped > 0).then(|| self.finish())
    }

    fn take(&mut self, chunk: &[u8]) {
        let room = self.max.saturating_sub(self.buf.len());
        let kept = chunk.len().min(room);
        self.buf.extend_from_slice(&chunk[..kept]);
        self.dropped += chunk.len() - kept;
    }

    fn finish(&mut self) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let mut line = String::from_utf8_lossy(&self.buf).into_owned();
        if self.dropped > 0 {
            line.push_str(&format!(" …[truncated {} bytes]", self.dropped));
        }
        self.buf.clear();
        self.dropped = 0;
        line
    }
}

/// Where captured lines go: per-model rings plus the shipper's channel.
#[derive(Debug)]
pub struct LogSink {
    rings: Mutex<HashMap<String, VecDeque<LogLine>>>,
    shipper: mpsc::Sender<LogLine>,
    dropped: AtomicU64,
    /// Where dropped lines are counted (`RecordsDropped{sink="capture"}`), once the agent's
    /// store exists.
    store: StoreSlot,
}

/// The store, once set (`MetricStore` has no `Debug`).
#[derive(Default)]
struct StoreSlot(OnceLock<Arc<MetricStore>>);

impl std::fmt::Debug for StoreSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "store"
        } else {
            "no store"
        })
    }
}

impl LogSink {
    /// A sink and the receiver the log shipper drains (`capacity` lines of slack).
    pub fn new(capacity: usize) -> (Arc<Self>, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Arc::new(LogSink {
                rings: Mutex::new(HashMap::new()),
                shipper: tx,
                dropped: AtomicU64::new(0),
                store: StoreSlot::default(),
            }),
            rx,
        )
    }

    pub fn record(&self, line: LogLine) {
        if let Ok(mut rings) = self.rings.lock() {
            let ring = rings.entry(line.model.clone()).or_default();
            if ring.len() >= RING_LINES {
                ring.pop_front();
            }
            ring.push_back(line.clone());
        }
        // A slow, back-pressured or absent shipper loses lines (counted) rather than stalling
        // the children. A closed channel (logs disabled) is not a loss: the ring keeps them.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.shipper.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            drops::record(
                self.store.0.get().map(|s| s.as_ref()),
                drops::sink::CAPTURE,
                drops::reason::QUEUE_FULL,
                1,
            );
        }
    }

    /// Counts later drops in `store` (and what was dropped before it existed).
    pub fn count_drops_in(&self, store: Arc<MetricStore>) {
        let before = self.dropped();
        if self.store.0.set(store.clone()).is_ok() {
            drops::record(
                Some(&store),
                drops::sink::CAPTURE,
                drops::reason::QUEUE_FULL,
                before,
            );
        }
    }

    /// The last `n` lines of a model, oldest first.
    pub fn tail(&self, model: &str, n: usize) -> Vec<LogLine> {
        let Ok(rings) = self.rings.lock() else {
            return Vec::new();
        };
        rings
            .get(model)
            .map(|r| r.iter().skip(r.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    /// Lines the shipper channel could not take.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn forget(&self, model: &str) {
        if let Ok(mut rings) = self.rings.lock() {
            rings.remove(model);
        }
    }
}

/// Reads one pipe until EOF, recording each line.
pub async fn capture(
    pipe: impl AsyncRead + Unpin,
    model: String,
    stream: LogStream,
    sink: Arc<LogSink>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let emit = |line: String| {
        sink.record(LogLine {
            model: model.clone(),
            stream,
            timestamp_ms: now_ms(),
            line,
        })
    };
    loop {
        let n = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => {
                for line in splitter.push(buf) {
                    emit(line);
                }
                buf.len()
            }
        };
        reader.consume(n);
    }
    if let Some(line) = splitter.flush() {
        emit(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks_and_strips_cr() {
        let mut s = LineSplitter::new(100);
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\r\nwor"), vec!["hello"]);
        assert_eq!(s.push(b"ld\n\n"), vec!["world", ""]);
        assert_eq!(s.flush(), None);
        s.push(b"tail");
        assert_eq!(s.flush().as_deref(), Some("tail"));
    }

    #[test]
    fn huge_lines_are_truncated_and_the_next_line_is_intact() {
        let mut s = LineSplitter::new(8);
        let mut lines = s.push(&[b'x'; 5]);
        lines.extend(s.push(&[b'y'; 20]));
        lines.extend(s.push(b"\nok\n"));
        assert_eq!(lines, vec!["xxxxxyyy …[truncated 17 bytes]", "ok"]);
    }

    #[test]
    fn binary_garbage_is_decoded_lossily() {
        let mut s = LineSplitter::new(100);
        let lines = s.push(&[0xff, 0xfe, b'a', 0x00, b'\n']);
        assert_eq!(lines, vec!["\u{fffd}\u{fffd}a\u{0}"]);
    }

    #[test]
    fn ring_keeps_the_last_lines_and_a_full_channel_drops() {
        let (sink, mut rx) = LogSink::new(2);
        for i in 0..(RING_LINES + 5) {
            sink.record(LogLine {
                model: "m".into(),
                stream: LogStream::Stdout,
                timestamp_ms: 0,
                line: i.to_string(),
            });
        }
        let tail = sink.tail("m", 3);
        let got: Vec<&str> = tail.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(got, vec!["1002", "1003", "1004"]);
        assert_eq!(sink.tail("m", 5000).len(), RING_LINES);
        assert_eq!(sink.dropped(), (RING_LINES + 3) as u64);
        assert_eq!(rx.try_recv().map(|l| l.line).ok().as_deref(), Some("0"));
    }

    #[test]
    fn dropped_lines_are_counted_in_the_store() {
        let (sink, _rx) = LogSink::new(1);
        let line = |i: usize| LogLine {
            model: "m".into(),
            stream: LogStream::Stdout,
            timestamp_ms: 0,
            line: i.to_string(),
        };
        sink.record(line(0));
        sink.record(line(1)); // dropped before the store exists
        let store = Arc::new(MetricStore::new("h", 16));
        sink.count_drops_in(store.clone());
        for i in 2..5 {
            sink.record(line(i));
        }
        let counted = drops::total(&store, drops::sink::CAPTURE, drops::reason::QUEUE_FULL);
        assert_eq!(counted, 4.0);
        assert_eq!(sink.dropped(), 4);
        assert!(store.render().contains(
            r#"warden_records_dropped_total{host="h",sink="capture",reason="queue_full"} 4"#
        ));
    }
}
