//! The graduated response: what Keyward does on its own when an alert stays unanswered.
//! A vault's response policy says, per category, criticality, signal and severity, how
//! long an open (unacknowledged) alert may wait before its app token is throttled — its
//! request rate cut to a share — and before its key or token is frozen (refused with
//! `403 frozen` by every instance). Acknowledging an alert stops the escalation (a person
//! is on it); resolving it lifts the throttle it caused; lifting a freeze is an
//! approval-gated operation (`ApprovalAction::Unfreeze`).

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Error;
pub use crate::alert::Stage;
use crate::alert::{Alert, AlertStatus, AlertSubject, Severity};
use crate::anomaly::Signal;
use crate::app_token::RateLimit;
use crate::id::AlertId;
use crate::key::Criticality;

/// One rule: alerts matching every condition given escalate on this schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    /// `key` and/or `token`; `None`: both.
    #[serde(default)]
    pub subjects: Option<Vec<SubjectKind>>,
    /// Service categories (a token matches through any service it may call); `None`: all.
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    /// A token is as critical as the most critical key it can reach; `None`: all.
    #[serde(default)]
    pub criticalities: Option<Vec<Criticality>>,
    #[serde(default)]
    pub signals: Option<Vec<Signal>>,
    #[serde(default)]
    pub severities: Option<Vec<Severity>>,
    /// Minutes an open alert waits before its token is throttled (0: at once); `None`:
    /// never throttled. Keys have no rate of their own to cut, so only tokens are.
    #[serde(default)]
    pub throttle_after_minutes: Option<u32>,
    /// The share of its usual rate a throttled token keeps, in percent.
    #[serde(default = "default_throttle_percent")]
    pub throttle_percent: u8,
    /// Minutes an open alert waits before its key or token is frozen; `None`: never.
    #[serde(default)]
    pub freeze_after_minutes: Option<u32>,
}

fn default_throttle_percent() -> u8 {
    10
}

/// What an alert is about, as a policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Key,
    Token,
}

/// Longest wait a rule may set (a week).
pub const ESCALATION_MAX_MINUTES: u32 = 7 * 24 * 60;
pub const RESPONSE_RULES_MAX: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsePolicy {
    pub rules: Vec<ResponseRule>,
}

/// Where an alert's subject stands, for the policy's conditions.
#[derive(Debug, Clone, Default)]
pub struct SubjectFacts {
    /// The key's category, or every category of the token's services.
    pub categories: Vec<String>,
    /// The key's criticality, or the highest of the keys the token can reach.
    pub criticality: Option<Criticality>,
    /// The key's environment, or the token's default (who hears of an escalation).
    pub environment: Option<String>,
}

/// The schedule the matching rules add up to (the strictest of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escalation {
    pub throttle_after: Option<SignedDuration>,
    pub throttle_percent: u8,
    pub freeze_after: Option<SignedDuration>,
}

impl ResponsePolicy {
    pub fn validate(self) -> Result<Self, Error> {
        if self.rules.len() > RESPONSE_RULES_MAX {
            return Err(Error::invalid(
                "invalid_rule",
                format!("at most {RESPONSE_RULES_MAX} rules"),
            ));
        }
        for rule in &self.rules {
            if rule.throttle_after_minutes.is_none() && rule.freeze_after_minutes.is_none() {
                return Err(Error::invalid(
                    "invalid_rule",
                    "a rule throttles (throttle_after_minutes) or freezes (freeze_after_minutes)",
                ));
            }
            if !(1..=99).contains(&rule.throttle_percent) {
                return Err(Error::invalid(
                    "invalid_rule",
                    "throttle_percent is 1–99 (the share of the usual rate a token keeps)",
                ));
            }
            let waits = [rule.throttle_after_minutes, rule.freeze_after_minutes];
            if waits.iter().flatten().any(|m| *m > ESCALATION_MAX_MINUTES) {
                return Err(Error::invalid(
                    "invalid_rule",
                    format!("a wait is 0–{ESCALATION_MAX_MINUTES} minutes"),
                ));
            }
            if let (Some(t), Some(f)) = (rule.throttle_after_minutes, rule.freeze_after_minutes)
                && f < t
            {
                return Err(Error::invalid(
                    "invalid_rule",
                    "a rule freezes no earlier than it throttles",
                ));
            }
        }
        Ok(self)
    }

    /// The escalation for `alert` (about a subject with `facts`): the strictest of the
    /// rules that match, or `None` when no rule does.
    pub fn escalation(&self, alert: &Alert, facts: &SubjectFacts) -> Option<Escalation> {
        let kind = match alert.subject {
            AlertSubject::Key(_) => SubjectKind::Key,
            AlertSubject::Token(_) => SubjectKind::Token,
        };
        let minutes = |m: u32| SignedDuration::from_mins(i64::from(m));
        self.rules
            .iter()
            .filter(|r| r.subjects.as_ref().is_none_or(|s| s.contains(&kind)))
            .filter(|r| r.signals.as_ref().is_none_or(|s| s.contains(&alert.signal)))
            .filter(|r| {
                r.severities
                    .as_ref()
                    .is_none_or(|s| s.contains(&alert.severity))
            })
            .filter(|r| {
                r.categories
                    .as_ref()
                    .is_none_or(|list| facts.categories.iter().any(|c| list.contains(c)))
            })
            .filter(|r| match (&r.criticalities, facts.criticality) {
                (None, _) => true,
                (Some(list), Some(c)) => list.contains(&c),
                (Some(_), None) => false,
            })
            .fold(None, |acc: Option<Escalation>, r| {
                let this = Escalation {
                    // Keys have no rate to cut: their schedule only freezes.
                    throttle_after: r
                        .throttle_after_minutes
                        .filter(|_| kind == SubjectKind::Token)
                        .map(minutes),
                    throttle_percent: r.throttle_percent,
                    freeze_after: r.freeze_after_minutes.map(minutes),
                };
                Some(match acc {
                    None => this,
                    Some(a) => Escalation {
                        throttle_after: earliest(a.throttle_after, this.throttle_after),
                        throttle_percent: a.throttle_percent.min(this.throttle_percent),
                        freeze_after: earliest(a.freeze_after, this.freeze_after),
                    },
                })
            })
            .filter(|e| e.throttle_after.is_some() || e.freeze_after.is_some())
    }
}

fn earliest(a: Option<SignedDuration>, b: Option<SignedDuration>) -> Option<SignedDuration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Escalation {
    /// The stage an alert should have reached by `now`: escalation runs only while the
    /// alert is open — acknowledged means a person is on it, resolved means it is over.
    pub fn due(&self, alert: &Alert, now: Timestamp) -> Stage {
        if alert.status != AlertStatus::Open {
            return alert.stage;
        }
        let waited = now.duration_since(alert.opened_at);
        let reached = |after: Option<SignedDuration>| after.is_some_and(|a| waited >= a);
        let due = if reached(self.freeze_after) {
            Stage::Frozen
        } else if reached(self.throttle_after) {
            Stage::Throttled
        } else {
            Stage::Alerted
        };
        due.max(alert.stage)
    }
}

/// A throttled token's new limit: `percent` of its configured limit, or — without one — of
/// its usual rate (`usual_per_hour`, its busiest normal hour), per minute; at least one
/// request per window.
pub fn throttled_rate(
    configured: Option<RateLimit>,
    usual_per_hour: u64,
    percent: u8,
) -> RateLimit {
    let share = |n: u64| -> u32 {
        let cut = (n * u64::from(percent)).div_ceil(100);
        u32::try_from(cut.max(1)).unwrap_or(u32::MAX)
    };
    match configured {
        Some(limit) => RateLimit {
            requests: share(u64::from(limit.requests)),
            per_seconds: limit.per_seconds,
        },
        None => RateLimit {
            requests: share(usual_per_hour.div_ceil(60)),
            per_seconds: 60,
        },
    }
}

/// What is done to a key or token: its rate cut, or it refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "measure", rename_all = "snake_case")]
pub enum Measure {
    Throttle(RateLimit),
    Freeze,
}

impl Measure {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Throttle(_) => "throttle",
            Self::Freeze => "freeze",
        }
    }
}

/// A measure in force on a key or an app token, and why: the alert that escalated to it,
/// or the person who froze it by hand.
#[derive(Debug, Clone, PartialEq)]
pub struct Containment {
    pub subject: AlertSubject,
    pub measure: Measure,
    pub alert: Option<AlertId>,
    pub reason: String,
    pub by: String,
    pub at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::Finding;

    fn ts(min: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + min * 60).expect("ts")
    }

    fn alert(subject: AlertSubject, signal: Signal) -> Alert {
        let finding = Finding {
            signal,
            at: ts(0),
            score: 9.0,
            reason: "412 requests in 5 min".into(),
        };
        Alert::open(
            "alr_01JD0000000000000000000000".parse().expect("id"),
            subject,
            &finding,
            ts(0),
        )
    }

    fn token() -> AlertSubject {
        AlertSubject::Token("atk_01JD0000000000000000000000".parse().expect("id"))
    }

    fn key() -> AlertSubject {
        AlertSubject::Key("key_01JD0000000000000000000000".parse().expect("id"))
    }

    fn rule(throttle: Option<u32>, freeze: Option<u32>) -> ResponseRule {
        ResponseRule {
            subjects: None,
            categories: None,
            criticalities: None,
            signals: None,
            severities: None,
            throttle_after_minutes: throttle,
            throttle_percent: 10,
            freeze_after_minutes: freeze,
        }
    }

    fn facts(category: &str, criticality: Criticality) -> SubjectFacts {
        SubjectFacts {
            categories: vec![category.into()],
            criticality: Some(criticality),
            environment: None,
        }
    }

    #[test]
    fn an_open_alert_escalates_on_schedule_and_stops_once_acknowledged() {
        let policy = ResponsePolicy {
            rules: vec![rule(Some(5), Some(30))],
        }
        .validate()
        .expect("valid");
        let mut a = alert(token(), Signal::RequestSpike);
        let e = policy
            .escalation(&a, &facts("llm", Criticality::High))
            .expect("matches");
        assert_eq!(e.due(&a, ts(4)), Stage::Alerted);
        assert_eq!(e.due(&a, ts(5)), Stage::Throttled);
        assert_eq!(e.due(&a, ts(30)), Stage::Frozen);
        a.stage = Stage::Throttled;
        a.status = AlertStatus::Acknowledged;
        assert_eq!(e.due(&a, ts(60)), Stage::Throttled, "a person is on it");
    }

    #[test]
    fn keys_skip_the_throttle_and_the_strictest_matching_rule_wins() {
        let mut narrow = rule(Some(0), Some(10));
        narrow.categories = Some(vec!["llm".into()]);
        narrow.criticalities = Some(vec![Criticality::Critical]);
        narrow.throttle_percent = 5;
        let policy = ResponsePolicy {
            rules: vec![rule(Some(15), Some(60)), narrow],
        };
        let a = alert(key(), Signal::RequestSpike);
        let e = policy
            .escalation(&a, &facts("llm", Criticality::Critical))
            .expect("matches");
        assert_eq!(e.throttle_after, None, "a key has no rate to cut");
        assert_eq!(e.freeze_after, Some(SignedDuration::from_mins(10)));
        let t = alert(token(), Signal::RequestSpike);
        let e = policy
            .escalation(&t, &facts("market_data", Criticality::Critical))
            .expect("the broad rule");
        assert_eq!(e.throttle_after, Some(SignedDuration::from_mins(15)));
        assert_eq!(e.throttle_percent, 10);
    }

    #[test]
    fn conditions_that_do_not_hold_mean_no_response() {
        let mut only = rule(Some(0), None);
        only.signals = Some(vec![Signal::RejectionBurst]);
        only.subjects = Some(vec![SubjectKind::Token]);
        let policy = ResponsePolicy { rules: vec![only] };
        let f = facts("llm", Criticality::Low);
        assert!(
            policy
                .escalation(&alert(token(), Signal::RequestSpike), &f)
                .is_none()
        );
        assert!(
            policy
                .escalation(&alert(key(), Signal::RejectionBurst), &f)
                .is_none()
        );
        assert!(
            policy
                .escalation(&alert(token(), Signal::RejectionBurst), &f)
                .is_some()
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            rule(None, None),
            rule(Some(30), Some(5)),
            rule(Some(ESCALATION_MAX_MINUTES + 1), None),
            ResponseRule {
                throttle_percent: 0,
                ..rule(Some(1), None)
            },
        ] {
            let err = ResponsePolicy { rules: vec![bad] }
                .validate()
                .expect_err("refused");
            assert_eq!(err.code, "invalid_rule");
        }
    }

    #[test]
    fn a_throttle_keeps_a_share_of_the_limit_or_of_the_usual_rate() {
        let limit = RateLimit {
            requests: 600,
            per_seconds: 60,
        };
        assert_eq!(
            throttled_rate(Some(limit), 0, 10),
            RateLimit {
                requests: 60,
                per_seconds: 60
            }
        );
        // 1,200 an hour is 20 a minute; 10 % of it is 2.
        assert_eq!(throttled_rate(None, 1_200, 10).requests, 2);
        assert_eq!(throttled_rate(None, 0, 10).requests, 1, "never zero");
    }
}
