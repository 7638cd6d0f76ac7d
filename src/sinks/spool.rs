//! The durable spool: what a sink could not deliver waits here, on disk, until it can.
//!
//! Append-only segment files of checksummed records (`len u32 | crc32 u32 | seq u64 | payload`),
//! fsynced on append; an `acked` file (written temp + rename) holds the highest delivered
//! sequence, so acknowledged records are never replayed, across restarts too. Bounded in bytes:
//! when full, the oldest segment is dropped and its unacknowledged records are counted and logged.
//! A torn tail from a crash mid-append is detected by length/checksum and truncated on open.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const HEADER: usize = 16;
/// A record larger than this is corruption, not data (sinks spool batches of ≤ 1 MiB).
const MAX_RECORD: usize = 16 << 20;
const ACK_FILE: &str = "acked";

/// Spool failures: the sink logs them and keeps the batch in memory for the next try.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("record of {0} bytes is larger than the spool can hold")]
    TooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
}

struct Inner {
    segments: VecDeque<Segment>,
    writer: Option<File>,
    next_seq: u64,
    acked: u64,
    dropped: u64,
}

/// A durable FIFO of byte records; share it behind an `Arc`.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC: [u32; 256] = crc_table();

/// CRC-32 (IEEE) of the concatenated parts.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for p in parts {
        for &b in *p {
            c = CRC[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
        }
    }
    !c
}

fn encode(seq: u64, payload: &[u8]) -> Vec<u8> {
    let seq_bytes = seq.to_le_bytes();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&[&seq_bytes, payload]).to_le_bytes());
    out.extend_from_slice(&seq_bytes);
    out.extend_from_slice(payload);
    out
}

/// Decodes records from a segment's bytes; returns them and the length of the valid prefix.
fn decode(buf: &[u8]) -> (Vec<SpoolRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER {
        let word = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let len = word(at) as usize;
        let crc = word(at + 4);
        if len > MAX_RECORD || buf.len() - at - HEADER < len {
            break;
        }
        let seq_bytes = &buf[at + 8..at + 16];
        let payload = &buf[at + HEADER..at + HEADER + len];
        if crc32(&[seq_bytes, payload]) != crc {
            break;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(seq_bytes);
        records.push(SpoolRecord {
            seq: u64::from_le_bytes(s),
            payload: payload.to_vec(),
        });
        at += HEADER + len;
    }
    (records, at)
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn sync_dir(dir: &Path) {
    // Makes a created/renamed/removed file durable; best effort where unsupported.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to `max_bytes` on disk.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let ack_path = dir.join(ACK_FILE);
        let acked = fs::read_to_string(&ack_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name
                    .strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((seq, e.path()))
            })
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut next_seq = acked + 1;
        for (first_seq, path) in names {
            let mut buf = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io_err(&path))?;
            let (records, valid) = decode(&buf);
            if valid < buf.len() {
                tracing::warn!(segment = %path.display(), lost_bytes = buf.len() - valid, "spool: truncating a torn or corrupt tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid as u64).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            let last_seq = records
                .last()
                .map_or(first_seq.saturating_sub(1), |r| r.seq);
            if records.is_empty() || last_seq <= acked {
                let _ = fs::remove_file(&path);
                continue;
            }
            next_seq = next_seq.max(last_seq + 1);
            segments.push_back(Segment {
                path,
                first_seq,
                last_seq,
                bytes: valid as u64,
            });
        }
        sync_dir(&dir);
        Ok(Spool {
            dir,
            max_bytes: max_bytes.max(1024),
            // Several segments per spool so dropping the oldest frees a fraction, not everything.
            segment_bytes: (max_bytes / 8).clamp(4096, 16 << 20),
            inner: Mutex::new(Inner {
                segments,
                writer: None,
                next_seq,
                acked,
                dropped: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one record durably (fsync) and returns its sequence number.
    pub fn append(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        let record_len = (HEADER + payload.len()) as u64;
        if payload.len() > MAX_RECORD || record_len > self.max_bytes {
            return Err(SpoolError::TooLarge(payload.len()));
        }
        let mut inner = self.lock();
        let seq = inner.next_seq;
        let rotate = match (inner.segments.back(), &inner.writer) {
            (Some(s), Some(_)) => s.bytes + record_len > self.segment_bytes,
            _ => true,
        };
        if rotate {
            let path = self.dir.join(segment_name(seq));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            sync_dir(&self.dir);
            inner.writer = Some(f);
            inner.segments.push_back(Segment {
                path,
                first_seq: seq,
                last_seq: seq - 1,
                bytes: 0,
            });
        }
        let bytes = encode(seq, payload);
        let Inner {
            writer, segments, ..
        } = &mut *inner;
        let (Some(f), Some(seg)) = (writer.as_mut(), segments.back_mut()) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: io::Error::other("no open segment"),
            });
        };
        f.write_all(&bytes)
            .and_then(|_| f.sync_data())
            .map_err(io_err(&seg.path))?;
        seg.bytes += record_len;
        seg.last_seq = seq;
        inner.next_seq = seq + 1;
        self.enforce_bound(&mut inner);
        Ok(seq)
    }

    /// Drops the oldest segments while over the byte bound, counting what was never delivered.
    fn enforce_bound(&self, inner: &mut Inner) {
        while inner.segments.iter().map(|s| s.bytes).sum::<u64>() > self.max_bytes
            && inner.segments.len() > 1
        {
            let Some(old) = inner.segments.pop_front() else {
                break;
            };
            let lost = old
                .last_seq
                .saturating_sub(inner.acked.max(old.first_seq - 1));
            inner.dropped += lost;
            inner.acked = inner.acked.max(old.last_seq);
            tracing::warn!(
                records = lost,
                total_dropped = inner.dropped,
                "spool full: dropped the oldest records"
            );
            let _ = fs::remove_file(&old.path);
            // Persist the skip so sequence numbers and the replay cursor agree after a restart.
            let _ = self.write_ack(inner.acked);
        }
    }

    fn write_ack(&self, acked: u64) -> Result<(), SpoolError> {
        let tmp = self.dir.join(format!("{ACK_FILE}.tmp"));
        let path = self.dir.join(ACK_FILE);
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(acked.to_string().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Up to `max` unacknowledged records, oldest first.
    pub fn peek(&self, max: usize) -> Result<Vec<SpoolRecord>, SpoolError> {
        let inner = self.lock();
        let mut out = Vec::new();
        for seg in &inner.segments {
            if out.len() >= max {
                break;
            }
            if seg.last_seq <= inner.acked {
                continue;
            }
            let mut buf = Vec::new();
            let mut f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            f.seek(SeekFrom::Start(0)).map_err(io_err(&seg.path))?;
            f.read_to_end(&mut buf).map_err(io_err(&seg.path))?;
            let (records, _) = decode(&buf);
            out.extend(
                records
                    .into_iter()
                    .filter(|r| r.seq > inner.acked)
                    .take(max - out.len()),
            );
        }
        Ok(out)
    }

    /// Marks every record up to `seq` delivered (durably) and deletes fully delivered segments.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        if seq <= inner.acked {
            return Ok(());
        }
        inner.acked = seq;
        self.write_ack(seq)?;
        while let Some(front) = inner.segments.front() {
            if front.last_seq > inner.acked {
                break;
            }
            let is_current = inner.segments.len() == 1;
            if let Some(old) = inner.segments.pop_front() {
                let _ = fs::remove_file(&old.path);
            }
            if is_current {
                inner.writer = None;
            }
        }
        Ok(())
    }

    /// Unacknowledged records waiting.
    pub fn pending(&self) -> u64 {
        let inner = self.lock();
        inner.next_seq - 1 - inner.acked.min(inner.next_seq - 1)
    }

    /// Records dropped because the spool was full, since this process opened it.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("warden-spool-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replays_oldest_first_and_never_twice_across_reopen() {
        let dir = tmp();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..5u8 {
            spool.append(&[i; 10]).unwrap();
        }
        let got = spool.peek(2).unwrap();
        assert_eq!(
            got.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
            vec![0, 1]
        );
        spool.ack(got[1].seq).unwrap();
        drop(spool);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let rest = spool.peek(100).unwrap();
        assert_eq!(
            rest.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(spool.pending(), 3);
        let seq = spool.append(b"new").unwrap();
        assert!(seq > rest[2].seq, "sequence continues after reopen");
        spool.ack(seq).unwrap();
        assert!(spool.peek(100).unwrap().is_empty());
        assert_eq!(spool.bytes(), 0);
        drop(spool);
        assert!(
            Spool::open(&dir, 1 << 20)
                .unwrap()
                .peek(10)
                .unwrap()
                .is_empty()
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bounded_bytes_drop_oldest_and_count_it() {
        let dir = tmp();
        let spool = Spool::open(&dir, 8192).unwrap(); // 4 KiB segments
        for i in 0..40u32 {
            spool.append(&[i as u8; 500]).unwrap();
        }
        assert!(spool.bytes() <= 8192, "{}", spool.bytes());
        let dropped = spool.dropped();
        assert!(dropped > 0);
        let left = spool.peek(1000).unwrap();
        assert_eq!(
            left.len() as u64 + dropped,
            40,
            "every record is delivered or counted"
        );
        assert_eq!(left.last().unwrap().payload[0], 39, "the newest survive");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_tail_is_truncated_and_earlier_records_survive() {
        let dir = tmp();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append(b"one").unwrap();
        spool.append(b"two").unwrap();
        drop(spool);
        let seg = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&encode(3, b"three")[..10]).unwrap(); // crash mid-append
        drop(f);
        let mut bytes = fs::read(&seg).unwrap();
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let got: Vec<Vec<u8>> = spool
            .peek(10)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(spool.append(b"four").unwrap(), 3);
        // A flipped payload byte fails the checksum.
        drop(spool);
        bytes[HEADER] ^= 0xFF;
        fs::write(&seg, &bytes[..bytes.len() - 10]).unwrap();
        let (records, _) = decode(&fs::read(&seg).unwrap());
        assert!(records.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn crc_matches_the_reference_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }
}
