//! Per-subject GCRA rate limiting (governor): `auth.rate_limit_per_hour`, burst = the hourly
//! allowance, answered with 429, Retry-After and X-RateLimit-* headers.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

pub struct SubjectLimiter {
    limit: u32,
    limiter: RateLimiter<
        String,
        DefaultKeyedStateStore<String>,
        DefaultClock,
        StateInformationMiddleware,
    >,
}

/// The outcome of one check, with what the headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Allowed { limit: u32, remaining: u32 },
    Limited { limit: u32, retry_after: Duration },
}

impl SubjectLimiter {
    pub fn per_hour(limit: u32) -> SubjectLimiter {
        let per_hour = NonZeroU32::new(limit.max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_hour(per_hour))
            .with_middleware::<StateInformationMiddleware>();
        SubjectLimiter {
            limit: per_hour.get(),
            limiter,
        }
    }

    pub fn check(&self, subject: &str) -> Decision {
        match self.limiter.check_key(&subject.to_string()) {
            Ok(snapshot) => Decision::Allowed {
                limit: self.limit,
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Limited {
                limit: self.limit,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }

    /// Forgets idle subjects so the key map stays bounded.
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_limited_separately() {
        let limiter = SubjectLimiter::per_hour(3);
        for left in [2, 1, 0] {
            assert_eq!(
                limiter.check("alice"),
                Decision::Allowed {
                    limit: 3,
                    remaining: left
                }
            );
        }
        match limiter.check("alice") {
            Decision::Limited {
                limit: 3,
                retry_after,
            } => {
                assert!(
                    retry_after > Duration::from_secs(1000)
                        && retry_after <= Duration::from_secs(1200)
                )
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        assert!(matches!(limiter.check("bob"), Decision::Allowed { .. }));
    }
}
