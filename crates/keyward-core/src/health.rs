//! Key and service health: how often a key may be probed (its probe budget), the circuit
//! breaker that stops sending traffic to a failing key, the status a key's recent calls
//! add up to, and telling a service disruption (many keys failing at once) from a bad key.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::service::{Limit, LimitUnit};

/// Probes are never more frequent than this.
pub const PROBE_INTERVAL_MIN: SignedDuration = SignedDuration::from_mins(15);
/// A probe may spend at most 1/`PROBE_SHARE` of any request allowance: a key allowed 25
/// requests a day is probed at most once a day.
pub const PROBE_SHARE: u64 = 25;

/// How long to wait between probes of a key held to `limits`.
pub fn probe_interval(limits: &[Limit]) -> SignedDuration {
    limits
        .iter()
        .filter(|l| matches!(l.unit, LimitUnit::Requests | LimitUnit::Credits) && l.max > 0)
        .map(|l| {
            let seconds = l.window_seconds.saturating_mul(PROBE_SHARE) / l.max;
            SignedDuration::from_secs(i64::try_from(seconds).unwrap_or(i64::MAX))
        })
        .fold(PROBE_INTERVAL_MIN, SignedDuration::max)
}

/// Consecutive failures that open a key's circuit.
pub const BREAKER_THRESHOLD: u32 = 5;
/// The first open period; each failed trial doubles it, up to [`BREAKER_OPEN_MAX`].
pub const BREAKER_OPEN_FIRST: SignedDuration = SignedDuration::from_secs(30);
pub const BREAKER_OPEN_MAX: SignedDuration = SignedDuration::from_mins(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    /// No traffic until the time has passed.
    Open,
    /// The open period is over: the next call is a trial.
    HalfOpen,
}

/// A key's circuit breaker: failures are provider errors, timeouts and unreachable
/// providers (not rejections, which are flags of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub open_until: Option<Timestamp>,
    /// How long the last open period was (doubles while trials fail).
    pub last_open: Option<SignedDuration>,
}

impl Breaker {
    pub fn state(&self, now: Timestamp) -> BreakerState {
        match self.open_until {
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
            None => BreakerState::Closed,
        }
    }

    /// Whether a call may be sent with this key now.
    pub fn admits(&self, now: Timestamp) -> bool {
        self.state(now) != BreakerState::Open
    }

    pub fn succeeded(&mut self) {
        *self = Breaker::default();
    }

    pub fn failed(&mut self, now: Timestamp) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let trial_failed = self.state(now) == BreakerState::HalfOpen;
        if trial_failed || self.consecutive_failures >= BREAKER_THRESHOLD {
            let open = match (trial_failed, self.last_open) {
                (true, Some(last)) => (last * 2).min(BREAKER_OPEN_MAX),
                _ => BREAKER_OPEN_FIRST,
            };
            self.open_until = Some(now.saturating_add(open).unwrap_or(now));
            self.last_open = Some(open);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Down,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        }
    }
}

/// What a key's recent calls add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CallStats {
    pub calls: u64,
    pub failures: u64,
    pub latency_ms_total: u64,
}

impl CallStats {
    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            #[expect(clippy::cast_precision_loss, reason = "counts are small")]
            let rate = self.failures as f64 / self.calls as f64;
            rate
        }
    }

    pub fn mean_latency_ms(&self) -> Option<u64> {
        self.latency_ms_total.checked_div(self.calls)
    }
}

/// A key is down when its circuit is open or the provider rejects it, degraded when at
/// least a fifth of at least five recent calls failed, healthy otherwise.
pub fn key_status(stats: &CallStats, breaker: BreakerState, rejected: bool) -> HealthStatus {
    if rejected || breaker == BreakerState::Open {
        HealthStatus::Down
    } else if breaker == BreakerState::HalfOpen || (stats.calls >= 5 && stats.failure_rate() >= 0.2)
    {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    }
}

/// A service's health from its keys': `disruption` when at least two keys and at least
/// half of them are failing at the same time — the provider, not the keys, is the likely
/// cause (a single bad key fails alone).
pub fn service_status(keys: &[HealthStatus]) -> (HealthStatus, bool) {
    let failing = keys.iter().filter(|s| **s != HealthStatus::Healthy).count();
    let down = keys.iter().filter(|s| **s == HealthStatus::Down).count();
    let disruption = keys.len() >= 2 && failing * 2 >= keys.len();
    let status = if !keys.is_empty() && down == keys.len() {
        HealthStatus::Down
    } else if disruption || failing > 0 {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    (status, disruption)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn limit(max: u64, window_seconds: u64, unit: LimitUnit) -> Limit {
        Limit {
            max,
            unit,
            window_seconds,
        }
    }

    #[test]
    fn probes_spend_at_most_a_twenty_fifth_of_any_allowance() {
        assert_eq!(
            probe_interval(&[limit(25, 86_400, LimitUnit::Requests)]),
            SignedDuration::from_hours(24)
        );
        assert_eq!(
            probe_interval(&[
                limit(5, 60, LimitUnit::Requests),
                limit(500, 86_400, LimitUnit::Requests)
            ]),
            SignedDuration::from_mins(72)
        );
        assert_eq!(probe_interval(&[]), PROBE_INTERVAL_MIN);
        assert_eq!(
            probe_interval(&[
                limit(10_000, 60, LimitUnit::Requests),
                limit(1, 1, LimitUnit::Tokens)
            ]),
            PROBE_INTERVAL_MIN
        );
    }

    #[test]
    fn the_breaker_opens_after_failures_and_backs_off_while_trials_fail() {
        let mut b = Breaker::default();
        for s in 0..4 {
            b.failed(at(s));
            assert_eq!(b.state(at(s)), BreakerState::Closed);
        }
        b.failed(at(4));
        assert_eq!(b.state(at(5)), BreakerState::Open);
        assert!(!b.admits(at(33)));
        assert_eq!(b.state(at(34)), BreakerState::HalfOpen);
        b.failed(at(34));
        assert_eq!(
            b.open_until,
            Some(at(94)),
            "a failed trial doubles the wait"
        );
        b.failed(at(94));
        assert_eq!(b.open_until, Some(at(214)));
        for _ in 0..5 {
            let now = b.open_until.expect("open");
            b.failed(now);
        }
        assert_eq!(b.last_open, Some(BREAKER_OPEN_MAX));
        b.succeeded();
        assert_eq!(
            (b.state(at(0)), b.consecutive_failures),
            (BreakerState::Closed, 0)
        );
    }

    #[test]
    fn a_service_disruption_is_told_apart_from_a_bad_key() {
        use HealthStatus::*;
        assert_eq!(
            service_status(&[Healthy, Healthy, Down]),
            (Degraded, false),
            "one bad key"
        );
        assert_eq!(service_status(&[Down, Degraded, Healthy]), (Degraded, true));
        assert_eq!(service_status(&[Down, Down]), (Down, true));
        assert_eq!(
            service_status(&[Down]),
            (Down, false),
            "one key alone proves nothing"
        );
        assert_eq!(service_status(&[]), (Healthy, false));
        let stats = CallStats {
            calls: 10,
            failures: 2,
            latency_ms_total: 1_000,
        };
        assert_eq!(key_status(&stats, BreakerState::Closed, false), Degraded);
        assert_eq!(stats.mean_latency_ms(), Some(100));
        assert_eq!(
            key_status(
                &CallStats {
                    calls: 3,
                    failures: 3,
                    latency_ms_total: 0
                },
                BreakerState::Closed,
                false
            ),
            Healthy
        );
        assert_eq!(
            key_status(&CallStats::default(), BreakerState::Open, false),
            Down
        );
        assert_eq!(
            key_status(&CallStats::default(), BreakerState::Closed, true),
            Down
        );
    }
}
