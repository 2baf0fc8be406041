//! Brute-force protection for secrets people type (passwords, TOTP codes): after a few free
//! failures each further attempt must wait twice as long as the last (progressive delay),
//! and after more a soft lock holds for a while or until an admin lifts it. Counted per
//! account and per source address, so neither guessing one account from many places nor
//! many accounts from one place gets far. Time comes in as a parameter.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

/// What failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Subject {
    /// A username as typed (lower-cased), whether or not it exists.
    Account(String),
    /// A client address.
    Source(String),
}

/// Thresholds for one kind of subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures before any delay.
    pub free: u32,
    /// The first delay; each later failure doubles it.
    pub first_delay: SignedDuration,
    pub max_delay: SignedDuration,
    /// Failures that set a soft lock.
    pub lock_after: u32,
    pub lock_for: SignedDuration,
    /// A subject with no failure for this long starts afresh.
    pub forget_after: SignedDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    pub account: Limits,
    /// Looser: many honest people can share one address (an office, a VPN).
    pub source: Limits,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            account: Limits {
                free: 5,
                first_delay: SignedDuration::from_secs(1),
                max_delay: SignedDuration::from_mins(5),
                lock_after: 10,
                lock_for: SignedDuration::from_mins(15),
                forget_after: SignedDuration::from_hours(1),
            },
            source: Limits {
                free: 20,
                first_delay: SignedDuration::from_secs(1),
                max_delay: SignedDuration::from_mins(5),
                lock_after: 50,
                lock_for: SignedDuration::from_mins(15),
                forget_after: SignedDuration::from_hours(1),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Record {
    pub failures: u32,
    #[serde(serialize_with = "display")]
    pub last_failure: Timestamp,
    /// The next attempt is refused before this (the progressive delay or the lock).
    #[serde(serialize_with = "display")]
    pub blocked_until: Timestamp,
    pub locked: bool,
}

fn display<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

/// A refused attempt: how long to wait, and whether it is a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after: SignedDuration,
    pub locked: bool,
}

impl Refusal {
    /// The longest of `refusals`, or `Ok` when there is none.
    pub fn worst(refusals: impl Iterator<Item = Self>) -> Result<(), Self> {
        refusals.max_by_key(|r| r.retry_after).map_or(Ok(()), Err)
    }
}

impl ThrottlePolicy {
    /// The thresholds `subject` is held to.
    pub fn limits_for(&self, subject: &Subject) -> Limits {
        match subject {
            Subject::Account(_) => self.account,
            Subject::Source(_) => self.source,
        }
    }
}

impl Record {
    /// Why an attempt is refused now, if it is.
    pub fn refusal(&self, now: Timestamp) -> Option<Refusal> {
        (self.blocked_until > now).then(|| Refusal {
            retry_after: self.blocked_until.duration_since(now),
            locked: self.locked,
        })
    }

    /// The record after one more failure at `now`: a record forgotten long enough starts
    /// afresh; past `free` failures each waits twice the last; at `lock_after` a soft lock.
    pub fn after_failure(previous: Option<Self>, limits: &Limits, now: Timestamp) -> Self {
        let fresh = Self {
            failures: 0,
            last_failure: now,
            blocked_until: now,
            locked: false,
        };
        let mut record = match previous {
            Some(r)
                if !(now.duration_since(r.last_failure) >= limits.forget_after
                    && r.blocked_until <= now) =>
            {
                r
            }
            _ => fresh,
        };
        record.failures += 1;
        record.last_failure = now;
        if record.failures >= limits.lock_after {
            record.locked = true;
            record.blocked_until = now.checked_add(limits.lock_for).unwrap_or(now);
        } else if record.failures > limits.free {
            let doublings = (record.failures - limits.free - 1).min(30);
            let delay = limits
                .first_delay
                .checked_mul(1 << doublings)
                .unwrap_or(limits.max_delay)
                .min(limits.max_delay);
            record.blocked_until = now.checked_add(delay).unwrap_or(now);
        }
        record
    }

    /// Until when the record matters (a shared store may forget it after).
    pub fn keep_until(&self, limits: &Limits) -> Timestamp {
        self.last_failure
            .checked_add(limits.forget_after)
            .unwrap_or(self.last_failure)
            .max(self.blocked_until)
    }

    /// The record as one line of text, for a shared store.
    pub fn encode(&self) -> String {
        format!(
            "{},{},{},{}",
            self.failures,
            self.last_failure.as_millisecond(),
            self.blocked_until.as_millisecond(),
            u8::from(self.locked)
        )
    }

    /// A record from [`Record::encode`]'s text; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(',');
        let failures = parts.next()?.parse().ok()?;
        let last = Timestamp::from_millisecond(parts.next()?.parse().ok()?).ok()?;
        let blocked = Timestamp::from_millisecond(parts.next()?.parse().ok()?).ok()?;
        let locked = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        parts.next().is_none().then_some(Self {
            failures,
            last_failure: last,
            blocked_until: blocked,
            locked,
        })
    }
}

/// Failure counts, kept by whoever owns the policy (one per server instance).
#[derive(Debug, Default)]
pub struct Attempts {
    records: HashMap<Subject, Record>,
}

impl Attempts {
    /// Whether an attempt by all of `subjects` may go ahead now.
    pub fn check(&self, subjects: &[Subject], now: Timestamp) -> Result<(), Refusal> {
        Refusal::worst(
            subjects
                .iter()
                .filter_map(|s| self.records.get(s).and_then(|r| r.refusal(now))),
        )
    }

    /// Counts a failure; returns the subjects that became locked by it.
    pub fn failure(
        &mut self,
        subjects: &[Subject],
        now: Timestamp,
        policy: &ThrottlePolicy,
    ) -> Vec<Subject> {
        let mut newly_locked = Vec::new();
        for subject in subjects {
            let previous = self.records.get(subject).copied();
            let record = Record::after_failure(previous, &policy.limits_for(subject), now);
            if record.locked && !previous.is_some_and(|p| p.locked) {
                newly_locked.push(subject.clone());
            }
            self.records.insert(subject.clone(), record);
        }
        newly_locked
    }

    /// A success forgets the account's failures (not the address's: one right password
    /// should not reset a spray across many accounts).
    pub fn success(&mut self, account: &Subject) {
        self.records.remove(account);
    }

    /// Lifts a delay or lock (an admin's decision); returns whether there was one.
    pub fn clear(&mut self, subject: &Subject) -> bool {
        self.records.remove(subject).is_some()
    }

    /// Subjects that are delayed or locked now, for admins.
    pub fn blocked(&self, now: Timestamp) -> Vec<(Subject, Record)> {
        let mut out: Vec<_> = self
            .records
            .iter()
            .filter(|(_, r)| r.blocked_until > now)
            .map(|(s, r)| (s.clone(), *r))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Drops records nobody needs any more (bounded memory under a spray of names).
    pub fn forget_old(&mut self, now: Timestamp, policy: &ThrottlePolicy) {
        let keep = policy.account.forget_after.max(policy.source.forget_after);
        self.records
            .retain(|_, r| r.blocked_until > now || now.duration_since(r.last_failure) < keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_764_000_000 + secs).expect("time")
    }

    #[test]
    fn a_record_survives_its_text_form_and_garbage_is_refused() {
        let policy = ThrottlePolicy::default();
        let mut record = None;
        for _ in 0..11 {
            record = Some(Record::after_failure(record, &policy.account, t(5)));
        }
        let record = record.expect("counted");
        assert!(record.locked);
        assert_eq!(Record::decode(&record.encode()), Some(record));
        for garbage in ["", "1,2,3", "1,2,3,2", "a,2,3,0", "1,2,3,0,9"] {
            assert_eq!(Record::decode(garbage), None, "{garbage}");
        }
        assert_eq!(
            record.keep_until(&policy.account),
            t(5).checked_add(policy.account.forget_after).expect("time")
        );
    }

    #[test]
    fn delays_grow_then_a_soft_lock_holds_and_expires() {
        let policy = ThrottlePolicy::default();
        let mut a = Attempts::default();
        let alice = [Subject::Account("alice".into())];
        let mut now = t(0);
        for _ in 0..5 {
            assert!(a.check(&alice, now).is_ok());
            a.failure(&alice, now, &policy);
        }
        assert!(a.check(&alice, now).is_ok(), "five free failures");
        // 6th failure: 1 s, 7th: 2 s, 8th: 4 s, 9th: 8 s.
        for expected in [1, 2, 4, 8] {
            a.failure(&alice, now, &policy);
            let refused = a.check(&alice, now).expect_err("delayed");
            assert_eq!(refused.retry_after, SignedDuration::from_secs(expected));
            assert!(!refused.locked);
            now += SignedDuration::from_secs(expected);
            assert!(a.check(&alice, now).is_ok(), "free again after the wait");
        }
        let locked = a.failure(&alice, now, &policy);
        assert_eq!(locked, alice.to_vec(), "the 10th failure locks");
        let refused = a.check(&alice, now).expect_err("locked");
        assert!(refused.locked);
        assert_eq!(refused.retry_after, SignedDuration::from_mins(15));
        assert_eq!(a.blocked(now).len(), 1);
        assert!(a.check(&alice, now + SignedDuration::from_mins(15)).is_ok());
    }

    #[test]
    fn success_forgets_the_account_but_not_the_address_and_admins_can_lift() {
        let policy = ThrottlePolicy::default();
        let mut a = Attempts::default();
        let source = Subject::Source("198.51.100.7".into());
        // A spray: one address, many accounts.
        for n in 0..50 {
            a.failure(
                &[Subject::Account(format!("user{n}")), source.clone()],
                t(n),
                &policy,
            );
        }
        let fresh = [Subject::Account("bob".into()), source.clone()];
        assert!(a.check(&fresh, t(50)).expect_err("address locked").locked);
        a.success(&Subject::Account("bob".into()));
        assert!(a.check(&fresh, t(50)).is_err(), "still locked by address");
        assert!(a.clear(&source));
        assert!(a.check(&fresh, t(50)).is_ok());
        a.forget_old(t(50) + SignedDuration::from_hours(2), &policy);
        assert!(a.blocked(t(50)).is_empty());
    }

    #[test]
    fn failures_long_ago_are_forgotten() {
        let policy = ThrottlePolicy::default();
        let mut a = Attempts::default();
        let alice = [Subject::Account("alice".into())];
        for _ in 0..5 {
            a.failure(&alice, t(0), &policy);
        }
        a.failure(&alice, t(0) + SignedDuration::from_hours(2), &policy);
        assert!(
            a.check(&alice, t(0) + SignedDuration::from_hours(2))
                .is_ok()
        );
    }
}
