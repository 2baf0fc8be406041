//! Key strength and compliance: what can be said about a stored value without showing it
//! (its format, an entropy estimate, a keyed fingerprint to find the same value elsewhere),
//! and the checks a key is held to — format, strength, age against its rotation policy,
//! exposure by reveal or export since its last rotation, one value per environment, a
//! documented owner. Each check passes, warns or fails; a key with any failure is
//! non-compliant, one with only warnings needs attention.

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::id::KeyId;
use crate::key::Key;
use crate::rotation::{RotationState, RotationStatus};
use crate::service::ServiceDefinition;

/// Below this many estimated bits a value is weak (a 16-character key of capitals and digits
/// has about 64; a guessable 8-character password under 40).
pub const MIN_ENTROPY_BITS: u32 = 60;

/// Facts about a value, computed once from the plaintext and then kept instead of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTraits {
    /// Keyed HMAC of the value (`hmac:…`): equal values, equal fingerprints; reveals nothing.
    pub fingerprint: String,
    /// Whether the value matches the service's declared key format (`None`: none declared).
    pub format_ok: Option<bool>,
    pub entropy_bits: u32,
}

impl SecretTraits {
    /// `service` is `None` for a key whose service is no longer defined.
    pub fn of(
        service: Option<&ServiceDefinition>,
        value: &SecretString,
        fingerprint: String,
    ) -> Self {
        let text = value.expose_secret();
        let format_ok = service
            .and_then(|s| s.key_format_regex().ok().flatten())
            .map(|re| re.is_match(text));
        // A public prefix (`sk-proj-`, `AIza`) is the same in every key: not secret.
        let secret_part = service
            .and_then(|s| s.public_prefix_regex().ok().flatten())
            .and_then(|re| re.find(text).filter(|m| m.start() == 0).map(|m| m.end()))
            .map_or(text, |end| &text[end..]);
        Self {
            fingerprint,
            format_ok,
            entropy_bits: estimate_entropy_bits(secret_part),
        }
    }
}

/// A conservative estimate of a value's entropy: the smaller of its length times the
/// bits of the character classes it draws from, and its length times the Shannon entropy
/// of its own characters (so `aaaaaaaaaaaa` or `abcabcabcabc` score low).
pub fn estimate_entropy_bits(value: &str) -> u32 {
    let chars: Vec<char> = value.chars().collect();
    if chars.is_empty() {
        return 0;
    }
    let mut pool = 0u32;
    if chars.iter().any(char::is_ascii_lowercase) {
        pool += 26;
    }
    if chars.iter().any(char::is_ascii_uppercase) {
        pool += 26;
    }
    if chars.iter().any(char::is_ascii_digit) {
        pool += 10;
    }
    if chars.iter().any(|c| !c.is_ascii_alphanumeric()) {
        pool += 33;
    }
    let mut counts = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(*c).or_insert(0u32) += 1;
    }
    #[expect(clippy::cast_precision_loss, reason = "lengths are small")]
    let (length, classes, shannon) = {
        let n = chars.len() as f64;
        let shannon: f64 = counts
            .values()
            .map(|&c| {
                let p = f64::from(c) / n;
                -p * p.log2()
            })
            .sum();
        (n, f64::from(pool.max(2)).log2(), shannon)
    };
    let bits = (length * classes).min(length * shannon);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "bits are non-negative and far below u32::MAX"
    )]
    let bits = bits.floor() as u32;
    bits
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

string_enum!(CheckStatus { Pass = "pass", Warn = "warn", Fail = "fail" },
    "invalid_check_status", "check status");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComplianceStatus {
    Compliant,
    /// Only warnings.
    Attention,
    NonCompliant,
}

string_enum!(ComplianceStatus { Compliant = "compliant", Attention = "attention", NonCompliant = "non_compliant" },
    "invalid_compliance_status", "compliance status");

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// format, strength, age, exposure, unique, owner.
    pub id: &'static str,
    pub status: CheckStatus,
    pub detail: String,
}

/// Another key that holds the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SameValue {
    pub key_id: KeyId,
    pub alias: String,
    pub environment: String,
}

/// What the checks look at besides the key itself.
#[derive(Debug, Clone)]
pub struct Evidence<'a> {
    pub traits: &'a SecretTraits,
    pub rotation: &'a RotationStatus,
    /// Reveals and exports of the key, ever, and the last one.
    pub exposures: u64,
    pub last_exposed_at: Option<Timestamp>,
    pub same_value: &'a [SameValue],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compliance {
    pub status: ComplianceStatus,
    pub checks: Vec<Check>,
}

impl Compliance {
    pub fn failing(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status != CheckStatus::Pass)
    }
}

pub fn assess(key: &Key, evidence: &Evidence<'_>) -> Compliance {
    let check = |id, status, detail: String| Check { id, status, detail };
    let traits = evidence.traits;
    let mut checks = Vec::with_capacity(6);
    checks.push(match traits.format_ok {
        Some(true) => check(
            "format",
            CheckStatus::Pass,
            "matches the provider's key format".into(),
        ),
        Some(false) => check(
            "format",
            CheckStatus::Fail,
            "does not match the provider's key format".into(),
        ),
        None => check(
            "format",
            CheckStatus::Pass,
            "the service declares no key format".into(),
        ),
    });
    checks.push(if traits.entropy_bits >= MIN_ENTROPY_BITS {
        check(
            "strength",
            CheckStatus::Pass,
            format!("about {} bits of entropy", traits.entropy_bits),
        )
    } else {
        check(
            "strength",
            CheckStatus::Fail,
            format!(
                "about {} bits of entropy, below {MIN_ENTROPY_BITS}: guessable",
                traits.entropy_bits
            ),
        )
    });
    let rotation = evidence.rotation;
    checks.push(match rotation.state {
        RotationState::NoPolicy => check(
            "age",
            CheckStatus::Warn,
            "no rotation policy applies".into(),
        ),
        RotationState::Ok => check(
            "age",
            CheckStatus::Pass,
            "within its rotation policy".into(),
        ),
        RotationState::Due => check("age", CheckStatus::Warn, "rotation is due soon".into()),
        RotationState::Overdue => check(
            "age",
            CheckStatus::Fail,
            "older than its rotation policy allows".into(),
        ),
    });
    let exposed_since_rotation = evidence
        .last_exposed_at
        .is_some_and(|at| at >= rotation.rotated_at);
    checks.push(if exposed_since_rotation {
        check(
            "exposure",
            CheckStatus::Warn,
            format!(
                "revealed or exported since its last rotation ({} times in all)",
                evidence.exposures
            ),
        )
    } else {
        check(
            "exposure",
            CheckStatus::Pass,
            format!(
                "not revealed since its last rotation ({} times in all)",
                evidence.exposures
            ),
        )
    });
    let other_environments: Vec<&SameValue> = evidence
        .same_value
        .iter()
        .filter(|s| s.environment != key.environment)
        .collect();
    checks.push(if !other_environments.is_empty() {
        let places: Vec<String> = other_environments
            .iter()
            .map(|s| format!("{} ({})", s.alias, s.environment))
            .collect();
        check(
            "unique",
            CheckStatus::Fail,
            format!(
                "the same value is used in another environment: {}",
                places.join(", ")
            ),
        )
    } else if !evidence.same_value.is_empty() {
        let aliases: Vec<&str> = evidence
            .same_value
            .iter()
            .map(|s| s.alias.as_str())
            .collect();
        check(
            "unique",
            CheckStatus::Warn,
            format!("the same value is stored again as {}", aliases.join(", ")),
        )
    } else {
        check(
            "unique",
            CheckStatus::Pass,
            "no other key holds this value".into(),
        )
    });
    checks.push(match key.owner.as_deref() {
        Some(owner) if !owner.trim().is_empty() => {
            check("owner", CheckStatus::Pass, format!("owned by {owner}"))
        }
        _ => check("owner", CheckStatus::Fail, "no owner documented".into()),
    });
    let worst = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(CheckStatus::Pass);
    Compliance {
        status: match worst {
            CheckStatus::Pass => ComplianceStatus::Compliant,
            CheckStatus::Warn => ComplianceStatus::Attention,
            CheckStatus::Fail => ComplianceStatus::NonCompliant,
        },
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_estimates_punish_small_alphabets_and_repetition() {
        assert_eq!(estimate_entropy_bits(""), 0);
        assert!(estimate_entropy_bits("aaaaaaaaaaaaaaaa") < 5);
        assert!(estimate_entropy_bits("abcabcabcabcabcabc") < 30);
        assert!(estimate_entropy_bits("demo") < 20);
        let av = estimate_entropy_bits("ABCDEFGH12345678");
        assert!((60..=83).contains(&av), "{av}");
        let openai = estimate_entropy_bits(
            "Abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_-0123456789WXYZ",
        );
        assert!(openai > 300, "{openai}");
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    #[test]
    fn checks_pass_warn_and_fail_and_the_worst_decides() {
        use crate::rotation::{RotationRule, status};
        let strong = SecretTraits {
            fingerprint: "hmac:aa".into(),
            format_ok: Some(true),
            entropy_bits: 200,
        };
        let rule = Some(RotationRule {
            max_age_days: 90,
            remind_days: 14,
        });
        let fresh = status(rule, ts(0), ts(86_400));
        let mut key = crate::key::sample(ts(0));
        key.owner = Some("data-team".into());
        let clean = Evidence {
            traits: &strong,
            rotation: &fresh,
            exposures: 0,
            last_exposed_at: None,
            same_value: &[],
        };
        let result = assess(&key, &clean);
        assert_eq!(result.status, ComplianceStatus::Compliant, "{result:?}");
        assert_eq!(result.failing().count(), 0);

        let revealed = Evidence {
            exposures: 2,
            last_exposed_at: Some(ts(10)),
            ..clean.clone()
        };
        let result = assess(&key, &revealed);
        assert_eq!(result.status, ComplianceStatus::Attention);
        assert_eq!(
            result.failing().map(|c| c.id).collect::<Vec<_>>(),
            vec!["exposure"]
        );
        let before_rotation = Evidence {
            last_exposed_at: Some(ts(-10)),
            ..revealed
        };
        assert_eq!(
            assess(&key, &before_rotation).status,
            ComplianceStatus::Compliant,
            "a reveal before the last rotation exposed an old value"
        );

        let staging = [SameValue {
            key_id: "key_01JD0000000000000000000001".parse().expect("id"),
            alias: "copy".into(),
            environment: "staging".into(),
        }];
        let weak = SecretTraits {
            format_ok: Some(false),
            entropy_bits: 20,
            ..strong.clone()
        };
        let overdue = status(rule, ts(0), ts(91 * 86_400));
        key.owner = None;
        let bad = Evidence {
            traits: &weak,
            rotation: &overdue,
            exposures: 0,
            last_exposed_at: None,
            same_value: &staging,
        };
        let result = assess(&key, &bad);
        assert_eq!(result.status, ComplianceStatus::NonCompliant);
        assert_eq!(
            result
                .failing()
                .map(|c| (c.id, c.status))
                .collect::<Vec<_>>(),
            vec![
                ("format", CheckStatus::Fail),
                ("strength", CheckStatus::Fail),
                ("age", CheckStatus::Fail),
                ("unique", CheckStatus::Fail),
                ("owner", CheckStatus::Fail),
            ]
        );
    }
}
