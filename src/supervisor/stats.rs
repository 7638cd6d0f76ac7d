//! CPU % and RSS of the model processes, from one read of `/proc/PID/stat` per child.
//!
//! The file holds both figures (utime + stime in clock ticks, resident pages), so a round costs
//! one small read per child. (sysinfo, used before, also listed every thread of every child and
//! re-read `/proc/stat` and each child's `status` for fields nobody uses: ~9 % of the agent's
//! CPU.) `/proc` is kernel memory, not disk, so reading it on an async worker never blocks.

use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// % of one core since the previous round (0 in a process's first round).
    pub cpu_percent: f32,
    pub rss_bytes: u64,
}

/// What one read of `/proc/PID/stat` gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatLine {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is parenthesised and may hold spaces
/// or parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<StatLine> {
    let rest = text.rsplit_once(')')?.1;
    // After the name: state is index 0, utime (field 14) 11, stime 12, rss (field 24) 21.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let rss_pages = fields.nth(8)?.parse().ok()?;
    Some(StatLine {
        cpu_ticks: utime + stime,
        rss_pages,
    })
}

/// % of one core used between two reads `seconds` apart.
pub fn cpu_percent(before: u64, after: u64, ticks_per_second: f64, seconds: f64) -> f32 {
    if seconds <= 0.0 || ticks_per_second <= 0.0 {
        return 0.0;
    }
    (after.saturating_sub(before) as f64 / ticks_per_second / seconds * 100.0) as f32
}

/// A sampler kept across refreshes (CPU % is a difference between two reads).
pub struct ProcessStats {
    /// Each live child's previous read: when, and its CPU ticks then.
    previous: HashMap<u32, (Instant, u64)>,
    ticks_per_second: f64,
    page_bytes: u64,
}

fn sysconf(name: libc::c_int, fallback: i64) -> i64 {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 { v } else { fallback }
}

impl ProcessStats {
    pub fn new() -> Self {
        ProcessStats {
            previous: HashMap::new(),
            ticks_per_second: sysconf(libc::_SC_CLK_TCK, 100) as f64,
            page_bytes: sysconf(libc::_SC_PAGESIZE, 4096) as u64,
        }
    }

    /// Refreshes `pids` and returns their samples (dead pids are dropped).
    pub fn refresh(&mut self, pids: &[u32]) -> HashMap<u32, ProcessSample> {
        let now = Instant::now();
        let mut previous = HashMap::with_capacity(pids.len());
        let mut out = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let Some(line) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            else {
                continue;
            };
            let cpu = match self.previous.get(&pid) {
                Some(&(at, ticks)) => cpu_percent(
                    ticks,
                    line.cpu_ticks,
                    self.ticks_per_second,
                    now.duration_since(at).as_secs_f64(),
                ),
                None => 0.0,
            };
            previous.insert(pid, (now, line.cpu_ticks));
            out.insert(
                pid,
                ProcessSample {
                    cpu_percent: cpu,
                    rss_bytes: line.rss_pages.saturating_mul(self.page_bytes),
                },
            );
        }
        // Only the pids asked for are kept: a respawned child's new pid starts afresh.
        self.previous = previous;
        out
    }
}

impl Default for ProcessStats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_our_own_process_and_skips_dead_pids() {
        let mut s = ProcessStats::new();
        let me = std::process::id();
        let got = s.refresh(&[me, u32::MAX - 1]);
        assert!(got.get(&me).is_some_and(|p| p.rss_bytes > 0), "{got:?}");
        assert!(!got.contains_key(&(u32::MAX - 1)));
        assert_eq!(got[&me].cpu_percent, 0.0, "no previous read yet");
    }

    #[test]
    fn a_busy_process_shows_its_cpu_and_the_same_rss_as_status() {
        let mut s = ProcessStats::new();
        let me = std::process::id();
        s.refresh(&[me]);
        // Burn CPU until the kernel has charged at least a few ticks to this process.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let got = s.refresh(&[me]);
        assert!(got[&me].cpu_percent > 10.0, "{got:?}");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        let ours_kb = got[&me].rss_bytes / 1024;
        // Same counter, read a moment apart.
        assert!(
            ours_kb.abs_diff(vm_rss_kb) < vm_rss_kb / 10,
            "{ours_kb} vs {vm_rss_kb}"
        );
    }

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let tail = "S 1 2 3 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 12345 1000000 812 18446744073709551615";
        for name in ["warden-model", "a b", "x) (y", ""] {
            let line = format!("4242 ({name}) {tail}");
            assert_eq!(
                parse_stat(&line),
                Some(StatLine {
                    cpu_ticks: 300,
                    rss_pages: 812
                }),
                "{line}"
            );
        }
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cpu_percent_is_of_one_core() {
        let table = [
            // (before, after, ticks/s, seconds, %)
            (0, 100, 100.0, 1.0, 100.0),
            (0, 50, 100.0, 1.0, 50.0),
            (0, 300, 100.0, 2.0, 150.0),
            (10, 10, 100.0, 1.0, 0.0),
            // A counter that went backwards (never, but) reads as idle, not negative.
            (20, 10, 100.0, 1.0, 0.0),
            (0, 100, 100.0, 0.0, 0.0),
        ];
        for (before, after, hz, secs, want) in table {
            assert_eq!(
                cpu_percent(before, after, hz, secs),
                want,
                "{before} {after} {secs}"
            );
        }
    }
}
