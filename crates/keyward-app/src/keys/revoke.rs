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
        let key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        let change = Change::new(
            "key.disable",
            self.subject_of(&key).await?,
            Permission::KeysWrite,
            json!({"break_glass": true, "reason": reason}),
        );
        let key = self
            .break_glass(actor, change, ApprovalAction::Disable, &reason, key, |k| {
                k.enabled = false;
            })
            .await?;
        tracing::warn!(key = %id, actor = %actor.name, "key disabled in an emergency (break-glass)");
        Ok(key)
    }

    /// A break-glass act on `key`: admitted without the approval gate, filed for review as
    /// `action` with `reason`, then `apply`'d to the key and saved (the review's id in the
    /// audit entry).
    async fn break_glass(
        &self,
        actor: &Actor,
        change: Change,
        action: ApprovalAction,
        reason: &str,
        mut key: Key,
        apply: impl FnOnce(&mut Key),
    ) -> Result<Key, Error> {
        let admitted = self.admit(actor, change).await?;
        let operation = Operation {
            action,
            target: format!("key:{}", key.id),
            payload: json!({}),
        };
        let review = self
            .flag_break_glass(actor, operation, reason.to_owned())
            .await?;
        let before = key.updated_at;
        apply(&mut key);
        self.save(
            actor,
            admitted.detail("review", review.as_str()),
            key,
            before,
        )
        .await
    }

    /// Emergency revocation: stops every use of the key at once — on this instance before
    /// answering, on others within their next snapshot poll (half a second) — with no
    /// approval to wait for, and files the act for review. Irreversible; needs `keys_write`
    /// and a reason. The proxy then answers `key_revoked`.
    pub async fn revoke_key(&self, actor: &Actor, id: &KeyId, reason: &str) -> Result<Key, Error> {
        let reason = reveal_reason(reason)?;
        let key = self.key_for(actor, Permission::KeysWrite, id).await?;
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
        let revocation = keyward_core::key::Revocation {
            at: self.now(),
            by: actor.name.clone(),
            reason: reason.clone(),
        };
        let key = self
            .break_glass(actor, change, ApprovalAction::Revoke, &reason, key, |k| {
                k.revoked = Some(revocation);
            })
            .await?;
        tracing::warn!(key = %id, actor = %actor.name, "key revoked in an emergency");
        Ok(key)
    }
}
