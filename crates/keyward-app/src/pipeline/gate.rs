//! The approval gate, a step of the pipeline: lets an operation through, refuses it
//! (`approval_required`), files it as a request (`ErrorKind::Accepted` with the request's id)
//! or consumes the actor's approval for exactly it (compare-and-set on its revision); and
//! break-glass records, filed for review when an emergency measure skips the gate. Private
//! to the pipeline's module, so no use case passes the gate by hand.

use keyward_core::approval::{ApprovalRequest, Operation};
use keyward_core::audit::{ActorKind, AuditOutcome};
use keyward_core::id::ApprovalId;
use keyward_core::{Error, ErrorKind};
use serde_json::json;

use crate::actor::Actor;
use crate::actor::ApprovalUse;
use crate::app::App;
use keyward_core::approval::Participant;
use keyward_core::key::Criticality;

/// Where an operation happens, for the policy's conditions.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateFacts<'a> {
    pub category: Option<&'a str>,
    /// The key's environment (who may hear of the request).
    pub environment: Option<&'a str>,
    pub criticality: Option<Criticality>,
}

pub(crate) fn participant(actor: &Actor) -> Participant {
    Participant {
        id: actor.id.clone(),
        name: actor.name.clone(),
        role: actor.role,
    }
}

pub(crate) fn not_found() -> Error {
    Error::not_found("approval_not_found", "there is no such approval request")
}

impl App {
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
                    crate::notifications::about::About {
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
}
