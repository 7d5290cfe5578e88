//! Per-token rate limits: each caller may make at most its rate of requests per second
//! through this coordinator, with a burst of one second's worth (GCRA, `governor`).
//!
//! The limit is per coordinator: a cluster with k coordinators lets a token make up to k
//! times its rate in all. A token's own `rate_limit_rps` wins over the coordinator's
//! `--token-rate-limit-rps`; the root token is limited only by `--root-rate-limit-rps`.
//! Over the limit the answer is `429 rate_limited` with `Retry-After`, before any work.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use dynamo_core::ErrorCode;
use dynamo_core::wire::cluster::MAX_TOKENS;
use dynamo_server::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::auth::Principal;

/// One limiter per caller, made when it is first seen.
pub struct RateLimits {
    default_rps: Option<NonZeroU32>,
    root_rps: Option<NonZeroU32>,
    /// Keyed by the caller's name (`root` or a token id), with the rate it was made for
    /// (a token whose limit changed gets a new limiter). Bounded: the ring service holds
    /// at most [`MAX_TOKENS`] tokens, and the map is cleared past that many entries
    /// (revoked tokens' limiters).
    limiters: Mutex<HashMap<String, (NonZeroU32, Arc<DefaultDirectRateLimiter>)>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Limits of `default_rps` per scoped token and `root_rps` for the root token; 0 is no
    /// limit.
    pub fn new(default_rps: u32, root_rps: u32) -> RateLimits {
        RateLimits {
            default_rps: NonZeroU32::new(default_rps),
            root_rps: NonZeroU32::new(root_rps),
            limiters: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request of `caller`'s allowance.
    ///
    /// # Errors
    /// `429 rate_limited` with `Retry-After` (whole seconds, at least 1).
    pub fn check(&self, caller: &Principal) -> Result<(), ApiError> {
        let rps = match caller {
            Principal::Root => self.root_rps,
            Principal::Token(t) => t.rate_limit_rps.and_then(NonZeroU32::new).or(self.default_rps),
        };
        let Some(rps) = rps else { return Ok(()) };
        let limiter = self.limiter(caller.name(), rps);
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::new(
                ErrorCode::RateLimited,
                format!("the token is over its limit of {rps} requests per second; retry later"),
            )
            .retry_after(wait.as_secs().saturating_add(1))
        })
    }

    fn limiter(&self, name: &str, rps: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
        // The map only ever holds limiters: a panic elsewhere while it was held cannot
        // have left it half-changed.
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, l)) = map.get(name)
            && *r == rps
        {
            return l.clone();
        }
        if map.len() > MAX_TOKENS {
            map.clear();
        }
        let l = Arc::new(RateLimiter::direct(Quota::per_second(rps)));
        map.insert(name.to_owned(), (rps, l.clone()));
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::wire::cluster::{AllBuckets, BucketScope, Permission, TokenRecord};

    fn token(id: &str, rps: Option<u32>) -> Principal {
        Principal::Token(TokenRecord {
            id: id.into(),
            sha256: String::new(),
            buckets: BucketScope::All(AllBuckets::Star),
            permissions: vec![Permission::Read],
            created_ms: 0,
            expires_ms: None,
            rate_limit_rps: rps,
        })
    }

    fn admitted(limits: &RateLimits, p: &Principal, n: u32) -> u32 {
        (0..n).filter(|_| limits.check(p).is_ok()).count() as u32
    }

    // Goal: a token gets its burst of one second's worth and then 429 with Retry-After;
    // its own limit wins over the default; tokens do not share an allowance; 0 is no
    // limit. (Counts, not timing: the burst is spent far faster than it refills.)
    #[test]
    fn each_token_gets_its_own_allowance() {
        let limits = RateLimits::new(50, 0);
        let a = token("aaaa", None);
        assert_eq!(admitted(&limits, &a, 1000), 50, "the default burst");
        let e = limits.check(&a).expect_err("over");
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.to_string().contains("50 requests per second"), "{e}");
        let b = token("bbbb", Some(10));
        assert_eq!(admitted(&limits, &b, 1000), 10, "its own limit");
        assert_eq!(
            admitted(&limits, &Principal::Root, 10_000),
            10_000,
            "root: no limit by default"
        );
        let off = RateLimits::new(0, 5);
        assert_eq!(admitted(&off, &a, 10_000), 10_000);
        assert_eq!(admitted(&off, &Principal::Root, 100), 5);
    }
}
