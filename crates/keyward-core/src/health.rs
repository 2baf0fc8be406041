//! Key and service health: how often a key may be probed (its probe budget), the circuit
//! breaker that stops sending traffic to a failing key, the status a key's recent calls
//! add up to, and telling a service disruption (many keys failing at once) from a bad key.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::id::KeyId;
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

string_enum!(BreakerState { Closed = "closed", Open = "open", HalfOpen = "half_open" },
    "invalid_breaker_state", "breaker state");

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

string_enum!(HealthStatus { Healthy = "healthy", Degraded = "degraded", Down = "down" },
    "invalid_health_status", "health status");

/// How long passive health looks back over real calls (shared by every instance through
/// the store's usage records).
pub const PASSIVE_WINDOW: SignedDuration = SignedDuration::from_mins(5);

/// One key's upstream calls over the passive window, as the store counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCalls {
    pub key_id: KeyId,
    pub service_id: String,
    pub stats: CallStats,
}

/// The last health status announced for a subject (`key:<id>` or `service:<id>`), so a
/// change is announced once across instances (compare-and-set in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    pub subject: String,
    pub status: HealthStatus,
    /// For a service: whether many of its keys were failing at once.
    pub disruption: bool,
    pub since: Timestamp,
}

/// When a key is next probed: nothing has told us about it (creation, a new value, real
/// traffic, the last probe) for its probe interval. Keys in use need no probes — their
/// traffic is the evidence — so probes spend quota only on idle keys.
pub fn next_probe_at(last_evidence: Timestamp, limits: &[Limit]) -> Timestamp {
    last_evidence
        .saturating_add(probe_interval(limits))
        .unwrap_or(last_evidence)
}

/// What a key's recent calls add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CallStats {
    pub calls: u64,
    pub failures: u64,
    /// Error answers no rule of the service explains (never held against the key).
    pub unclassified: u64,
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

/// A key's status and the plain-language reasons for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assessment {
    pub status: HealthStatus,
    pub reasons: Vec<String>,
}

/// A key is down when the provider rejects it or its circuit is open; degraded when its
/// allowance is used up, its circuit is trying again, or at least a fifth of at least
/// five recent calls failed; healthy otherwise.
pub fn assess_key(
    stats: &CallStats,
    breaker: BreakerState,
    flag: Option<crate::usage::KeyFlagKind>,
) -> Assessment {
    use crate::usage::KeyFlagKind;
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    if flag == Some(KeyFlagKind::Rejected) {
        down.push("the provider rejects the key (401/403)".to_owned());
    }
    match breaker {
        BreakerState::Open => {
            down.push("circuit open: repeated provider errors, traffic paused".to_owned());
        }
        BreakerState::HalfOpen => {
            degraded.push("circuit half-open: the next call is a trial".to_owned());
        }
        BreakerState::Closed => {}
    }
    if flag == Some(KeyFlagKind::QuotaLimited) {
        degraded.push("the key's allowance is used up".to_owned());
    }
    if stats.calls >= 5 && stats.failure_rate() >= 0.2 {
        degraded.push(format!(
            "{} of {} calls failed in the last {} minutes",
            stats.failures,
            stats.calls,
            PASSIVE_WINDOW.as_mins()
        ));
    }
    let status = if !down.is_empty() {
        HealthStatus::Down
    } else if !degraded.is_empty() {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    down.append(&mut degraded);
    if stats.unclassified > 0 {
        // Said, but never held against the key: no rule of the service explains them.
        down.push(format!(
            "{} of {} answers in the last 5 minutes fit no rule of the service (unclassified)",
            stats.unclassified, stats.calls
        ));
    }
    Assessment {
        status,
        reasons: down,
    }
}

/// A service's health from its keys': `disruption` when at least two keys, and at least
/// half of them, are failing at the same time — the provider, not the keys, is the likely
/// cause (a single bad key fails alone).
pub fn service_status(keys: &[HealthStatus]) -> (HealthStatus, bool) {
    let failing = keys.iter().filter(|s| **s != HealthStatus::Healthy).count();
    let down = keys.iter().filter(|s| **s == HealthStatus::Down).count();
    let disruption = failing >= 2 && failing * 2 >= keys.len();
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
        assert_eq!(
            service_status(&[Healthy, Down]),
            (Degraded, false),
            "one bad key of two"
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
            unclassified: 0,
            latency_ms_total: 1_000,
        };
        let status = |stats: &CallStats, breaker, flag| assess_key(stats, breaker, flag).status;
        let failing = assess_key(&stats, BreakerState::Closed, None);
        assert_eq!(failing.status, Degraded);
        assert_eq!(
            failing.reasons,
            vec!["2 of 10 calls failed in the last 5 minutes"]
        );
        assert_eq!(stats.mean_latency_ms(), Some(100));
        let few = CallStats {
            calls: 3,
            failures: 3,
            unclassified: 0,
            latency_ms_total: 0,
        };
        let odd = CallStats {
            calls: 9,
            unclassified: 9,
            ..CallStats::default()
        };
        let unexplained = assess_key(&odd, BreakerState::Closed, None);
        assert_eq!(unexplained.status, Healthy, "not held against the key");
        assert_eq!(
            unexplained.reasons,
            vec!["9 of 9 answers in the last 5 minutes fit no rule of the service (unclassified)"]
        );
        assert_eq!(status(&few, BreakerState::Closed, None), Healthy);
        assert_eq!(
            status(&CallStats::default(), BreakerState::Open, None),
            Down
        );
        assert_eq!(
            status(&CallStats::default(), BreakerState::HalfOpen, None),
            Degraded
        );
        let rejected = Some(crate::usage::KeyFlagKind::Rejected);
        assert_eq!(
            status(&CallStats::default(), BreakerState::Closed, rejected),
            Down
        );
        let limited = Some(crate::usage::KeyFlagKind::QuotaLimited);
        assert_eq!(
            status(&CallStats::default(), BreakerState::Closed, limited),
            Degraded
        );
    }
}
