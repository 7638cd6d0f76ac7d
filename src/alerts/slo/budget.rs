//! Long-window good/total accounting for one objective: what the 10-minute metric store
//! cannot hold.
//!
//! Two sparse bucket rings (only buckets that saw calls are kept):
//! - minute buckets for the last [`MINUTE_SPAN`] (6 h): the 5 m, 30 m, 1 h and 6 h windows;
//! - hour buckets for the objective's window (≤ 90 d): the 3 d window and the budget itself.
//!
//! Every call is added to both rings, so a window is always summed from one ring. A window
//! covers the buckets that overlap it, the current (partial) one included, so a window may
//! look back up to one bucket further than it says: at most 1 min for the short windows,
//! 1 h for 3 d and 30 d. Size: 30 d of steady traffic is 360 + 720 buckets per objective.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// Minute buckets are kept this long.
pub const MINUTE_SPAN: Duration = Duration::from_secs(6 * 3600);

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// One bucket: its index (start / width) and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub index: u64,
    pub good: u64,
    pub total: u64,
}

/// Good and total calls over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub good: u64,
    pub total: u64,
}

impl Counts {
    pub fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }

    /// Bad calls as a multiple of the budget's allowance (`budget` = 1 - target): 1.0 spends
    /// the budget exactly over the objective's window. Zero without calls.
    pub fn burn_rate(&self, budget: f64) -> f64 {
        if self.total == 0 || budget <= 0.0 {
            return 0.0;
        }
        (self.bad() as f64 / self.total as f64) / budget
    }
}

/// One objective's buckets (persisted as-is).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub minutes: VecDeque<Bucket>,
    pub hours: VecDeque<Bucket>,
}

fn add_to(ring: &mut VecDeque<Bucket>, index: u64, good: u64, total: u64) {
    match ring.back_mut() {
        Some(b) if b.index == index => {
            b.good = b.good.saturating_add(good);
            b.total = b.total.saturating_add(total);
        }
        // A late add (clock stepped back) joins the newest bucket: never reorder the ring.
        Some(b) if b.index > index => {
            b.good = b.good.saturating_add(good);
            b.total = b.total.saturating_add(total);
        }
        _ => ring.push_back(Bucket { index, good, total }),
    }
}

fn sum_from(ring: &VecDeque<Bucket>, first: u64) -> Counts {
    ring.iter()
        .rev()
        .take_while(|b| b.index >= first)
        .fold(Counts::default(), |c, b| Counts {
            good: c.good + b.good,
            total: c.total + b.total,
        })
}

impl Ledger {
    /// Adds calls seen at `at_ms`; `good` is capped at `total`.
    pub fn add(&mut self, at_ms: u64, good: u64, total: u64) {
        if total == 0 {
            return;
        }
        let good = good.min(total);
        add_to(&mut self.minutes, at_ms / MINUTE_MS, good, total);
        add_to(&mut self.hours, at_ms / HOUR_MS, good, total);
    }

    /// Drops buckets that no window reaches any more (`keep` is the objective's window).
    pub fn prune(&mut self, now_ms: u64, keep: Duration) {
        let first_minute = (now_ms / MINUTE_MS).saturating_sub(MINUTE_SPAN.as_secs() / 60);
        while self.minutes.front().is_some_and(|b| b.index < first_minute) {
            self.minutes.pop_front();
        }
        let first_hour = (now_ms / HOUR_MS).saturating_sub(keep.as_secs().div_ceil(3600));
        while self.hours.front().is_some_and(|b| b.index < first_hour) {
            self.hours.pop_front();
        }
    }

    /// Good/total over the `window` ending at `now_ms`: minute buckets up to 6 h, hour
    /// buckets beyond.
    pub fn counts(&self, now_ms: u64, window: Duration) -> Counts {
        if window <= MINUTE_SPAN {
            let n = window.as_secs().div_ceil(60).max(1);
            sum_from(&self.minutes, (now_ms / MINUTE_MS + 1).saturating_sub(n))
        } else {
            let n = window.as_secs().div_ceil(3600).max(1);
            sum_from(&self.hours, (now_ms / HOUR_MS + 1).saturating_sub(n))
        }
    }

    /// Budget left over the objective's `window`: 1 untouched, 0 spent, below 0 overspent.
    pub fn remaining(&self, now_ms: u64, window: Duration, budget: f64) -> f64 {
        1.0 - self.counts(now_ms, window).burn_rate(budget)
    }

    pub fn buckets(&self) -> usize {
        self.minutes.len() + self.hours.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const H: u64 = 3_600_000;

    #[test]
    fn windows_sum_the_buckets_they_overlap() {
        let mut l = Ledger::default();
        let t0 = 1_000 * H;
        // 10 calls a minute for 2 h, one bad each minute.
        for m in 0..120 {
            l.add(t0 + m * MIN + 5, 9, 10);
        }
        let now = t0 + 119 * MIN + 30_000;
        assert_eq!(
            l.counts(now, Duration::from_secs(300)),
            Counts {
                good: 45,
                total: 50
            }
        );
        assert_eq!(l.counts(now, Duration::from_secs(3600)).total, 600);
        assert_eq!(l.counts(now, Duration::from_secs(6 * 3600)).total, 1200);
        // 3 days reads the hour ring: both hours.
        assert_eq!(l.counts(now, Duration::from_secs(3 * 86_400)).total, 1200);
        let c = l.counts(now, Duration::from_secs(3600));
        assert!((c.burn_rate(0.001) - 100.0).abs() < 1e-9, "{c:?}");
        assert!((l.remaining(now, Duration::from_secs(30 * 86_400), 0.2) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn pruning_keeps_six_hours_of_minutes_and_the_window_of_hours() {
        let mut l = Ledger::default();
        let t0 = 1_000 * H;
        for m in 0..(48 * 60) {
            l.add(t0 + m * MIN, 1, 1);
        }
        let now = t0 + 48 * H;
        l.prune(now, Duration::from_secs(86_400));
        assert!(l.minutes.len() <= 360, "{}", l.minutes.len());
        assert!(l.hours.len() <= 25, "{}", l.hours.len());
        assert_eq!(l.counts(now, Duration::from_secs(3600)).total, 59);
        // Empty minutes take no room.
        let mut sparse = Ledger::default();
        sparse.add(t0, 1, 1);
        sparse.add(t0 + 5 * H, 1, 1);
        assert_eq!(sparse.buckets(), 4);
    }

    #[test]
    fn no_calls_burn_nothing_and_good_is_capped() {
        let l = Ledger::default();
        assert_eq!(
            l.counts(5 * H, Duration::from_secs(300)).burn_rate(0.001),
            0.0
        );
        assert_eq!(l.remaining(5 * H, Duration::from_secs(86_400), 0.001), 1.0);
        let mut l = Ledger::default();
        l.add(5 * H, 7, 5);
        assert_eq!(l.counts(5 * H, Duration::from_secs(60)).bad(), 0);
    }
}
