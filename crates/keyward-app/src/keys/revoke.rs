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
    /// and a reason. The proxy then answers `key_revoked`. When the value was `at_provider`
    /// revoked too, the provider is asked at once whether it refuses it now
    /// ([`App::verify_revocation`]).
    pub async fn revoke_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        reason: &str,
        at_provider: bool,
    ) -> Result<Key, Error> {
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
            check: None,
        };
        let key = self
            .break_glass(actor, change, ApprovalAction::Revoke, &reason, key, |k| {
                k.revoked = Some(revocation);
            })
            .await?;
        tracing::warn!(key = %id, actor = %actor.name, "key revoked in an emergency");
        if at_provider {
            return self.verify_revocation(actor, id).await;
        }
        Ok(key)
    }

    /// Asks the provider whether a revoked key's value is dead there too (the user says it
    /// was revoked at the provider): the service's validation request, sent with the old
    /// value within the key's probe budget (its own allowance, as health probes are), and
    /// the answer — `revoked_verified`, `still_live`, or why it could not tell — kept on
    /// the key and audited. Asking again replaces the last answer.
    pub async fn verify_revocation(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        use keyward_core::key::{RevocationCheck, RevocationOutcome};
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        if key.revoked.is_none() {
            return Err(Error::conflict(
                "key_not_revoked",
                format!("key {id} is not revoked; revoke it first"),
            ));
        }
        let change = Change::new(
            "key.revocation.verify",
            self.subject_of(&key).await?,
            Permission::KeysWrite,
            json!({}),
        );
        let admitted = self.admit(actor, change).await?;
        let service = self.catalog().await?.require(&key.service_id)?.clone();
        let (outcome, status) = if service.validation.is_none() {
            (RevocationOutcome::Unverifiable, None)
        } else {
            let value = self.version_value(&key.id, key.current_version).await?;
            let probed = self.proxy.probe(&service, &key, &value).await?;
            drop(value);
            match probed {
                None => (RevocationOutcome::Deferred, None),
                Some(answer) => (
                    match answer.verdict {
                        keyward_proxy::Verdict::Rejected => RevocationOutcome::RevokedVerified,
                        keyward_proxy::Verdict::Valid => RevocationOutcome::StillLive,
                        _ => RevocationOutcome::Inconclusive,
                    },
                    answer.status,
                ),
            }
        };
        let before = key.updated_at;
        if let Some(revocation) = key.revoked.as_mut() {
            revocation.check = Some(RevocationCheck {
                outcome,
                status,
                at: self.now(),
            });
        }
        let admitted = admitted.detail("outcome", outcome.as_str());
        let key = self.save(actor, admitted, key, before).await?;
        if outcome == RevocationOutcome::StillLive {
            tracing::warn!(key = %id, "a revoked key's value still works at the provider");
        }
        Ok(key)
    }
}
