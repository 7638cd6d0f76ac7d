//! Recently verified access tokens, so a client that reuses its token (every client does, for
//! 15 minutes) pays the RS256 signature check once instead of on every request.
//!
//! Sound because an access token cannot be revoked: its claims are fixed by its signature, so
//! the same string verified once stays valid until its `exp`. An entry is used only while
//! `now < exp` (stricter than the verifier's clock-skew leeway, which then decides again); the
//! map is bounded, dropping expired entries first and everything when still full.
//!
//! A connection also remembers its own last token ([`LastToken`]): clients send the same token
//! on every request of a connection, and comparing it is far cheaper than hashing it for the
//! shared map.

use super::auth::Principal;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Most tokens remembered (each a few hundred bytes).
const CAPACITY: usize = 1024;

/// One connection's last verified token, its principal and its `exp`.
#[derive(Default)]
pub struct LastToken(Mutex<Option<(Box<str>, Principal, u64)>>);

#[derive(Default)]
pub struct VerifiedTokens {
    /// Read on every request by every gateway thread, written once per new token.
    entries: RwLock<HashMap<Box<str>, (Principal, u64)>>,
}

#[derive(serde::Deserialize)]
struct Expiry {
    exp: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl VerifiedTokens {
    /// The principal of `token`: from the cache while it has not expired, else from `verify`
    /// (whose success is remembered until the token's `exp`).
    pub fn get_or_verify<E>(
        &self,
        token: &str,
        verify: impl FnOnce(&str) -> Result<Principal, E>,
    ) -> Result<Principal, E> {
        self.get_or_verify_at(token, unix_now(), verify)
    }

    /// [`Self::get_or_verify`], first against the connection's own last token.
    pub fn get_or_verify_remembered<E>(
        &self,
        last: &LastToken,
        token: &str,
        verify: impl FnOnce(&str) -> Result<Principal, E>,
    ) -> Result<Principal, E> {
        self.get_or_verify_remembered_at(last, token, unix_now(), verify)
    }

    fn get_or_verify_remembered_at<E>(
        &self,
        last: &LastToken,
        token: &str,
        now: u64,
        verify: impl FnOnce(&str) -> Result<Principal, E>,
    ) -> Result<Principal, E> {
        if let Ok(last) = last.0.lock()
            && let Some((t, principal, exp)) = last.as_ref()
            && **t == *token
            && now < *exp
        {
            return Ok(principal.clone());
        }
        let (principal, exp) = self.lookup(token, now, verify)?;
        if let Some(exp) = exp
            && let Ok(mut last) = last.0.lock()
        {
            *last = Some((token.into(), principal.clone(), exp));
        }
        Ok(principal)
    }

    fn get_or_verify_at<E>(
        &self,
        token: &str,
        now: u64,
        verify: impl FnOnce(&str) -> Result<Principal, E>,
    ) -> Result<Principal, E> {
        self.lookup(token, now, verify)
            .map(|(principal, _)| principal)
    }

    /// The token's principal and, while it may be reused, its `exp`.
    fn lookup<E>(
        &self,
        token: &str,
        now: u64,
        verify: impl FnOnce(&str) -> Result<Principal, E>,
    ) -> Result<(Principal, Option<u64>), E> {
        if let Ok(entries) = self.entries.read()
            && let Some((principal, exp)) = entries.get(token)
            && now < *exp
        {
            return Ok((principal.clone(), Some(*exp)));
        }
        let principal = verify(token)?;
        // Verified just now, so its claims parse; `exp` is read without checking again.
        let exp = match jsonwebtoken::dangerous::insecure_decode_claims::<Expiry>(token) {
            Ok(claims) if now < claims.exp => claims.exp,
            _ => return Ok((principal, None)),
        };
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= CAPACITY {
                entries.retain(|_, (_, exp)| now < *exp);
                if entries.len() >= CAPACITY {
                    entries.clear();
                }
            }
            entries.insert(token.into(), (principal.clone(), exp));
        }
        Ok((principal, Some(exp)))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().map_or(0, |e| e.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Role;

    /// An unsigned token shape with the given exp (the verifier is the test's closure).
    fn token(exp: u64, n: u32) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig{n}",
            b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"exp":{exp},"n":{n}}}"#))
        )
    }

    fn alice() -> Principal {
        Principal {
            subject: "alice".into(),
            role: Role::User,
        }
    }

    #[test]
    fn a_token_is_verified_once_until_it_expires() {
        let cache = VerifiedTokens::default();
        let t = token(1_000, 1);
        let mut calls = 0;
        for now in [10, 500, 999] {
            let p = cache
                .get_or_verify_at(&t, now, |_| {
                    calls += 1;
                    Ok::<_, ()>(alice())
                })
                .unwrap();
            assert_eq!(p.subject, "alice");
        }
        assert_eq!(calls, 1);
        // At exp the verifier decides again (and here refuses).
        let late = cache.get_or_verify_at(&t, 1_000, |_| Err::<Principal, _>("expired"));
        assert_eq!(late.unwrap_err(), "expired");
    }

    #[test]
    fn failures_are_never_remembered_and_the_map_stays_bounded() {
        let cache = VerifiedTokens::default();
        let t = token(1_000, 1);
        assert!(
            cache
                .get_or_verify_at(&t, 1, |_| Err::<Principal, _>(()))
                .is_err()
        );
        let mut calls = 0;
        let _ = cache.get_or_verify_at(&t, 1, |_| {
            calls += 1;
            Ok::<_, ()>(alice())
        });
        assert_eq!(calls, 1, "a refused token was cached");
        for n in 0..(CAPACITY as u32 + 10) {
            let _ = cache.get_or_verify_at(&token(1_000, n + 2), 1, |_| Ok::<_, ()>(alice()));
        }
        assert!(cache.len() <= CAPACITY);
    }

    #[test]
    fn a_connection_reuses_its_last_token_until_it_expires_and_not_another() {
        let cache = VerifiedTokens::default();
        let last = LastToken::default();
        let (t1, t2) = (token(1_000, 1), token(1_000, 2));
        let calls = std::cell::Cell::new(0);
        let verify = |_: &str| {
            calls.set(calls.get() + 1);
            Ok::<_, ()>(alice())
        };
        for now in [10, 500, 999] {
            let p = cache
                .get_or_verify_remembered_at(&last, &t1, now, verify)
                .unwrap();
            assert_eq!(p, alice());
        }
        assert_eq!(calls.get(), 1);
        // Another token on the same connection is checked (and then remembered instead).
        let refused =
            cache.get_or_verify_remembered_at(&last, &t2, 20, |_| Err::<Principal, _>(()));
        assert!(refused.is_err());
        cache
            .get_or_verify_remembered_at(&last, &t2, 20, verify)
            .unwrap();
        assert_eq!(calls.get(), 2);
        // At exp the verifier decides again, for the connection as for the shared map.
        let late = cache
            .get_or_verify_remembered_at(&last, &t2, 1_000, |_| Err::<Principal, _>("expired"));
        assert_eq!(late.unwrap_err(), "expired");
    }
}
