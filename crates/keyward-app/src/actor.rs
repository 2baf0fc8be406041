//! Who acts: a person signed in, a management token, Keyward itself or the console — with
//! what they may do, where they stand with MFA, and what their request says about approval.
//! Every use case takes one; the edges (API, pages, CLI) build them.

use std::net::IpAddr;

use keyward_core::access::{Access, Role};
use keyward_core::audit::ActorKind;
use keyward_core::id::ApprovalId;
use keyward_core::mfa::MfaStanding;
use keyward_core::user::User;

/// What a request says about approval (the `X-Keyward-Approval` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalUse {
    /// Ask for approval of this request instead of doing it, with a reason.
    Request(String),
    /// Do it under this approval.
    Use(ApprovalId),
}

/// Who is acting: recorded in `created_by`/`deleted_by` and in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    /// The user's or token's id; empty for Keyward itself.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The client's address, when the action came over the network.
    pub source: Option<IpAddr>,
    /// What this actor may do, and where (resolved from role, grants and scope).
    pub access: Access,
    /// What the request says about approval (`X-Keyward-Approval`).
    pub approval: Option<ApprovalUse>,
    /// Where the actor stands with MFA: the change pipeline refuses a step-up operation
    /// without a recent check, whatever face (API, page, CLI) the request came through.
    pub mfa: MfaStanding,
}

impl Actor {
    /// Someone not (yet) authenticated; `name` is what they claimed to be, if anything.
    pub fn anonymous(name: &str, source: Option<IpAddr>) -> Self {
        Self {
            kind: ActorKind::Anonymous,
            id: String::new(),
            name: name.to_owned(),
            role: Role::Viewer,
            source,
            access: Access::default(),
            approval: None,
            mfa: MfaStanding::NotApplicable,
        }
    }

    /// The id of the user or token acting, recorded as the creator of what they create;
    /// `None` for Keyward itself and the console.
    pub fn person_id(&self) -> Option<String> {
        matches!(self.kind, ActorKind::User | ActorKind::Token).then(|| self.id.clone())
    }

    /// Keyward itself, or an operator at the server's console (the CLI): `name` says which.
    pub fn system(name: &str) -> Self {
        Self {
            kind: ActorKind::System,
            id: String::new(),
            name: name.to_owned(),
            role: Role::Owner,
            source: None,
            access: Access::of_role(Role::Owner),
            approval: None,
            mfa: MfaStanding::NotApplicable,
        }
    }

    pub fn for_user(user: &User, source: Option<std::net::IpAddr>) -> Self {
        Self {
            kind: ActorKind::User,
            id: user.id.to_string(),
            name: user.username.clone(),
            role: user.role,
            source,
            // The base role; `App::user_access` adds grants for a request.
            access: keyward_core::access::Access::of_role(user.role),
            approval: None,
            // Until the session's standing is worked out (`App::session_standing`).
            mfa: keyward_core::mfa::MfaStanding::Stale {
                enrolled: user.mfa_enabled,
            },
        }
    }
}
