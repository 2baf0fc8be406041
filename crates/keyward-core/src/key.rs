//! Keys and their versions.
//!
//! A [`Key`] is the long-lived thing people name, tag, own and budget ("prod OpenAI for the
//! summariser"); its secret value lives in [`KeyVersion`]s, so rotation adds a version and
//! never loses the key's identity, history or limits. Deletion is soft: a deleted key keeps
//! its versions until the recovery window has passed or someone purges it explicitly.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::budget::Budget;
use crate::id::KeyId;
use crate::label;
use crate::service::{Limit, validate_limits};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

/// Where a version stands in the key's lifecycle. Exactly one version is `Current` (the one
/// injected); rotation makes the old one `Previous` for a dual-key window, then `Retired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    Current,
    Previous,
    Pending,
    Retired,
}

/// A key's status as shown everywhere, derived from its fields and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Disabled,
    Expired,
    /// Stopped for good in an emergency (leaked, compromised): never injected again.
    Revoked,
    Deleted,
}

string_enum!(Criticality { Low = "low", Medium = "medium", High = "high", Critical = "critical" }, "invalid_criticality", "criticality");
string_enum!(VersionState { Current = "current", Previous = "previous", Pending = "pending", Retired = "retired" }, "invalid_version_state", "version state");
string_enum!(KeyStatus { Active = "active", Disabled = "disabled", Expired = "expired", Revoked = "revoked", Deleted = "deleted" }, "invalid_status", "key status");

/// An emergency revocation: who stopped the key, when and why. Irreversible — a leaked
/// value stays leaked; the way on is a new key (or a rotation) and deleting this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub at: Timestamp,
    pub by: String,
    pub reason: String,
    /// Whether the provider now refuses the old value, once someone said it was revoked
    /// there too.
    pub check: Option<RevocationCheck>,
}

/// What the provider said to the revoked value, asked with the service's validation request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevocationCheck {
    pub outcome: RevocationOutcome,
    /// The provider's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub at: Timestamp,
}

/// The verdict on a value revoked at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationOutcome {
    /// The provider rejects the old value: it is dead everywhere.
    RevokedVerified,
    /// The provider still accepts it: whoever holds it can still use it. Revoke it there.
    StillLive,
    /// The provider's answer proves neither (throttled, an outage, no answer): ask again.
    Inconclusive,
    /// The key's allowance cannot afford a request now (the probe budget): ask again later.
    Deferred,
    /// The service has no validation request to ask with.
    Unverifiable,
}

string_enum!(RevocationOutcome {
    RevokedVerified = "revoked_verified", StillLive = "still_live", Inconclusive = "inconclusive",
    Deferred = "deferred", Unverifiable = "unverifiable"
}, "invalid_revocation_outcome", "revocation outcome");

/// Metadata of a stored key. Holds no secret material; safe to log and return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: KeyId,
    pub service_id: String,
    pub environment: String,
    pub alias: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub criticality: Criticality,
    pub enabled: bool,
    pub expires_at: Option<Timestamp>,
    /// Version number of the `Current` version and its hint, kept on the key so listings
    /// need no join.
    pub current_version: u32,
    pub current_hint: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub deleted_at: Option<Timestamp>,
    pub deleted_by: Option<String>,
    pub revoked: Option<Revocation>,
    /// When the current value became current (creation, or the last rotation).
    pub rotated_at: Timestamp,
    /// This key's own rotation rule, over its category's and the vault's.
    pub rotation_rule: Option<crate::rotation::RotationRule>,
    /// The provider plan's limits this key is held to (copied from a catalog plan or set by
    /// hand); the proxy refuses locally instead of spending a request the provider refuses.
    pub limits: Vec<Limit>,
    /// Spending cap for this key, whichever tokens use it.
    pub budget: Option<Budget>,
}

impl Key {
    pub fn status(&self, now: Timestamp) -> KeyStatus {
        if self.deleted_at.is_some() {
            KeyStatus::Deleted
        } else if self.revoked.is_some() {
            KeyStatus::Revoked
        } else if !self.enabled {
            KeyStatus::Disabled
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// Refuses to give a revoked key new values or bring it back (`key_revoked`): the way
    /// on is a new key.
    pub fn ensure_not_revoked(&self) -> Result<(), Error> {
        match &self.revoked {
            Some(r) => Err(Error::conflict(
                "key_revoked",
                format!(
                    "key {} was revoked on {} ({}); add a new key instead",
                    self.id, r.at, r.reason
                ),
            )),
            None => Ok(()),
        }
    }

    /// Refuses operations on a soft-deleted key with the documented `key_deleted` error.
    pub fn ensure_not_deleted(&self) -> Result<(), Error> {
        if self.deleted_at.is_some() {
            Err(Error::conflict(
                "key_deleted",
                format!("key {} is deleted; restore it first", self.id),
            ))
        } else {
            Ok(())
        }
    }
}

/// Ciphertext of one version as produced by `keyward-crypto`: the value sealed under a
/// fresh data key, and that data key wrapped by the master key `kek_id`. Not secret, but
/// printed only by length.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub algorithm: String,
    pub kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("algorithm", &self.algorithm)
            .field("kek_id", &self.kek_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// What the associated data of a sealed value binds it to: a ciphertext only opens for the
/// key id, version and purpose it was sealed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// What the ciphertext belongs to: a key's id, or the name of an internal secret.
    pub subject: &'a str,
    pub version: u32,
    pub purpose: &'static str,
}

impl<'a> SealContext<'a> {
    /// The context for a key version's secret value.
    pub fn key_secret(key_id: &'a KeyId, version: u32) -> Self {
        Self {
            subject: key_id.as_str(),
            version,
            purpose: "key-secret",
        }
    }

    /// The context for one of Keyward's own secrets (e.g. the audit signing key), named so
    /// a ciphertext of one cannot stand in for another.
    pub fn internal(name: &'a str) -> Self {
        Self {
            subject: name,
            version: 1,
            purpose: "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub key_id: KeyId,
    pub version: u32,
    pub state: VersionState,
    pub hint: String,
    pub sealed: SealedSecret,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// A validated request to create a key (the secret travels separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDraft {
    pub service_id: String,
    pub environment: String,
    pub alias: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub criticality: Criticality,
    pub enabled: bool,
    pub expires_at: Option<Timestamp>,
    pub limits: Vec<Limit>,
    pub budget: Option<Budget>,
}

/// Raw, unvalidated key metadata as it arrives from the API or CLI.
#[derive(Debug, Clone, Default)]
pub struct KeyDraftInput {
    pub service_id: String,
    pub environment: String,
    pub alias: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub criticality: Option<Criticality>,
    pub enabled: Option<bool>,
    pub expires_at: Option<Timestamp>,
    pub limits: Vec<Limit>,
    pub budget: Option<Budget>,
}

impl KeyDraft {
    pub fn validate(input: KeyDraftInput, now: Timestamp) -> Result<Self, Error> {
        Ok(Self {
            service_id: label::slug("service", &input.service_id)?,
            environment: label::slug("environment", &input.environment)?,
            alias: label::alias(&input.alias)?,
            description: label::text(
                "description",
                input.description.as_deref(),
                label::DESCRIPTION_MAX,
            )?,
            owner: label::text("owner", input.owner.as_deref(), label::OWNER_MAX)?,
            tags: label::tags(&input.tags)?,
            criticality: input.criticality.unwrap_or_default(),
            enabled: input.enabled.unwrap_or(true),
            expires_at: validate_expiry(input.expires_at, now)?,
            limits: validate_limits(input.limits)?,
            budget: input.budget,
        })
    }
}

fn validate_expiry(
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<Option<Timestamp>, Error> {
    match expires_at {
        Some(at) if at <= now => Err(Error::invalid(
            "expires_at_in_past",
            "expires_at must be in the future",
        )),
        other => Ok(other),
    }
}

/// A partial update of a key's metadata; `None` leaves a field alone, `Some(None)` clears an
/// optional one.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    pub alias: Option<String>,
    pub description: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub criticality: Option<Criticality>,
    pub expires_at: Option<Option<Timestamp>>,
    pub limits: Option<Vec<Limit>>,
    pub budget: Option<Option<Budget>>,
    /// The key's own rotation rule (`Some(None)` falls back to its category's).
    pub rotation_rule: Option<Option<crate::rotation::RotationRule>>,
}

impl KeyChanges {
    /// The names of the fields this change touches (for the audit trail; never values).
    pub fn field_names(&self) -> Vec<&'static str> {
        [
            ("alias", self.alias.is_some()),
            ("description", self.description.is_some()),
            ("owner", self.owner.is_some()),
            ("tags", self.tags.is_some()),
            ("criticality", self.criticality.is_some()),
            ("expires_at", self.expires_at.is_some()),
            ("limits", self.limits.is_some()),
            ("budget", self.budget.is_some()),
            ("rotation", self.rotation_rule.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Validates and applies the changes; returns whether anything changed.
    pub fn apply(self, key: &mut Key, now: Timestamp) -> Result<bool, Error> {
        key.ensure_not_deleted()?;
        let before = key.clone();
        if let Some(alias) = self.alias {
            key.alias = label::alias(&alias)?;
        }
        if let Some(description) = self.description {
            key.description = label::text(
                "description",
                description.as_deref(),
                label::DESCRIPTION_MAX,
            )?;
        }
        if let Some(owner) = self.owner {
            key.owner = label::text("owner", owner.as_deref(), label::OWNER_MAX)?;
        }
        if let Some(tags) = self.tags {
            key.tags = label::tags(&tags)?;
        }
        if let Some(criticality) = self.criticality {
            key.criticality = criticality;
        }
        if let Some(expires_at) = self.expires_at {
            key.expires_at = validate_expiry(expires_at, now)?;
        }
        if let Some(limits) = self.limits {
            key.limits = validate_limits(limits)?;
        }
        if let Some(budget) = self.budget {
            key.budget = budget;
        }
        if let Some(rule) = self.rotation_rule {
            key.rotation_rule = rule
                .map(crate::rotation::RotationRule::validate)
                .transpose()?;
        }
        Ok(*key != before)
    }
}

/// How long a soft-deleted key can be restored; 7–90 days, 30 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryWindow {
    days: u16,
}

impl RecoveryWindow {
    pub const MIN_DAYS: u16 = 7;
    pub const MAX_DAYS: u16 = 90;

    pub fn days(days: u16) -> Result<Self, Error> {
        if (Self::MIN_DAYS..=Self::MAX_DAYS).contains(&days) {
            Ok(Self { days })
        } else {
            Err(Error::invalid(
                "invalid_recovery_window",
                format!(
                    "the recovery window must be {}–{} days, not {days}",
                    Self::MIN_DAYS,
                    Self::MAX_DAYS
                ),
            ))
        }
    }

    pub fn in_days(self) -> u16 {
        self.days
    }

    pub fn duration(self) -> SignedDuration {
        SignedDuration::from_hours(i64::from(self.days) * 24)
    }

    /// When a key deleted at `deleted_at` may be purged without confirmation.
    pub fn purgeable_at(self, deleted_at: Timestamp) -> Timestamp {
        deleted_at
            .saturating_add(self.duration())
            .unwrap_or(deleted_at)
    }
}

impl Default for RecoveryWindow {
    fn default() -> Self {
        Self { days: 30 }
    }
}

/// Which keys a listing wants. Empty filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Restrict to these services (a `category` filter becomes its list of services).
    pub service_ids: Option<Vec<String>>,
    pub environment: Option<String>,
    pub status: Option<KeyStatus>,
    pub tag: Option<String>,
    /// Case-insensitive substring of alias or description.
    pub text: Option<String>,
    /// Only keys in one of these areas (what the caller's grants reach); `None` for all.
    pub areas: Option<Vec<KeyArea>>,
}

/// Services × environments (`None`: all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyArea {
    pub service_ids: Option<Vec<String>>,
    pub environments: Option<Vec<String>>,
}

/// Cursor pagination: ids are time-ordered ULIDs, so "after this id" is a stable cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<KeyId>,
    pub limit: u32,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 200;

    pub fn new(after: Option<KeyId>, limit: Option<u32>) -> Result<Self, Error> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(Error::invalid(
                "invalid_limit",
                format!("limit must be 1–{}", Self::MAX_LIMIT),
            ));
        }
        Ok(Self { after, limit })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<KeyId>,
}

/// A plain active OpenAI key created at `at`, for tests.
#[cfg(test)]
pub(crate) fn sample(at: Timestamp) -> Key {
    Key {
        id: "key_01JD0000000000000000000000".parse().expect("id"),
        service_id: "openai".into(),
        environment: "production".into(),
        alias: "main".into(),
        description: None,
        owner: None,
        tags: vec![],
        criticality: Criticality::Medium,
        enabled: true,
        expires_at: None,
        current_version: 1,
        current_hint: "sk-…abcd".into(),
        created_by: "alice".into(),
        created_at: at,
        updated_at: at,
        last_used_at: None,
        deleted_at: None,
        deleted_by: None,
        revoked: None,
        rotated_at: at,
        rotation_rule: None,
        limits: vec![],
        budget: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid")
    }

    fn key() -> Key {
        Key {
            criticality: Criticality::High,
            expires_at: Some(ts(1000)),
            created_by: "tester".into(),
            ..sample(ts(0))
        }
    }

    #[test]
    fn status_follows_precedence() {
        let mut k = key();
        assert_eq!(k.status(ts(10)), KeyStatus::Active);
        assert_eq!(k.status(ts(1000)), KeyStatus::Expired);
        k.enabled = false;
        assert_eq!(k.status(ts(1000)), KeyStatus::Disabled);
        k.deleted_at = Some(ts(5));
        assert_eq!(k.status(ts(10)), KeyStatus::Deleted);
        assert_eq!(
            k.ensure_not_deleted().map_err(|e| e.code),
            Err("key_deleted")
        );
    }

    #[test]
    fn recovery_window_is_bounded() {
        assert!(RecoveryWindow::days(6).is_err());
        assert!(RecoveryWindow::days(91).is_err());
        let w = RecoveryWindow::days(7).expect("valid");
        assert_eq!(w.purgeable_at(ts(0)), ts(7 * 86_400));
        assert_eq!(RecoveryWindow::default().in_days(), 30);
    }

    #[test]
    fn changes_validate_and_report_whether_anything_changed() {
        let mut k = key();
        let unchanged = KeyChanges {
            alias: Some("main".into()),
            ..Default::default()
        };
        assert_eq!(unchanged.apply(&mut k, ts(1)).ok(), Some(false));
        let changed = KeyChanges {
            tags: Some(vec!["Prod".into()]),
            ..Default::default()
        };
        assert_eq!(changed.apply(&mut k, ts(1)).ok(), Some(true));
        assert_eq!(k.tags, vec!["prod".to_owned()]);
        let bad = KeyChanges {
            expires_at: Some(Some(ts(0))),
            ..Default::default()
        };
        assert!(bad.apply(&mut k, ts(1)).is_err());
    }

    #[test]
    fn enums_parse_their_wire_names() {
        assert_eq!(
            "critical".parse::<Criticality>().ok(),
            Some(Criticality::Critical)
        );
        assert!("urgent".parse::<Criticality>().is_err());
        for s in KeyStatus::ALL {
            assert_eq!(s.as_str().parse::<KeyStatus>().ok(), Some(*s));
        }
    }
}
