//! What the proxy has learned about each key from provider answers: rejected (401/403) or
//! quota-limited flags, and — per instance, in memory — the key's recent calls (passive
//! health: calls, failures, latency over the last five minutes) and its circuit breaker.
//! Flags are raised here at once (so the very next request avoids the key), written
//! to the store off the request path (so the API and other instances see it), and read back
//! through the snapshot. The newer of the local and the stored state wins.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use keyward_core::health::{Breaker, BreakerState, CallStats};
use keyward_core::id::KeyId;
use keyward_core::usage::KeyFlag;

/// Minutes of calls passive health looks back over.
const WINDOW_MINUTES: i64 = 5;

/// One key's recent calls by minute, and its breaker.
#[derive(Debug, Default)]
struct Calls {
    minutes: std::collections::VecDeque<(i64, CallStats)>,
    breaker: Breaker,
}

#[derive(Debug, Clone)]
enum Local {
    Raised(KeyFlag),
    Cleared(Timestamp),
}

#[derive(Debug, Default)]
pub struct KeyHealth {
    local: Mutex<HashMap<KeyId, Local>>,
    calls: Mutex<HashMap<KeyId, Calls>>,
}

impl KeyHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key's flag in force at `now`, given what the store said (`stored`).
    pub fn flag(&self, key: &KeyId, stored: Option<&KeyFlag>, now: Timestamp) -> Option<KeyFlag> {
        let local = self.lock().get(key).cloned();
        let effective = match (local, stored) {
            (None, stored) => stored.cloned(),
            (Some(Local::Raised(mine)), Some(theirs)) if theirs.since > mine.since => {
                Some(theirs.clone())
            }
            (Some(Local::Raised(mine)), _) => Some(mine),
            (Some(Local::Cleared(at)), Some(theirs)) if theirs.since > at => Some(theirs.clone()),
            (Some(Local::Cleared(_)), _) => None,
        };
        effective.filter(|f| f.in_force(now))
    }

    pub fn raise(&self, flag: KeyFlag) {
        self.lock().insert(flag.key_id.clone(), Local::Raised(flag));
    }

    pub fn clear(&self, key: &KeyId, now: Timestamp) {
        self.lock().insert(key.clone(), Local::Cleared(now));
    }

    /// Forgets keys no longer in the snapshot.
    pub fn retain(&self, keep: impl Fn(&KeyId) -> bool) {
        self.lock().retain(|k, _| keep(k));
        self.calls_lock().retain(|k, _| keep(k));
    }

    fn calls_lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Calls>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one call with `key`: `failed` is a provider error, a timeout or no answer.
    pub fn record_call(&self, key: &KeyId, failed: bool, latency_ms: u64, now: Timestamp) {
        let minute = now.as_second().div_euclid(60);
        let mut all = self.calls_lock();
        let calls = all.entry(key.clone()).or_default();
        while calls
            .minutes
            .front()
            .is_some_and(|(m, _)| *m <= minute - WINDOW_MINUTES)
        {
            calls.minutes.pop_front();
        }
        if calls.minutes.back().is_none_or(|(m, _)| *m != minute) {
            calls.minutes.push_back((minute, CallStats::default()));
        }
        if let Some((_, stats)) = calls.minutes.back_mut() {
            stats.calls += 1;
            stats.failures += u64::from(failed);
            stats.latency_ms_total += latency_ms;
        }
        if failed {
            calls.breaker.failed(now);
        } else {
            calls.breaker.succeeded();
        }
    }

    /// Keys whose circuit is open here at `now`, and until when.
    pub fn open_circuits(&self, now: Timestamp) -> Vec<(KeyId, Timestamp)> {
        self.calls_lock()
            .iter()
            .filter_map(|(key, calls)| {
                calls
                    .breaker
                    .open_until
                    .filter(|until| *until > now)
                    .map(|until| (key.clone(), until))
            })
            .collect()
    }

    /// Another instance's circuit holds `key` open until `until`: this one keeps it out too
    /// (and tries it again, half-open, when that ends).
    pub fn open_elsewhere(&self, key: &KeyId, until: Timestamp) {
        let mut all = self.calls_lock();
        let breaker = &mut all.entry(key.clone()).or_default().breaker;
        if breaker.open_until.is_none_or(|mine| mine < until) {
            breaker.open_until = Some(until);
            breaker
                .last_open
                .get_or_insert(keyward_core::health::BREAKER_OPEN_FIRST);
        }
    }

    /// Whether the key's circuit lets a call through now.
    pub fn admits(&self, key: &KeyId, now: Timestamp) -> bool {
        self.calls_lock()
            .get(key)
            .is_none_or(|c| c.breaker.admits(now))
    }

    /// The key's calls over the last five minutes, its breaker's state, and until when it
    /// stays open.
    pub fn passive(
        &self,
        key: &KeyId,
        now: Timestamp,
    ) -> (CallStats, BreakerState, Option<Timestamp>) {
        let minute = now.as_second().div_euclid(60);
        let all = self.calls_lock();
        let Some(calls) = all.get(key) else {
            return (CallStats::default(), BreakerState::Closed, None);
        };
        let stats = calls
            .minutes
            .iter()
            .filter(|(m, _)| *m > minute - WINDOW_MINUTES)
            .fold(CallStats::default(), |mut sum, (_, s)| {
                sum.calls += s.calls;
                sum.failures += s.failures;
                sum.latency_ms_total += s.latency_ms_total;
                sum
            });
        (stats, calls.breaker.state(now), calls.breaker.open_until)
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::usage::KeyFlagKind;

    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn flag(since: i64, until: Option<i64>) -> KeyFlag {
        KeyFlag {
            key_id: "key_01JD0000000000000000000000".parse().expect("id"),
            kind: KeyFlagKind::QuotaLimited,
            reason: "429".into(),
            since: ts(since),
            until: until.map(ts),
        }
    }

    #[test]
    fn calls_open_the_breaker_and_age_out_of_the_window() {
        let health = KeyHealth::default();
        let key = flag(0, None).key_id;
        for s in 0..5 {
            health.record_call(&key, true, 100, ts(1_000 + s));
        }
        assert!(!health.admits(&key, ts(1_010)));
        let (stats, state, until) = health.passive(&key, ts(1_010));
        assert_eq!(
            (stats.calls, stats.failures, state),
            (5, 5, BreakerState::Open)
        );
        assert_eq!(until, Some(ts(1_034)));
        assert!(health.admits(&key, ts(1_034)), "half-open: one trial");
        health.record_call(&key, false, 50, ts(1_035));
        assert_eq!(health.passive(&key, ts(1_036)).1, BreakerState::Closed);
        assert_eq!(
            health.passive(&key, ts(1_000 + 6 * 60)).0.calls,
            0,
            "aged out"
        );
    }

    #[test]
    fn the_newer_state_wins_and_lapsed_flags_are_gone() {
        let health = KeyHealth::default();
        let key = flag(0, None).key_id;
        assert_eq!(
            health.flag(&key, Some(&flag(10, Some(20))), ts(15)),
            Some(flag(10, Some(20)))
        );
        assert_eq!(
            health.flag(&key, Some(&flag(10, Some(20))), ts(20)),
            None,
            "lapsed"
        );
        health.raise(flag(30, None));
        assert_eq!(
            health.flag(&key, Some(&flag(10, None)), ts(31)),
            Some(flag(30, None))
        );
        health.clear(&key, ts(40));
        assert_eq!(
            health.flag(&key, Some(&flag(30, None)), ts(41)),
            None,
            "cleared here after it was stored"
        );
        assert_eq!(
            health.flag(&key, Some(&flag(50, None)), ts(51)),
            Some(flag(50, None)),
            "raised elsewhere later"
        );
    }
}
