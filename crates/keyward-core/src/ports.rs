//! The store ports: what Keyward needs from persistence, stated in domain terms.
//!
//! `keyward-store` implements these for SQLite and PostgreSQL and runs one conformance suite
//! against both. Contract shared by every method: an unreachable database is
//! [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable); uniqueness violations are
//! [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) with the code named in the doc; a
//! method returns only after its write is durable (committed, and on SQLite fsynced).

use async_trait::async_trait;
use jiff::Timestamp;

use crate::Result;
use crate::access::{CustomRole, Grant, Role};
use crate::app_token::AppToken;
use crate::approval::{ApprovalRequest, ApprovalStatus};
use crate::audit::{AuditCheckpoint, AuditDraft, AuditEvent, AuditFilter};
use crate::catalog::BaseUrlOverride;
use crate::guided_rotation::{Rotation, RotationTraffic, VersionMove};
use crate::health::{HealthState, HealthStatus, KeyCalls};
use crate::id::{AppTokenId, ApprovalId, GrantId, KeyId, RotationId, TokenId, UserId, WebhookId};
use crate::key::{Key, KeyFilter, KeyVersion, Page, PageRequest, SealedSecret};
use crate::master_key::{InstanceReport, KekUsage, MasterKeyRecord};
use crate::mfa::MfaEnrolment;
use crate::notification::{Delivery, Webhook};
use crate::service::{Category, Environment, ServiceDefinition};
use crate::session::Session;
use crate::token::ManagementToken;
use crate::usage::{
    HourlyUse, KeyFlag, PoolSetting, UsageBucket, UsageGrouping, UsageHeadline, UsageQuery,
    UsageRecord,
};
use crate::user::User;

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key with its first version, atomically. `alias_taken` if a live key of
    /// the same service and environment already has the alias.
    async fn insert_key(&self, key: &Key, first: &KeyVersion) -> Result<()> {
        self.insert_keys(std::slice::from_ref(&(key.clone(), first.clone())))
            .await
    }

    /// Stores many keys with their first versions in one transaction (imports, restores):
    /// all or nothing, with the same conflicts as [`insert_key`](Self::insert_key).
    async fn insert_keys(&self, batch: &[(Key, KeyVersion)]) -> Result<()>;

    /// The key, deleted or not.
    async fn key(&self, id: &KeyId) -> Result<Option<Key>>;

    /// Keys matching `filter`, newest first. Without a status filter deleted keys are left
    /// out; `status = deleted` lists only them. `now` decides what has expired.
    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: &PageRequest,
        now: Timestamp,
    ) -> Result<Page<Key>>;

    /// Writes the key's metadata (everything but id, service, environment, versions,
    /// creation fields and `last_used_at`, which only [`record_key_use`](Self::record_key_use)
    /// writes) if nobody changed it since `expected_updated_at`; otherwise
    /// `concurrent_update`. `alias_taken` as for insert.
    async fn update_key(&self, key: &Key, expected_updated_at: Timestamp) -> Result<()>;

    /// Adds a version. A `current` version demotes the old current to `previous` and any
    /// older `previous` to `retired`, and updates the key's current version and hint.
    /// `concurrent_update` if the version number is taken; `rotation_in_progress` if the
    /// key has an active guided rotation (which owns its versions until it ends).
    async fn add_version(&self, version: &KeyVersion, now: Timestamp) -> Result<()>;

    /// Moves each key's `last_used_at` forward to the given time (never back), in one
    /// transaction: the proxy's use records arrive in batches.
    async fn record_key_use(&self, uses: &[(KeyId, Timestamp)]) -> Result<()>;

    /// Every key that is not deleted, with its current version: what the proxy's in-memory
    /// snapshot is built from. Ordered by key id.
    async fn live_keys(&self) -> Result<Vec<(Key, KeyVersion)>>;

    /// All versions of a key, newest first.
    async fn versions(&self, key_id: &KeyId) -> Result<Vec<KeyVersion>>;

    /// Destroys a key and its versions. Returns whether it existed.
    async fn purge_key(&self, id: &KeyId) -> Result<bool>;

    /// Destroys every key deleted before `cutoff`; returns their ids.
    async fn purge_deleted_before(&self, cutoff: Timestamp) -> Result<Vec<KeyId>>;

    /// Every key flag the proxy has raised (lapsed ones included; readers check `until`).
    async fn key_flags(&self) -> Result<Vec<KeyFlag>>;

    /// Raises or replaces each key's flag, in one transaction.
    async fn set_key_flags(&self, flags: &[KeyFlag]) -> Result<()>;

    /// Removes a key's flag; returns whether there was one.
    async fn clear_key_flag(&self, key_id: &KeyId) -> Result<bool>;
}

#[async_trait]
pub trait CatalogStore: Send + Sync {
    async fn custom_services(&self) -> Result<Vec<ServiceDefinition>>;
    /// `service_exists` if the id is taken.
    async fn insert_custom_service(
        &self,
        service: &ServiceDefinition,
        now: Timestamp,
    ) -> Result<()>;
    async fn base_url_overrides(&self) -> Result<Vec<BaseUrlOverride>>;
    /// Sets (or with `None`, removes) the base-URL override of a service.
    async fn set_base_url_override(
        &self,
        service_id: &str,
        base_url: Option<&str>,
        now: Timestamp,
    ) -> Result<()>;
    async fn environments(&self) -> Result<Vec<Environment>>;
    /// `environment_exists` if the id is taken.
    async fn insert_environment(&self, environment: &Environment, now: Timestamp) -> Result<()>;
    async fn categories(&self) -> Result<Vec<Category>>;
    /// `category_exists` if the id is taken.
    async fn insert_category(&self, category: &Category, now: Timestamp) -> Result<()>;
    /// Pools with a strategy other than the default.
    async fn pool_settings(&self) -> Result<Vec<PoolSetting>>;
    /// Sets a pool's strategy.
    async fn set_pool_strategy(&self, setting: &PoolSetting, now: Timestamp) -> Result<()>;
}

/// Metering: the proxy's usage records, their rollups (`crate::rollup`), and queries over
/// the rollups.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Stores a batch of records and adds their rollups to the stored ones, in one
    /// transaction.
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()>;
    /// Buckets of `query.granularity` in `[from, to)`, oldest first, empty buckets left out,
    /// from the rollups of that granularity.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>>;
    /// The same buckets per value of one dimension (`(value, bucket)`, ordered by value,
    /// then time; calls without that dimension left out): sparklines and "by key" tables in
    /// one query instead of one per key.
    async fn usage_grouped(
        &self,
        query: &UsageQuery,
        by: UsageGrouping,
    ) -> Result<Vec<(String, UsageBucket)>>;
    /// Like `usage_grouped`, but only the headline figures (`UsageHeadline`): for views
    /// that show no more than requests, failures and cost per group.
    async fn usage_headlines(
        &self,
        query: &UsageQuery,
        by: UsageGrouping,
    ) -> Result<Vec<(String, UsageHeadline)>>;
    /// Hourly consumption per key and per token since `since`: what quota and budget
    /// counters are restored from at start-up.
    async fn hourly_use_since(&self, since: Timestamp) -> Result<Vec<HourlyUse>>;
    /// Deletes records older than `records_before`, minute rollups older than
    /// `minutes_before`, and with `rollups_before` hour and day rollups older than it (week
    /// and month rollups stay); returns how many records and how many hour and day rollup
    /// rows went.
    async fn prune_usage(
        &self,
        records_before: Timestamp,
        minutes_before: Timestamp,
        rollups_before: Option<Timestamp>,
    ) -> Result<(u64, u64)>;
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn insert_token(&self, token: &ManagementToken) -> Result<()>;
    async fn token_by_public_id(&self, public_id: &str) -> Result<Option<ManagementToken>>;
    async fn touch_token(&self, id: &TokenId, at: Timestamp) -> Result<()>;
    /// Every token, newest first (revoked ones included).
    async fn tokens(&self) -> Result<Vec<ManagementToken>>;
    /// Revokes a live token; `false` if it was already revoked or does not exist.
    async fn revoke_token(&self, id: &TokenId, at: Timestamp) -> Result<bool>;
}

#[async_trait]
pub trait AppTokenStore: Send + Sync {
    /// `app_token_exists` if the id or public id is taken.
    async fn insert_app_token(&self, token: &AppToken) -> Result<()>;
    async fn app_token(&self, id: &AppTokenId) -> Result<Option<AppToken>>;
    async fn app_token_by_public_id(&self, public_id: &str) -> Result<Option<AppToken>>;
    /// Every app token, newest first (revoked ones included).
    async fn app_tokens(&self) -> Result<Vec<AppToken>>;
    /// Marks the token revoked unless it already is; returns whether it changed.
    async fn revoke_app_token(&self, id: &AppTokenId, at: Timestamp) -> Result<bool>;
    /// Moves each token's `last_used_at` forward (never back), in one transaction.
    async fn record_app_token_use(&self, uses: &[(AppTokenId, Timestamp)]) -> Result<()>;
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// `username_taken` if the name is in use.
    async fn insert_user(&self, user: &User) -> Result<()>;
    async fn user_by_username(&self, username: &str) -> Result<Option<User>>;
    async fn user(&self, id: &UserId) -> Result<Option<User>>;
    /// Every user, by username.
    async fn users(&self) -> Result<Vec<User>>;
    /// Sets `disabled`; returns whether the user exists.
    async fn set_user_disabled(&self, id: &UserId, disabled: bool) -> Result<bool>;
    async fn set_user_role(&self, id: &UserId, role: Role) -> Result<bool>;
    async fn set_user_networks(&self, id: &UserId, networks: &[ipnet::IpNet]) -> Result<bool>;
    async fn count_users(&self) -> Result<u64>;
}

/// Master-key bookkeeping and the rewrap that master-key rotation needs.
#[async_trait]
pub trait VaultStore: Send + Sync {
    async fn master_keys(&self) -> Result<Vec<MasterKeyRecord>>;
    /// Records a KEK; if `record.current`, every other KEK stops being current.
    async fn register_master_key(&self, record: &MasterKeyRecord) -> Result<()>;
    /// Makes a recorded KEK the current one.
    async fn make_master_key_current(&self, kek_id: &str) -> Result<()>;
    /// Key versions per KEK that wraps their data key.
    async fn kek_usage(&self) -> Result<Vec<KekUsage>>;
    /// Up to `limit` versions whose data key is wrapped by `kek_id`.
    async fn versions_wrapped_by(&self, kek_id: &str, limit: u32) -> Result<Vec<KeyVersion>>;
    /// Replaces a version's wrapped data key if it is still wrapped by `old_kek_id`
    /// (the ciphertext is untouched). Returns whether it changed.
    async fn rewrap_version(
        &self,
        key_id: &KeyId,
        version: u32,
        old_kek_id: &str,
        sealed: &SealedSecret,
    ) -> Result<bool>;
    /// Forgets a KEK; `kek_in_use` while any version still references it, `kek_current`
    /// for the current one.
    async fn remove_master_key(&self, kek_id: &str) -> Result<()>;
    /// Records (or refreshes) what a running instance holds.
    async fn report_instance(&self, report: &InstanceReport) -> Result<()>;
    /// Instances heard from at or after `since`, newest report first.
    async fn instances_seen_since(&self, since: Timestamp) -> Result<Vec<InstanceReport>>;
    /// Forgets an instance (it stopped cleanly); reports older than a day are forgotten too.
    async fn forget_instance(&self, id: &str, older_than: Timestamp) -> Result<()>;
    /// A vault-wide setting (e.g. the passphrase KDF salt).
    async fn setting(&self, name: &str) -> Result<Option<String>>;
    /// Stores `value` unless the setting exists; returns the stored value either way.
    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String>;
    /// Replaces a setting's value only if it is still `expected`; returns whether it did.
    async fn replace_setting(&self, name: &str, expected: &str, value: &str) -> Result<bool>;
}

/// Sign-in sessions.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_session(&self, session: &Session) -> Result<()>;
    async fn session(&self, public_id: &str) -> Result<Option<Session>>;
    /// Moves `last_seen_at` forward (never back).
    async fn touch_session(&self, public_id: &str, at: Timestamp) -> Result<()>;
    /// Swaps a session for a new one (new id and secrets) in one transaction — after an MFA
    /// check, so a cookie seen before it is worth nothing after. `false` if `old_public_id`
    /// was already gone (nothing is inserted then).
    async fn replace_session(&self, old_public_id: &str, new: &Session) -> Result<bool>;
    /// Returns whether it existed.
    async fn delete_session(&self, public_id: &str) -> Result<bool>;
    /// Ends every session of one user; returns how many.
    async fn delete_user_sessions(&self, user_id: &UserId) -> Result<u64>;
    /// Sessions not yet past their absolute end, newest first.
    async fn sessions(&self, now: Timestamp) -> Result<Vec<Session>>;
    /// Deletes sessions whose absolute end or idle limit has passed; returns how many.
    async fn prune_sessions(
        &self,
        expired_before: Timestamp,
        idle_before: Timestamp,
    ) -> Result<u64>;
}

/// The audit trail: append-only, hash-chained, with signed checkpoints.
/// Custom roles, scoped grants and per-role network allowlists.
#[async_trait]
pub trait AccessStore: Send + Sync {
    async fn custom_roles(&self) -> Result<Vec<CustomRole>>;
    /// Conflict `role_exists` for a taken id.
    async fn insert_custom_role(&self, role: &CustomRole) -> Result<()>;
    /// `false` if there is no such role.
    async fn update_custom_role(&self, role: &CustomRole) -> Result<bool>;
    /// Conflict `role_in_use` while a grant names it; `false` if there is no such role.
    async fn delete_custom_role(&self, id: &str) -> Result<bool>;
    async fn grants(&self, user_id: &UserId) -> Result<Vec<Grant>>;
    /// Invalid `unknown_role` if a custom role named by the grant does not exist.
    async fn insert_grant(&self, grant: &Grant) -> Result<()>;
    async fn delete_grant(&self, user_id: &UserId, grant_id: &GrantId) -> Result<bool>;
    /// Roles (built-in or custom, by name) with a network allowlist.
    async fn role_networks(&self) -> Result<Vec<(String, Vec<ipnet::IpNet>)>>;
    /// Sets (or with an empty list removes) a role's allowlist.
    async fn set_role_networks(&self, role: &str, networks: &[ipnet::IpNet]) -> Result<()>;
}

/// Approval requests; updates are compare-and-set on `revision`.
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    async fn insert_approval(&self, request: &ApprovalRequest) -> Result<()>;
    async fn approval(&self, id: &ApprovalId) -> Result<Option<ApprovalRequest>>;
    /// Newest first; `status` and `requested_by` (a user or token id) narrow the list.
    async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        requested_by: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApprovalRequest>>;
    /// Stores `request` if the stored one still has revision `expected`; `false` if someone
    /// else changed it first.
    async fn update_approval(&self, request: &ApprovalRequest, expected: u32) -> Result<bool>;
}

/// Guided rotations. Every step is a compare-and-set on `revision`, applied in one
/// transaction with the version states it moves, so a crash leaves a step done or not done.
#[async_trait]
pub trait RotationStore: Send + Sync {
    /// Stores a new rotation and, unless it is still creating its value, the pending
    /// version, in one transaction. Conflict `rotation_in_progress` if the key already has
    /// an active rotation (one per key, on any instance).
    async fn insert_rotation(
        &self,
        rotation: &Rotation,
        pending: Option<&KeyVersion>,
    ) -> Result<()>;
    async fn rotation(&self, id: &RotationId) -> Result<Option<Rotation>>;
    /// A key's rotations, newest first.
    async fn rotations_of_key(&self, key_id: &KeyId, limit: u32) -> Result<Vec<Rotation>>;
    /// Every rotation in an active step, across all keys.
    async fn active_rotations(&self) -> Result<Vec<Rotation>>;
    /// Stores `next` if the stored rotation still has revision `expected`, inserting
    /// `pending` (a managed rotation's created value) and applying `moves` in the same
    /// transaction; `false` (and nothing written) if someone else moved it first.
    /// `Promote` refuses a key that was deleted or revoked meanwhile (`key_not_found`).
    async fn advance_rotation(
        &self,
        next: &Rotation,
        expected: u64,
        pending: Option<&KeyVersion>,
        moves: Option<VersionMove>,
        now: Timestamp,
    ) -> Result<bool>;
    /// Adds what the proxy saw to each key's active rotation (a key without one is skipped).
    async fn add_rotation_traffic(&self, traffic: &[(KeyId, RotationTraffic)]) -> Result<()>;
}

/// Health probes: when each key was last probed, claimed by compare-and-set.
#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Takes the key's next probe if its last one was at or before `last_before` (or it
    /// never had one), recording `now` as its probe time; `false` if another instance (or
    /// an earlier run) probed it more recently.
    async fn claim_probe(
        &self,
        key_id: &KeyId,
        now: Timestamp,
        last_before: Timestamp,
    ) -> Result<bool>;
    /// Records what the key's last probe said.
    async fn set_probe_verdict(&self, key_id: &KeyId, verdict: &str) -> Result<()>;
    /// Every key's last probe: time and verdict.
    async fn probes(&self) -> Result<Vec<(KeyId, Timestamp, Option<String>)>>;
    /// Upstream calls per key since `since` from the usage records (every instance's):
    /// Keyward's own refusals and cache hits are not calls; failures are unreachable
    /// providers and 5xx answers.
    async fn recent_calls(&self, since: Timestamp) -> Result<Vec<KeyCalls>>;
    /// The last announced status of every subject.
    async fn health_states(&self) -> Result<Vec<HealthState>>;
    /// Records `next` if the subject's stored status is still `expected` (`None`: no row
    /// yet); `false` if another instance announced a change first.
    async fn set_health_state(
        &self,
        next: &HealthState,
        expected: Option<(HealthStatus, bool)>,
    ) -> Result<bool>;
}

/// Notification webhooks and their deliveries.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    async fn insert_webhook(&self, webhook: &Webhook) -> Result<()>;
    /// Stores a person's subscription (`owner` set), replacing the one they had.
    async fn put_subscription(&self, subscription: &Webhook) -> Result<()>;
    /// Every webhook, oldest first.
    async fn webhooks(&self) -> Result<Vec<Webhook>>;
    /// Removes a webhook and its deliveries; `false` if there was none.
    async fn delete_webhook(&self, id: &WebhookId) -> Result<bool>;
    /// Queues deliveries; one already queued for the same webhook and `dedupe` is kept
    /// and the new one dropped. Returns how many were queued.
    async fn enqueue_deliveries(&self, deliveries: &[Delivery]) -> Result<u64>;
    /// Pending deliveries due at `now` that no instance holds, each leased to the caller
    /// until `lease_until` (compare-and-set: two instances never get the same one).
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Delivery>>;
    /// Stores the outcome of an attempt and releases the lease.
    async fn save_delivery(&self, delivery: &Delivery) -> Result<()>;
    /// A webhook's deliveries, newest first.
    async fn deliveries(&self, webhook_id: &WebhookId, limit: u32) -> Result<Vec<Delivery>>;
    /// Deletes finished deliveries (delivered or failed) last touched before `before`;
    /// pending ones stay whatever their age. Returns how many went.
    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64>;
}

/// What storing a finding did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertWrite {
    /// A new alert.
    Opened,
    /// An unresolved alert about the same subject and signal exists: its `last_seen_at`
    /// moved, no new alert.
    Refreshed(crate::id::AlertId),
}

/// Anomaly alerts and mutes.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Stores `alert` unless an unresolved one about the same subject and signal exists
    /// (then that one is refreshed): at most one unresolved alert per subject and signal,
    /// also when several instances find the same anomaly at once.
    async fn insert_alert(&self, alert: &crate::alert::Alert) -> Result<AlertWrite>;
    async fn alert(&self, id: &crate::id::AlertId) -> Result<Option<crate::alert::Alert>>;
    /// Alerts matching `filter`, newest first, after the cursor `before` (an alert id).
    async fn alerts(
        &self,
        filter: &crate::alert::AlertFilter,
        before: Option<&crate::id::AlertId>,
        limit: u32,
    ) -> Result<Vec<crate::alert::Alert>>;
    /// Moves an alert from one of `from` to `alert.status`, storing its notes
    /// (compare-and-set); `false` if its status was not one of `from`.
    async fn update_alert_status(
        &self,
        alert: &crate::alert::Alert,
        from: &[crate::alert::AlertStatus],
    ) -> Result<bool>;
    async fn insert_mute(&self, mute: &crate::alert::AlertMute) -> Result<()>;
    /// Mutes still in force at `now`.
    async fn mutes(&self, now: Timestamp) -> Result<Vec<crate::alert::AlertMute>>;
    async fn delete_mute(&self, id: &crate::id::MuteId) -> Result<bool>;
    /// Moves an alert's response from `from` to `to` (compare-and-set, so of several
    /// instances escalating at once exactly one acts); `false` if it had moved already.
    async fn advance_alert_stage(
        &self,
        id: &crate::id::AlertId,
        from: crate::response::Stage,
        to: crate::response::Stage,
    ) -> Result<bool>;
    /// Puts a measure in force unless one of its kind already is on the subject (`false`
    /// then). Moves the change marker, so every instance's proxy picks it up.
    async fn contain(&self, containment: &crate::response::Containment) -> Result<bool>;
    async fn containments(&self) -> Result<Vec<crate::response::Containment>>;
    /// Lifts the subject's measure of this kind (`throttle` or `freeze`); `false` if none.
    async fn lift_containment(
        &self,
        subject: &crate::alert::AlertSubject,
        measure: &str,
    ) -> Result<bool>;
    /// Stores what tokens were seen doing; returns the sightings that were new (inserted
    /// here: of several instances seeing the same new thing, one gets it back).
    async fn record_sightings(
        &self,
        sightings: &[crate::sighting::Sighting],
    ) -> Result<Vec<crate::sighting::Sighting>>;
    /// Everything a token was seen doing of one kind, with when each was first seen.
    async fn token_sightings(
        &self,
        token: &crate::id::AppTokenId,
        kind: crate::sighting::SightingKind,
    ) -> Result<Vec<(String, Timestamp)>>;
}

/// Second factors. Every "use" method is a compare-and-set, so two instances (or two
/// racing requests) cannot both accept the same TOTP step or recovery code.
#[async_trait]
pub trait MfaStore: Send + Sync {
    async fn mfa_enrolment(&self, user_id: &UserId) -> Result<Option<MfaEnrolment>>;
    /// Stores a pending enrolment, replacing an earlier pending one. Conflict
    /// `mfa_already_enrolled` if the user has a confirmed one.
    async fn put_pending_mfa(&self, enrolment: &MfaEnrolment) -> Result<()>;
    /// Confirms the pending enrolment with its first accepted step and stores the recovery
    /// code hashes (replacing any). `false` if there was no pending enrolment.
    async fn confirm_mfa(
        &self,
        user_id: &UserId,
        step: u64,
        at: Timestamp,
        recovery_hashes: &[Vec<u8>],
    ) -> Result<bool>;
    /// Accepts `step` for a confirmed enrolment only if it is later than the last accepted
    /// one (and records it); `false` is a replay.
    async fn use_totp_step(&self, user_id: &UserId, step: u64) -> Result<bool>;
    /// Marks an unused recovery code used; `false` if it is unknown or already used.
    async fn use_recovery_code(&self, user_id: &UserId, hash: &[u8], at: Timestamp)
    -> Result<bool>;
    /// Replaces all of a user's recovery codes.
    async fn replace_recovery_codes(&self, user_id: &UserId, hashes: &[Vec<u8>]) -> Result<()>;
    async fn unused_recovery_codes(&self, user_id: &UserId) -> Result<u32>;
    /// Removes the enrolment and recovery codes; `false` if there was none.
    async fn delete_mfa(&self, user_id: &UserId) -> Result<bool>;
    /// Enrolments whose secret is wrapped by `kek_id` (master-key rotation).
    async fn mfa_wrapped_by(&self, kek_id: &str) -> Result<Vec<MfaEnrolment>>;
    /// Stores a rewrapped secret if the row still holds `old_sealed`.
    async fn rewrap_mfa(
        &self,
        user_id: &UserId,
        old_sealed: &str,
        new_sealed: &str,
        new_kek_id: &str,
    ) -> Result<bool>;
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Numbers the entry one after the last, chains it to the last entry's hash
    /// ([`crate::audit::chain_hash`]) and stores it; appends are serialized across instances.
    async fn append_audit(&self, entry: &AuditDraft) -> Result<AuditEvent>;
    /// Entries matching `filter`, in sequence order.
    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>>;
    /// The last entry's sequence number and hash (`None` for an empty trail).
    async fn audit_head(&self) -> Result<Option<(u64, String)>>;
    async fn insert_audit_checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<()>;
    /// All checkpoints, oldest first.
    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>>;
    /// For one action, per target: how many successful entries, and the latest one's time
    /// (e.g. how often each key was revealed, and when last).
    async fn audit_action_counts(&self, action: &str) -> Result<Vec<(String, u64, Timestamp)>>;
    /// Removes entries up to and including `through`, and the checkpoints before it (the one
    /// at `through` stays: the kept trail is verified from it); returns the entries removed.
    async fn prune_audit_through(&self, through: u64) -> Result<u64>;
}

/// Everything a Keyward server needs from its database.
#[async_trait]
pub trait Store:
    KeyStore
    + CatalogStore
    + TokenStore
    + AppTokenStore
    + UserStore
    + VaultStore
    + UsageStore
    + AuditStore
    + SessionStore
    + MfaStore
    + AccessStore
    + ApprovalStore
    + RotationStore
    + NotificationStore
    + HealthStore
    + AlertStore
    + std::fmt::Debug
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Whether the schema exists (read-only; used before deciding to migrate).
    async fn initialized(&self) -> Result<bool>;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<()>;
    /// Applies pending migrations up to and including `newest` (a restore brings the schema
    /// to the backup's version, loads it, then migrates the rest).
    async fn migrate_up_to(&self, newest: i64) -> Result<()>;
    /// The change number: moved by every committed transaction that changes what the proxy
    /// snapshot is built from (keys, versions, app tokens, custom services, base-URL
    /// overrides, flags, pool strategies, rotations, throttles and freezes) — never by a
    /// last-use stamp. It only grows, in commit order, so a snapshot built after reading `n`
    /// holds every change numbered up to `n`. One row: cheap to read every second.
    async fn change_number(&self) -> Result<i64>;
    /// A listener told at once when the change number moves (PostgreSQL `LISTEN`), or
    /// `None` where the backend has none (SQLite: poll [`Store::change_number`]).
    async fn change_listener(&self) -> Result<Option<Box<dyn ChangeListener>>>;
    /// Refreshes the query planner's statistics (`ANALYZE`; SQLite `PRAGMA optimize`) so
    /// filtered listings stay index-driven after bulk imports. Run after imports and hourly.
    async fn maintain(&self) -> Result<()>;
    /// Every table a backup holds, read in one consistent snapshot (a read transaction) and
    /// handed to `sink` a chunk at a time. Sessions, instance reports and the change number
    /// are left out (they describe running processes, not the vault); raw usage records only
    /// with `raw_usage`. Returns the newest applied migration.
    async fn export_tables(
        &self,
        raw_usage: bool,
        sink: &mut dyn crate::backup::ChunkSink,
    ) -> Result<i64>;
    /// Whether the store holds a vault (master keys, users, keys or audit entries): a
    /// restore into it needs `--force`.
    async fn holds_a_vault(&self) -> Result<bool>;
    /// Replaces everything with the chunks `source` yields, in one transaction: every table
    /// a backup holds is emptied, sessions and instance reports too, then the rows are
    /// inserted. Nothing is kept if any chunk fails. Returns the rows inserted.
    async fn import_tables(&self, source: &mut dyn crate::backup::ChunkSource) -> Result<u64>;
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<()>;
    /// Closes connections (SQLite checkpoints its WAL).
    async fn close(&self);
}

/// What a [`ChangeListener`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSignal {
    /// The change number moved (read it: notifications carry nothing).
    Changed,
    /// The connection was lost and is being made again: notifications sent meanwhile are
    /// gone, so the listener's owner must resync in full.
    Lost,
}

/// Notifications of committed changes, from one connection kept for them.
#[async_trait]
pub trait ChangeListener: Send + std::fmt::Debug {
    /// Waits for the next notification. Cancel-safe: dropping the future (a timeout) loses
    /// nothing. An error means the connection could not be made again; calling again
    /// retries.
    async fn next(&mut self) -> Result<ChangeSignal>;
}
