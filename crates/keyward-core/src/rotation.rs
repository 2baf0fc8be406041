//! Rotation policies: how old a key's current value may get before it must be rotated, and
//! how long before that people are reminded. A rule comes from the key itself, else its
//! category, else the vault's default; without one a key is never due.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest maximum age accepted (ten years).
pub const MAX_AGE_DAYS_MAX: u16 = 3_650;

/// One rule: rotate every `max_age_days`, remind `remind_days` before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationRule {
    pub max_age_days: u16,
    #[serde(default = "default_remind_days")]
    pub remind_days: u16,
}

fn default_remind_days() -> u16 {
    14
}

impl RotationRule {
    pub fn validate(self) -> Result<Self, Error> {
        if !(1..=MAX_AGE_DAYS_MAX).contains(&self.max_age_days) {
            return Err(Error::invalid(
                "invalid_rotation_rule",
                format!("max_age_days is 1–{MAX_AGE_DAYS_MAX}"),
            ));
        }
        if self.remind_days >= self.max_age_days {
            return Err(Error::invalid(
                "invalid_rotation_rule",
                "remind_days must be shorter than max_age_days",
            ));
        }
        Ok(self)
    }
}

/// The vault's rules: a default and per-category ones (category ids, e.g. `llm-providers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicy {
    #[serde(default)]
    pub default: Option<RotationRule>,
    #[serde(default)]
    pub categories: BTreeMap<String, RotationRule>,
}

impl RotationPolicy {
    pub fn validate(self) -> Result<Self, Error> {
        if let Some(rule) = self.default {
            rule.validate()?;
        }
        for rule in self.categories.values() {
            rule.validate()?;
        }
        Ok(self)
    }

    /// The rule for a key: its own, else its category's, else the default.
    pub fn rule_for(&self, own: Option<RotationRule>, category: &str) -> Option<RotationRule> {
        own.or_else(|| self.categories.get(category).copied())
            .or(self.default)
    }
}

/// Where a key stands against its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationState {
    /// No rule applies.
    NoPolicy,
    Ok,
    /// Within the reminder window before the due date.
    Due,
    /// Past the maximum age.
    Overdue,
}

impl RotationState {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationState::NoPolicy => "no_policy",
            RotationState::Ok => "ok",
            RotationState::Due => "due",
            RotationState::Overdue => "overdue",
        }
    }
}

/// A key's rotation status: when its current value was set, when it is due, and the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationStatus {
    pub rule: Option<RotationRule>,
    pub rotated_at: Timestamp,
    pub due_at: Option<Timestamp>,
    pub state: RotationState,
}

pub fn status(rule: Option<RotationRule>, rotated_at: Timestamp, now: Timestamp) -> RotationStatus {
    let Some(r) = rule else {
        return RotationStatus {
            rule,
            rotated_at,
            due_at: None,
            state: RotationState::NoPolicy,
        };
    };
    let days = |n: u16| SignedDuration::from_hours(i64::from(n) * 24);
    let due_at = rotated_at
        .saturating_add(days(r.max_age_days))
        .unwrap_or(rotated_at);
    let remind_at = due_at.saturating_sub(days(r.remind_days)).unwrap_or(due_at);
    let state = if now >= due_at {
        RotationState::Overdue
    } else if now >= remind_at {
        RotationState::Due
    } else {
        RotationState::Ok
    };
    RotationStatus {
        rule,
        rotated_at,
        due_at: Some(due_at),
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_key_is_ok_then_due_then_overdue() {
        let rule = Some(RotationRule {
            max_age_days: 90,
            remind_days: 14,
        });
        let set = at("2026-01-01T00:00:00Z");
        let state = |now: &str| status(rule, set, at(now)).state;
        assert_eq!(state("2026-03-01T00:00:00Z"), RotationState::Ok);
        assert_eq!(state("2026-03-18T00:00:00Z"), RotationState::Due);
        assert_eq!(state("2026-04-01T00:00:00Z"), RotationState::Overdue);
        assert_eq!(
            status(rule, set, set).due_at,
            Some(at("2026-04-01T00:00:00Z"))
        );
        assert_eq!(status(None, set, set).state, RotationState::NoPolicy);
    }

    #[test]
    fn the_key_rule_wins_over_its_category_and_the_default() {
        let rule = |days| RotationRule {
            max_age_days: days,
            remind_days: 1,
        };
        let policy = RotationPolicy {
            default: Some(rule(365)),
            categories: [("llm-providers".to_owned(), rule(90))].into(),
        };
        assert_eq!(policy.rule_for(None, "financial-data"), Some(rule(365)));
        assert_eq!(policy.rule_for(None, "llm-providers"), Some(rule(90)));
        assert_eq!(
            policy.rule_for(Some(rule(30)), "llm-providers"),
            Some(rule(30))
        );
        assert!(RotationPolicy::default().rule_for(None, "x").is_none());
    }

    #[test]
    fn rules_are_checked() {
        let bad = |max, remind| {
            RotationRule {
                max_age_days: max,
                remind_days: remind,
            }
            .validate()
            .is_err()
        };
        assert!(bad(0, 0));
        assert!(bad(30, 30));
        assert!(bad(MAX_AGE_DAYS_MAX + 1, 1));
        assert!(!bad(30, 7));
    }
}
