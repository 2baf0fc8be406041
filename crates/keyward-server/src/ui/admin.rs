//! The pages around keys: the approvals inbox (pending, mine, decided; approve or deny with
//! a comment), the audit log (filters in the URL, "verify chain"), users and roles, and
//! settings (MFA policy, approval policy, network allowlists, recovery window; sign out
//! everywhere). Changes to policies and access go through the API, which asks for
//! approvals; these pages show where things stand.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::approval::{ApprovalRequest, ApprovalStatus};
use keyward_core::audit::{AuditFilter, AuditOutcome};
use maud::{Markup, html};
use serde::Deserialize;

use super::frame::{Viewer, error_page, field, framed, page};
use super::guard::form_post;
use super::parts::relative;
use keyward_app::App;

// ------------------------------------------------------------------ approvals

#[derive(Debug, Default, Deserialize)]
pub struct InboxView {
    view: Option<String>,
}

const VIEWS: [(&str, &str); 3] = [
    ("pending", "Pending"),
    ("mine", "Mine"),
    ("decided", "Decided"),
];

/// The view switcher above a list (`?view=`), the current one marked.
pub(crate) fn tabs(base: &str, current: &str, views: &[(&str, &str)]) -> Markup {
    html! {
        nav class="filters" aria-label="Views" {
            @for (id, label) in views {
                @if *id == current {
                    a class="button small" aria-current="page" href={ (base) "?view=" (id) } { (label) }
                } @else {
                    a class="button quiet small" href={ (base) "?view=" (id) } { (label) }
                }
            }
        }
    }
}

pub async fn approvals(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(q): Query<InboxView>,
) -> Response {
    let view = q
        .view
        .filter(|v| VIEWS.iter().any(|(id, _)| id == v))
        .unwrap_or_else(|| "pending".into());
    let actor = &viewer.caller.actor;
    let listed = match view.as_str() {
        "pending" => {
            app.approvals(actor, Some(ApprovalStatus::Pending), false)
                .await
        }
        "mine" => app.approvals(actor, None, true).await,
        _ => app.approvals(actor, None, false).await.map(|all| {
            all.into_iter()
                .filter(|r| r.status != ApprovalStatus::Pending)
                .collect()
        }),
    };
    let requests = match listed {
        Ok(r) => r,
        Err(e) => return error_page(&viewer, "/approvals", "Approvals", e),
    };
    let now = app.now();
    let decides = viewer.may(Permission::ApprovalsDecide);
    let content = html! {
        (tabs("/approvals", &view, &VIEWS))
        @if requests.is_empty() {
            div class="table-wrap" { p class="empty" { "Nothing here." } }
        } @else {
            div class="table-wrap" {
                table class="keys" {
                    thead { tr {
                        th scope="col" { "Operation" } th scope="col" { "Target" } th scope="col" { "Reason" }
                        th scope="col" { "Requested by" } th scope="col" { "Status" } th scope="col" { "Expires" }
                        th scope="col" { span class="sr-only" { "Decide" } }
                    } }
                    tbody {
                        @for r in &requests {
                            tr {
                                td data-label="Operation" class="mono" { (r.operation.action.as_str()) }
                                td data-label="Target" class="mono" { (r.operation.target) }
                                td data-label="Reason" { (r.reason) }
                                td data-label="Requested by" { (r.requested_by.name) }
                                td data-label="Status" {
                                    span class={ "badge " (r.status.as_str()) } { (r.status.as_str()) }
                                    " " span class="muted small" { (approved(r)) " of " (r.required) }
                                }
                                td data-label="Expires" { (relative(now, Some(r.expires_at))) }
                                td class="actions" { (decision_forms(&viewer, r, decides)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        StatusCode::OK,
        framed(&viewer, "/approvals", "Approvals", content),
    )
}

fn approved(r: &ApprovalRequest) -> usize {
    r.decisions.iter().filter(|d| d.approve).count()
}

fn decision_forms(viewer: &Viewer, r: &ApprovalRequest, decides: bool) -> Markup {
    let own = r.requested_by.id == viewer.caller.actor.id;
    let open = matches!(
        r.status,
        ApprovalStatus::Pending | ApprovalStatus::ReviewRequired
    );
    html! {
        @if open && decides && !own && r.approver_roles.contains(&viewer.caller.actor.role) {
            form method="post" action={ "/approvals/" (r.id) "/decide" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label class="sr-only" for={ "comment-" (r.id) } { "Comment" }
                input id={ "comment-" (r.id) } name="comment" type="text" placeholder="Comment" required;
                button type="submit" name="decision" value="approve" class="small" { "Approve" }
                button type="submit" name="decision" value="deny" class="quiet small" { "Deny" }
            }
        }
        @if own && r.status == ApprovalStatus::Approved {
            @if let Some(at) = super::approval::continue_at(r) {
                a class="button small" href=(at) { "Continue" }
            } @else {
                span class="muted small" { "Repeat the request with " code { "X-Keyward-Approval: " (r.id) } }
            }
        }
        @if open && own && r.status == ApprovalStatus::Pending {
            form method="post" action={ "/approvals/" (r.id) "/cancel" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" class="quiet small" { "Cancel" }
            }
        }
    }
}

pub async fn decide(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let approve = field(&fields, "decision") == Some("approve");
    let comment = field(&fields, "comment").unwrap_or_default();
    let result = async {
        let id = id.parse().map_err(|_| approval_not_found())?;
        app.decide_approval(&viewer.caller.actor, &id, approve, comment)
            .await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/approvals?view=decided").into_response(),
        Err(e) => error_page(&viewer, "/approvals", "Approvals", e),
    }
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (Viewer { caller, .. }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let id = id.parse().map_err(|_| approval_not_found())?;
        app.cancel_approval(&caller.actor, &id).await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/approvals?view=mine").into_response(),
        Err(e) => error_page(
            &Viewer {
                csrf: field(&fields, "csrf").unwrap_or_default().to_owned(),
                caller,
            },
            "/approvals",
            "Approvals",
            e,
        ),
    }
}

fn approval_not_found() -> Error {
    Error::not_found("approval_not_found", "there is no such approval request")
}

// ------------------------------------------------------------------ audit log

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    outcome: String,
    /// Set by the "Verify chain" button (a read: nothing changes).
    verify: Option<String>,
}

pub async fn audit(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    let result = async {
        let outcome = match q.outcome.as_str() {
            "" => None,
            "success" => Some(AuditOutcome::Success),
            "failure" => Some(AuditOutcome::Failure),
            "denied" => Some(AuditOutcome::Denied),
            _ => {
                return Err(Error::invalid(
                    "invalid_outcome",
                    "outcome is success, failure or denied",
                ));
            }
        };
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let mut events = app
            .audit_events(
                &viewer.caller.actor,
                &AuditFilter {
                    action: text(&q.action),
                    actor: text(&q.actor),
                    target: text(&q.target),
                    outcome,
                    limit: 1_000,
                    ..AuditFilter::default()
                },
            )
            .await?;
        events.reverse();
        events.truncate(200);
        let report = match q.verify {
            Some(_) => Some(app.verify_audit(&viewer.caller.actor).await?),
            None => None,
        };
        Ok::<_, Error>((events, report))
    }
    .await;
    let (events, report) = match result {
        Ok(r) => r,
        Err(e) => return error_page(&viewer, "/audit", "Audit log", e),
    };
    let now = app.now();
    let content = html! {
        @if let Some(report) = &report {
            @if report.ok {
                p class="flash" role="status" data-verified="ok" {
                    "Chain verified: " (report.verified) " entries up to #" (report.last_seq) ", "
                    (report.checkpoints) " signed checkpoints, nothing missing or altered."
                }
            } @else {
                p class="flash error" role="alert" data-verified="broken" {
                    "The chain is broken"
                    @if let Some(b) = &report.first_broken { " at entry #" (b.seq) " (" (format!("{:?}", b.kind).to_lowercase()) ")" }
                    ": " (report.verified) " entries verified before it."
                }
            }
        }
        form method="get" action="/audit" class="filters" role="search" aria-label="Filter the audit log" {
            label class="sr-only" for="a-action" { "Action" }
            input id="a-action" name="action" type="text" placeholder="Action, e.g. key.reveal or key" value=(q.action);
            label class="sr-only" for="a-actor" { "Actor" }
            input id="a-actor" name="actor" type="text" placeholder="Actor" value=(q.actor);
            label class="sr-only" for="a-target" { "Target" }
            input id="a-target" name="target" type="text" placeholder="Target, e.g. key:…" value=(q.target);
            label class="sr-only" for="a-outcome" { "Outcome" }
            select id="a-outcome" name="outcome" {
                option value="" { "Any outcome" }
                @for o in ["success", "failure", "denied"] { option value=(o) selected[q.outcome == o] { (o) } }
            }
            button type="submit" class="quiet" { "Filter" }
            button type="submit" name="verify" value="1" class="quiet" { "Verify chain" }
        }
        div class="table-wrap" {
            table class="trail" {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Action" }
                    th scope="col" { "Actor" } th scope="col" { "Target" } th scope="col" { "Outcome" }
                    th scope="col" { "Source" }
                } }
                tbody {
                    @for e in &events {
                        tr {
                            td class="num" { (e.seq) }
                            td { (relative(now, Some(e.entry.at))) }
                            td class="mono" { (e.entry.action) }
                            td { (e.entry.actor_name) }
                            td class="mono" { (e.entry.target.clone().unwrap_or_default()) }
                            td { span class={ "badge " (e.entry.outcome.as_str()) } { (e.entry.outcome.as_str()) } }
                            td class="mono muted" { (e.entry.source.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    };
    page(
        StatusCode::OK,
        framed(&viewer, "/audit", "Audit log", content),
    )
}

// ------------------------------------------------------------------ users and roles

pub async fn users(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(under): Query<super::approval::UnderApproval>,
) -> Response {
    users_page(
        &app,
        &viewer,
        (String::new(), String::new()),
        None,
        under.id(),
    )
    .await
}

/// The users page; `typed` is the add-user form's username and role after a refusal.
async fn users_page(
    app: &App,
    viewer: &Viewer,
    typed: (String, String),
    error: Option<Error>,
    under: Option<&str>,
) -> Response {
    if let Some(prompt) = error
        .as_ref()
        .and_then(|e| super::frame::step_up_prompt(viewer, e, "/users"))
    {
        return prompt;
    }
    let result = async {
        let users = app.users().await?;
        let roles = app.custom_roles().await?;
        Ok::<_, Error>((users, roles))
    }
    .await;
    let (users, roles) = match result {
        Ok(r) => r,
        Err(e) => return error_page(viewer, "/users", "Users & roles", e),
    };
    let now = app.now();
    let manages = viewer.may(Permission::UsersWrite);
    let status = error.as_ref().map_or(StatusCode::OK, |e| {
        crate::http::error::ApiError::from(e.clone()).status
    });
    let content = html! {
        section aria-labelledby="users-title" {
            h2 id="users-title" { "Users" }
            div class="table-wrap" {
                table class="keys" {
                    thead { tr {
                        th scope="col" { "Username" } th scope="col" { "Role" } th scope="col" { "Second factor" }
                        th scope="col" { "Networks" } th scope="col" { "Status" } th scope="col" { "Since" }
                        th scope="col" { span class="sr-only" { "Actions" } }
                    } }
                    tbody {
                        @for u in &users {
                            tr {
                                td data-label="Username" { (u.username) }
                                td data-label="Role" { (u.role.as_str()) }
                                td data-label="Second factor" { @if u.mfa_enabled { "authenticator app" } @else { span class="muted" { "none" } } }
                                td data-label="Networks" class="mono" {
                                    @if u.allowed_networks.is_empty() { span class="muted" { "anywhere" } }
                                    @else { (u.allowed_networks.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                                }
                                td data-label="Status" { @if u.disabled { span class="badge disabled" { "disabled" } } @else { span class="badge active" { "active" } } }
                                td data-label="Since" { (relative(now, Some(u.created_at))) }
                                td class="actions" {
                                    @if manages && u.id.as_str() != viewer.caller.actor.id {
                                        form method="post" action={ "/users/" (u.id) "/" (if u.disabled { "enable" } else { "disable" }) } {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button type="submit" class="quiet small" { (if u.disabled { "Enable" } else { "Disable" }) " " (u.username) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if manages {
            section aria-labelledby="new-user-title" {
                h2 id="new-user-title" { "Add a user" }
                form method="post" action="/users" class="panel narrow" {
                    @if let Some(e) = &error { p class="flash error" role="alert" { "The user was not added: " (e.message) } }
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    div class="field" {
                        label for="username" { "Username" }
                        input id="username" name="username" type="text" required autocomplete="off" value=(typed.0);
                    }
                    div class="field" {
                        label for="new-password" { "First password" }
                        div class="secret" {
                            input id="new-password" name="password" type="password" required autocomplete="new-password";
                            button type="button" class="quiet" data-toggle-secret="new-password" aria-pressed="false" hidden { "Show" }
                        }
                        span class="help" { "At least 12 characters; tell it to them in person. Roles the MFA policy names enrol at first sign-in." }
                    }
                    div class="field" {
                        label for="role" { "Role" }
                        select id="role" name="role" {
                            @for role in keyward_core::access::Role::ALL {
                                option value=(role.as_str()) selected[typed.1 == role.as_str() || (typed.1.is_empty() && role.as_str() == "viewer")] { (role.as_str()) }
                            }
                        }
                    }
                    (super::approval::controls(error.as_ref(), under, "", false, html! { button type="submit" { "Add user" } }))
                }
            }
        }
        section aria-labelledby="roles-title" {
            h2 id="roles-title" { "Custom roles" }
            @if roles.is_empty() {
                p class="muted" { "Only the built-in roles: owner, admin, key manager, auditor, viewer." }
            } @else {
                ul class="plain" {
                    @for r in &roles { li { strong { (r.id) } " " span class="muted" { (r.description) } } }
                }
            }
            p class="muted small" { "Users, grants and roles are changed through the API (" code { "/api/v1/users" } ", " code { "/api/v1/roles" } "); changes may need approval." }
        }
    };
    page(status, framed(viewer, "/users", "Users & roles", content))
}

/// Adds a user from the users page; a refusal keeps the username and role (never the
/// password).
pub async fn add_user(State(app): State<Arc<App>>, request: Request) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let username = field(&fields, "username")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let role = field(&fields, "role").unwrap_or_default().to_owned();
    let password =
        secrecy::SecretString::from(field(&fields, "password").unwrap_or_default().to_owned());
    let result = async {
        let parsed = role.parse::<keyward_core::access::Role>()?;
        app.add_user(&viewer.caller.actor, &username, password, parsed)
            .await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to("/approvals?view=mine").into_response()
        }
        Err(e) => users_page(&app, &viewer, (username, role), Some(e), None).await,
    }
}

pub async fn enable_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    user_disabled(app, id, request, false).await
}

pub async fn disable_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    user_disabled(app, id, request, true).await
}

async fn user_disabled(app: Arc<App>, id: String, request: Request, disabled: bool) -> Response {
    let (viewer, _) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let id = crate::http::users::user_id(&id)?;
        app.set_user_disabled(&viewer.caller.actor, &id, disabled)
            .await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(e) => users_page(&app, &viewer, (String::new(), String::new()), Some(e), None).await,
    }
}

// ------------------------------------------------------------------ settings

pub async fn settings(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(under): Query<super::approval::UnderApproval>,
) -> Response {
    settings_page(&app, viewer, None, None, None, under.id()).await
}

/// What was typed into the MFA policy form when it was refused.
struct RefusedMfaPolicy {
    required: Vec<String>,
    step_up_minutes: String,
    error: Error,
}

/// What was typed into the notification form when it was refused.
struct RefusedSubscription {
    fields: Vec<(String, String)>,
    error: Error,
}

/// The settings page; `refused` keeps a refused notification form as it was typed.
async fn settings_page(
    app: &App,
    viewer: Viewer,
    refused: Option<RefusedSubscription>,
    refused_mfa: Option<RefusedMfaPolicy>,
    refused_backup: Option<Error>,
    under: Option<&str>,
) -> Response {
    let notifications = match notification_panel(app, &viewer, refused.as_ref()).await {
        Ok(panel) => panel,
        Err(e) => return error_page(&viewer, "/settings", "Settings", e),
    };
    let backups = match backup_panel(app, &viewer, refused_backup.as_ref(), under).await {
        Ok(panel) => panel,
        Err(e) => return error_page(&viewer, "/settings", "Settings", e),
    };
    let status = refused
        .as_ref()
        .map(|r| &r.error)
        .or(refused_mfa.as_ref().map(|r| &r.error))
        .or(refused_backup.as_ref())
        .map_or(StatusCode::OK, |e| {
            crate::http::error::ApiError::from(e.clone()).status
        });
    let policies = viewer.may(Permission::UsersRead);
    let result = async {
        if !policies {
            return Ok(None);
        }
        let mfa = app.mfa_policy().await?;
        let approvals = app.approval_policy().await?;
        let networks = app.role_networks().await?;
        Ok::<_, Error>(Some((mfa, approvals, networks)))
    }
    .await;
    let policies = match result {
        Ok(r) => r,
        Err(e) => return error_page(&viewer, "/settings", "Settings", e),
    };
    let content = html! {
        @if let Some((mfa, approvals, networks)) = &policies {
        div class="columns" {
            section class="panel" aria-labelledby="mfa-title" {
                h2 id="mfa-title" { "MFA policy" }
                @if viewer.may(Permission::AccessWrite) {
                    form method="post" action="/settings/mfa" id="mfa" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        @if let Some(r) = &refused_mfa { p class="flash error" role="alert" { "Not saved: " (r.error.message) } }
                        fieldset {
                            legend { "Roles that must use an authenticator app" }
                            @for role in keyward_core::access::Role::ALL {
                                label class="check" {
                                    input type="checkbox" name="required" value=(role.as_str())
                                        checked[refused_mfa.as_ref().map_or(mfa.required_roles.contains(&role), |r| r.required.iter().any(|t| t == role.as_str()))];
                                    " " (role.as_str())
                                }
                            }
                        }
                        div class="field" {
                            label for="step-up" { "Step-up window (minutes)" }
                            input id="step-up" name="step_up_minutes" type="text" inputmode="numeric"
                                required value=(refused_mfa.as_ref().map_or(mfa.step_up_minutes.to_string(), |r| r.step_up_minutes.clone()));
                            span class="help" { "Reveal, rotate, delete, purge, export, approvals and access changes need a code this recent." }
                        }
                        (super::approval::controls(refused_mfa.as_ref().map(|r| &r.error), under, "", false, html! { button type="submit" { "Save MFA policy" } }))
                    }
                } @else {
                    dl class="facts" {
                        dt { "Must enrol" } dd { (mfa.required_roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                        dt { "Step-up window" } dd { (mfa.step_up_minutes) " min" }
                    }
                }
            }
            section class="panel" aria-labelledby="recovery-title" {
                h2 id="recovery-title" { "Recovery window" }
                p { "Deleted keys can be restored for " (app.recovery_window.in_days()) " days, then they are purged." }
            }
        }
        section class="panel" aria-labelledby="approval-title" {
            h2 id="approval-title" { "Approval policy" }
            @if approvals.rules.is_empty() {
                p class="muted" { "No operation needs approval." }
            } @else {
                div class="table-wrap" {
                    table {
                        thead { tr { th scope="col" { "Operations" } th scope="col" { "Categories" } th scope="col" { "Criticality" } th scope="col" { "Approvals" } th scope="col" { "Approvers" } } }
                        tbody {
                            @for rule in &approvals.rules {
                                tr {
                                    td class="mono" { (rule.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")) }
                                    td { (rule.categories.as_ref().map_or_else(|| "all".to_owned(), |c| c.join(", "))) }
                                    td { (rule.criticalities.as_ref().map_or_else(|| "any".to_owned(), |c| c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "))) }
                                    td class="num" { (rule.approvals) }
                                    td { (rule.approver_roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                                }
                            }
                        }
                    }
                }
            }
            p class="muted small" { "Requests stay usable for " (approvals.ttl_hours) " h." }
        }
        section class="panel" aria-labelledby="networks-title" {
            h2 id="networks-title" { "IP allowlists by role" }
            @if networks.is_empty() {
                p class="muted" { "No role is limited to networks." }
            } @else {
                dl class="facts" {
                    @for (role, nets) in networks.iter() {
                        dt { (role) } dd class="mono" { (nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
            p class="muted small" { "Policies change through the API (" code { "/api/v1/policies/…" } "), with a fresh MFA check and approval where the policy says." }
        }
        }
        (backups)
        (notifications)
        section class="panel" aria-labelledby="account-title" {
            h2 id="account-title" { "Your sessions" }
            form method="post" action="/logout/everywhere" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                p { "Ends every session of " strong { (viewer.caller.actor.name) } ", on every device, including this one." }
                button type="submit" class="danger" { "Sign out everywhere" }
            }
        }
    };
    page(status, framed(&viewer, "/settings", "Settings", content))
}

/// Backups: the schedule and the last scheduled backup's outcome (for readers of users and
/// policies), and for owners a form that downloads one now.
async fn backup_panel(
    app: &App,
    viewer: &Viewer,
    refused: Option<&Error>,
    under: Option<&str>,
) -> Result<Markup, Error> {
    let downloads = viewer.may(Permission::VaultBackup);
    if !downloads && !viewer.may(Permission::UsersRead) {
        return Ok(html! {});
    }
    let last = app.last_scheduled_backup().await?;
    let at = |ms: i64| {
        keyward_core::Timestamp::from_millisecond(ms)
            .map(super::usage::when)
            .unwrap_or_default()
    };
    Ok(html! {
        section class="panel" id="backup" aria-labelledby="backup-title" {
            h2 id="backup-title" { "Backups" }
            @match &app.backup_schedule {
                Some(schedule) => {
                    dl class="facts" {
                        dt { "Schedule" } dd { "every " (schedule.every.as_secs() / 3600) " h, keeping " (schedule.keep) }
                        dt { "Written to" } dd class="mono" { (schedule.dir) }
                        dt { "Encrypted to" } dd { (schedule.encrypted_to) }
                        @if let Some(last) = &last {
                            dt { "Last backup" }
                            @if let Some(error) = &last.error {
                                dd { span class="badge danger" { "failed" } " " (at(last.at)) ": " (error) }
                            } @else {
                                dd { (at(last.at)) " — " span class="mono" { (last.file) } ", " (last.bytes / 1024) " KiB, " (last.rows) " rows" }
                            }
                            @if last.error.is_some() {
                                dt { "Last success" }
                                dd { (last.last_success_at.map_or_else(|| "never".to_owned(), at)) }
                            }
                        }
                    }
                }
                None => {
                    p class="muted" { "No scheduled backups: set " code { "backup_schedule" } " (and " code { "backup_recipients" } " or " code { "KEYWARD_BACKUP_PASSPHRASE" } "). " code { "keyward backup create" } " takes one from the command line." }
                }
            }
            @if downloads {
                form method="post" action="/settings/backup" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    @if let Some(e) = refused.filter(|e| !super::approval::asks_for_approval(Some(e))) {
                        p class="flash error" role="alert" { "No backup: " (e.message) }
                    }
                    p class="muted small" { "A backup of the whole vault: keys stay sealed (they open only with this vault's master key), tokens are hashes. It is encrypted, and signed with the vault's audit key." }
                    div class="field" {
                        label for="backup-recipients" { "age recipients (optional)" }
                        textarea id="backup-recipients" name="recipients" rows="2" placeholder="age1…" {}
                        span class="help" { "One per line; " code { "keyward backup keygen" } " makes one. Without recipients the passphrase below encrypts it." }
                    }
                    div class="field" {
                        label for="backup-passphrase" { "Passphrase" }
                        input id="backup-passphrase" name="passphrase" type="password" autocomplete="new-password" minlength="12";
                        span class="help" { "At least 12 characters; needed to restore it." }
                    }
                    label class="check" { input type="checkbox" name="raw_usage" value="1"; " Include raw usage records" }
                    (super::approval::controls(refused, under, "", false, html! { button type="submit" { "Download backup" } }))
                }
            }
        }
    })
}

/// Writes a backup and answers it as a download; a refusal shows the settings page again.
pub async fn download_backup(State(app): State<Arc<App>>, request: Request) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let recipients: Vec<String> = field(&fields, "recipients")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    let passphrase = field(&fields, "passphrase")
        .filter(|p| !p.is_empty())
        .map(|p| secrecy::SecretString::from(p.to_owned()));
    let raw_usage = field(&fields, "raw_usage").is_some();
    let result = match crate::http::backups::BackupRequest::protection(&recipients, passphrase) {
        Ok(protection) => {
            crate::backups::download(&app, &viewer.caller.actor, protection, raw_usage).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(download) => download,
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to("/approvals?view=mine").into_response()
        }
        Err(error) => settings_page(&app, viewer, None, None, Some(error), None).await,
    }
}

/// The signed-in person's e-mail subscription: kinds, categories, address.
async fn notification_panel(
    app: &App,
    viewer: &Viewer,
    refused: Option<&RefusedSubscription>,
) -> Result<Markup, Error> {
    use keyward_core::notification::NotificationKind;
    if viewer.caller.session.is_none() {
        return Ok(html! {});
    }
    let mine = app.my_subscription(&viewer.caller.actor).await?;
    let categories = app.categories().await?;
    let typed = |name: &str| refused.and_then(|r| field(&r.fields, name).map(str::to_owned));
    let chosen = |name: &str, value: &str| match refused {
        Some(r) => r.fields.iter().any(|(k, v)| k == name && v == value),
        None => mine.as_ref().is_some_and(|m| match name {
            "kind" => m.kinds.iter().any(|k| k.as_str() == value),
            _ => m.categories.iter().any(|c| c == value),
        }),
    };
    let email = typed("email")
        .or_else(|| mine.as_ref().and_then(|m| m.email().map(str::to_owned)))
        .unwrap_or_default();
    Ok(html! {
        section class="panel" id="notifications" aria-labelledby="notifications-title" {
            h2 id="notifications-title" { "Your notifications" }
            @if !app.sends_email() {
                p class="muted" { "This Keyward sends no e-mail: an administrator sets " code { "smtp_url" } " and " code { "smtp_from" } " to turn it on. Webhooks work without it." }
            } @else {
                @if let Some(r) = refused { p class="flash error" role="alert" { (r.error.message) } }
                p class="muted small" { "E-mail about the keys you may read. Nothing ticked: everything." }
                form method="post" action="/settings/notifications" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    div class="field" {
                        label for="notify-email" { "E-mail address" }
                        input id="notify-email" name="email" type="email" required value=(email) autocomplete="email";
                    }
                    fieldset {
                        legend { "Events" }
                        @for kind in NotificationKind::ALL {
                            label class="check" {
                                input type="checkbox" name="kind" value=(kind.as_str()) checked[chosen("kind", kind.as_str())];
                                " " (kind.as_str().replace('_', " "))
                            }
                        }
                    }
                    fieldset {
                        legend { "Categories" }
                        @for c in &categories {
                            label class="check" {
                                input type="checkbox" name="category" value=(c.id) checked[chosen("category", &c.id)];
                                " " (c.name)
                            }
                        }
                    }
                    button type="submit" { (if mine.is_some() { "Save subscription" } else { "Subscribe" }) }
                }
                @if mine.is_some() {
                    form method="post" action="/settings/notifications/delete" {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        button type="submit" class="quiet" { "Unsubscribe" }
                    }
                }
            }
        }
    })
}

/// Saves the signed-in person's e-mail subscription from the settings form.
pub async fn save_subscription(State(app): State<Arc<App>>, request: Request) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let kinds = fields
            .iter()
            .filter(|(k, _)| k == "kind")
            .map(|(_, v)| v.parse())
            .collect::<Result<Vec<_>, _>>()?;
        let categories = fields
            .iter()
            .filter(|(k, _)| k == "category")
            .map(|(_, v)| v.clone())
            .collect();
        app.subscribe(
            &viewer.caller.actor,
            field(&fields, "email").unwrap_or_default(),
            kinds,
            categories,
        )
        .await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/settings#notifications").into_response(),
        Err(error) => {
            settings_page(
                &app,
                viewer,
                Some(RefusedSubscription { fields, error }),
                None,
                None,
                None,
            )
            .await
        }
    }
}

/// Ends the signed-in person's e-mail subscription.
pub async fn delete_subscription(State(app): State<Arc<App>>, request: Request) -> Response {
    let (viewer, _) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    match app.unsubscribe(&viewer.caller.actor).await {
        Ok(()) => Redirect::to("/settings#notifications").into_response(),
        Err(e) => error_page(&viewer, "/settings", "Settings", e),
    }
}

/// Saves the MFA policy from the settings form (a fresh MFA check first; approval where the
/// policy says, as through the API).
pub async fn save_mfa_policy(State(app): State<Arc<App>>, request: Request) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let required_roles = fields
            .iter()
            .filter(|(k, _)| k == "required")
            .map(|(_, v)| v.parse::<keyward_core::access::Role>())
            .collect::<Result<Vec<_>, _>>()?;
        let step_up_minutes = field(&fields, "step_up_minutes")
            .unwrap_or_default()
            .trim()
            .parse::<u32>()
            .map_err(|_| {
                Error::invalid(
                    "invalid_step_up_window",
                    "the step-up window is a whole number of minutes",
                )
            })?;
        app.set_mfa_policy(
            &viewer.caller.actor,
            keyward_core::mfa::MfaPolicy {
                required_roles,
                step_up_minutes,
            },
        )
        .await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/settings").into_response(),
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to("/approvals?view=mine").into_response()
        }
        Err(error) => {
            let typed = RefusedMfaPolicy {
                required: fields
                    .iter()
                    .filter(|(k, _)| k == "required")
                    .map(|(_, v)| v.clone())
                    .collect(),
                step_up_minutes: field(&fields, "step_up_minutes")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                error,
            };
            settings_page(&app, viewer, None, Some(typed), None, None).await
        }
    }
}

/// Ends every session of the signed-in user, this one included.
pub async fn sign_out_everywhere(State(app): State<Arc<App>>, request: Request) -> Response {
    let (Viewer { caller, .. }, _) = match form_post(request).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(session) = caller.session.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    match app
        .end_user_sessions(&caller.actor, &session.user_id, "sign out everywhere")
        .await
    {
        Ok(_) => {
            let mut response = Redirect::to("/login?notice=signed_out").into_response();
            if let Ok(cleared) = crate::http::sessions::set_cookie(&app, "", 0) {
                response
                    .headers_mut()
                    .insert(axum::http::header::SET_COOKIE, cleared);
            }
            response
        }
        Err(e) => crate::http::error::ApiError::from(e).into_response(),
    }
}
