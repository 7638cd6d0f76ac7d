//! Multi-window, multi-burn-rate alert tiers (Google SRE workbook, ch. 5): a tier holds when,
//! for any of its window pairs, both the long and the short window burn faster than the
//! pair's factor. The long window makes a blip harmless; the short one makes the alert
//! resolve soon after the burn stops. Pure: counts in, verdicts out.
//!
//! | tier   | severity | long | short | burn ≥ | budget spent when it fires |
//! |--------|----------|------|-------|--------|----------------------------|
//! | page   | critical | 1 h  | 5 m   | 14.4×  | 2 % of 30 d in 1 h         |
//! | page   | critical | 6 h  | 30 m  | 6×     | 5 % of 30 d in 6 h         |
//! | ticket | warning  | 3 d  | 6 h   | 1×     | 10 % of 30 d in 3 d        |

use super::budget::Counts;
use crate::alerts::rules::Severity;
use std::time::Duration;

/// An alert tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Page,
    Ticket,
}

impl Tier {
    pub const ALL: [Tier; 2] = [Tier::Page, Tier::Ticket];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Page => "page",
            Tier::Ticket => "ticket",
        }
    }

    /// Page → critical (the critical SNS topic), ticket → warning.
    pub fn severity(self) -> Severity {
        match self {
            Tier::Page => Severity::Critical,
            Tier::Ticket => Severity::Warning,
        }
    }

    /// The alert rule each tier raises.
    pub fn rule_name(self) -> &'static str {
        match self {
            Tier::Page => "slo-burn-rate-page",
            Tier::Ticket => "slo-burn-rate-ticket",
        }
    }

    pub fn pairs(self) -> &'static [WindowPair] {
        match self {
            Tier::Page => PAGE,
            Tier::Ticket => TICKET,
        }
    }
}

/// A long and a short window that must both burn at `factor` or more.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowPair {
    pub long: Duration,
    pub short: Duration,
    pub factor: f64,
}

const fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

pub const PAGE: &[WindowPair] = &[
    WindowPair {
        long: mins(60),
        short: mins(5),
        factor: 14.4,
    },
    WindowPair {
        long: mins(360),
        short: mins(30),
        factor: 6.0,
    },
];

pub const TICKET: &[WindowPair] = &[WindowPair {
    long: mins(3 * 24 * 60),
    short: mins(360),
    factor: 1.0,
}];

/// Every window a burn rate is exported for (`warden_slo_burn_rate{window}`), shortest first.
pub const WINDOWS: [Duration; 5] = [mins(5), mins(30), mins(60), mins(360), mins(3 * 24 * 60)];

/// A tier's verdict for one objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub breach: bool,
    /// The burn rate the message quotes: the breaching pair's long window, else the highest
    /// long-window burn of the tier's pairs.
    pub rate: f64,
    pub window: Duration,
}

/// Evaluates `tier` over `counts(window)`; a window with fewer than `min_requests` calls
/// cannot hold (too few calls to tell a burn from bad luck).
pub fn evaluate(
    tier: Tier,
    counts: impl Fn(Duration) -> Counts,
    budget: f64,
    min_requests: u64,
) -> Verdict {
    let holds = |w: Duration, factor: f64| {
        let c = counts(w);
        c.total >= min_requests && c.burn_rate(budget) >= factor
    };
    let mut quoted: Option<Verdict> = None;
    for p in tier.pairs() {
        let rate = counts(p.long).burn_rate(budget);
        if holds(p.long, p.factor) && holds(p.short, p.factor) {
            return Verdict {
                breach: true,
                rate,
                window: p.long,
            };
        }
        if quoted.is_none_or(|q| rate > q.rate) {
            quoted = Some(Verdict {
                breach: false,
                rate,
                window: p.long,
            });
        }
    }
    quoted.unwrap_or(Verdict {
        breach: false,
        rate: 0.0,
        window: Duration::ZERO,
    })
}

/// How long the budget lasts at `rate`: `remaining` (1 = the whole budget) of a budget that
/// `rate` 1× spends in `window`. `None` when nothing burns; zero once spent.
pub fn time_to_exhaustion(remaining: f64, rate: f64, window: Duration) -> Option<Duration> {
    if rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    if remaining <= 0.0 {
        return Some(Duration::ZERO);
    }
    Some(Duration::from_secs_f64(
        (remaining * window.as_secs_f64() / rate).min(1e12),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts where each window's error ratio is given by `ratio(window)` at 1000 calls.
    fn at(ratio: impl Fn(Duration) -> f64) -> impl Fn(Duration) -> Counts {
        move |w| {
            let total = 10_000;
            Counts {
                good: total - (ratio(w) * total as f64).round() as u64,
                total,
            }
        }
    }

    #[test]
    fn tiers_follow_the_workbook_table() {
        let budget = 0.001;
        // 2 % errors everywhere: 20× pages (1 h/5 m) and tickets.
        let v = evaluate(Tier::Page, at(|_| 0.02), budget, 100);
        assert!(v.breach);
        assert!((v.rate - 20.0).abs() < 1e-9);
        assert_eq!(v.window, mins(60));
        assert!(evaluate(Tier::Ticket, at(|_| 0.02), budget, 100).breach);
        // 0.8 %: 8× — the 6 h / 30 m pair pages, the 1 h / 5 m one does not.
        let v = evaluate(Tier::Page, at(|_| 0.008), budget, 100);
        assert!(v.breach);
        assert_eq!(v.window, mins(360));
        // 0.15 %: 1.5× tickets but never pages.
        assert!(!evaluate(Tier::Page, at(|_| 0.0015), budget, 100).breach);
        assert!(evaluate(Tier::Ticket, at(|_| 0.0015), budget, 100).breach);
        // 0.05 % is inside the budget: nothing.
        assert!(!evaluate(Tier::Ticket, at(|_| 0.0005), budget, 100).breach);
    }

    #[test]
    fn the_short_window_resolves_and_the_long_one_ignores_blips() {
        let budget = 0.001;
        // Burn stopped 5 minutes ago: the 1 h / 5 m pair is quiet, the 6 h / 30 m one still pages.
        let five = at(|w| if w <= mins(5) { 0.0 } else { 0.02 });
        let v = evaluate(Tier::Page, five, budget, 100);
        assert!(v.breach && v.window == mins(360), "{v:?}");
        // Stopped 30 minutes ago: both short windows are clean, the page resolves.
        let thirty = at(|w| if w <= mins(30) { 0.0 } else { 0.02 });
        assert!(!evaluate(Tier::Page, thirty, budget, 100).breach);
        // A 5-minute blip of 10 % errors: the hour averages under 14.4×.
        let blip = at(|w| {
            if w <= mins(5) {
                0.1
            } else {
                0.1 * 5.0 / w.as_secs_f64() * 60.0
            }
        });
        assert!(!evaluate(Tier::Page, blip, budget, 100).breach);
    }

    #[test]
    fn too_few_calls_never_hold() {
        let few = |_| Counts { good: 9, total: 10 };
        let v = evaluate(Tier::Page, few, 0.001, 100);
        assert!(!v.breach);
        assert!((v.rate - 100.0).abs() < 1e-9, "the rate is still reported");
    }

    #[test]
    fn exhaustion_time_scales_with_the_rate() {
        let w = Duration::from_secs(30 * 86_400);
        assert_eq!(time_to_exhaustion(1.0, 1.0, w), Some(w));
        assert_eq!(
            time_to_exhaustion(0.5, 10.0, w),
            Some(Duration::from_secs(30 * 86_400 / 20))
        );
        assert_eq!(time_to_exhaustion(0.5, 0.0, w), None);
        assert_eq!(time_to_exhaustion(-0.1, 3.0, w), Some(Duration::ZERO));
    }
}
