//! Key versions: adding a value that is current at once, sealing a version for exactly its
//! key and number, and reading a stored version's value for injection-like uses.

use jiff::Timestamp;
use keyward_core::access::Permission;
use keyward_core::approval::ApprovalAction;
use keyward_core::id::KeyId;
use keyward_core::key::{KeyVersion, SealContext, VersionState};
use keyward_core::service::ServiceDefinition;
use keyward_core::{Error, secret};
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::Change;

/// A new value for a key, current at once: the command the API reads from JSON and the key
/// page from its form.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    #[schema(value_type = String, format = Password, write_only)]
    pub secret: SecretString,
    /// Store a value that does not match the service's key format.
    #[serde(default)]
    pub force: bool,
    /// Only `current` (the default): replaces the injected value now. To try a value before
    /// it takes over, start a rotation (`POST /api/v1/keys/{id}/rotations`).
    #[schema(value_type = Option<String>)]
    pub state: Option<String>,
    /// Ask the provider first (the service's validation request, audited as
    /// `key.validate`): a value it rejects is not stored (`new_value_rejected`).
    #[serde(default)]
    pub validate: bool,
}

impl App {
    /// Adds a version that is current at once (an immediate rotation, without a dual-key
    /// window), under `keys_rotate` — also when the provider is asked first. A value to try
    /// before it takes over goes through a guided rotation (`guided_rotation.rs`), which owns
    /// pending versions.
    pub async fn add_version(
        &self,
        actor: &Actor,
        id: &KeyId,
        new: NewVersion,
    ) -> Result<KeyVersion, Error> {
        let state = new
            .state
            .as_deref()
            .map(str::parse::<VersionState>)
            .transpose()?
            .unwrap_or(VersionState::Current);
        if state != VersionState::Current {
            return Err(Error::invalid(
                "invalid_version_state",
                "a value added directly is current at once; to try a value first, start a rotation (POST /api/v1/keys/{id}/rotations)",
            ));
        }
        let key = self.key_for(actor, Permission::KeysRotate, id).await?;
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        let catalog = self.catalog().await?;
        let service = catalog.require(&key.service_id)?;
        let value = secret::normalize(&new.secret)?;
        secret::check_format(service, &value, new.force)?;
        let number = self.next_version_number(id).await?;
        let now = self.now();
        let fingerprint = self.audit.fingerprint(&value);
        let change = Change::new(
            "key.version.add",
            self.subject_of(&key).await?,
            Permission::KeysRotate,
            json!({"version": number, "state": state.to_string(), "fingerprint": fingerprint}),
        )
        // Bound to the new value (by its fingerprint): approvers approve this value only.
        .approval(
            ApprovalAction::Rotate,
            json!({"fingerprint": fingerprint, "state": state.to_string()}),
        )
        .refreshes_proxy();
        let admitted = self.admit(actor, change).await?;
        if new.validate {
            // Only once let through: the value is not sent anywhere for a refused caller.
            let check = self
                .validated(actor, format!("key:{id}"), service, &value, fingerprint)
                .await?;
            if check.verdict == keyward_proxy::Verdict::Rejected {
                return Err(Error::invalid(
                    "new_value_rejected",
                    format!("{}; nothing was changed", check.message),
                ));
            }
        }
        let version = self.seal_version(service, id, number, state, &value, actor, now)?;
        self.commit(actor, admitted, self.store.add_version(&version, now))
            .await?;
        tracing::info!(key = %id, version = number, state = %state, actor = %actor.name, "key version added");
        Ok(version)
    }

    /// The number the key's next version gets.
    pub(crate) async fn next_version_number(&self, id: &KeyId) -> Result<u32, Error> {
        Ok(self
            .store
            .versions(id)
            .await?
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            + 1)
    }

    /// A new version of key `id` holding `value` (normalized and format-checked), sealed
    /// for exactly that key and version number.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_version(
        &self,
        service: &ServiceDefinition,
        id: &KeyId,
        number: u32,
        state: VersionState,
        value: &SecretString,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<KeyVersion, Error> {
        Ok(KeyVersion {
            key_id: id.clone(),
            version: number,
            state,
            hint: secret::hint(service, value)?,
            sealed: self.keyring.get().seal(
                &*self.random,
                value,
                &SealContext::key_secret(id, number),
            )?,
            created_by: actor.name.clone(),
            created_at: now,
        })
    }

    /// A stored version's value (for injection-like uses: validation, probes, admin calls).
    pub(crate) async fn version_value(
        &self,
        id: &KeyId,
        number: u32,
    ) -> Result<SecretString, Error> {
        let version = self
            .store
            .versions(id)
            .await?
            .into_iter()
            .find(|v| v.version == number)
            .ok_or_else(|| Error::internal(format!("key {id} has no version {number}")))?;
        Ok(self.keyring.get().unseal(
            &version.sealed,
            &SealContext::key_secret(id, version.version),
        )?)
    }

    pub async fn versions(&self, actor: &Actor, id: &KeyId) -> Result<Vec<KeyVersion>, Error> {
        self.key(actor, id).await?;
        self.store.versions(id).await
    }
}
