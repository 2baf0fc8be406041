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
use keyward_core::approval::{
    ApprovalPolicy, ApprovalRequest, ApprovalStatus, Operation, Participant,
};
use keyward_core::audit::{ActorKind, AuditOutcome};
use keyward_core::id::ApprovalId;
use keyward_core::key::Criticality;
use keyward_core::{Error, ErrorKind};
use serde_json::json;

use crate::app::{Actor, App};

/// The vault setting holding the approval policy (JSON); absent means no approvals.
pub const APPROVAL_POLICY_SETTING: &str = "approval_policy";

/// What a request says about approval (the `X-Keyward-Approval` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalUse {
    /// Ask for approval of this request instead of doing it, with a reason.
    Request(String),
    /// Do it under this approval.
    Use(ApprovalId),
}

fn participant(actor: &Actor) -> Participant {
    Participant {
        id: actor.id.clone(),
        name: actor.name.clone(),
        role: actor.role,
    }
}

fn not_found() -> Error {
    Error::not_found("approval_not_found", "there is no such approval request")
}

/// Where an operation happens, for the policy's conditions.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateFacts<'a> {
    pub category: Option<&'a str>,
    /// The key's environment (who may hear of the request).
    pub environment: Option<&'a str>,
    pub criticality: Option<Criticality>,
}

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
    async fn save_approval(
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
        let operation = Operation {
            action: keyward_core::approval::ApprovalAction::AccessChange,
            target: "policy:approvals".into(),
            payload: serde_json::to_value(&policy)
                .map_err(|e| Error::internal(format!("cannot describe the policy: {e}")))?,
        };
        self.gate(actor, &operation, GateFacts::default()).await?;
        self.audited(
            actor,
            "policy.approvals.update",
            "policy:approvals".into(),
            json!({"rules": policy.rules.len(), "ttl_hours": policy.ttl_hours}),
            self.store_policy(APPROVAL_POLICY_SETTING, &text),
        )
        .await?;
        Ok(policy)
    }

    /// Lets `operation` through if the policy does not cover it, or if the actor brings an
    /// approval for exactly it; otherwise refuses (`approval_required`) or, when asked,
    /// files the request (`Accepted`). Every request, use and refusal is audited.
    pub(crate) async fn gate(
        &self,
        actor: &Actor,
        operation: &Operation,
        facts: GateFacts<'_>,
    ) -> Result<(), Error> {
        let policy = self.approval_policy().await?;
        let Some(requirement) =
            policy.requirement(operation.action, facts.category, facts.criticality)
        else {
            return Ok(());
        };
        // The operator at the server's console (the CLI) is not asked.
        if actor.kind == ActorKind::System {
            return Ok(());
        }
        let roles: Vec<&str> = requirement
            .approver_roles
            .iter()
            .map(|r| r.as_str())
            .collect();
        match &actor.approval {
            None => {
                self.record_audit(
                    actor,
                    "approval.required",
                    Some(operation.target.clone()),
                    AuditOutcome::Denied,
                    json!({"action": operation.action, "approvals": requirement.approvals}),
                )
                .await?;
                Err(Error::new(
                    ErrorKind::Forbidden,
                    "approval_required",
                    format!(
                        "this {} needs {} approval(s) from {}: repeat the request with `X-Keyward-Approval: request` and a reason in `X-Keyward-Reason`",
                        operation.action,
                        requirement.approvals,
                        roles.join(" or ")
                    ),
                ))
            }
            Some(ApprovalUse::Request(reason)) => {
                let reason = keyward_core::label::text("reason", Some(reason), 500)?
                    .filter(|r| r.chars().count() >= 4)
                    .ok_or_else(|| {
                        Error::invalid(
                            "reason_required",
                            "say why in `X-Keyward-Reason` (at least 4 characters)",
                        )
                    })?;
                let now = self.now();
                let request = ApprovalRequest::open(
                    ApprovalId::generate(now, &*self.random),
                    operation.clone(),
                    reason,
                    participant(actor),
                    requirement,
                    now,
                    policy.ttl(),
                );
                self.audited(
                    actor,
                    "approval.request",
                    format!("approval:{}", request.id),
                    json!({"action": operation.action, "target": operation.target,
                           "operation_hash": request.operation_hash, "reason": request.reason}),
                    self.store.insert_approval(&request),
                )
                .await?;
                self.notify(
                    keyward_core::notification::NotificationKind::ApprovalRequested,
                    crate::notifications::About {
                        category: facts.category,
                        environment: facts.environment,
                    },
                    format!("approval_requested:{}", request.id),
                    json!({"approval": request.id.as_str(), "action": operation.action,
                           "target": operation.target, "requested_by": actor.name,
                           "reason": request.reason, "expires_at": request.expires_at.to_string()}),
                )
                .await;
                Err(Error::accepted(
                    "approval_requested",
                    format!(
                        "nothing was done: approval request {} waits for {} approval(s) from {}",
                        request.id,
                        request.required,
                        roles.join(" or ")
                    ),
                    request.id.to_string(),
                ))
            }
            Some(ApprovalUse::Use(id)) => {
                let mut request = self.store.approval(id).await?.ok_or_else(not_found)?;
                let expected = request.revision;
                if let Err(refused) = request.execute(&participant(actor), operation, self.now()) {
                    self.record_audit(
                        actor,
                        "approval.use",
                        Some(format!("approval:{id}")),
                        AuditOutcome::Denied,
                        json!({"reason": refused.code, "target": operation.target}),
                    )
                    .await?;
                    return Err(refused);
                }
                self.audited(
                    actor,
                    "approval.use",
                    format!("approval:{id}"),
                    json!({"action": operation.action, "target": operation.target}),
                    self.save_approval(&request, expected, "approval_used"),
                )
                .await
            }
        }
    }

    /// Records a break-glass action (done without approval) for review afterwards.
    pub(crate) async fn flag_break_glass(
        &self,
        actor: &Actor,
        operation: Operation,
        reason: String,
    ) -> Result<ApprovalId, Error> {
        let now = self.now();
        let record = ApprovalRequest::break_glass(
            ApprovalId::generate(now, &*self.random),
            operation,
            reason,
            participant(actor),
            now,
        );
        self.audited(
            actor,
            "approval.break_glass",
            format!("approval:{}", record.id),
            json!({"action": record.operation.action, "target": record.operation.target,
                   "reason": record.reason}),
            self.store.insert_approval(&record),
        )
        .await?;
        Ok(record.id)
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
        if let Err(refused) =
            request.decide(participant(actor), approve, comment.clone(), self.now())
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
        self.audited(
            actor,
            action,
            format!("approval:{id}"),
            json!({"comment": comment, "status": request.status}),
            self.save_approval(&request, expected, "approval_changed"),
        )
        .await?;
        Ok(request)
    }

    pub async fn cancel_approval(
        &self,
        actor: &Actor,
        id: &ApprovalId,
    ) -> Result<ApprovalRequest, Error> {
        let mut request = self.store.approval(id).await?.ok_or_else(not_found)?;
        let expected = request.revision;
        request.cancel(&participant(actor))?;
        self.audited(
            actor,
            "approval.cancel",
            format!("approval:{id}"),
            json!({}),
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
