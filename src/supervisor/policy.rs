//! The restart policy: how long to wait after an unexpected exit, and when a model is crash-looping.
//!
//! Pure: time is passed in, randomness too, so the schedule is tested without a clock.

use crate::config::ModelConfig;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The knobs of the schedule (from a model's config).
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub factor: f64,
    pub max_backoff: Duration,
    /// Each delay is scaled by a factor in `[1 - jitter, 1 + jitter]` (then capped at the max).
    pub jitter: f64,
    pub crash_loop_exits: u32,
    pub crash_loop_window: Duration,
    pub stable_after: Duration,
}

impl RestartPolicy {
    pub fn from_model(m: &ModelConfig) -> Self {
        RestartPolicy {
            initial_backoff: m.restart_initial_backoff,
            factor: 2.0,
            max_backoff: m.restart_max_backoff,
            jitter: m.restart_jitter.clamp(0.0, 1.0),
            crash_loop_exits: m.crash_loop_exits.max(1),
            crash_loop_window: m.crash_loop_window,
            stable_after: m.stable_after,
        }
    }

    /// The un-jittered delay before restart number `failures` (1 = first consecutive failure).
    pub fn nominal_delay(&self, failures: u32) -> Duration {
        if failures <= 1 {
            // A crash after a stable run is restarted at once: that is what keeps the
            // kill -9 → ready time short; only repeated failures back off.
            return Duration::ZERO;
        }
        let exp = (failures - 2).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.factor.powi(exp);
        Duration::from_secs_f64(secs.min(self.max_backoff.as_secs_f64()))
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub delay: Duration,
    /// The model is in a crash loop (retrying at the max delay).
    pub crash_loop: bool,
    /// This exit is the one that started the crash loop (emit the event once).
    pub entered_crash_loop: bool,
    /// Consecutive failures including this one.
    pub failures: u32,
}

/// Per-model restart bookkeeping.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    failures: u32,
    exits: VecDeque<Instant>,
    crash_loop: bool,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            policy,
            failures: 0,
            exits: VecDeque::new(),
            crash_loop: false,
        }
    }

    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    pub fn in_crash_loop(&self) -> bool {
        self.crash_loop
    }

    /// Records an unexpected exit at `now` of a child that ran for `uptime`; `random` is a
    /// uniform sample in [0, 1) for the jitter.
    pub fn on_exit(&mut self, now: Instant, uptime: Duration, random: f64) -> Decision {
        if uptime >= self.policy.stable_after {
            self.failures = 0;
            self.crash_loop = false;
        }
        self.failures = self.failures.saturating_add(1);
        self.exits.push_back(now);
        while let Some(first) = self.exits.front() {
            if now.saturating_duration_since(*first) > self.policy.crash_loop_window {
                self.exits.pop_front();
            } else {
                break;
            }
        }
        let was = self.crash_loop;
        if self.exits.len() >= self.policy.crash_loop_exits as usize {
            self.crash_loop = true;
        }
        let delay = if self.crash_loop {
            self.policy.max_backoff
        } else {
            let nominal = self.policy.nominal_delay(self.failures).as_secs_f64();
            let scale = 1.0 + self.policy.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
            Duration::from_secs_f64((nominal * scale).min(self.policy.max_backoff.as_secs_f64()))
        };
        Decision {
            delay,
            crash_loop: self.crash_loop,
            entered_crash_loop: self.crash_loop && !was,
            failures: self.failures,
        }
    }

    /// An operator's start/restart forgives past failures.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.crash_loop = false;
        self.exits.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_secs(1),
            factor: 2.0,
            max_backoff: Duration::from_secs(60),
            jitter: 0.0,
            crash_loop_exits: 5,
            crash_loop_window: Duration::from_secs(600),
            stable_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_double_up_to_the_max() {
        let p = policy();
        let got: Vec<u64> = (1..=9).map(|n| p.nominal_delay(n).as_secs()).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn quick_exits_back_off_then_crash_loop_at_the_fifth() {
        let mut t = RestartTracker::new(policy());
        let t0 = Instant::now();
        let mut delays = Vec::new();
        let mut entered = Vec::new();
        let mut now = t0;
        for _ in 0..7 {
            let d = t.on_exit(now, Duration::from_millis(10), 0.5);
            delays.push(d.delay.as_secs());
            entered.push(d.entered_crash_loop);
            now += d.delay + Duration::from_millis(10);
        }
        assert_eq!(delays, vec![0, 1, 2, 4, 60, 60, 60]);
        assert_eq!(
            entered,
            vec![false, false, false, false, true, false, false]
        );
        assert!(t.in_crash_loop());
    }

    #[test]
    fn a_stable_run_resets_the_backoff_and_the_crash_loop() {
        let mut t = RestartTracker::new(policy());
        let mut now = Instant::now();
        for _ in 0..5 {
            t.on_exit(now, Duration::ZERO, 0.5);
            now += Duration::from_secs(1);
        }
        assert!(t.in_crash_loop());
        // Ran for longer than stable_after, but 6 exits are still inside the 10 min window.
        let d = t.on_exit(now, Duration::from_secs(61), 0.5);
        assert_eq!(d.failures, 1);
        assert!(d.crash_loop && d.entered_crash_loop);
        // Much later the window has drained: the first failure restarts at once.
        let later = now + Duration::from_secs(3600);
        let d = t.on_exit(later, Duration::from_secs(3000), 0.5);
        assert_eq!(
            (d.failures, d.delay, d.crash_loop),
            (1, Duration::ZERO, false)
        );
    }

    #[test]
    fn exits_spread_beyond_the_window_are_not_a_crash_loop() {
        let mut t = RestartTracker::new(policy());
        let mut now = Instant::now();
        for _ in 0..10 {
            let d = t.on_exit(now, Duration::from_secs(1), 0.5);
            assert!(!d.crash_loop);
            now += Duration::from_secs(200);
        }
    }

    #[test]
    fn jitter_stays_within_its_band_and_under_the_max() {
        let mut p = policy();
        p.jitter = 0.2;
        for (random, lo, hi) in [(0.0, 3.2, 3.2), (0.999, 4.79, 4.8), (0.5, 4.0, 4.0)] {
            let mut t = RestartTracker::new(p.clone());
            let now = Instant::now();
            for _ in 0..3 {
                t.on_exit(now, Duration::ZERO, 0.5);
            }
            let d = t.on_exit(now, Duration::ZERO, random).delay.as_secs_f64();
            assert!(d >= lo - 1e-9 && d <= hi + 1e-9, "{random}: {d}");
        }
        let mut t = RestartTracker::new(p);
        let mut now = Instant::now();
        for _ in 0..20 {
            let d = t.on_exit(now, Duration::ZERO, 0.999);
            assert!(d.delay <= Duration::from_secs(60));
            now += Duration::from_secs(100);
        }
    }

    #[test]
    fn reset_forgives_everything() {
        let mut t = RestartTracker::new(policy());
        let now = Instant::now();
        for _ in 0..5 {
            t.on_exit(now, Duration::ZERO, 0.5);
        }
        t.reset();
        let d = t.on_exit(now, Duration::ZERO, 0.5);
        assert_eq!(
            (d.failures, d.crash_loop, d.delay),
            (1, false, Duration::ZERO)
        );
    }
}
