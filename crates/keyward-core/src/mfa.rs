//! Multi-factor authentication: a user's TOTP enrolment, which roles must have one, and how
//! recent an MFA check must be for a sensitive operation ("step-up").

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::id::UserId;
use crate::{Error, ErrorKind};

/// A user's TOTP factor. Pending until the first code proves the app has the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaEnrolment {
    pub user_id: UserId,
    /// The TOTP secret, sealed under the master key (one line of text).
    pub sealed_secret: String,
    /// The master key that wraps it (rotation and retirement look at this).
    pub kek_id: String,
    pub created_at: Timestamp,
    pub confirmed_at: Option<Timestamp>,
    /// The last time step accepted. A code of this step or an earlier one is refused, so a
    /// code seen over someone's shoulder cannot be used again.
    pub last_step: Option<u64>,
}

impl MfaEnrolment {
    pub fn confirmed(&self) -> bool {
        self.confirmed_at.is_some()
    }
}

/// Who must use MFA and how fresh a check sensitive operations need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaPolicy {
    /// Users with these roles get a session that can do nothing but enrol until they have
    /// a second factor.
    pub required_roles: Vec<Role>,
    /// Reveal, delete, purge, export, approve and access changes need an MFA check within
    /// this many minutes.
    pub step_up_minutes: u32,
}

pub const STEP_UP_MINUTES_MAX: u32 = 60;

impl Default for MfaPolicy {
    fn default() -> Self {
        Self {
            required_roles: vec![Role::Owner, Role::Admin, Role::KeyManager],
            step_up_minutes: 5,
        }
    }
}

impl MfaPolicy {
    pub fn validate(mut self) -> Result<Self, Error> {
        if !(1..=STEP_UP_MINUTES_MAX).contains(&self.step_up_minutes) {
            return Err(Error::invalid(
                "invalid_step_up_minutes",
                format!("step_up_minutes is 1–{STEP_UP_MINUTES_MAX}"),
            ));
        }
        self.required_roles.sort_by_key(|r| r.as_str());
        self.required_roles.dedup();
        Ok(self)
    }

    pub fn required_for(&self, role: Role) -> bool {
        self.required_roles.contains(&role)
    }

    /// Whether an MFA check made at `mfa_at` still counts for step-up at `now`.
    pub fn step_up_fresh(&self, mfa_at: Option<Timestamp>, now: Timestamp) -> bool {
        let window = SignedDuration::from_mins(i64::from(self.step_up_minutes));
        mfa_at.is_some_and(|at| at <= now && now.duration_since(at) < window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_up_counts_for_its_window_only() {
        let policy = MfaPolicy::default();
        let at = Timestamp::from_second(1_764_000_000).expect("time");
        let later = |s: i64| at + SignedDuration::from_secs(s);
        assert!(policy.step_up_fresh(Some(at), later(0)));
        assert!(policy.step_up_fresh(Some(at), later(299)));
        assert!(!policy.step_up_fresh(Some(at), later(300)));
        assert!(!policy.step_up_fresh(None, later(0)));
        assert!(
            !policy.step_up_fresh(Some(later(10)), at),
            "a check from the future does not count"
        );
        assert!(policy.required_for(Role::KeyManager));
        assert!(!policy.required_for(Role::Viewer));
    }

    #[test]
    fn policy_bounds() {
        let bad = MfaPolicy {
            required_roles: vec![],
            step_up_minutes: 0,
        };
        assert_eq!(
            bad.validate().err().map(|e| e.code),
            Some("invalid_step_up_minutes")
        );
        let ok = MfaPolicy {
            required_roles: vec![Role::Viewer, Role::Owner, Role::Viewer],
            step_up_minutes: 60,
        }
        .validate()
        .expect("valid");
        assert_eq!(ok.required_roles, vec![Role::Owner, Role::Viewer]);
    }
}

/// Where a caller stands with MFA, worked out once per request from the MFA policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaStanding {
    /// A management token: non-interactive, bound by its role, scope and allowlist instead.
    NotApplicable,
    /// The policy says this role needs a second factor and the user has none yet: the
    /// session may enrol, see who it is and sign out, nothing else.
    EnrolmentRequired,
    /// No MFA check within the step-up window (`enrolled` says whether one is possible).
    Stale { enrolled: bool },
    /// An MFA check within the step-up window.
    Fresh,
}

impl MfaStanding {
    pub fn as_str(self) -> &'static str {
        match self {
            MfaStanding::NotApplicable => "not_applicable",
            MfaStanding::EnrolmentRequired => "enrolment_required",
            MfaStanding::Stale { .. } => "stale",
            MfaStanding::Fresh => "fresh",
        }
    }

    /// Why this caller may not go on yet, if so; `step_up` for operations that need a recent
    /// MFA check.
    pub fn refusal(self, step_up: bool) -> Option<Error> {
        let enrol = || {
            Error::new(
                ErrorKind::Forbidden,
                "mfa_enrolment_required",
                "set up a second factor (POST /api/v1/auth/mfa/enroll) before doing this",
            )
        };
        match self {
            MfaStanding::EnrolmentRequired => Some(enrol()),
            MfaStanding::Stale { enrolled } if step_up => Some(if enrolled {
                Error::new(
                    ErrorKind::Forbidden,
                    "step_up_required",
                    "confirm it is you: enter a code from your authenticator app (POST /api/v1/auth/mfa/verify), then try again",
                )
            } else {
                enrol()
            }),
            _ => None,
        }
    }
}
