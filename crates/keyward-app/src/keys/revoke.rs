//! Emergency measures on a key (break-glass disable, irreversible revocation): done at once
//! without waiting for approvals, and filed for review afterwards.

use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::approval::{ApprovalAction, Operation};
use keyward_core::id::KeyId;
use keyward_core::key::Key;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::keys::reveal_reason;
use crate::pipeline::{Change, Notice};
use keyward_core::notification::NotificationKind;

impl App {
    /// Emergency disable (break-glass): stops all use of a key at once, without waiting for
    /// approvals, and files the action for review afterwards.
    pub async fn emergency_disable(
        &self,
        actor: &Actor,
        id: &KeyId,
        reason: &str,
    ) -> Result<Key, Error> {
        let reason = reveal_reason(reason)?;
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        let change = Change::new(
            "key.disable",
            self.subject_of(&key).await?,
            Permission::KeysWrite,
            json!({"break_glass": true, "reason": reason}),
        );
        let admitted = self.admit(actor, change).await?;
        let review = self
            .break_glass_on_key(actor, ApprovalAction::Disable, id, &reason)
            .await?;
        let before = key.updated_at;
        key.enabled = false;
        let key = self
            .save(
                actor,
                admitted.detail("review", review.as_str()),
                key,
                before,
            )
            .await?;
        tracing::warn!(key = %id, actor = %actor.name, "key disabled in an emergency (break-glass)");
        Ok(key)
    }

    /// Files a break-glass act on a key (done without approval) for review afterwards.
    pub(crate) async fn break_glass_on_key(
        &self,
        actor: &Actor,
        action: ApprovalAction,
        id: &KeyId,
        reason: &str,
    ) -> Result<keyward_core::id::ApprovalId, Error> {
        let operation = Operation {
            action,
            target: format!("key:{id}"),
            payload: json!({}),
        };
        self.flag_break_glass(actor, operation, reason.to_owned())
            .await
    }

    /// Emergency revocation: stops every use of the key at once — on this instance before
    /// answering, on others within their next snapshot poll (half a second) — with no
    /// approval to wait for, and files the act for review. Irreversible; needs `keys_write`
    /// and a reason. The proxy then answers `key_revoked`.
    pub async fn revoke_key(&self, actor: &Actor, id: &KeyId, reason: &str) -> Result<Key, Error> {
        let reason = reveal_reason(reason)?;
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        if key.revoked.is_some() {
            return Err(Error::conflict(
                "key_already_revoked",
                format!("key {id} is already revoked"),
            ));
        }
        let change = Change::new(
            "key.revoke",
            self.subject_of(&key).await?,
            Permission::KeysWrite,
            json!({"reason": reason}),
        )
        .notifies(Notice {
            kind: NotificationKind::KeyRevoked,
            dedupe: format!("key_revoked:{id}"),
            data: json!({"key": id.as_str(), "alias": key.alias, "service": key.service_id,
                         "environment": key.environment, "by": actor.name, "reason": reason}),
        });
        let admitted = self.admit(actor, change).await?;
        let review = self
            .break_glass_on_key(actor, ApprovalAction::Revoke, id, &reason)
            .await?;
        let before = key.updated_at;
        key.revoked = Some(keyward_core::key::Revocation {
            at: self.now(),
            by: actor.name.clone(),
            reason: reason.clone(),
        });
        let key = self
            .save(
                actor,
                admitted.detail("review", review.as_str()),
                key,
                before,
            )
            .await?;
        tracing::warn!(key = %id, actor = %actor.name, "key revoked in an emergency");
        Ok(key)
    }
}
