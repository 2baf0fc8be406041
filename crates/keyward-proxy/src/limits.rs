//! Request-rate limits per app token, as GCRA (governor): a token with "60 per 60 s" may
//! burst 60 requests and then gets one more each second. Checked before anything is sent
//! upstream. State lives here, not in the snapshot, so rebuilding the snapshot (which
//! happens on every change) does not reset anyone's allowance.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as RateClock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use keyward_core::Error;
use keyward_core::app_token::{AppToken, RateLimit};
use keyward_core::id::AppTokenId;

type Limiter<C> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as RateClock>::Instant>>;

/// A token's configured limit and the limiter enforcing it.
type TokenLimiter<C> = (RateLimit, Arc<Limiter<C>>);

/// The GCRA quota for "`requests` per `per_seconds`": the whole allowance as burst,
/// replenished evenly over the window.
fn quota(limit: RateLimit) -> Quota {
    let requests = NonZeroU32::new(limit.requests).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs(u64::from(limit.per_seconds)) / requests.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(requests))
        .allow_burst(requests)
}

#[derive(Debug)]
pub struct TokenRateLimits<C: RateClock = MonotonicClock> {
    clock: C,
    limiters: Mutex<HashMap<AppTokenId, TokenLimiter<C>>>,
}

impl Default for TokenRateLimits<MonotonicClock> {
    fn default() -> Self {
        Self::with_clock(MonotonicClock)
    }
}

impl<C: RateClock + Clone> TokenRateLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request against the token's limit, or refuses it with `rate_limited` and
    /// the time until one would pass.
    pub fn check(&self, token: &AppToken) -> Result<(), Error> {
        self.check_share(token, 1)
    }

    /// Like [`check`](Self::check) with this instance's share of the limit: `1 / instances`
    /// of the requests (at least one per period) — what each instance allows while the
    /// shared count in Redis cannot be reached.
    pub fn check_share(&self, token: &AppToken, instances: u64) -> Result<(), Error> {
        let Some(mut limit) = token.rate_limit else {
            return Ok(());
        };
        let share = u32::try_from(instances.max(1)).unwrap_or(u32::MAX);
        limit.requests = (limit.requests / share).max(1);
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            let entry = limiters.entry(token.id.clone()).or_insert_with(|| {
                (
                    limit,
                    Arc::new(RateLimiter::direct_with_clock(
                        quota(limit),
                        self.clock.clone(),
                    )),
                )
            });
            if entry.0 != limit {
                *entry = (
                    limit,
                    Arc::new(RateLimiter::direct_with_clock(
                        quota(limit),
                        self.clock.clone(),
                    )),
                );
            }
            entry.1.clone()
        };
        limiter.check().map_err(|not_until| {
            Error::limited(
                "rate_limited",
                format!(
                    "app token {} is limited to {} requests per {} s",
                    token.id, limit.requests, limit.per_seconds
                ),
                not_until.wait_time_from(self.clock.now()),
            )
        })
    }

    /// Forgets tokens that no longer exist, so the map cannot grow without bound.
    pub fn retain(&self, keep: impl Fn(&AppTokenId) -> bool) {
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;
    use keyward_core::Timestamp;

    use super::*;

    fn token(limit: Option<RateLimit>) -> AppToken {
        AppToken {
            id: "atk_01JD0000000000000000000000".parse().expect("id"),
            public_id: "p".into(),
            name: "t".into(),
            secret_hash: vec![],
            services: vec!["openai".into()],
            environments: vec!["production".into()],
            key_ids: vec![],
            allowed_networks: vec![],
            rate_limit: limit,
            budget: None,
            created_by: "t".into(),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_burst_is_allowed_then_requests_trickle_back() {
        let clock = FakeRelativeClock::default();
        let limits = TokenRateLimits::with_clock(clock.clone());
        let t = token(Some(RateLimit {
            requests: 3,
            per_seconds: 3,
        }));
        for _ in 0..3 {
            assert!(limits.check(&t).is_ok());
        }
        let refused = limits.check(&t).expect_err("fourth in the same instant");
        assert_eq!(refused.code, "rate_limited");
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(999));
        assert!(limits.check(&t).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(
            limits.check(&t).is_ok(),
            "one request is back after a third of the window"
        );
        assert!(limits.check(&token(None)).is_ok(), "no limit, no refusal");
    }

    #[test]
    fn a_changed_limit_takes_effect_and_gone_tokens_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limits = TokenRateLimits::with_clock(clock);
        let strict = token(Some(RateLimit {
            requests: 1,
            per_seconds: 60,
        }));
        assert!(limits.check(&strict).is_ok());
        assert!(limits.check(&strict).is_err());
        let relaxed = token(Some(RateLimit {
            requests: 5,
            per_seconds: 60,
        }));
        assert!(limits.check(&relaxed).is_ok());
        limits.retain(|_| false);
        assert!(limits.limiters.lock().expect("lock").is_empty());
    }
}
