//! Guided rotations (`impl App`): the use cases behind `/api/v1/keys/{id}/rotations` and
//! `/api/v1/rotations/{id}/…`, the proxy's view of a rotation (canary and fallback values),
//! and the background step that retires old values when their window ends.
//!
//! The state machine itself is `keyward_core::guided_rotation`; this file does the IO
//! around each step — validation and revocation probes, the provider's key-management API
//! — and applies the step through the store's compare-and-set, audited. Every step can be
//! asked for again: a rotation already past it answers unchanged, so a client that timed
//! out, or a server that crashed, simply asks again.

use std::collections::HashMap;

use jiff::SignedDuration;
use keyward_core::access::Permission;
use keyward_core::approval::ApprovalAction;
use keyward_core::guided_rotation::{
    Advance, Managed, Probe, ProbeRecord, Rotation, RotationStep, WINDOW_DEFAULT,
};
use keyward_core::id::{KeyId, RotationId};
use keyward_core::key::{Key, KeyVersion, VersionState};
use keyward_core::service::ServiceDefinition;
use keyward_core::{Error, ErrorKind, secret};
use keyward_proxy::{Alternate, Verdict};
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Admitted, Change};

/// How a rotation gets its new value.
#[derive(Debug)]
pub enum NewValue {
    /// Someone created the key at the provider and gives its value.
    Given { value: SecretString, force: bool },
    /// Keyward asks the provider's key-management API, with the stored admin key
    /// `admin_key`, for a key in `project`.
    Managed { admin_key: KeyId, project: String },
}

/// The name a managed rotation gives the provider's key: findable again after a crash.
fn provider_key_name(rotation: &RotationId) -> String {
    format!("keyward-{rotation}")
}

fn probe_of(verdict: Verdict) -> Probe {
    match verdict {
        Verdict::Valid => Probe::Accepted,
        Verdict::Rejected => Probe::Rejected,
        Verdict::Throttled | Verdict::Inconclusive | Verdict::Unreachable => Probe::Inconclusive,
    }
}

impl App {
    /// Starts a rotation of key `id`: the new value is stored as a pending version (for a
    /// managed rotation, after Keyward has asked the provider for it). Gated like any
    /// rotation (the approval is bound to the new value's fingerprint, or to the admin key
    /// for a managed one); one active rotation per key (`rotation_in_progress`, with the
    /// active one's id as `reference`).
    pub async fn start_rotation(
        &self,
        actor: &Actor,
        id: &KeyId,
        value: NewValue,
        window: Option<SignedDuration>,
    ) -> Result<Rotation, Error> {
        let key = self.key_for(actor, Permission::KeysRotate, id).await?;
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        if let Some(active) = self.active_rotation(id).await? {
            return Err(in_progress(&active));
        }
        let catalog = self.catalog().await?;
        let service = catalog.require(&key.service_id)?;
        let number = self.next_version_number(id).await?;
        let now = self.now();
        let rotation_id = RotationId::generate(now, &*self.random);
        let window = window.unwrap_or(WINDOW_DEFAULT);
        match value {
            NewValue::Given { value, force } => {
                let value = secret::normalize(&value)?;
                secret::check_format(service, &value, force)?;
                let fingerprint = self.audit.fingerprint(&value);
                let change = Change::new(
                    "key.rotation.start",
                    self.subject_of(&key).await?,
                    Permission::KeysRotate,
                    json!({"fingerprint": fingerprint}),
                )
                .approval(
                    ApprovalAction::Rotate,
                    json!({"fingerprint": fingerprint, "state": "pending"}),
                );
                let admitted = self.admit(actor, change).await?;
                let rotation =
                    Rotation::start(rotation_id, &key, number, None, window, &actor.name, now)?;
                let version = self.seal_version(
                    service,
                    id,
                    number,
                    VersionState::Pending,
                    &value,
                    actor,
                    now,
                )?;
                drop(value);
                self.insert_rotation(actor, admitted, &rotation, Some(&version))
                    .await?;
                Ok(rotation)
            }
            NewValue::Managed { admin_key, project } => {
                let project = Managed::project_id(&project)?.to_owned();
                if service.key_management.is_none() {
                    return Err(Error::invalid(
                        "no_key_management",
                        format!(
                            "{} has no key-management API Keyward can use; give the new value instead",
                            service.name
                        ),
                    ));
                }
                let admin = self
                    .key_for(actor, Permission::KeysRotate, &admin_key)
                    .await?;
                admin.ensure_not_deleted()?;
                admin.ensure_not_revoked()?;
                if admin.service_id != key.service_id || admin.id == key.id {
                    return Err(Error::invalid(
                        "invalid_admin_key",
                        format!("the admin key must be another stored {} key", service.name),
                    ));
                }
                let change = Change::new(
                    "key.rotation.start",
                    self.subject_of(&key).await?,
                    Permission::KeysRotate,
                    json!({"managed": true, "admin_key": admin_key.as_str(), "project": project}),
                )
                .approval(
                    ApprovalAction::Rotate,
                    json!({"managed": true, "admin_key": admin_key.as_str(), "project": project}),
                );
                let admitted = self.admit(actor, change).await?;
                let managed = Managed {
                    admin_key,
                    project,
                    created: None,
                };
                let rotation = Rotation::start(
                    rotation_id,
                    &key,
                    number,
                    Some(managed.clone()),
                    window,
                    &actor.name,
                    now,
                )?;
                self.insert_rotation(actor, admitted, &rotation, None)
                    .await?;
                self.create_managed_value(actor, rotation).await
            }
        }
    }

    async fn insert_rotation(
        &self,
        actor: &Actor,
        admitted: Admitted,
        rotation: &Rotation,
        pending: Option<&KeyVersion>,
    ) -> Result<(), Error> {
        let admitted = admitted
            .detail("rotation", rotation.id.as_str())
            .detail("version", rotation.new_version)
            .detail("window_seconds", rotation.window.as_secs())
            .refreshes_proxy();
        let inserted = self
            .commit(
                actor,
                admitted,
                self.store.insert_rotation(rotation, pending),
            )
            .await;
        if let Err(e) = inserted {
            // Lost a race with a rotation started elsewhere: name it.
            if e.code == "rotation_in_progress"
                && let Some(active) = self.active_rotation(&rotation.key_id).await?
            {
                return Err(in_progress(&active));
            }
            return Err(e);
        }
        tracing::info!(key = %rotation.key_id, rotation = %rotation.id, actor = %actor.name, "rotation started");
        Ok(())
    }

    async fn active_rotation(&self, key: &KeyId) -> Result<Option<Rotation>, Error> {
        Ok(self
            .store
            .rotations_of_key(key, 5)
            .await?
            .into_iter()
            .find(|r| r.step.is_active()))
    }

    /// A managed rotation that is `creating`: removes whatever a crashed attempt may have
    /// created under the rotation's name, asks the provider for a new key and stores it as
    /// the pending version.
    async fn create_managed_value(
        &self,
        actor: &Actor,
        rotation: Rotation,
    ) -> Result<Rotation, Error> {
        if rotation.step != RotationStep::Creating {
            return Ok(rotation);
        }
        let managed = rotation
            .managed
            .clone()
            .ok_or_else(|| Error::internal("a creating rotation without management"))?;
        let (key, service) = self.rotation_key(&rotation).await?;
        let admin = self.admin_value(&managed.admin_key).await?;
        let name = provider_key_name(&rotation.id);
        let leftovers = self
            .proxy
            .remove_provider_keys_named(&service, &admin, &managed.project, &name)
            .await?;
        if leftovers > 0 {
            tracing::warn!(rotation = %rotation.id, leftovers, "removed keys an interrupted attempt had created");
        }
        let created = self
            .proxy
            .create_provider_key(&service, &admin, &managed.project, &name)
            .await?;
        let stored = async {
            let value = secret::normalize(&created.value)?;
            secret::check_format(&service, &value, true)?;
            let now = self.now();
            let version = self.seal_version(
                &service,
                &key.id,
                rotation.new_version,
                VersionState::Pending,
                &value,
                actor,
                now,
            )?;
            let advance = rotation.created(created.provider_id.clone(), now)?;
            let fingerprint = self.audit.fingerprint(&value);
            self.apply_step(
                actor,
                "key.rotation.create",
                &rotation,
                advance,
                Some(version),
                json!({"provider_key": created.provider_id, "fingerprint": fingerprint}),
            )
            .await
        }
        .await;
        if stored.is_err() {
            // Not stored: the provider's new key must not stay alive unknown to anyone.
            if let Err(e) = self
                .proxy
                .revoke_provider_key(&service, &admin, &managed.project, &created.provider_id)
                .await
            {
                tracing::error!(rotation = %rotation.id, error = %e, "could not revoke a created key that was not stored");
            }
        }
        stored
    }

    /// The current value of an admin key (for the provider's key-management API).
    async fn admin_value(&self, admin_key: &KeyId) -> Result<SecretString, Error> {
        let admin = self
            .store
            .key(admin_key)
            .await?
            .filter(|k| k.deleted_at.is_none() && k.revoked.is_none())
            .ok_or_else(|| {
                Error::conflict(
                    "admin_key_unavailable",
                    format!("the admin key {admin_key} was deleted or revoked"),
                )
            })?;
        self.version_value(&admin.id, admin.current_version).await
    }

    /// The key a rotation replaces a value of, and its service.
    async fn rotation_key(&self, rotation: &Rotation) -> Result<(Key, ServiceDefinition), Error> {
        let key = self
            .store
            .key(&rotation.key_id)
            .await?
            .ok_or_else(|| Error::not_found("key_not_found", "the rotation's key is gone"))?;
        let service = self.catalog().await?.require(&key.service_id)?.clone();
        Ok((key, service))
    }

    /// A rotation, if `actor` holds `permission` on its key (invisible keys' rotations do
    /// not exist for them).
    async fn rotation_for(
        &self,
        actor: &Actor,
        permission: Permission,
        id: &RotationId,
    ) -> Result<(Rotation, Key), Error> {
        let missing =
            || Error::not_found("rotation_not_found", format!("there is no rotation {id}"));
        let rotation = self.store.rotation(id).await?.ok_or_else(missing)?;
        let key = match self.key_for(actor, permission, &rotation.key_id).await {
            Err(e) if e.code == "key_not_found" => return Err(missing()),
            other => other?,
        };
        Ok((rotation, key))
    }

    /// Applies a step: the audit entry, then the compare-and-set with its version moves;
    /// the proxy is refreshed before answering, so the step is in force when this returns.
    async fn apply_step(
        &self,
        actor: &Actor,
        action: &'static str,
        rotation: &Rotation,
        advance: Advance,
        pending: Option<KeyVersion>,
        details: serde_json::Value,
    ) -> Result<Rotation, Error> {
        let Advance::Changed(next, moves) = advance else {
            return Ok(rotation.clone());
        };
        let mut details = details;
        if let Some(map) = details.as_object_mut() {
            map.insert("rotation".into(), rotation.id.as_str().into());
            map.insert("step".into(), next.step.as_str().into());
        }
        let now = self.now();
        let (key, _) = self.rotation_key(rotation).await?;
        let change = Change::new(
            action,
            self.subject_of(&key).await?,
            Permission::KeysRotate,
            details,
        )
        .refreshes_proxy();
        self.apply(actor, change, async {
            if self
                .store
                .advance_rotation(&next, rotation.revision, pending.as_ref(), moves, now)
                .await?
            {
                Ok(())
            } else {
                Err(Error::conflict(
                    "concurrent_update",
                    format!(
                        "rotation {} moved on meanwhile; read it again and retry",
                        rotation.id
                    ),
                ))
            }
        })
        .await?;
        tracing::info!(key = %rotation.key_id, rotation = %rotation.id, step = %next.step, actor = %actor.name, "rotation step");
        if matches!(
            next.step,
            RotationStep::Promoted
                | RotationStep::Retired
                | RotationStep::RevokedVerified
                | RotationStep::OldKeyLive
        ) && next.step != rotation.step
            && let Ok((key, _)) = self.rotation_key(rotation).await
        {
            self.notify(
                keyward_core::notification::NotificationKind::RotationStep,
                crate::notifications::about::About::key(
                    self.category_of(&key).await.as_deref(),
                    &key.environment,
                ),
                format!("rotation_step:{}:{}", rotation.id, next.step),
                json!({"rotation": rotation.id.as_str(), "key": key.id.as_str(), "alias": key.alias,
                       "service": key.service_id, "environment": key.environment,
                       "step": next.step.as_str(), "summary": next.step.summary()}),
            )
            .await;
        }
        Ok(*next)
    }

    pub async fn rotation(&self, actor: &Actor, id: &RotationId) -> Result<Rotation, Error> {
        Ok(self.rotation_for(actor, Permission::KeysRead, id).await?.0)
    }

    /// A key's rotations, newest first.
    pub async fn rotations(&self, actor: &Actor, key: &KeyId) -> Result<Vec<Rotation>, Error> {
        self.key(actor, key).await?;
        self.store.rotations_of_key(key, 50).await
    }

    /// Sends the service's validation request with the pending value.
    pub async fn validate_rotation(
        &self,
        actor: &Actor,
        id: &RotationId,
    ) -> Result<Rotation, Error> {
        let (rotation, key) = self.rotation_for(actor, Permission::KeysRotate, id).await?;
        if !rotation.awaits_validation()? {
            return Ok(rotation);
        }
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        let (_, service) = self.rotation_key(&rotation).await?;
        let value = self
            .version_value(&rotation.key_id, rotation.new_version)
            .await?;
        let record = self.probe(&service, &value).await?;
        drop(value);
        let details = json!({"verdict": record.verdict, "status": record.status});
        let advance = rotation.validated(record)?;
        self.apply_step(
            actor,
            "key.rotation.validate",
            &rotation,
            advance,
            None,
            details,
        )
        .await
    }

    /// Sends `percent`% of the key's requests to the pending value first.
    pub async fn canary_rotation(
        &self,
        actor: &Actor,
        id: &RotationId,
        percent: u8,
    ) -> Result<Rotation, Error> {
        let (rotation, key) = self.rotation_for(actor, Permission::KeysRotate, id).await?;
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        let advance = rotation.canary(percent, self.now())?;
        self.apply_step(
            actor,
            "key.rotation.canary",
            &rotation,
            advance,
            None,
            json!({"percent": percent}),
        )
        .await
    }

    /// Makes the new value current; the old one stays as the fallback for the window.
    pub async fn promote_rotation(
        &self,
        actor: &Actor,
        id: &RotationId,
    ) -> Result<Rotation, Error> {
        let (rotation, key) = self.rotation_for(actor, Permission::KeysRotate, id).await?;
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        let advance = rotation.promote(self.now())?;
        self.apply_step(
            actor,
            "key.rotation.promote",
            &rotation,
            advance,
            None,
            json!({"version": rotation.new_version, "previous": rotation.old_version}),
        )
        .await
    }

    /// Stops injecting the old value (inside the window only with `confirm`), revokes it at
    /// the provider for a managed rotation, and probes it.
    pub async fn retire_rotation(
        &self,
        actor: &Actor,
        id: &RotationId,
        confirm: bool,
    ) -> Result<Rotation, Error> {
        let (rotation, _) = self.rotation_for(actor, Permission::KeysRotate, id).await?;
        self.retire(actor, rotation, confirm).await
    }

    async fn retire(
        &self,
        actor: &Actor,
        rotation: Rotation,
        confirm: bool,
    ) -> Result<Rotation, Error> {
        let advance = rotation.retire(confirm, self.now())?;
        if advance == Advance::Unchanged {
            // Asked again after a crash between retiring and probing: probe now.
            return if rotation.step == RotationStep::Retired {
                self.verify(actor, rotation).await
            } else {
                Ok(rotation)
            };
        }
        let rotation = self
            .apply_step(
                actor,
                "key.rotation.retire",
                &rotation,
                advance,
                None,
                json!({"version": rotation.old_version, "confirmed": confirm}),
            )
            .await?;
        if let Err(e) = self.revoke_old_at_provider(actor, &rotation).await {
            tracing::warn!(rotation = %rotation.id, error = %e, "could not revoke the old key at the provider");
        }
        self.verify(actor, rotation).await
    }

    /// Managed rotations: deletes the old value at the provider, if Keyward created it (an
    /// earlier managed rotation recorded its provider id).
    async fn revoke_old_at_provider(
        &self,
        actor: &Actor,
        rotation: &Rotation,
    ) -> Result<(), Error> {
        let Some(managed) = &rotation.managed else {
            return Ok(());
        };
        let earlier = self
            .store
            .rotations_of_key(&rotation.key_id, 50)
            .await?
            .into_iter()
            .find(|r| r.new_version == rotation.old_version && r.id != rotation.id)
            .and_then(|r| r.managed)
            .and_then(|m| m.created);
        let Some(provider_id) = earlier else {
            return Ok(());
        };
        let admin = self.admin_value(&managed.admin_key).await?;
        let (key, service) = self.rotation_key(rotation).await?;
        let change = Change::new(
            "key.rotation.revoke_at_provider",
            self.subject_of(&key).await?,
            Permission::KeysRotate,
            json!({"rotation": rotation.id.as_str(), "provider_key": provider_id}),
        );
        self.apply(
            actor,
            change,
            self.proxy
                .revoke_provider_key(&service, &admin, &managed.project, &provider_id),
        )
        .await
    }

    /// Probes the retired value: the provider must reject it before the rotation shows
    /// `revoked_verified`.
    pub async fn verify_rotation(&self, actor: &Actor, id: &RotationId) -> Result<Rotation, Error> {
        let (rotation, _) = self.rotation_for(actor, Permission::KeysRotate, id).await?;
        self.verify(actor, rotation).await
    }

    async fn verify(&self, actor: &Actor, rotation: Rotation) -> Result<Rotation, Error> {
        if !rotation.awaits_verification()? {
            return Ok(rotation);
        }
        let (_, service) = self.rotation_key(&rotation).await?;
        let value = self
            .version_value(&rotation.key_id, rotation.old_version)
            .await?;
        let record = self.probe(&service, &value).await?;
        drop(value);
        let details = json!({"verdict": record.verdict, "status": record.status});
        let advance = rotation.verified(record)?;
        self.apply_step(
            actor,
            "key.rotation.verify",
            &rotation,
            advance,
            None,
            details,
        )
        .await
    }

    /// Gives up before promotion: the pending value is retired unused (and, for a managed
    /// rotation, deleted at the provider).
    pub async fn cancel_rotation(&self, actor: &Actor, id: &RotationId) -> Result<Rotation, Error> {
        let (rotation, _) = self.rotation_for(actor, Permission::KeysRotate, id).await?;
        let advance = rotation.cancel(self.now())?;
        let cancelled = self
            .apply_step(
                actor,
                "key.rotation.cancel",
                &rotation,
                advance,
                None,
                json!({}),
            )
            .await?;
        if let Some(Managed {
            admin_key,
            project,
            created: Some(provider_id),
        }) = &rotation.managed
        {
            let (_, service) = self.rotation_key(&rotation).await?;
            let admin = self.admin_value(admin_key).await?;
            self.proxy
                .revoke_provider_key(&service, &admin, project, provider_id)
                .await?;
        }
        Ok(cancelled)
    }

    /// One validation request with `value`, as a record for the rotation.
    async fn probe(
        &self,
        service: &ServiceDefinition,
        value: &SecretString,
    ) -> Result<ProbeRecord, Error> {
        let validation = self.proxy.validate(service, value).await?;
        Ok(ProbeRecord {
            probe: probe_of(validation.verdict),
            verdict: validation.verdict.as_str().to_owned(),
            status: validation.status,
            at: self.now(),
        })
    }

    /// The second value each rotating key has in the proxy: the pending one as a canary,
    /// or the previous one during the dual-key window.
    pub(crate) async fn rotation_alternates(&self) -> Result<HashMap<KeyId, Alternate>, Error> {
        let mut alternates = HashMap::new();
        for rotation in self.store.active_rotations().await? {
            let (number, state) = match rotation.step {
                RotationStep::Canary => (rotation.new_version, VersionState::Pending),
                RotationStep::Promoted => (rotation.old_version, VersionState::Previous),
                _ => continue,
            };
            let version = self
                .store
                .versions(&rotation.key_id)
                .await?
                .into_iter()
                .find(|v| v.version == number && v.state == state);
            if let Some(version) = version {
                let alternate = if state == VersionState::Pending {
                    Alternate::Canary {
                        version,
                        percent: rotation.canary_percent,
                    }
                } else {
                    Alternate::Fallback(version)
                };
                alternates.insert(rotation.key_id, alternate);
            }
        }
        Ok(alternates)
    }

    /// The background step (every instance, every few seconds): finishes what a crash
    /// interrupted (a managed rotation still creating its value) and retires old values
    /// whose window has ended and that the new value no longer needs. Returns how many
    /// rotations it moved.
    pub async fn run_rotations(&self) -> Result<usize, Error> {
        let actor = Actor::system("rotation");
        let now = self.now();
        let mut moved = 0;
        for rotation in self.store.active_rotations().await? {
            let id = rotation.id.clone();
            let result = match rotation.step {
                RotationStep::Creating
                    if now.duration_since(rotation.updated_at) >= SignedDuration::from_secs(30) =>
                {
                    self.create_managed_value(&actor, rotation).await
                }
                RotationStep::Promoted if rotation.due_for_retirement(now) => {
                    self.retire(&actor, rotation, false).await
                }
                _ => continue,
            };
            match result {
                Ok(_) => moved += 1,
                Err(e) => {
                    tracing::warn!(rotation = %id, error = %e, "a rotation step in the background failed; will try again")
                }
            }
        }
        Ok(moved)
    }
}

fn in_progress(active: &Rotation) -> Error {
    Error {
        reference: Some(active.id.as_str().to_owned()),
        ..Error::new(
            ErrorKind::Conflict,
            "rotation_in_progress",
            format!(
                "rotation {} of this key is {}; finish or cancel it first",
                active.id, active.step
            ),
        )
    }
}

impl App {
    /// While a rotation's old value is still live: the provider's page to revoke it on.
    pub async fn revoke_link(&self, rotation: &Rotation) -> Result<Option<String>, Error> {
        if rotation.step != RotationStep::OldKeyLive {
            return Ok(None);
        }
        let (_, service) = self.rotation_key(rotation).await?;
        Ok(service.key_url.or(service.docs_url))
    }
}
