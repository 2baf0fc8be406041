//! Keys: create, read, list, edit, enable/disable, delete/restore/purge, and the one place a
//! caller's reach over a key is checked (`key_for`, `ensure_reach`).

pub mod impact;
pub mod pools;
pub mod reveal;
pub mod revoke;
pub mod validate;
pub mod versions;

use jiff::Timestamp;
use keyward_core::access::{Permission, Reach};
use keyward_core::approval::ApprovalAction;
use keyward_core::id::KeyId;
use keyward_core::key::{
    Key, KeyArea, KeyChanges, KeyDraft, KeyDraftInput, KeyFilter, KeyStatus, KeyVersion, Page,
    PageRequest, SealContext, VersionState,
};
use keyward_core::{Error, ErrorKind, label, secret};
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Admitted, Change, Subject};

/// Input for a new key: metadata plus the secret and whether to skip the format check.
#[derive(Debug)]
pub struct NewKey {
    pub draft: KeyDraftInput,
    pub secret: SecretString,
    pub force: bool,
}

/// Why someone wants to see a value: 4–500 characters, kept in the trail.
pub(crate) fn reveal_reason(reason: &str) -> Result<String, Error> {
    match label::text("reason", Some(reason), 500)? {
        Some(reason) if reason.chars().count() >= 4 => Ok(reason),
        _ => Err(Error::invalid(
            "reason_required",
            "say why the value is needed (at least 4 characters)",
        )),
    }
}

pub(crate) fn key_not_found(id: &KeyId) -> Error {
    Error::not_found("key_not_found", format!("there is no key {id}"))
}

impl App {
    pub async fn create_key(&self, actor: &Actor, new: NewKey) -> Result<Key, Error> {
        let now = self.now();
        let draft = KeyDraft::validate(new.draft, now)?;
        let catalog = self.catalog().await?;
        let service = catalog.get(&draft.service_id).ok_or_else(|| {
            Error::invalid(
                "unknown_service",
                format!("there is no service `{}`", draft.service_id),
            )
        })?;
        self.require_environment(&draft.environment).await?;
        let id = KeyId::generate(now, &*self.random);
        let change = Change::new(
            "key.create",
            Subject::area(
                format!("key:{id}"),
                &draft.service_id,
                Some(service.category.clone()),
                &draft.environment,
            ),
            Permission::KeysWrite,
            json!({
                "service": draft.service_id,
                "environment": draft.environment,
                "alias": draft.alias,
                "version": 1,
            }),
        )
        .refreshes_proxy();
        // Admitted before the value is looked at: a refused caller's value is never sealed.
        let admitted = self.admit(actor, change).await?;
        let value = secret::normalize(&new.secret)?;
        secret::check_format(service, &value, new.force)?;
        let hint = secret::hint(service, &value)?;
        let fingerprint = self.audit.fingerprint(&value);
        let sealed =
            self.keyring
                .get()
                .seal(&*self.random, &value, &SealContext::key_secret(&id, 1))?;
        drop(value);
        let key = Key {
            id: id.clone(),
            service_id: draft.service_id,
            environment: draft.environment,
            alias: draft.alias,
            description: draft.description,
            owner: draft.owner,
            tags: draft.tags,
            criticality: draft.criticality,
            enabled: draft.enabled,
            expires_at: draft.expires_at,
            current_version: 1,
            current_hint: hint.clone(),
            created_by: actor.name.clone(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            deleted_at: None,
            deleted_by: None,
            revoked: None,
            rotated_at: now,
            rotation_rule: None,
            limits: draft.limits,
            budget: draft.budget,
        };
        let version = KeyVersion {
            key_id: id,
            version: 1,
            state: VersionState::Current,
            hint,
            sealed,
            created_by: actor.name.clone(),
            created_at: now,
        };
        self.commit(
            actor,
            admitted.detail("fingerprint", fingerprint),
            self.store.insert_key(&key, &version),
        )
        .await?;
        tracing::info!(key = %key.id, service = %key.service_id, environment = %key.environment, actor = %actor.name, "key created");
        Ok(key)
    }

    /// The key, if `actor` may see it (a key outside every scope they can read is
    /// `key_not_found`, as if it did not exist).
    pub async fn key(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        self.key_for(actor, Permission::KeysRead, id).await
    }

    /// The key, if `actor` holds `permission` where it lives: not visible at all is
    /// `key_not_found`; visible but outside the permission's scope is `out_of_scope`.
    /// Every key use case starts here — the one place grants' scopes are applied.
    pub async fn key_for(
        &self,
        actor: &Actor,
        permission: Permission,
        id: &KeyId,
    ) -> Result<Key, Error> {
        let key = self.store.key(id).await?.ok_or_else(|| key_not_found(id))?;
        self.ensure_reach(actor, permission, &key.service_id, &key.environment, || {
            key_not_found(id)
        })
        .await?;
        Ok(key)
    }

    /// Whether `actor`'s `permission` covers keys of `service_id` in `environment`; if not,
    /// `hidden()` when they cannot even read there, else `out_of_scope`.
    pub(crate) async fn ensure_reach(
        &self,
        actor: &Actor,
        permission: Permission,
        service_id: &str,
        environment: &str,
        hidden: impl FnOnce() -> Error,
    ) -> Result<(), Error> {
        let reach = actor.access.reach(permission);
        if reach.is_everywhere() {
            return Ok(());
        }
        let category = self
            .catalog()
            .await?
            .get(service_id)
            .map(|s| s.category.clone())
            .unwrap_or_default();
        if reach.covers(&category, environment) {
            return Ok(());
        }
        if actor
            .access
            .reach(Permission::KeysRead)
            .covers(&category, environment)
        {
            Err(Error::new(
                ErrorKind::Forbidden,
                "out_of_scope",
                format!("your grants do not allow this for {service_id} keys in {environment}"),
            ))
        } else {
            Err(hidden())
        }
    }

    /// The key areas (services × environments) `reach` covers, for listing in SQL; `None`
    /// for everywhere.
    pub(crate) async fn areas(&self, reach: &Reach) -> Result<Option<Vec<KeyArea>>, Error> {
        let scopes = match reach {
            Reach::Everywhere => return Ok(None),
            Reach::Nowhere => return Ok(Some(Vec::new())),
            Reach::Within(scopes) => scopes,
        };
        let catalog = self.catalog().await?;
        Ok(Some(
            scopes
                .iter()
                .map(|scope| KeyArea {
                    service_ids: scope.categories.as_ref().map(|categories| {
                        categories
                            .iter()
                            .flat_map(|c| catalog.ids_in_category(c))
                            .collect()
                    }),
                    environments: scope
                        .environments
                        .as_ref()
                        .map(|e| e.iter().cloned().collect()),
                })
                .collect(),
        ))
    }

    /// Every key the actor may read (the listing's filter defaults), page after page:
    /// for views that judge the whole vault (forecasts, recommendations).
    pub async fn all_keys(&self, actor: &Actor) -> Result<Vec<Key>, Error> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .list_keys(
                    actor,
                    KeyFilter::default(),
                    None,
                    PageRequest::new(cursor, Some(PageRequest::MAX_LIMIT))?,
                )
                .await?;
            keys.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Filters by category become the category's list of services; only keys `actor` may
    /// read are listed.
    pub async fn list_keys(
        &self,
        actor: &Actor,
        mut filter: KeyFilter,
        category: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Key>, Error> {
        if let Some(category) = category {
            let in_category = self.catalog().await?.ids_in_category(category);
            filter.service_ids = Some(match filter.service_ids.take() {
                Some(services) => services
                    .into_iter()
                    .filter(|s| in_category.contains(s))
                    .collect(),
                None => in_category,
            });
        }
        filter.areas = self
            .areas(&actor.access.reach(Permission::KeysRead))
            .await?;
        self.store.list_keys(&filter, &page, self.now()).await
    }

    /// Writes `key` as changed by an admitted change over the version read at `before` (the
    /// proxy is refreshed: every key field can change what it injects).
    pub(crate) async fn save(
        &self,
        actor: &Actor,
        change: Admitted,
        mut key: Key,
        before: Timestamp,
    ) -> Result<Key, Error> {
        // Timestamps are millisecond-precise in the store; make sure an update is visible as one.
        let now = self.now();
        key.updated_at = if now.as_millisecond() > before.as_millisecond() {
            now
        } else {
            Timestamp::from_millisecond(before.as_millisecond() + 1).unwrap_or(now)
        };
        self.commit(
            actor,
            change.refreshes_proxy(),
            self.store.update_key(&key, before),
        )
        .await?;
        Ok(key)
    }

    pub async fn update_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        changes: KeyChanges,
    ) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        let before = key.updated_at;
        let fields = changes.field_names();
        if !changes.apply(&mut key, self.now())? {
            return Ok(key);
        }
        let change = Change::new(
            "key.update",
            self.subject_of(&key).await?,
            Permission::KeysWrite,
            json!({"fields": fields}),
        );
        let key = self
            .save(actor, self.admit(actor, change).await?, key, before)
            .await?;
        tracing::info!(key = %id, actor = %actor.name, "key metadata updated");
        Ok(key)
    }

    pub async fn set_enabled(
        &self,
        actor: &Actor,
        id: &KeyId,
        enabled: bool,
    ) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        if enabled {
            key.ensure_not_revoked()?;
        }
        if key.enabled == enabled {
            return Ok(key);
        }
        let action = if enabled { "key.enable" } else { "key.disable" };
        let mut change = Change::new(
            action,
            self.subject_of(&key).await?,
            Permission::KeysWrite,
            json!({}),
        );
        if !enabled {
            change = change.approval(ApprovalAction::Disable, json!({}));
        }
        let before = key.updated_at;
        key.enabled = enabled;
        let key = self
            .save(actor, self.admit(actor, change).await?, key, before)
            .await?;
        tracing::info!(key = %id, actor = %actor.name, enabled, "key enabled state changed");
        Ok(key)
    }

    /// Clears what the proxy learned about a key (e.g. after fixing it at the provider).
    pub async fn clear_key_flag(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        let key = self.key_for(actor, Permission::KeysWrite, id).await?;
        let change = Change::new(
            "key.flag.clear",
            self.subject_of(&key).await?,
            Permission::KeysWrite,
            json!({}),
        )
        .refreshes_proxy();
        self.apply(actor, change, async {
            self.store.clear_key_flag(id).await?;
            self.proxy.clear_key_flag(id);
            Ok(())
        })
        .await?;
        tracing::info!(key = %id, actor = %actor.name, "key flag cleared");
        Ok(key)
    }

    pub async fn delete_key(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysDelete, id).await?;
        key.ensure_not_deleted()?;
        let change = Change::new(
            "key.delete",
            self.subject_of(&key).await?,
            Permission::KeysDelete,
            json!({}),
        )
        .approval(ApprovalAction::Delete, json!({}));
        let before = key.updated_at;
        key.deleted_at = Some(self.now());
        key.deleted_by = Some(actor.name.clone());
        let key = self
            .save(actor, self.admit(actor, change).await?, key, before)
            .await?;
        tracing::info!(key = %id, actor = %actor.name, "key soft-deleted");
        Ok(key)
    }

    pub async fn restore_key(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysDelete, id).await?;
        if key.deleted_at.is_none() {
            return Err(Error::conflict(
                "key_not_deleted",
                format!("key {id} is not deleted"),
            ));
        }
        let change = Change::new(
            "key.restore",
            self.subject_of(&key).await?,
            Permission::KeysDelete,
            json!({}),
        );
        let before = key.updated_at;
        key.deleted_at = None;
        key.deleted_by = None;
        let key = self
            .save(actor, self.admit(actor, change).await?, key, before)
            .await?;
        tracing::info!(key = %id, actor = %actor.name, "key restored");
        Ok(key)
    }

    /// Destroys a deleted key. Inside the recovery window the caller must confirm by
    /// repeating the key's alias.
    pub async fn purge_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        confirm_alias: Option<&str>,
    ) -> Result<(), Error> {
        let key = self.key_for(actor, Permission::KeysPurge, id).await?;
        let Some(deleted_at) = key.deleted_at else {
            return Err(Error::conflict(
                "key_not_deleted",
                format!("key {id} is not deleted; delete it first"),
            ));
        };
        let purgeable_at = self.recovery_window.purgeable_at(deleted_at);
        if self.now() < purgeable_at && confirm_alias != Some(key.alias.as_str()) {
            return Err(Error::conflict(
                "confirmation_required",
                format!(
                    "key {id} is inside its recovery window until {purgeable_at}; to purge it now send {{\"confirm\": \"<the key's alias>\"}}"
                ),
            ));
        }
        let change = Change::new(
            "key.purge",
            self.subject_of(&key).await?,
            Permission::KeysPurge,
            json!({"alias": key.alias, "service": key.service_id, "environment": key.environment}),
        )
        .approval(ApprovalAction::Purge, json!({}))
        .refreshes_proxy();
        self.apply(actor, change, self.store.purge_key(id)).await?;
        tracing::warn!(key = %id, actor = %actor.name, "key purged");
        Ok(())
    }

    /// Purges every key deleted longer ago than the recovery window (the server runs it
    /// hourly). Audited as one `key.purge_expired` entry per run that has something to
    /// purge; a run with nothing to do writes nothing.
    pub async fn purge_expired(&self) -> Result<usize, Error> {
        let cutoff = self
            .now()
            .saturating_sub(self.recovery_window.duration())
            .unwrap_or(Timestamp::MIN);
        if !self.any_deleted_before(cutoff).await? {
            return Ok(0);
        }
        let change = Change::new(
            "key.purge_expired",
            Subject::vault("keys"),
            Permission::KeysPurge,
            json!({"deleted_before": cutoff.to_string()}),
        )
        .refreshes_proxy();
        let purged = self
            .apply(
                &Actor::system("recovery-window"),
                change,
                self.store.purge_deleted_before(cutoff),
            )
            .await?;
        for id in &purged {
            tracing::info!(key = %id, "key purged after its recovery window");
        }
        Ok(purged.len())
    }

    /// Whether a deleted key's recovery window ended before `cutoff` (deleted keys are few:
    /// they are read a page at a time until one is found).
    async fn any_deleted_before(&self, cutoff: Timestamp) -> Result<bool, Error> {
        let filter = KeyFilter {
            status: Some(KeyStatus::Deleted),
            ..KeyFilter::default()
        };
        let mut after = None;
        loop {
            let page = self
                .store
                .list_keys(
                    &filter,
                    &PageRequest {
                        after,
                        limit: PageRequest::MAX_LIMIT,
                    },
                    self.now(),
                )
                .await?;
            if page
                .items
                .iter()
                .any(|key| key.deleted_at.is_some_and(|at| at <= cutoff))
            {
                return Ok(true);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(false),
            }
        }
    }
}
