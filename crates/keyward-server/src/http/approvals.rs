//! `/api/v1/approvals` (the inbox: pending, mine, decided; approve, deny, cancel) and
//! `/api/v1/policies/approvals`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use keyward_core::approval::{ApprovalPolicy, ApprovalRequest, ApprovalStatus, Decision};
use keyward_core::id::ApprovalId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, SignedIn, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery, optional_json};
use keyward_app::App;

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalBody {
    pub id: String,
    pub status: String,
    /// Exactly what will execute: action, target and parameters.
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// SHA-256 of the operation; the approval works only for an operation with this hash.
    pub operation_hash: String,
    pub reason: String,
    pub requested_by: String,
    pub requested_by_id: String,
    pub required: u8,
    pub approvals: usize,
    pub approver_roles: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub decisions: Vec<Decision>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub executed_at: Option<Timestamp>,
    /// Past its expiry without having been used.
    pub expired: bool,
}

fn body(app: &App, r: ApprovalRequest) -> ApprovalBody {
    ApprovalBody {
        expired: r.expired(app.now())
            && matches!(r.status, ApprovalStatus::Pending | ApprovalStatus::Approved),
        approvals: r.approvals(),
        id: r.id.to_string(),
        status: r.status.to_string(),
        action: r.operation.action.to_string(),
        target: r.operation.target,
        payload: r.operation.payload,
        operation_hash: r.operation_hash,
        reason: r.reason,
        requested_by: r.requested_by.name,
        requested_by_id: r.requested_by.id,
        required: r.required,
        approver_roles: r.approver_roles.iter().map(|x| x.to_string()).collect(),
        decisions: r.decisions,
        created_at: r.created_at,
        expires_at: r.expires_at,
        executed_at: r.executed_at,
    }
}

fn approval_id(text: &str) -> Result<ApprovalId, keyward_core::Error> {
    text.parse().map_err(|_| {
        keyward_core::Error::not_found("approval_not_found", "there is no such approval request")
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    /// `pending`, `approved`, `denied`, `executed`, `cancelled`, `review_required`, `reviewed`.
    #[param(schema_with = super::schema::approval_status_schema)]
    pub status: Option<String>,
    /// Only the caller's own requests.
    #[serde(default)]
    pub mine: bool,
}

/// Approvers see every request; everyone else sees their own.
#[utoipa::path(get, path = "/api/v1/approvals", tag = "approvals", params(ApprovalQuery),
    responses((status = 200, body = Vec<ApprovalBody>)), security(("bearer" = [])))]
pub async fn list_approvals(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> ApiResult<Json<Vec<ApprovalBody>>> {
    let status = q.status.as_deref().map(str::parse).transpose()?;
    let list = app.approvals(&caller.actor, status, q.mine).await?;
    Ok(Json(list.into_iter().map(|r| body(&app, r)).collect()))
}

#[utoipa::path(get, path = "/api/v1/approvals/{id}", tag = "approvals", params(("id" = String, Path)),
    responses((status = 200, body = ApprovalBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_approval(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ApprovalBody>> {
    let request = app.approval(&caller.actor, &approval_id(&id)?).await?;
    Ok(Json(body(&app, request)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    #[serde(default)]
    pub comment: String,
}

async fn decide(
    app: &App,
    actor: &keyward_app::Actor,
    id: &str,
    approve: bool,
    raw: &[u8],
) -> ApiResult<Json<ApprovalBody>> {
    let req = optional_json::<DecisionRequest>(raw)?;
    let request = app
        .decide_approval(actor, &approval_id(id)?, approve, &req.comment)
        .await?;
    Ok(Json(body(app, request)))
}

/// Approve (with an optional comment). Never one's own request; once per approver.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals", params(("id" = String, Path)), request_body = Option<DecisionRequest>,
    responses((status = 200, body = ApprovalBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn approve(
    auth: Authorized<perm::ApprovalsDecide>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    raw: axum::body::Bytes,
) -> ApiResult<Json<ApprovalBody>> {
    decide(&app, auth.actor(), &id, true, &raw).await
}

/// Deny (with an optional comment); the request is closed.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/deny", tag = "approvals", params(("id" = String, Path)), request_body = Option<DecisionRequest>,
    responses((status = 200, body = ApprovalBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn deny(
    auth: Authorized<perm::ApprovalsDecide>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    raw: axum::body::Bytes,
) -> ApiResult<Json<ApprovalBody>> {
    decide(&app, auth.actor(), &id, false, &raw).await
}

/// The requester withdraws a request that was not used.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/cancel", tag = "approvals", params(("id" = String, Path)),
    responses((status = 200, body = ApprovalBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn cancel(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ApprovalBody>> {
    let request = app
        .cancel_approval(&caller.actor, &approval_id(&id)?)
        .await?;
    Ok(Json(body(&app, request)))
}

#[utoipa::path(get, path = "/api/v1/policies/approvals", tag = "approvals",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn get_policy(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<ApprovalPolicy>> {
    Ok(Json(app.approval_policy().await?))
}

/// `{"rules": [{"actions": ["purge"], "categories": ["financial-data"], "criticalities":
/// ["critical"], "approvals": 2, "approver_roles": ["owner", "admin"]}], "ttl_hours": 24}`.
/// Changing it passes the current policy's gate first.
#[utoipa::path(put, path = "/api/v1/policies/approvals", tag = "approvals", request_body = Object,
    responses((status = 200, body = Object), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_policy(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiJson(policy): ApiJson<ApprovalPolicy>,
) -> ApiResult<Json<ApprovalPolicy>> {
    Ok(Json(app.set_approval_policy(auth.actor(), policy).await?))
}
