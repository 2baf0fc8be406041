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

use crate::app::{Actor, App};
use crate::pipeline::Change;

impl App {
    /// Adds a version that is current at once (an immediate rotation, without a dual-key
    /// window). A value to try before it takes over goes through a guided rotation
    /// (`guided_rotation.rs`), which owns pending versions.
    pub async fn add_version(
        &self,
        actor: &Actor,
        id: &KeyId,
        secret_value: SecretString,
        force: bool,
        state: VersionState,
    ) -> Result<KeyVersion, Error> {
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
        let value = secret::normalize(&secret_value)?;
        secret::check_format(service, &value, force)?;
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
        let version = self.seal_version(service, id, number, state, &value, actor, now)?;
        self.apply(actor, change, self.store.add_version(&version, now))
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
            sealed: self.keyring.seal(
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
        Ok(self.keyring.unseal(
            &version.sealed,
            &SealContext::key_secret(id, version.version),
        )?)
    }

    pub async fn versions(&self, actor: &Actor, id: &KeyId) -> Result<Vec<KeyVersion>, Error> {
        self.key(actor, id).await?;
        self.store.versions(id).await
    }
}
