//! Guided rotation: replacing a key's value step by step, with proof at both ends.
//!
//! A [`Rotation`] is persisted and named by its id, so every step can be asked for again
//! (after a timeout, a crash, a second click) and answers the same: a step already taken
//! leaves the rotation unchanged. The steps, in order:
//!
//! ```text
//! creating ─► pending ─► validated ─► canary ─► promoted ─► retired ─► revoked_verified
//!   (managed:   (new value   (provider      (a share    (new is current,  (old value   │
//!    Keyward     stored,      accepted       of traffic  old is previous:  no longer   └► old_key_live
//!    asks the    not used)    it)            tries it)   dual-key window)  injected)      (probe accepted
//!    provider)                                                                             the old value)
//! ```
//!
//! `canary` is optional; anything before `promoted` can be cancelled. Each transition is
//! computed here, without IO, as an [`Advance`]; the store applies it — the rotation row and
//! the version states together, by compare-and-set on [`Rotation::revision`] — so a crash
//! leaves either the step before or the step after, never half of one.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::id::{KeyId, RotationId};
use crate::key::Key;

/// Longest dual-key window: a month of accepting two values is already generous.
pub const WINDOW_MAX: SignedDuration = SignedDuration::from_hours(24 * 30);
/// Default dual-key window.
pub const WINDOW_DEFAULT: SignedDuration = SignedDuration::from_hours(24);
/// The largest canary share: beyond half, promote instead.
pub const CANARY_PERCENT_MAX: u8 = 50;
/// Retirement at the end of the window waits until the provider has accepted the new value
/// for this long without rejecting it (a rejection means the old value is still needed).
pub const QUIET_BEFORE_RETIRING: SignedDuration = SignedDuration::from_mins(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RotationStep {
    /// Managed rotations only: Keyward is asking the provider for a new key.
    Creating,
    /// The new value is stored as a `pending` version; nothing uses it.
    Pending,
    /// The provider accepted the new value's validation request.
    Validated,
    /// A share of traffic tries the new value first (and falls back to the current one).
    Canary,
    /// The new value is current; the old one is `previous` until the window ends.
    Promoted,
    /// The old value is no longer injected; its revocation is not yet confirmed.
    Retired,
    /// The provider rejected the old value: it is dead.
    RevokedVerified,
    /// The provider still accepts the old value: someone must revoke it there.
    OldKeyLive,
    /// Given up before promotion; the pending value was never used.
    Cancelled,
}

string_enum!(RotationStep {
    Creating = "creating", Pending = "pending", Validated = "validated", Canary = "canary",
    Promoted = "promoted", Retired = "retired", RevokedVerified = "revoked_verified",
    OldKeyLive = "old_key_live", Cancelled = "cancelled"
}, "invalid_rotation_step", "rotation step");

impl RotationStep {
    /// Steps that hold the key: at most one rotation per key is in one of them.
    pub const ACTIVE: &'static [RotationStep] = &[
        RotationStep::Creating,
        RotationStep::Pending,
        RotationStep::Validated,
        RotationStep::Canary,
        RotationStep::Promoted,
    ];

    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }

    /// What can be asked for next (the API's step names), for clients and pages.
    pub fn next_actions(self) -> &'static [&'static str] {
        match self {
            RotationStep::Creating => &["cancel"],
            RotationStep::Pending => &["validate", "cancel"],
            RotationStep::Validated | RotationStep::Canary => &["canary", "promote", "cancel"],
            RotationStep::Promoted => &["retire"],
            RotationStep::Retired | RotationStep::OldKeyLive => &["verify"],
            RotationStep::RevokedVerified | RotationStep::Cancelled => &[],
        }
    }

    /// Where the rotation stands, in a sentence for people.
    pub fn summary(self) -> &'static str {
        match self {
            RotationStep::Creating => "Keyward is asking the provider for a new key",
            RotationStep::Pending => "the new value is stored but not used; validate it",
            RotationStep::Validated => {
                "the provider accepts the new value; promote it, or try it on a canary share first"
            }
            RotationStep::Canary => "a share of requests tries the new value first",
            RotationStep::Promoted => {
                "the new value is current; the old one is the fallback until the window ends"
            }
            RotationStep::Retired => {
                "the old value is no longer used; its revocation is not confirmed yet"
            }
            RotationStep::RevokedVerified => "revoked-verified: the provider rejects the old value",
            RotationStep::OldKeyLive => {
                "old key still live — revoke it at the provider, then verify again"
            }
            RotationStep::Cancelled => "cancelled before the new value was used",
        }
    }
}

/// What a probe of a value with the service's validation request showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// 2xx: the provider accepts the value.
    Accepted,
    /// 401/403: the provider refuses the value.
    Rejected,
    /// Throttled, unreachable or an answer that proves nothing either way.
    Inconclusive,
}

/// The provider's answer to one probe, as recorded on the rotation (never its body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub probe: Probe,
    /// The verdict's name as the validation request reported it (`valid`, `rejected`, …).
    pub verdict: String,
    /// The provider's HTTP status, if it answered.
    pub status: Option<u16>,
    pub at: Timestamp,
}

/// What the proxy saw while the rotation was running: evidence for promoting and retiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationTraffic {
    /// Canary requests the new value served.
    pub canary_served: u64,
    /// Canary requests the provider rejected with the new value (retried with the current).
    pub canary_rejected: u64,
    /// Requests during the window that fell back to the previous value because the provider
    /// rejected the new one.
    pub fallback_served: u64,
    /// The last time the provider rejected the new value.
    pub new_rejected_at: Option<Timestamp>,
}

impl RotationTraffic {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn add(&mut self, other: &RotationTraffic) {
        self.canary_served += other.canary_served;
        self.canary_rejected += other.canary_rejected;
        self.fallback_served += other.fallback_served;
        self.new_rejected_at = self.new_rejected_at.max(other.new_rejected_at);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub id: RotationId,
    pub key_id: KeyId,
    pub step: RotationStep,
    /// The version that was current when the rotation started.
    pub old_version: u32,
    /// The version the rotation adds (reserved at the start, even while `creating`).
    pub new_version: u32,
    /// Set when Keyward creates and revokes the provider's keys itself (the service
    /// declares a key-management API).
    pub managed: Option<Managed>,
    pub canary_percent: u8,
    /// How long the old value stays as a fallback after promotion.
    pub window: SignedDuration,
    pub window_ends_at: Option<Timestamp>,
    /// The last validation of the new value.
    pub validation: Option<ProbeRecord>,
    /// The last probe of the old value after retirement.
    pub verification: Option<ProbeRecord>,
    pub traffic: RotationTraffic,
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped by every step; steps are applied by compare-and-set on it.
    pub revision: u64,
}

/// A managed rotation's handle on the provider's key-management API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Managed {
    /// The stored admin key Keyward calls the API with (a key of the same service).
    pub admin_key: KeyId,
    /// The provider's project (or account) the keys belong to.
    pub project: String,
    /// The provider's id of the key this rotation created, once it exists: what a later
    /// rotation deletes when it retires this value.
    pub created: Option<String>,
}

impl Managed {
    /// A provider project id as it may appear in a URL path: the provider's own charset
    /// (letters, digits, `_`, `-`) and nothing that could change the path.
    pub fn project_id(text: &str) -> Result<&str, Error> {
        if !text.is_empty()
            && text.len() <= 100
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Ok(text)
        } else {
            Err(Error::invalid(
                "invalid_project",
                "a project id has 1 to 100 letters, digits, `_` and `-`",
            ))
        }
    }
}

/// How a step changes the key's versions, applied in the same transaction as the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionMove {
    /// `new` becomes current (and the key's current version), `old` previous; any other
    /// previous version is retired.
    Promote { new: u32, old: u32 },
    /// A previous (or never used pending) version is retired.
    Retire { version: u32 },
}

/// The result of asking for a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// The rotation is already at or past the step: nothing to do (idempotent repeat).
    Unchanged,
    /// The next state, and what it does to the versions.
    Changed(Box<Rotation>, Option<VersionMove>),
}

fn not_yet(code: &'static str, message: String) -> Error {
    Error::conflict(code, message)
}

impl Rotation {
    /// A new rotation of `key` to version `new_version`; `pending` unless Keyward still has
    /// to ask the provider for the value (`managed`).
    pub fn start(
        id: RotationId,
        key: &Key,
        new_version: u32,
        managed: Option<Managed>,
        window: SignedDuration,
        actor: &str,
        now: Timestamp,
    ) -> Result<Self, Error> {
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        if window.is_negative() || window > WINDOW_MAX {
            return Err(Error::invalid(
                "invalid_window",
                format!(
                    "the dual-key window must be between 0 and {} hours",
                    WINDOW_MAX.as_hours()
                ),
            ));
        }
        Ok(Self {
            id,
            key_id: key.id.clone(),
            step: if managed.is_some() {
                RotationStep::Creating
            } else {
                RotationStep::Pending
            },
            old_version: key.current_version,
            new_version,
            managed,
            canary_percent: 0,
            window,
            window_ends_at: None,
            validation: None,
            verification: None,
            traffic: RotationTraffic::default(),
            created_by: actor.to_owned(),
            created_at: now,
            updated_at: now,
            revision: 0,
        })
    }

    fn next(&self, step: RotationStep, now: Timestamp) -> Rotation {
        Rotation {
            step,
            updated_at: now,
            revision: self.revision + 1,
            ..self.clone()
        }
    }

    fn changed(rotation: Rotation, moves: Option<VersionMove>) -> Advance {
        Advance::Changed(Box::new(rotation), moves)
    }

    fn refuse_if_cancelled(&self) -> Result<(), Error> {
        if self.step == RotationStep::Cancelled {
            return Err(Error::conflict(
                "rotation_cancelled",
                format!("rotation {} was cancelled; start a new one", self.id),
            ));
        }
        Ok(())
    }

    /// Managed rotations: the provider created the new value (its id there is
    /// `provider_id`) and it is stored as pending.
    pub fn created(&self, provider_id: String, now: Timestamp) -> Result<Advance, Error> {
        self.refuse_if_cancelled()?;
        if self.step > RotationStep::Creating {
            return Ok(Advance::Unchanged);
        }
        let mut next = self.next(RotationStep::Pending, now);
        match &mut next.managed {
            Some(m) => m.created = Some(provider_id),
            None => {
                return Err(Error::conflict(
                    "rotation_not_managed",
                    format!("rotation {} does not create keys itself", self.id),
                ));
            }
        }
        Ok(Self::changed(next, None))
    }

    /// Whether a validation request would move the rotation: `true` while pending,
    /// `false` once past it; an error before the value exists or after a cancel.
    pub fn awaits_validation(&self) -> Result<bool, Error> {
        self.refuse_if_cancelled()?;
        match self.step {
            RotationStep::Creating => Err(not_yet(
                "rotation_not_ready",
                format!("rotation {} has no new value yet", self.id),
            )),
            RotationStep::Pending => Ok(true),
            _ => Ok(false),
        }
    }

    /// Records the validation of the new value: accepted moves a pending rotation on to
    /// `validated`; anything else keeps it pending with the answer recorded.
    pub fn validated(&self, record: ProbeRecord) -> Result<Advance, Error> {
        if !self.awaits_validation()? {
            return Ok(Advance::Unchanged);
        }
        let step = if record.probe == Probe::Accepted {
            RotationStep::Validated
        } else {
            RotationStep::Pending
        };
        let mut next = self.next(step, record.at);
        next.validation = Some(record);
        Ok(Self::changed(next, None))
    }

    fn ensure_validated(&self) -> Result<(), Error> {
        match self.step {
            RotationStep::Creating | RotationStep::Pending => Err(not_yet(
                "rotation_not_validated",
                match &self.validation {
                    Some(v) => format!(
                        "the new value failed validation ({}); validate it again or cancel the rotation",
                        v.verdict
                    ),
                    None => "validate the new value first".to_owned(),
                },
            )),
            _ => Ok(()),
        }
    }

    /// Sends `percent` of the key's traffic to the new value first (0 < percent ≤ 50).
    pub fn canary(&self, percent: u8, now: Timestamp) -> Result<Advance, Error> {
        self.refuse_if_cancelled()?;
        if percent == 0 || percent > CANARY_PERCENT_MAX {
            return Err(Error::invalid(
                "invalid_canary_percent",
                format!("the canary share must be between 1 and {CANARY_PERCENT_MAX} percent"),
            ));
        }
        self.ensure_validated()?;
        match self.step {
            RotationStep::Validated | RotationStep::Canary if self.canary_percent != percent => {
                let mut next = self.next(RotationStep::Canary, now);
                next.canary_percent = percent;
                Ok(Self::changed(next, None))
            }
            _ => Ok(Advance::Unchanged),
        }
    }

    /// Makes the new value current and the old one the fallback for the window.
    pub fn promote(&self, now: Timestamp) -> Result<Advance, Error> {
        self.refuse_if_cancelled()?;
        self.ensure_validated()?;
        if self.step >= RotationStep::Promoted {
            return Ok(Advance::Unchanged);
        }
        let mut next = self.next(RotationStep::Promoted, now);
        next.window_ends_at = Some(now.saturating_add(self.window).unwrap_or(now));
        Ok(Self::changed(
            next,
            Some(VersionMove::Promote {
                new: self.new_version,
                old: self.old_version,
            }),
        ))
    }

    /// Whether the dual-key window has ended and the new value has been quiet long enough
    /// for the old one to go without confirmation.
    pub fn due_for_retirement(&self, now: Timestamp) -> bool {
        self.step == RotationStep::Promoted
            && self.window_ends_at.is_some_and(|end| now >= end)
            && self
                .traffic
                .new_rejected_at
                .is_none_or(|at| now.duration_since(at) >= QUIET_BEFORE_RETIRING)
    }

    /// Stops injecting the old value. Inside the window (or while the provider still
    /// rejects the new value) only with `confirm`.
    pub fn retire(&self, confirm: bool, now: Timestamp) -> Result<Advance, Error> {
        self.refuse_if_cancelled()?;
        if self.step < RotationStep::Promoted {
            return Err(not_yet(
                "rotation_not_promoted",
                format!("rotation {} has not promoted the new value yet", self.id),
            ));
        }
        if self.step > RotationStep::Promoted {
            return Ok(Advance::Unchanged);
        }
        if !confirm && !self.due_for_retirement(now) {
            let why = match self.window_ends_at {
                Some(end) if now < end => {
                    format!("the dual-key window is open until {end}")
                }
                _ => "the provider rejected the new value recently".to_owned(),
            };
            return Err(Error::conflict(
                "confirmation_required",
                format!(
                    "{why}; retiring the old value now may break callers — confirm to retire it anyway"
                ),
            ));
        }
        Ok(Self::changed(
            self.next(RotationStep::Retired, now),
            Some(VersionMove::Retire {
                version: self.old_version,
            }),
        ))
    }

    /// Whether probing the old value would tell anything new: `true` once retired (and
    /// while it is still live), `false` once proven dead; an error before retirement.
    pub fn awaits_verification(&self) -> Result<bool, Error> {
        self.refuse_if_cancelled()?;
        match self.step {
            RotationStep::Retired | RotationStep::OldKeyLive => Ok(true),
            RotationStep::RevokedVerified => Ok(false),
            _ => Err(not_yet(
                "rotation_not_retired",
                format!(
                    "rotation {} still injects the old value; retire it first",
                    self.id
                ),
            )),
        }
    }

    /// Records the probe of the old value: rejected proves it dead, accepted means it is
    /// still live at the provider; an inconclusive answer is recorded and changes nothing.
    pub fn verified(&self, record: ProbeRecord) -> Result<Advance, Error> {
        if !self.awaits_verification()? {
            return Ok(Advance::Unchanged);
        }
        let step = match record.probe {
            Probe::Rejected => RotationStep::RevokedVerified,
            Probe::Accepted => RotationStep::OldKeyLive,
            Probe::Inconclusive => self.step,
        };
        let mut next = self.next(step, record.at);
        next.verification = Some(record);
        Ok(Self::changed(next, None))
    }

    /// Gives up before promotion; the pending value is retired unused.
    pub fn cancel(&self, now: Timestamp) -> Result<Advance, Error> {
        match self.step {
            RotationStep::Cancelled => Ok(Advance::Unchanged),
            RotationStep::Creating
            | RotationStep::Pending
            | RotationStep::Validated
            | RotationStep::Canary => Ok(Self::changed(
                self.next(RotationStep::Cancelled, now),
                (self.step != RotationStep::Creating).then_some(VersionMove::Retire {
                    version: self.new_version,
                }),
            )),
            _ => Err(Error::conflict(
                "rotation_promoted",
                format!(
                    "rotation {} already made the new value current; retire the old one instead",
                    self.id
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn key() -> Key {
        Key {
            current_version: 3,
            ..crate::key::sample(at(0))
        }
    }

    fn probe(probe: Probe, s: i64) -> ProbeRecord {
        ProbeRecord {
            probe,
            verdict: format!("{probe:?}").to_lowercase(),
            status: Some(match probe {
                Probe::Accepted => 200,
                Probe::Rejected => 401,
                Probe::Inconclusive => 500,
            }),
            at: at(s),
        }
    }

    fn start() -> Rotation {
        Rotation::start(
            "rot_01JD0000000000000000000000".parse().expect("id"),
            &key(),
            4,
            None,
            SignedDuration::from_hours(1),
            "alice",
            at(10),
        )
        .expect("starts")
    }

    fn apply(r: &Rotation, advance: Result<Advance, Error>) -> (Rotation, Option<VersionMove>) {
        match advance.expect("allowed") {
            Advance::Changed(next, moves) => {
                assert_eq!(next.revision, r.revision + 1);
                (*next, moves)
            }
            Advance::Unchanged => panic!("expected a change from {:?}", r.step),
        }
    }

    #[test]
    fn the_whole_walk_and_every_repeat_is_a_no_op() {
        let r = start();
        assert_eq!(
            (r.step, r.old_version, r.new_version),
            (RotationStep::Pending, 3, 4)
        );
        let (r, _) = apply(&r, r.validated(probe(Probe::Rejected, 11)));
        assert_eq!(
            r.step,
            RotationStep::Pending,
            "a rejected value stays pending"
        );
        assert_eq!(
            r.promote(at(12)).expect_err("refused").code,
            "rotation_not_validated"
        );
        let (r, _) = apply(&r, r.validated(probe(Probe::Accepted, 12)));
        assert_eq!(r.step, RotationStep::Validated);
        assert_eq!(
            r.validated(probe(Probe::Rejected, 13)),
            Ok(Advance::Unchanged)
        );
        let (r, _) = apply(&r, r.canary(10, at(13)));
        assert_eq!((r.step, r.canary_percent), (RotationStep::Canary, 10));
        assert_eq!(r.canary(10, at(14)), Ok(Advance::Unchanged));
        let (r, moves) = apply(&r, r.promote(at(20)));
        assert_eq!(moves, Some(VersionMove::Promote { new: 4, old: 3 }));
        assert_eq!(r.window_ends_at, Some(at(20 + 3600)));
        assert_eq!(r.promote(at(21)), Ok(Advance::Unchanged));
        assert_eq!(r.canary(20, at(21)), Ok(Advance::Unchanged));
        assert_eq!(
            r.retire(false, at(30)).expect_err("window open").code,
            "confirmation_required"
        );
        assert!(!r.due_for_retirement(at(30)));
        assert!(r.due_for_retirement(at(20 + 3600)));
        let (r, moves) = apply(&r, r.retire(false, at(20 + 3600)));
        assert_eq!(moves, Some(VersionMove::Retire { version: 3 }));
        assert_eq!(r.retire(false, at(4000)), Ok(Advance::Unchanged));
        let (r, _) = apply(&r, r.verified(probe(Probe::Inconclusive, 4001)));
        assert_eq!(r.step, RotationStep::Retired);
        let (r, _) = apply(&r, r.verified(probe(Probe::Accepted, 4002)));
        assert_eq!(r.step, RotationStep::OldKeyLive);
        let (r, _) = apply(&r, r.verified(probe(Probe::Rejected, 4003)));
        assert_eq!(r.step, RotationStep::RevokedVerified);
        assert_eq!(
            r.verified(probe(Probe::Accepted, 4004)),
            Ok(Advance::Unchanged)
        );
        assert_eq!(
            r.cancel(at(4005)).expect_err("too late").code,
            "rotation_promoted"
        );
    }

    #[test]
    fn a_recent_rejection_of_the_new_value_holds_retirement() {
        let r = start();
        let (r, _) = apply(&r, r.validated(probe(Probe::Accepted, 11)));
        let (mut r, _) = apply(&r, r.promote(at(20)));
        r.traffic.new_rejected_at = Some(at(3600));
        assert!(!r.due_for_retirement(at(3620)));
        assert!(r.retire(false, at(3620)).is_err());
        assert!(r.due_for_retirement(at(3600 + 300)));
        assert!(matches!(r.retire(true, at(3620)), Ok(Advance::Changed(..))));
    }

    #[test]
    fn cancelling_retires_the_unused_value_and_ends_the_rotation() {
        let r = start();
        let (r, moves) = apply(&r, r.cancel(at(11)));
        assert_eq!(moves, Some(VersionMove::Retire { version: 4 }));
        assert!(!r.step.is_active());
        assert_eq!(r.cancel(at(12)), Ok(Advance::Unchanged));
        assert_eq!(
            r.validated(probe(Probe::Accepted, 13))
                .expect_err("cancelled")
                .code,
            "rotation_cancelled"
        );
    }

    #[test]
    fn bad_starts_and_bad_shares_are_refused() {
        let mut k = key();
        k.deleted_at = Some(at(1));
        let start_on = |k: &Key, window| {
            Rotation::start(
                "rot_01JD0000000000000000000000".parse().expect("id"),
                k,
                4,
                None,
                window,
                "alice",
                at(2),
            )
        };
        assert_eq!(
            start_on(&k, WINDOW_DEFAULT).expect_err("deleted").code,
            "key_deleted"
        );
        assert_eq!(
            start_on(&key(), WINDOW_MAX + SignedDuration::from_secs(1))
                .expect_err("long")
                .code,
            "invalid_window"
        );
        let r = start();
        assert_eq!(
            r.canary(10, at(11)).expect_err("not validated").code,
            "rotation_not_validated"
        );
        let (r, _) = apply(&r, r.validated(probe(Probe::Accepted, 11)));
        assert_eq!(
            r.canary(0, at(12)).expect_err("zero").code,
            "invalid_canary_percent"
        );
        assert_eq!(
            r.canary(51, at(12)).expect_err("big").code,
            "invalid_canary_percent"
        );
        assert_eq!(
            r.verified(probe(Probe::Rejected, 12))
                .expect_err("early")
                .code,
            "rotation_not_retired"
        );
        assert_eq!(
            r.retire(true, at(12)).expect_err("early").code,
            "rotation_not_promoted"
        );
    }

    #[test]
    fn managed_rotations_start_by_creating() {
        let r = Rotation::start(
            "rot_01JD0000000000000000000000".parse().expect("id"),
            &key(),
            4,
            Some(Managed {
                admin_key: "key_01JD0000000000000000000001".parse().expect("id"),
                project: "proj_1".into(),
                created: None,
            }),
            WINDOW_DEFAULT,
            "alice",
            at(1),
        )
        .expect("starts");
        assert_eq!(r.step, RotationStep::Creating);
        assert_eq!(
            r.validated(probe(Probe::Accepted, 2))
                .expect_err("no value")
                .code,
            "rotation_not_ready"
        );
        assert_eq!(
            r.cancel(at(2))
                .map(|a| matches!(a, Advance::Changed(_, None))),
            Ok(true)
        );
        let (r, _) = apply(&r, r.created("svc_acct_1".into(), at(3)));
        assert_eq!(r.step, RotationStep::Pending);
        assert_eq!(
            r.created("svc_acct_2".into(), at(4)),
            Ok(Advance::Unchanged)
        );
        assert_eq!(
            r.managed.and_then(|m| m.created).as_deref(),
            Some("svc_acct_1")
        );
    }
}
