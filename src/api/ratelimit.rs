//! Rate limiting (governor GCRA): per subject (`auth.rate_limit_per_hour`, burst = the hourly
//! allowance, answered with 429, Retry-After and X-RateLimit-* headers), and `/auth/token`'s
//! brute-force limits per client address and per API key id.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
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

    /// Charges `n` tokens at once (a batch costs one per item); all or nothing.
    pub fn check_n(&self, subject: &str, n: u32) -> Decision {
        let Some(n) = NonZeroU32::new(n) else {
            return Decision::Allowed {
                limit: self.limit,
                remaining: self.limit,
            };
        };
        match self.limiter.check_key_n(&subject.to_string(), n) {
            Ok(Ok(snapshot)) => Decision::Allowed {
                limit: self.limit,
                remaining: snapshot.remaining_burst_capacity(),
            },
            Ok(Err(not_until)) => Decision::Limited {
                limit: self.limit,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
            // More than the whole allowance: never possible, so wait a full period.
            Err(_) => Decision::Limited {
                limit: self.limit,
                retry_after: Duration::from_secs(3600),
            },
        }
    }

    /// Forgets idle subjects so the key map stays bounded.
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `/auth/token` attempts allowed per client address at once, then one per [`ADDRESS_PERIOD`].
pub const ADDRESS_BURST: u32 = 10;
pub const ADDRESS_PERIOD: Duration = Duration::from_secs(6);
/// Attempts allowed per API key id (from any address), then one per [`KEY_PERIOD`]: stops a
/// guess spread over many addresses; an honest client needs one exchange per refresh family.
pub const KEY_BURST: u32 = 20;
pub const KEY_PERIOD: Duration = Duration::from_secs(30);

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Brute-force limits for the API-key exchange: each attempt costs an argon2 verification,
/// so it is charged before the key is checked, per address and per key id.
pub struct LoginLimiter {
    by_address: Keyed<IpAddr>,
    by_key: Keyed<String>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(ADDRESS_BURST, ADDRESS_PERIOD, KEY_BURST, KEY_PERIOD)
    }
}

fn quota(burst: u32, period: Duration) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period.max(Duration::from_millis(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl LoginLimiter {
    pub fn new(
        address_burst: u32,
        address_period: Duration,
        key_burst: u32,
        key_period: Duration,
    ) -> LoginLimiter {
        LoginLimiter {
            by_address: RateLimiter::keyed(quota(address_burst, address_period)),
            by_key: RateLimiter::keyed(quota(key_burst, key_period)),
        }
    }

    /// One attempt from `address`: how long to wait if it is over its allowance.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Duration> {
        self.by_address
            .check_key(&address)
            .map_err(|n| n.wait_time_from(DefaultClock::default().now()))
    }

    /// One attempt on the key `presented` (its id selects the stored hash); keys without an
    /// id are not looked up at all, so only the address limit applies to them.
    pub fn check_key(&self, presented: &str) -> Result<(), Duration> {
        let Some(id) = key_id(presented) else {
            return Ok(());
        };
        self.by_key
            .check_key(&id.to_string())
            .map_err(|n| n.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets idle addresses and key ids so the maps stay bounded.
    pub fn shrink(&self) {
        self.by_address.retain_recent();
        self.by_address.shrink_to_fit();
        self.by_key.retain_recent();
        self.by_key.shrink_to_fit();
    }
}

/// The id part of `wdn_<id>_<secret>` (ids are 8 hex digits; longer ones are not keys).
fn key_id(presented: &str) -> Option<&str> {
    let (id, _) = presented.strip_prefix("wdn_")?.split_once('_')?;
    (!id.is_empty() && id.len() <= 16).then_some(id)
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

    #[test]
    fn a_batch_is_charged_per_item() {
        let limiter = SubjectLimiter::per_hour(100);
        assert_eq!(
            limiter.check_n("alice", 50),
            Decision::Allowed {
                limit: 100,
                remaining: 50
            }
        );
        assert!(matches!(
            limiter.check_n("alice", 49),
            Decision::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(
            limiter.check_n("alice", 2),
            Decision::Limited { .. }
        ));
        assert!(matches!(
            limiter.check_n("bob", 101),
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn logins_are_limited_per_address_and_per_key_id() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60), 5, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check_address(a).is_ok());
        }
        let wait = limiter.check_address(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(30) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(
            limiter.check_address(b).is_ok(),
            "another address has its own allowance"
        );
        for _ in 0..5 {
            assert!(limiter.check_key("wdn_abcd1234_guess").is_ok());
        }
        assert!(
            limiter.check_key("wdn_abcd1234_right").is_err(),
            "the key id is locked"
        );
        assert!(limiter.check_key("wdn_ffff0000_other").is_ok());
        assert!(
            limiter.check_key("not-a-key").is_ok(),
            "no id: address limit only"
        );
    }
}
