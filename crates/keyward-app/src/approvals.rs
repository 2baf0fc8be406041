//! Approval workflows as use cases: the policy, the gate every sensitive operation passes
//! (`App::gate`), approvers' decisions, the requester's cancel, break-glass records, and
//! the inbox.
//!
//! How a caller meets the gate: an operation the policy covers is refused with
//! `approval_required`; repeated with `X-Keyward-Approval: request` (and a reason in
//! `X-Keyward-Reason`) it is not done but turned into a request for exactly that operation
//! (202, `reference` = the request's id); once approved, the same request with
//! `X-Keyward-Approval: apr_…` runs it — once, by the requester, if it is still the same
//! operation (its hash) and the approval has not expired.

use keyward_core::access::Permission;
use keyward_core::approval::{ApprovalPolicy, ApprovalRequest, ApprovalStatus};
use keyward_core::audit::AuditOutcome;
use keyward_core::id::ApprovalId;
use keyward_core::id::UserId;
use keyward_core::{Error, ErrorKind};
use serde_json::json;

use crate::actor::Actor;
pub use crate::actor::ApprovalUse;
use crate::app::App;
use crate::pipeline::gate::{not_found, participant};
use crate::pipeline::{Change, Subject};

/// The vault setting holding the approval policy (JSON); absent means no approvals.
pub const APPROVAL_POLICY_SETTING: &str = "approval_policy";

impl App {
    pub async fn approval_policy(&self) -> Result<ApprovalPolicy, Error> {
        let none = ApprovalPolicy {
            rules: Vec::new(),
            ttl_hours: 24,
        };
        self.stored_policy(APPROVAL_POLICY_SETTING, none).await
    }

    /// A policy kept as JSON in a vault setting (`default` while none was stored).
    pub(crate) async fn stored_policy<T: serde::de::DeserializeOwned>(
        &self,
        setting: &str,
        default: T,
    ) -> Result<T, Error> {
        match self.store.setting(setting).await? {
            None => Ok(default),
            Some(text) => serde_json::from_str(&text).map_err(|_| {
                Error::internal(format!("the stored policy `{setting}` cannot be read"))
            }),
        }
    }

    /// Replaces a policy setting with `text` (compare-and-set against what was read, so a
    /// concurrent change is reported, not overwritten).
    pub(crate) async fn store_policy(&self, setting: &str, text: &str) -> Result<(), Error> {
        let current = self.store.setting_or_insert(setting, text).await?;
        if current != text && !self.store.replace_setting(setting, &current, text).await? {
            return Err(Error::conflict(
                "policy_changed",
                "the policy changed meanwhile; reload and try again",
            ));
        }
        Ok(())
    }

    /// Writes a changed request over the revision it was read at; `code` if someone else
    /// changed it first.
    pub(crate) async fn save_approval(
        &self,
        request: &ApprovalRequest,
        expected: u32,
        code: &'static str,
    ) -> Result<(), Error> {
        if self.store.update_approval(request, expected).await? {
            Ok(())
        } else {
            Err(Error::conflict(
                code,
                "the request changed meanwhile; reload and try again",
            ))
        }
    }

    /// Replaces the policy — itself an access change, so it passes the gate under the
    /// current policy first (nobody switches approvals off alone).
    pub async fn set_approval_policy(
        &self,
        actor: &Actor,
        policy: ApprovalPolicy,
    ) -> Result<ApprovalPolicy, Error> {
        let policy = policy.validate()?;
        let text = serde_json::to_string(&policy)
            .map_err(|e| Error::internal(format!("cannot store the approval policy: {e}")))?;
        let change = Change::new(
            "policy.approvals.update",
            Subject::vault("policy:approvals"),
            Permission::AccessWrite,
            json!({"rules": policy.rules.len(), "ttl_hours": policy.ttl_hours}),
        )
        .access_change(
            "policy:approvals",
            serde_json::to_value(&policy)
                .map_err(|e| Error::internal(format!("cannot describe the policy: {e}")))?,
        );
        self.apply(
            actor,
            change,
            self.store_policy(APPROVAL_POLICY_SETTING, &text),
        )
        .await?;
        Ok(policy)
    }

    /// An approver approves or denies (or reviews a break-glass action).
    pub async fn decide_approval(
        &self,
        actor: &Actor,
        id: &ApprovalId,
        approve: bool,
        comment: &str,
    ) -> Result<ApprovalRequest, Error> {
        let comment =
            keyward_core::label::text("comment", Some(comment), 1_000)?.unwrap_or_default();
        let mut request = self.store.approval(id).await?.ok_or_else(not_found)?;
        let expected = request.revision;
        let action = if approve {
            "approval.approve"
        } else {
            "approval.deny"
        };
        let change = Change::new(
            action,
            Subject::vault(format!("approval:{id}")),
            Permission::ApprovalsDecide,
            json!({"comment": comment}),
        );
        let admitted = self.admit(actor, change).await?;
        // Who may decide this request (not the requester, nor anyone acting for them) is
        // the request's own rule; a refusal is recorded like any denial.
        if let Err(refused) = self
            .check_four_eyes(actor, &request)
            .await
            .and_then(|()| request.decide(participant(actor), approve, comment.clone(), self.now()))
        {
            self.record_audit(
                actor,
                action,
                Some(format!("approval:{id}")),
                AuditOutcome::Denied,
                json!({"reason": refused.code}),
            )
            .await?;
            return Err(refused);
        }
        let admitted = admitted.detail(
            "status",
            serde_json::to_value(request.status).unwrap_or_default(),
        );
        self.commit(
            actor,
            admitted,
            self.save_approval(&request, expected, "approval_changed"),
        )
        .await?;
        Ok(request)
    }

    /// Four eyes means two people: refuses (`self_approval`) a decision by the requester
    /// under another credential — a token acts for whoever minted it, whenever that was — or
    /// by an account the requester (or one of their tokens) created after opening the request,
    /// and so on up a chain of such accounts. Accounts that existed before the request are
    /// people in their own right.
    async fn check_four_eyes(&self, actor: &Actor, request: &ApprovalRequest) -> Result<(), Error> {
        let refused = || {
            Error::new(
                ErrorKind::Forbidden,
                "self_approval",
                "you cannot decide this request: the requester made the account or token you act with",
            )
        };
        let requester = self.person_behind(&request.requested_by.id).await?;
        let mut person = self.person_behind(&actor.id).await?;
        // Bounded: a creation chain is short, and bad data must not loop.
        for _ in 0..16 {
            if person == requester {
                return Err(refused());
            }
            let Ok(id) = person.parse::<UserId>() else {
                break;
            };
            let Some(user) = self.store.user(&id).await? else {
                break;
            };
            let Some(creator) = user
                .created_by_id
                .filter(|_| user.created_at >= request.created_at)
            else {
                break;
            };
            person = self.person_behind(&creator).await?;
        }
        Ok(())
    }

    /// Who acts behind a user or token id: a token acts for its minter (and theirs, for a
    /// token minted by a token); a user, or a token minted at the console, for itself.
    async fn person_behind(&self, id: &str) -> Result<String, Error> {
        let tokens = self.store.tokens().await?;
        let mut id = id.to_owned();
        for _ in 0..16 {
            match tokens
                .iter()
                .find(|t| t.id.as_str() == id)
                .and_then(|t| t.created_by_id.clone())
            {
                Some(minter) => id = minter,
                None => break,
            }
        }
        Ok(id)
    }

    pub async fn cancel_approval(
        &self,
        actor: &Actor,
        id: &ApprovalId,
    ) -> Result<ApprovalRequest, Error> {
        let mut request = self.store.approval(id).await?.ok_or_else(not_found)?;
        let expected = request.revision;
        request.cancel(&participant(actor))?;
        self.apply(
            actor,
            Change::own("approval.cancel", format!("approval:{id}"), json!({})),
            self.save_approval(&request, expected, "approval_changed"),
        )
        .await?;
        Ok(request)
    }

    /// Whether `actor` may see every request (approvers) or only their own.
    fn sees_all_approvals(actor: &Actor) -> bool {
        actor
            .access
            .reach(Permission::ApprovalsDecide)
            .is_everywhere()
    }

    /// The inbox: approvers see every request; everyone else their own.
    pub async fn approvals(
        &self,
        actor: &Actor,
        status: Option<ApprovalStatus>,
        mine: bool,
    ) -> Result<Vec<ApprovalRequest>, Error> {
        let only = (mine || !Self::sees_all_approvals(actor)).then_some(actor.id.as_str());
        self.store.approvals(status, only, 200).await
    }

    pub async fn approval(&self, actor: &Actor, id: &ApprovalId) -> Result<ApprovalRequest, Error> {
        let request = self.store.approval(id).await?.ok_or_else(not_found)?;
        if Self::sees_all_approvals(actor) || request.requested_by.id == actor.id {
            Ok(request)
        } else {
            Err(not_found())
        }
    }
}
