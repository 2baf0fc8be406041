//! Approvals on every form, the same way for each: `form_post` reads what a form says
//! about approval ([`from_form`]) onto the actor, exactly as the API reads
//! `X-Keyward-Approval` and `X-Keyward-Reason`; a form refused with `approval_required`
//! offers "Request approval" ([`controls`]); the inbox links the requester back to the page
//! that completes an approved request ([`continue_at`]), which carries the approval's id in
//! the form.

use keyward_app::approvals::ApprovalUse;
use keyward_core::Error;
use keyward_core::approval::{ApprovalAction, ApprovalRequest};
use maud::{Markup, html};
use serde::Deserialize;

use super::frame::field;

/// `approval=request` (with `reason`) files a request instead of acting; `approval=apr_…`
/// acts under that approval; anything else is no approval (the operation is then refused
/// if the policy covers it, and the page offers to ask).
pub(super) fn from_form(fields: &[(String, String)]) -> Option<ApprovalUse> {
    match field(fields, "approval").map(str::trim) {
        Some("request") => Some(ApprovalUse::Request(
            field(fields, "reason")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        )),
        Some(other) if other.starts_with("apr_") => other.parse().ok().map(ApprovalUse::Use),
        _ => None,
    }
}

/// An approval id handed to a page in its URL (from the approvals inbox).
#[derive(Debug, Default, Deserialize)]
pub struct UnderApproval {
    approval: Option<String>,
}

impl UnderApproval {
    pub fn id(&self) -> Option<&str> {
        valid_id(self.approval.as_deref())
    }
}

/// An approval id from a URL, if it looks like one (it is echoed into the page).
pub fn valid_id(id: Option<&str>) -> Option<&str> {
    id.filter(|a| a.starts_with("apr_") && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Whether a refusal is the approval gate's: the form then offers to ask.
pub fn asks_for_approval(error: Option<&Error>) -> bool {
    error.is_some_and(|e| e.code == "approval_required")
}

/// The end of a form: after an `approval_required` refusal, a reason (unless the form has
/// its own `reason` field) and "Request approval"; under an approval from the inbox, its id
/// and `submit`; otherwise just `submit`.
pub fn controls(
    error: Option<&Error>,
    under: Option<&str>,
    reason: &str,
    own_reason_field: bool,
    submit: Markup,
) -> Markup {
    html! {
        @if asks_for_approval(error) {
            @if !own_reason_field {
                div class="field" {
                    label for="approval-reason" { "Why this is needed" }
                    input id="approval-reason" name="reason" type="text" required minlength="4" maxlength="500" value=(reason);
                    span class="help" { "Approvers see this with the request." }
                }
            }
            input type="hidden" name="approval" value="request";
            button type="submit" { "Request approval" }
        } @else {
            @if let Some(approval) = under {
                input type="hidden" name="approval" value=(approval);
                p class="muted small" { "Under approval " code { (approval) } " (usable once)." }
            }
            (submit)
        }
    }
}

/// Where the requester completes an approved request in the UI, if a page does it.
pub fn continue_at(request: &ApprovalRequest) -> Option<String> {
    let id = &request.id;
    let target = request.operation.target.as_str();
    if let Some(key) = target.strip_prefix("key:") {
        let guided = request.operation.payload["state"] == "pending"
            || request.operation.payload["managed"] == true;
        return Some(match request.operation.action {
            ApprovalAction::Reveal => format!("/keys/{key}/reveal?approval={id}"),
            ApprovalAction::Delete => format!("/keys/{key}/delete?approval={id}"),
            ApprovalAction::Disable => format!("/keys/{key}/disable?approval={id}"),
            ApprovalAction::Purge => format!("/keys/deleted?approval={id}&key={key}#purge-{key}"),
            ApprovalAction::Rotate if guided => {
                format!("/keys/{key}?approval={id}&form=rotation#rotation")
            }
            ApprovalAction::Rotate => format!("/keys/{key}?approval={id}&form=rotate#rotate"),
            ApprovalAction::Unfreeze => format!("/keys/{key}/freeze?approval={id}"),
            ApprovalAction::Revoke | ApprovalAction::Export | ApprovalAction::AccessChange => {
                return None;
            }
        });
    }
    match (request.operation.action, target) {
        (ApprovalAction::AccessChange, "policy:mfa") => {
            Some(format!("/settings?approval={id}#mfa"))
        }
        (ApprovalAction::Export, "vault") => Some(format!("/settings?approval={id}#backup")),
        (ApprovalAction::AccessChange, t) if t.starts_with("user") => {
            Some(format!("/users?approval={id}"))
        }
        (ApprovalAction::Unfreeze, t) => t
            .strip_prefix("app_token:")
            .map(|token| format!("/app-tokens/{token}/freeze?approval={id}")),
        _ => None,
    }
}
