//! The durable spool: what a sink could not deliver waits here, on disk, until it can.
//!
//! Append-only segment files of checksummed records (`len u32 | crc32 u32 | seq u64 | payload`),
//! fsynced on append; an `acked` file (written temp + rename) holds the highest delivered
//! sequence, so acknowledged records are never replayed, across restarts too. Bounded in bytes:
//! when full, the oldest segment is dropped and its unacknowledged records are counted and logged.
//! A torn tail from a crash mid-append is detected by length/checksum and truncated on open; a
//! failed append (ENOSPC, EIO) cuts its segment back to the length before it (or, if even that
//! fails, rolls to a new segment), so later records stay readable. Records that no longer
//! decode are counted ([`Spool::take_corrupt`]) rather than acknowledged away unseen.

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
    /// Its unreadable records were already counted as corrupt.
    corrupt_counted: bool,
}

struct Inner {
    segments: VecDeque<Segment>,
    writer: Option<File>,
    next_seq: u64,
    acked: u64,
    dropped: u64,
    /// Records that no longer decode, not yet reported by [`Spool::take_corrupt`].
    corrupt: u64,
}

/// A durable FIFO of byte records; share it behind an `Arc`.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

/// CRC-32/ISO-HDLC (the IEEE polynomial) of the concatenated parts: the on-disk checksum.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
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
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut next_seq = acked + 1;
        let mut corrupt = 0u64;
        let firsts: Vec<u64> = names.iter().map(|(s, _)| *s).collect();
        for (i, (first_seq, path)) in names.into_iter().enumerate() {
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
            // A later segment proves how many records this one held: the unreadable ones
            // that were never acknowledged are lost, and counted. (A torn tail of the last
            // segment is an append that never returned, so nobody was told it was kept.)
            if valid < buf.len()
                && let Some(next_first) = firsts.get(i + 1)
            {
                let held_to = next_first.saturating_sub(1);
                corrupt += held_to.saturating_sub(last_seq.max(acked));
            }
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
                corrupt_counted: false,
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
                corrupt,
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
            // A segment that never got a record (its only append failed) has this very name:
            // start it afresh rather than append after whatever the failure left in it.
            if inner
                .segments
                .back()
                .is_some_and(|s| s.first_seq == seq && s.last_seq < s.first_seq)
            {
                inner.segments.pop_back();
                inner.writer = None;
                let _ = fs::remove_file(&path);
            }
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
                corrupt_counted: false,
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
        if let Err(source) = f.write_all(&bytes).and_then(|_| f.sync_data()) {
            // A short write (ENOSPC, EIO) leaves a torn record: cut the segment back to where it
            // was so the records after it stay readable. If even that fails, stop writing to
            // this segment (the next append rolls a new one; open() truncates the tail).
            let restored = f.set_len(seg.bytes).and_then(|_| f.sync_data());
            let path = seg.path.clone();
            if let Err(e) = restored {
                tracing::warn!(segment = %path.display(), error = %e,
                    "spool: cannot truncate a failed append; rolling to a new segment");
                *writer = None;
            }
            return Err(SpoolError::Io { path, source });
        }
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
    ///
    /// Records of a segment that no longer decode (changed on disk since they were written)
    /// are skipped, and counted once in [`Spool::take_corrupt`]: acknowledging past them must
    /// not lose them silently.
    pub fn peek(&self, max: usize) -> Result<Vec<SpoolRecord>, SpoolError> {
        let mut guard = self.lock();
        let Inner {
            segments,
            acked,
            corrupt,
            writer,
            ..
        } = &mut *guard;
        let current = segments.back().map(|s| s.path.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for seg in segments.iter_mut() {
            if out.len() >= max {
                break;
            }
            if seg.last_seq <= *acked {
                continue;
            }
            let mut buf = Vec::new();
            let mut f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            f.seek(SeekFrom::Start(0)).map_err(io_err(&seg.path))?;
            f.read_to_end(&mut buf).map_err(io_err(&seg.path))?;
            let (records, _) = decode(&buf);
            let readable_to = records.last().map_or(seg.first_seq - 1, |r| r.seq);
            if readable_to < seg.last_seq && !seg.corrupt_counted {
                seg.corrupt_counted = true;
                // Nothing appended after the damage could be read either: write elsewhere.
                if seg.path == current {
                    *writer = None;
                }
                let lost = seg.last_seq - readable_to.max(*acked);
                *corrupt += lost;
                tracing::error!(segment = %seg.path.display(), records = lost,
                    "spool segment damaged on disk: records no longer decode (counted as corrupt)");
            }
            out.extend(
                records
                    .into_iter()
                    .filter(|r| r.seq > *acked)
                    .take(max - out.len()),
            );
        }
        Ok(out)
    }

    /// Records found unreadable since the last call (on open or by [`Spool::peek`]); the
    /// caller counts them as dropped (`drops::reason::CORRUPT`).
    pub fn take_corrupt(&self) -> u64 {
        std::mem::take(&mut self.lock().corrupt)
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

    /// A real, tiny tmpfs on a temp dir (root only), unmounted and removed on drop.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            if !nix::unistd::Uid::effective().is_root() {
                eprintln!("skipped: mounting a tmpfs needs root");
                return None;
            }
            let dir = tmp();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("skipped: mount -t tmpfs failed (no CAP_SYS_ADMIN in this container?)");
                let _ = fs::remove_dir_all(&dir);
                return None;
            }
            Some(Tmpfs(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_full_disk_never_leaves_a_torn_record_and_later_records_stay_readable() {
        let Some(fs_) = Tmpfs::mount("256k") else {
            return;
        };
        // Ballast to free later, so the disk can "come back".
        let ballast = fs_.0.join("ballast");
        fs::write(&ballast, vec![7u8; 64 << 10]).unwrap();
        let spool = Spool::open(fs_.0.join("spool"), 1 << 20).unwrap(); // bound above the disk
        let mut kept = Vec::new();
        let mut failures = 0;
        // Odd-sized records so a write straddles a page boundary when the disk fills.
        for i in 0..400u32 {
            let payload = format!("{i:05}-{}", "x".repeat(1500 + (i as usize * 37) % 900));
            match spool.append(payload.as_bytes()) {
                Ok(seq) => kept.push((seq, payload)),
                Err(SpoolError::Io { .. }) => {
                    failures += 1;
                    if failures >= 5 {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(failures >= 5, "the 256 KiB disk must fill");
        // Every record accounted for on disk is whole: bytes match what was kept.
        let on_disk: u64 = kept.iter().map(|(_, p)| (HEADER + p.len()) as u64).sum();
        assert_eq!(spool.bytes(), on_disk);
        // Space comes back; appends continue in the same segment chain.
        fs::remove_file(&ballast).unwrap();
        for i in 0..5 {
            let payload = format!("after-{i}");
            kept.push((spool.append(payload.as_bytes()).unwrap(), payload));
        }
        let check = |spool: &Spool| {
            let got: Vec<(u64, String)> = spool
                .peek(usize::MAX)
                .unwrap()
                .into_iter()
                .map(|r| (r.seq, String::from_utf8(r.payload).unwrap()))
                .collect();
            assert_eq!(got.len(), kept.len());
            assert!(
                got == kept,
                "every kept record readable, in order, nothing else"
            );
            assert_eq!(spool.take_corrupt(), 0);
        };
        check(&spool);
        drop(spool);
        check(&Spool::open(fs_.0.join("spool"), 1 << 20).unwrap());
    }

    #[test]
    fn damaged_records_are_counted_not_acked_away_silently() {
        let dir = tmp();
        let spool = Spool::open(&dir, 64 << 10).unwrap(); // 8 KiB segments
        for i in 0..40u8 {
            spool.append(&[i; 1000]).unwrap();
        }
        let mut segs: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3);
        // Flip a byte in the second record of the first segment: it and the rest of the
        // segment no longer decode.
        let mut bytes = fs::read(&segs[0]).unwrap();
        let per_seg = bytes.len() / (HEADER + 1000);
        bytes[HEADER + 1000 + HEADER + 5] ^= 0xFF;
        fs::write(&segs[0], &bytes).unwrap();
        let got = spool.peek(usize::MAX).unwrap();
        let corrupt = spool.take_corrupt();
        assert_eq!(corrupt, per_seg as u64 - 1);
        assert_eq!(got.len() as u64 + corrupt, 40, "readable or counted");
        assert_eq!(spool.take_corrupt(), 0, "counted once");
        spool.peek(usize::MAX).unwrap();
        assert_eq!(spool.take_corrupt(), 0, "counted once");
        // Reopen: the damaged middle segment's lost records are counted again for this process.
        drop(spool);
        let spool = Spool::open(&dir, 64 << 10).unwrap();
        assert_eq!(spool.take_corrupt(), per_seg as u64 - 1);
        assert_eq!(spool.peek(usize::MAX).unwrap().len(), got.len());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn crc_matches_the_reference_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }
}
