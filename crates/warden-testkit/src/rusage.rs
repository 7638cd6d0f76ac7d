//! This process's CPU time and peak RSS (getrusage), for the benchmarks' cost figures.

use std::time::Duration;

/// (user + system CPU time, peak RSS in bytes) of the calling process so far.
pub fn self_usage() -> (Duration, u64) {
    // SAFETY: getrusage only writes the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(u.ru_utime) + tv(u.ru_stime), u.ru_maxrss as u64 * 1024)
}
