//! Reveal: the one explicit, audited way a person sees a key's value.

use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::approval::ApprovalAction;
use keyward_core::id::KeyId;
use keyward_core::key::{KeyVersion, SealContext};
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::keys::reveal_reason;
use crate::pipeline::Change;

impl App {
    /// Reveals a key's value: the explicit, audited way a person sees it (never through
    /// reading metadata). A reason is required and recorded with the value's fingerprint;
    /// `version` defaults to the current one.
    pub async fn reveal_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        version: Option<u32>,
        reason: &str,
    ) -> Result<(KeyVersion, SecretString), Error> {
        let reason = reveal_reason(reason)?;
        let key = self.key_for(actor, Permission::KeysReveal, id).await?;
        key.ensure_not_deleted()?;
        let wanted = version.unwrap_or(key.current_version);
        let change = Change::new(
            "key.reveal",
            self.subject_of(&key).await?,
            Permission::KeysReveal,
            json!({"reason": reason}),
        )
        .approval(ApprovalAction::Reveal, json!({"version": wanted}));
        let admitted = self.admit(actor, change).await?;
        let version = self
            .store
            .versions(id)
            .await?
            .into_iter()
            .find(|v| v.version == wanted)
            .ok_or_else(|| {
                Error::not_found(
                    "version_not_found",
                    format!("key {id} has no version {wanted}"),
                )
            })?;
        let value = self.keyring.get().unseal(
            &version.sealed,
            &SealContext::key_secret(id, version.version),
        )?;
        let admitted = admitted
            .detail("version", version.version)
            .detail("fingerprint", self.audit.fingerprint(&value));
        self.commit(actor, admitted, async { Ok(()) }).await?;
        tracing::warn!(key = %id, version = version.version, actor = %actor.name, "key value revealed");
        Ok((version, value))
    }
}
